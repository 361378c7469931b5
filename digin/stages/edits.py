"""The img2img editing stage shared by UVCEs and neuron counterfactuals.

Input samples are joined image + inversion samples (`image`, `meta`, `inversion` {z_T, null_texts}, `prompt` or
`caption`). Each image has a list of targets (classes for UVCEs, neurons for counterfactuals); the (image, target)
rows of a batch are optimised together in fixed-size chunks (tail padded), each chunk through
`prepare_edit` (initial pass, masks, P2P, blend, schedule search) and `optimise`. Output per image: `orig`,
`mask`, `attention` (per-word cross-attention maps), `recon` (initial pass = null-text reconstruction), per target
t `t<t>_sd`, `t<t>_ours`, `t<t>_metrics`, `t<t>_latents`, and `pairs` {targets, start, start_label, prompt}.
Images whose prompt lacks the foreground words are rejected (`label_not_in_caption`; P2P and the masks need
them), as the reference skips them (its KeyError when the label is not in the caption).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from digin.stages.batching import fixed_chunks
from digin.stages.models import regularizer_models
from digin.stages.results import mask_uint8, result_fields, to_uint8, word_tiles


@dataclass
class EditKind:
    """What differs between UVCEs and neuron counterfactuals."""

    objective_target: Callable  # (start, target) → row of the Objective's targets (int or [class, neuron])
    replacement: Callable  # (start_words: str, start, target) → (source, target) words for P2P
    extra_metrics: Callable  # (sample, start, target, setup, b) → dict added to t<t>_metrics
    evaluate: Callable | None = None  # (res, starts, targets) → {name: (B,) tensor} added to the metrics


def prompt_has_words(prompt: str, words: list[str]) -> bool:
    toks = prompt.lower().split()
    return all(w.lower() in toks for w in words)


@dataclass
class EditProcess:
    """process(batch) for run_stage: rows of a batch → optimised chunks → one record per image."""

    sd: object
    clf: object
    cfg: object
    classes: list
    targets_of: dict  # image key → its targets
    words_of: Callable  # class label → foreground words
    kind: EditKind
    gcfg: object
    noise_fn: Callable | None

    def __call__(self, batch) -> list[dict]:
        dev = batch.device
        images = batch.images.to(dev).float() / 255.0
        rows, skipped = self.rows_of(batch, images)
        results: dict = {}
        # The engine batch is the runner's current batch size: after a CUDA OOM the runner halves it and redoes
        # these samples, and the (image, target) rows must shrink with it.
        for chunk, n in fixed_chunks(rows, len(batch)) if rows else []:
            for r, o in zip(chunk[:n], self.run_rows(chunk, n, dev)):
                results.setdefault(r[0]["__key__"], []).append((r[2], o))
        outs = []
        for j in range(batch.n_real):
            key = batch.samples[j]["__key__"]
            if key not in results:
                outs.append({"__skip__": "label_not_in_caption" if key in skipped else "no_pairs"})
                continue
            outs.append(self.image_record(batch.samples[j], images[j], results[key], images.shape[-1]))
        return outs

    def rows_of(self, batch, images) -> tuple[list, set]:
        """(sample, image, target) rows of the batch's images, and the keys rejected for their prompt."""
        rows, skipped = [], set()
        for j in range(batch.n_real):
            s = batch.samples[j]
            if isinstance(s.get("caption"), str):
                s["prompt"] = s["caption"]
            if s["__key__"] in self.targets_of and not prompt_has_words(
                    s["prompt"], self.words_of(self.classes[int(s["meta"]["label"])])):
                skipped.add(s["__key__"])
                continue
            rows += [(s, images[j], t) for t in self.targets_of.get(s["__key__"], [])]
        return rows, skipped

    def objective(self, starts: list, tgts: list, keys: list, dev):
        from digin.engine.objectives import Objective

        cfg = self.cfg
        targets = torch.tensor([self.kind.objective_target(s, t) for s, t in zip(starts, tgts)])
        return Objective(cfg.loss, [self.clf], targets, keys, loss_weight=cfg.loss_weight,
                         regularizers=list(cfg.regularizers), regularizers_ws=list(cfg.regularizers_ws),
                         noise_scale_fn=self.noise_fn, **regularizer_models(cfg, dev))

    def run_rows(self, rows, n_real, dev) -> list[dict]:
        """rows: (sample, image (3,H,W), target), padded to the batch size → per-row outputs."""
        from digin.engine.edit import prepare_edit
        from digin.engine.guidance import optimise

        cfg, sd, kind = self.cfg, self.sd, self.kind
        z = torch.stack([r[0]["inversion"]["z_T"] for r in rows]).to(dev)
        null = torch.stack([r[0]["inversion"]["null_texts"] for r in rows]).to(dev)
        imgs = torch.stack([r[1] for r in rows]).to(dev)
        starts = [int(r[0]["meta"]["label"]) for r in rows]
        tgts = [r[2] for r in rows]
        prompts = [r[0]["prompt"] for r in rows]
        keys = [f"{r[0]['__key__']}/t{t}" for r, t in zip(rows, tgts)]
        fg = [self.words_of(self.classes[s]) for s in starts]
        repl = [kind.replacement(" ".join(w), s, t) for w, s, t in zip(fg, starts, tgts)]
        obj = self.objective(starts, tgts, keys, dev)
        setup = prepare_edit(sd, obj, z_T=z, uncond=null, prompts=prompts, foreground_words=fg,
                             guidance_scale=cfg.guidance_scale, num_ddim_steps=cfg.num_ddim_steps,
                             replacements=repl if cfg.p2p.do_p2p else None, images=imgs, p2p=cfg.p2p,
                             blend=cfg.mask_blend, segmentation=cfg.segmentation, solver=cfg.solver,
                             guidance_rescale=cfg.guidance_rescale)
        try:
            res = optimise(sd, setup.objective, z_T=z, cond=setup.cond, uncond=null, cfg=self.gcfg, blend=setup.blend,
                           controller=setup.controller)
        finally:
            setup.close(sd)
        evals = kind.evaluate(res, starts, tgts) if kind.evaluate is not None else {}
        outs = []
        for b in range(n_real):
            extra = {"prompt": prompts[b], "edited_prompt": setup.prompts[b], "schedule": list(setup.chosen[b]),
                     **kind.extra_metrics(rows[b][0], starts[b], tgts[b]),
                     **{k: float(v[b]) for k, v in evals.items()}}
            outs.append({"fields": result_fields(res, b, prefix=f"t{tgts[b]}_", extra_metrics=extra),
                         "mask": setup.px_mask[b] if setup.px_mask is not None else None,
                         "words": setup.word_maps[b] if setup.word_maps else None,
                         "recon": setup.initial_images[b]})
        return outs

    def image_record(self, sample: dict, image, target_outs: list, size: int) -> dict:
        """One image's output fields from its targets' outputs: orig, mask, attention, recon, t<t>_*, pairs."""
        start = int(sample["meta"]["label"])
        fields = {"orig": to_uint8(image)}
        info = {"targets": [], "start": start, "start_label": self.classes[start], "prompt": sample["prompt"]}
        for t, o in target_outs:
            fields.update(o["fields"])
            info["targets"].append(t)
            if o["mask"] is not None:
                fields["mask"] = mask_uint8(o["mask"])
            if o["words"]:  # per-word cross-attention maps of the original prompt, side by side
                fields["attention"] = word_tiles(o["words"], size)
                info["attention_words"] = list(o["words"])
            fields["recon"] = to_uint8(o["recon"])
        fields["pairs"] = info
        return fields


def make_edit_process(sd, clf, cfg, classes: list[str], targets_of: dict, words_of: Callable, kind: EditKind,
                      gcfg, noise_fn) -> EditProcess:
    """process(batch) for run_stage. words_of(label) → foreground words of a class label."""
    regularizer_models(cfg, sd.device)  # fail before the stage starts (e.g. no CLIP weights file), then cached
    return EditProcess(sd, clf, cfg, classes, targets_of, words_of, kind, gcfg, noise_fn)
