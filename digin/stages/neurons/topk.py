"""Streaming per-neuron top-k over activation batches (the reference's imagenet_cog_neuron_activations.py keeps
the top-20 images per neuron).

The reference keeps all 1.28M×2048 activations in a dict (~10 GB) and sorts afterwards; here each neuron keeps
only its k best (value, sample id) — memory O(F·k) whatever the dataset size. Each rank streams its shards and
the partial states merge exactly (`merge`), so the result does not depend on how samples were split or ordered.

Order: larger activation first; equal activations -> smaller sample id first (deterministic tie-break). NaN
activations are treated as -inf (never selected over a finite value). Unfilled slots hold (-inf, -1).
"""
from __future__ import annotations

import torch

EMPTY_ID = -1


class TopK:
    """values_FK (float32, descending per row) and ids_FK (int64) of the k best samples per neuron."""

    def __init__(self, num_features: int, k: int, device=None):
        self.k = k
        self.values_FK = torch.full((num_features, k), float("-inf"), dtype=torch.float32, device=device)
        self.ids_FK = torch.full((num_features, k), EMPTY_ID, dtype=torch.int64, device=device)

    @property
    def num_features(self) -> int:
        return self.values_FK.shape[0]

    @torch.no_grad()
    def update(self, acts_BF: torch.Tensor, ids_B: torch.Tensor, valid_B: torch.Tensor | None = None):
        """Fold a batch in. `valid_B` (bool) masks padded tail rows of a fixed-shape batch (no host sync)."""
        acts_FB = acts_BF.detach().to(self.values_FK.device, torch.float32).T
        acts_FB = torch.nan_to_num(acts_FB, nan=float("-inf"))
        ids_FB = ids_B.to(self.ids_FK.device, torch.int64).expand(self.num_features, -1)
        if valid_B is not None:
            valid_FB = valid_B.to(acts_FB.device).expand_as(acts_FB)
            acts_FB = torch.where(valid_FB, acts_FB, float("-inf"))
            ids_FB = torch.where(valid_FB, ids_FB, EMPTY_ID)
        self._fold(acts_FB, ids_FB)

    def _fold(self, values_FN: torch.Tensor, ids_FN: torch.Tensor):
        values = torch.cat([self.values_FK, values_FN], dim=1)
        ids = torch.cat([self.ids_FK, ids_FN], dim=1)
        self.values_FK, self.ids_FK = select_topk(values, ids, self.k)

    def merge(self, other: "TopK") -> "TopK":
        """Fold another partial result (e.g. another rank's) into this one; returns self."""
        if other.values_FK.shape[0] != self.num_features or other.k != self.k:
            raise ValueError(f"cannot merge top-k of shape {tuple(other.values_FK.shape)} into "
                             f"{tuple(self.values_FK.shape)}")
        self._fold(other.values_FK.to(self.values_FK.device), other.ids_FK.to(self.ids_FK.device))
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain contiguous CPU tensors (safetensors-able; unfilled slots hold -inf, which safetensors stores)."""
        return {"values": self.values_FK.cpu().contiguous(), "ids": self.ids_FK.cpu().contiguous()}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], device=None) -> "TopK":
        values, ids = state["values"], state["ids"]
        if values.shape != ids.shape or values.ndim != 2:
            raise ValueError(f"bad top-k state: values {tuple(values.shape)}, ids {tuple(ids.shape)}")
        out = cls(values.shape[0], values.shape[1], device=device)
        out.values_FK.copy_(values)
        out.ids_FK.copy_(ids)
        return out

    def result(self, neuron: int) -> list[tuple[int, float]]:
        """[(sample id, activation)] of one neuron, best first, unfilled slots dropped."""
        ids, values = self.ids_FK[neuron].tolist(), self.values_FK[neuron].tolist()
        return [(i, v) for i, v in zip(ids, values) if i != EMPTY_ID]


def select_topk(values_FN: torch.Tensor, ids_FN: torch.Tensor, k: int):
    """Best k per row by (value desc, id asc), with empty ids (-1) last among equal values.

    Two stable sorts give a lexicographic order: first by id ascending (empties mapped past every real id),
    then by value descending; stable sorting keeps the id order among equal values.
    """
    sort_ids = torch.where(ids_FN == EMPTY_ID, torch.iinfo(torch.int64).max, ids_FN)
    by_id = torch.sort(sort_ids, dim=1, stable=True).indices
    values_by_id = values_FN.gather(1, by_id)
    by_value = torch.sort(values_by_id, dim=1, descending=True, stable=True).indices[:, :k]
    order = by_id.gather(1, by_value)
    return values_FN.gather(1, order), ids_FN.gather(1, order)
