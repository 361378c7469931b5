"""Prompt-to-Prompt pieces: word→token positions, re-indexing of stored cross-attention maps for a word
replacement, interpolation schedules, latent-blend set-up and the batched schedule search.

Re-indexing is expressed as one (77 × 77) mixing matrix per sample, M, with P'[..., l] = Σ_k P[..., k]·M[k, l]
(AttentionController.reindex_cross applies it to every stored layer/step at once). Unchanged tokens are
one-hot columns (shifted after the replaced span); every token of a new word gets the weighted mean of the
source words' token columns, on every head. The reference edits only heads [h/2:] and only the last token of
each new word, and its unequal-count mapping weights *distant* words more (softmax of +distance); those are
bugs of its src/utils/cross_attention.py and are not reproduced: we weight by softmax(−distance/τ).

Schedule search: N candidate (xa, self, blend) schedules × B samples run as one batch of N·B rows,
candidate-major (row n·B + b = candidate n of sample b); `pick_best` takes the per-sample argmin.
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import torch

from .sampling import Blend

PUNCT = ",."


# ------------------------------------------------------------------------------------------ words → tokens

@dataclass
class Word:
    key: str  # the whitespace word with ',' and '.' stripped
    raw: str  # the whitespace word as written
    positions: list[int]  # token positions of `key` (BOS at 0), truncated at the EOS slot
    span: list[int]  # token positions of `raw` (key + punctuation)


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids) if text else 0


def prompt_words(tokenizer, prompt: str) -> list[Word]:
    """Whitespace words of `prompt` with their token positions in the encoded prompt (CLIP BPE never merges
    across whitespace or punctuation, so tokenising word by word gives the in-context positions)."""
    last = int(tokenizer.model_max_length) - 1  # the EOS slot
    words, pos = [], 1
    for raw in prompt.split():
        key = raw.strip(PUNCT)
        lead = raw[: len(raw) - len(raw.lstrip(PUNCT))]
        n_raw = _n_tokens(tokenizer, raw)
        start = pos + _n_tokens(tokenizer, lead)
        keep = lambda r: [j for j in r if j < last]  # noqa: E731
        if key:
            positions = keep(range(start, start + _n_tokens(tokenizer, key)))
            words.append(Word(key, raw, positions, keep(range(pos, pos + n_raw))))
        pos += n_raw
    return words


def word_token_positions(tokenizer, prompt: str) -> dict[str, list[int]]:
    """word → token positions (BOS at 0). A repeated word collects the positions of every occurrence."""
    out: dict[str, list[int]] = {}
    for w in prompt_words(tokenizer, prompt):
        out.setdefault(w.key, []).extend(w.positions)
    return out


def token_weights(positions: dict[str, list[int]], keywords, num_tokens: int = 77) -> torch.Tensor:
    """(num_tokens,) float weights: 1 on the token positions of `keywords` (case-insensitive; a multi-word
    keyword counts each of its words). Raises KeyError for a keyword word missing from the prompt."""
    lower = {k.lower(): v for k, v in positions.items()}
    w = torch.zeros(num_tokens)
    for kw in keywords:
        for word in kw.split():
            word = word.strip(PUNCT).lower()
            if word not in lower:
                raise KeyError(f"foreground keyword {word!r} not in prompt words {sorted(positions)}")
            w[lower[word]] = 1.0
    return w


def eos_position(tokenizer, prompt: str) -> int:
    ids = tokenizer(prompt, truncation=True, max_length=int(tokenizer.model_max_length)).input_ids
    return len(ids) - 1


# ------------------------------------------------------------------------------------------ re-indexing

def word_mapping(src_emb_mD: torch.Tensor | None, tgt_emb_nD: torch.Tensor | None, m: int, n: int,
                 tau: float = 0.1) -> torch.Tensor:
    """(n, m) weights: target word j takes Σ_i W[j, i] · source word i.

    Equal counts: a permutation (min total cosine distance; in order without embeddings).
    Unequal counts: softmax(−cos_distance/τ) over source words (uniform without embeddings)."""
    if src_emb_mD is None or tgt_emb_nD is None:
        return torch.eye(n) if m == n else torch.full((n, m), 1.0 / m)
    dist = 1 - torch.nn.functional.normalize(tgt_emb_nD.float(), dim=-1) @ \
        torch.nn.functional.normalize(src_emb_mD.float(), dim=-1).T  # (n, m)
    if m == n:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(dist.cpu().numpy())
        W = torch.zeros(n, m)
        W[torch.as_tensor(rows), torch.as_tensor(cols)] = 1.0
        return W
    return torch.softmax(-dist / tau, dim=-1).cpu()


def token_mean_embedder(sd):
    """word → mean of its token input-embeddings in the text encoder (the reference's word similarity)."""
    table = sd.text_encoder.get_input_embeddings().weight

    def embed(word: str) -> torch.Tensor:
        ids = sd.tokenizer(word, add_special_tokens=False).input_ids
        return table[torch.as_tensor(ids, device=table.device)].float().mean(0).detach().cpu()

    return embed


def _split_phrase(phrase: str) -> list[str]:
    return [w.strip(PUNCT) for w in phrase.split() if w.strip(PUNCT)]


def replace_phrase(prompt: str, source: str, target: str) -> tuple[str, list[tuple[int, int]]]:
    """Word-level replacement of every occurrence of `source` (a word sequence, case-insensitive, punctuation
    ignored) by `target`. Returns the new prompt and the (first raw-word index, count) of each replaced span."""
    raws = prompt.split()
    keys = [r.strip(PUNCT).lower() for r in raws]
    src = [w.lower() for w in _split_phrase(source)]
    tgt = target.split()
    if not src or not tgt:
        raise ValueError("source and target phrases must contain words")
    out, spans, i = [], [], 0
    while i < len(raws):
        if keys[i:i + len(src)] == src:
            first, last = raws[i], raws[i + len(src) - 1]
            lead = first[: len(first) - len(first.lstrip(PUNCT))]
            trail = last[len(last.rstrip(PUNCT)):]
            new = list(tgt)
            new[0], new[-1] = lead + new[0], new[-1] + trail
            spans.append((i, len(src)))
            out.extend(new)
            i += len(src)
        else:
            out.append(raws[i])
            i += 1
    if not spans:
        raise KeyError(f"{source!r} is not a word sequence of the prompt {prompt!r}")
    return " ".join(out), spans


def replacement_matrix(tokenizer, prompt: str, source: str, target: str, embed=None, tau: float = 0.1,
                       num_tokens: int = 77) -> tuple[str, torch.Tensor]:
    """(target prompt, M (K, K)) for re-indexing maps of `prompt` to the prompt with source → target."""
    new_prompt, _ = replace_phrase(prompt, source, target)
    K = num_tokens
    M = torch.zeros(K, K)
    if new_prompt == prompt:
        return new_prompt, torch.eye(K)
    sw, tw = prompt_words(tokenizer, prompt), prompt_words(tokenizer, new_prompt)
    src_keys = [w.lower() for w in _split_phrase(source)]
    tgt_keys = _split_phrase(target)
    m, n = len(src_keys), len(tgt_keys)
    src_e = tgt_e = None
    if embed is not None:
        src_e = torch.stack([embed(w) for w in _split_phrase(source)])
        tgt_e = torch.stack([embed(w) for w in tgt_keys])
    W = word_mapping(src_e, tgt_e, m, n, tau)  # (n, m)

    def copy(cs: list[int], ct: list[int]):
        for a, b in zip(cs, ct):
            if a < K and b < K:
                M[a, b] = 1.0

    M[0, 0] = 1.0  # BOS
    i = j = 0
    while i < len(sw):
        if [w.key.lower() for w in sw[i:i + m]] == src_keys:
            for jj in range(n):
                for b in tw[j + jj].positions:
                    for ii in range(m):
                        cols = sw[i + ii].positions
                        if cols and W[jj, ii] > 0:
                            M[cols, b] += W[jj, ii] / len(cols)
            # punctuation glued to the span keeps its map (in order)
            s_extra = [p for w in sw[i:i + m] for p in w.span if p not in w.positions]
            t_extra = [p for w in tw[j:j + n] for p in w.span if p not in w.positions]
            copy(s_extra, t_extra)
            i, j = i + m, j + n
        else:
            copy(sw[i].span, tw[j].span)
            i, j = i + 1, j + 1
    # EOS and padding: shifted by the change in length
    e_s, e_t = eos_position(tokenizer, prompt), eos_position(tokenizer, new_prompt)
    for b in range(e_t, K):
        M[min(b - e_t + e_s, K - 1), b] = 1.0
    return new_prompt, M


# ------------------------------------------------------------------------------------------ schedules

_THRESH = re.compile(r"^(inv[-_])?threshold_([0-9.]+)(?:_([0-9.]+))?$")


def schedule_factor(i: int, T: int, name: str | None) -> float:
    """The reference's get_interpolation_factor: value at step i (0 = noisiest)."""
    if name is None or name == "none":
        return 0.0
    r = i / T
    mt = _THRESH.match(name)
    if mt:
        inv, a, b = mt.groups()
        lo, hi = (0.0, float(a)) if b is None else (float(a), float(b))
        v = 1.0 if lo <= r < hi else 0.0
        return 1.0 - v if inv else v
    if name == "cosine" or name.startswith("cosine_"):
        tilt = float(name.split("_", 1)[1]) if "_" in name else 1.0
        return 0.5 * (1 + math.cos(math.pi * r ** tilt))
    raise ValueError(f"unknown interpolation schedule {name!r} "
                     "(none | threshold_[a_]b | inv-threshold_[a_]b | cosine | cosine_<tilt>)")


def interpolation_schedule(name: str | None, T: int) -> torch.Tensor:
    """(T,) float32 factors of schedule `name`."""
    return torch.tensor([schedule_factor(i, T, name) for i in range(T)], dtype=torch.float32)


@dataclass
class ScheduleGrid:
    names: list[tuple]  # (xa, self, blend) name per candidate
    xa_NT: torch.Tensor
    self_NT: torch.Tensor
    blend_NT: torch.Tensor

    @property
    def size(self) -> int:
        return len(self.names)

    def for_batch(self, B: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N·B, T) factors, candidate-major (row n·B + b)."""
        return tuple(t.repeat_interleave(B, dim=0) for t in (self.xa_NT, self.self_NT, self.blend_NT))


def _names(x) -> list:
    if x is None or isinstance(x, str):
        return [x]
    return list(x) or [None]


def schedule_grid(xa_names, self_names, blend_names, T: int) -> ScheduleGrid:
    """Cartesian product xa × self × blend (the reference's search order)."""
    names = list(itertools.product(_names(xa_names), _names(self_names), _names(blend_names)))
    stack = lambda k: torch.stack([interpolation_schedule(c[k], T) for c in names])  # noqa: E731
    return ScheduleGrid(names, stack(0), stack(1), stack(2))


def expand_candidates(x: torch.Tensor, N: int, dim: int = 0) -> torch.Tensor:
    """Repeat a per-sample tensor for N candidates along `dim` (candidate-major)."""
    reps = [1] * x.dim()
    reps[dim] = N
    return x.repeat(*reps)


def pick_best(losses_NB: torch.Tensor) -> torch.Tensor:
    """(B,) index of the candidate with the smallest loss per sample (first one on ties, like argmin)."""
    return losses_NB.argmin(dim=0)


def take_best(values_N_B: torch.Tensor, best_B: torch.Tensor) -> torch.Tensor:
    """From (N·B, ...) candidate-major rows, the row of the chosen candidate of each sample → (B, ...)."""
    B = best_B.shape[0]
    return values_N_B.view(-1, B, *values_N_B.shape[1:])[best_B, torch.arange(B, device=best_B.device)]


def search_schedules(evaluate, grid: ScheduleGrid, B: int, chunk: int | None = None):
    """Evaluate all candidates batched and pick per sample.

    evaluate(xa_MT, self_MT, blend_MT, n_candidates) → losses (n·B,) for n candidates of all B samples
    (candidate-major). `chunk` bounds the candidates per call (memory). Returns (best_B, losses_NB)."""
    xa, se, bl = grid.for_batch(B)
    chunk = chunk or grid.size
    losses = []
    for n0 in range(0, grid.size, chunk):
        n = min(chunk, grid.size - n0)
        rows = slice(n0 * B, (n0 + n) * B)
        losses.append(evaluate(xa[rows], se[rows], bl[rows], n).reshape(n, B))
    losses_NB = torch.cat(losses)
    return pick_best(losses_NB), losses_NB


# ------------------------------------------------------------------------------------------ latent blending

def make_blend(mask_B1hw: torch.Tensor, templates, factors_BT: torch.Tensor, foreground: bool = True):
    """Blend of the initial pass's latents: foreground=True pins the object (mask), False the background (1−mask).
    `templates`: list of T latents (B, C, h, w) (run_chain(record_latents=True).latents) or a (T, B, C, h, w)."""
    tmpl = torch.stack(list(templates)) if not torch.is_tensor(templates) else templates
    mask = mask_B1hw if foreground else 1 - mask_B1hw
    N = factors_BT.shape[0] // mask.shape[0]
    if N > 1:  # candidate batch
        mask, tmpl = expand_candidates(mask, N), expand_candidates(tmpl, N, dim=1)
    return Blend(mask.to(tmpl.dtype), tmpl, factors_BT.to(tmpl.device, tmpl.dtype))
