"""Batched beam search (greedy = 1 beam) over any step function, fixed shapes: B samples × K beams = N rows.

Finished beams keep their slot with a frozen score and emit `pad_id`; the result per sample is the beam with the
best length-normalised log-probability (sum / length**length_penalty), as in Hugging Face's beam search with
early_stopping=False. Written here because open-flamingo's generate() relies on a transformers-4 API."""
from __future__ import annotations

import torch


def beam_search(first_logits_NV: torch.Tensor, step, batch: int, num_beams: int, max_new_tokens: int,
                eos_id: int, pad_id: int, length_penalty: float = 1.0) -> list[list[int]]:
    """first_logits_NV: next-token logits after the prompt, rows b*K + k (all beams of a sample equal).
    step(tokens_N: LongTensor (N,), rows_N: LongTensor (N,)) -> logits (N, V): first reorder any cache by rows_N
    (row i continues the old row rows_N[i]), then feed tokens_N. Returns the new token ids per sample (no eos)."""
    K, device = num_beams, first_logits_NV.device
    N = batch * K
    scores_N = torch.full((N,), float("-inf"), device=device)
    scores_N[::K] = 0.0  # only beam 0 is live at the start: all beams hold the same prompt
    finished_N = torch.zeros(N, dtype=torch.bool, device=device)
    lengths_N = torch.zeros(N, device=device)
    tokens_NT = torch.empty((N, 0), dtype=torch.long, device=device)
    base_B1 = torch.arange(batch, device=device)[:, None] * K
    logits_NV = first_logits_NV
    for t in range(max_new_tokens):
        logp_NV = torch.log_softmax(logits_NV.float(), dim=-1)
        V = logp_NV.shape[-1]
        # a finished beam can only append padding, at no cost
        done_row_V = torch.full((V,), float("-inf"), device=device)
        done_row_V[pad_id] = 0.0
        logp_NV = torch.where(finished_N[:, None], done_row_V[None], logp_NV)
        cand_BKV = (scores_N[:, None] + logp_NV).view(batch, K * V)
        top_scores_BK, top_idx_BK = cand_BKV.topk(K, dim=-1)
        rows_N = (base_B1 + top_idx_BK // V).reshape(N)
        tok_N = (top_idx_BK % V).reshape(N)
        was_done_N = finished_N[rows_N]
        tok_N = torch.where(was_done_N, torch.full_like(tok_N, pad_id), tok_N)
        lengths_N = lengths_N[rows_N] + (~was_done_N).float()
        finished_N = was_done_N | (tok_N == eos_id)
        scores_N = top_scores_BK.reshape(N)
        tokens_NT = torch.cat([tokens_NT[rows_N], tok_N[:, None]], dim=1)
        if t + 1 == max_new_tokens or bool(finished_N.all()):  # one host sync per token: generation is serial
            break
        logits_NV = step(tok_N, rows_N)
    norm_BK = (scores_N / lengths_N.clamp(min=1.0) ** length_penalty).view(batch, K)
    best_B = norm_BK.argmax(dim=-1) + base_B1[:, 0]
    out = []
    for row in tokens_NT[best_B].tolist():
        ids = []
        for i in row:
            if i == eos_id or i == pad_id:
                break
            ids.append(i)
        out.append(ids)
    return out
