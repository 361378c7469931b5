"""Per-neuron top-k images over a shard set (the reference's imagenet_cog_neuron_activations.py), streamed:
memory O(features·k).

Each sample gets a stable id from where it lives, `shard << 32 | position in shard`, so ids (and the top-k
tie-break by smaller id) do not depend on the rank split or the batch order; the key comes back from the shard
set's commit records. Each rank folds its shards into a `TopK` and writes `topk-rank<r>.safetensors`
atomically; `merge_rank_files` folds all ranks into `topk.safetensors` — exactly what one pass gives.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from digin.shards.manifest import atomic_write_bytes
from digin.shards.reader import iter_samples, iter_shard
from digin.stages.neurons.topk import EMPTY_ID, TopK

POS_BITS = 32
RANK_FILE = "topk-rank{rank}.safetensors"
MERGED_FILE = "topk.safetensors"


def sample_id(shard: int, pos: int) -> int:
    return (int(shard) << POS_BITS) | int(pos)


def split_id(sid: int) -> tuple[int, int]:
    return int(sid) >> POS_BITS, int(sid) & ((1 << POS_BITS) - 1)


def _dataset(ss, rank: int, world: int, resolution: int, center_crop: bool = True):
    """IterableDataset of (uint8 (3,S,S), id) over this rank's shards; DataLoader workers split shards."""
    from torch.utils.data import IterableDataset

    class _Stream(IterableDataset):
        def __iter__(self):
            for s in iter_samples(ss, rank, world, resolution=resolution, required=("image",),
                                      center_crop=center_crop):
                img = torch.from_numpy(s["image"].copy()).permute(2, 0, 1).contiguous()
                yield img, sample_id(s["__shard__"], s["__pos__"])

    return _Stream()


def _pad(x: torch.Tensor, n: int) -> torch.Tensor:
    """Repeat the last row so a short tail batch keeps the fixed shape."""
    if x.shape[0] == n:
        return x
    return torch.cat([x, x[-1:].expand(n - x.shape[0], *x.shape[1:])])


@torch.no_grad()
def stream_topk(ss, clf, k: int, batch_size: int, *, rank: int = 0, world: int = 1, num_workers: int = 0,
                device=None, center_crop: bool = True) -> tuple[TopK | None, int]:
    """Fold every image of this rank's shards (read at the classifier's size, Resize(1.25·s)+CenterCrop(s) as
    the reference, or a plain resize without center_crop) into a TopK of the classifier's feature layer. Returns (top-k or None if no image, count)."""
    from torch.utils.data import DataLoader

    device = torch.device(device) if device is not None else clf.device
    loader = DataLoader(_dataset(ss, rank, world, clf.size, center_crop), batch_size=batch_size, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    topk, seen = None, 0
    arange_B = torch.arange(batch_size, device=device)
    for imgs_B3SS, ids_B in loader:
        n = imgs_B3SS.shape[0]
        seen += n
        imgs = _pad(imgs_B3SS, batch_size).to(device, non_blocking=True).float() / 255.0
        ids = _pad(ids_B, batch_size).to(device, non_blocking=True)
        _, feats_BNF = clf.features(imgs)
        if topk is None:
            topk = TopK(feats_BNF.shape[-1], k, device=device)
        topk.update(feats_BNF[:, 0], ids, arange_B < n)  # mask the padded tail (n is a host int: no sync)
    return topk, seen


def save_topk(path, topk: TopK, meta: dict):
    """Atomic safetensors write (tmp + fsync + rename) with JSON metadata."""
    from safetensors.torch import save

    atomic_write_bytes(path, save(topk.state_dict(), metadata={"digin": json.dumps(meta, sort_keys=True)}))


def load_topk(path) -> tuple[TopK, dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("digin", "{}"))
    return TopK.from_state_dict(load_file(str(path))), meta


def merge_rank_files(folder, expect_world: int | None = None) -> tuple[TopK, dict]:
    """Fold every `topk-rank<r>.safetensors` of `folder`; all ranks 0..world−1 must be there with one config."""
    folder = Path(folder)
    files = sorted(folder.glob("topk-rank*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no topk-rank*.safetensors in {folder}: run mode=activations first")
    parts = [load_topk(p) for p in files]
    metas = [m for _, m in parts]
    world = expect_world or metas[0].get("world", len(files))
    ranks = sorted(m.get("rank") for m in metas)
    if ranks != list(range(world)):
        raise RuntimeError(f"{folder}: rank files {ranks} but world size {world}; wait for every rank to finish")
    keys = ("config_hash",)
    if any(m.get(k) != metas[0].get(k) for m in metas for k in keys):
        raise RuntimeError(f"{folder}: rank files were made with different configs")
    merged = parts[0][0]
    for t, _ in parts[1:]:
        merged.merge(t)
    meta = {k: v for k, v in metas[0].items() if k not in ("rank", "count")}
    meta["count"] = sum(int(m.get("count", 0)) for m in metas)
    return merged, meta


def key_of(ss, sid: int) -> str:
    """Sample key of an id, from the commit record's key list (no shard read)."""
    shard, pos = split_id(sid)
    keys = ss.records[shard].get("keys")
    if keys is None:  # older manifests: read the shard
        return next(s["__key__"] for s in iter_shard(ss, shard) if s["__pos__"] == pos)
    return keys[pos]


def top_images(topk: TopK, ss, neuron: int) -> list[dict]:
    """[{key, activation, id}] of one neuron, best first."""
    return [{"key": key_of(ss, i), "activation": float(v), "id": int(i)} for i, v in topk.result(neuron)
            if i != EMPTY_ID]


def fetch_samples(ss, ids, resolution: int | None = None) -> dict:
    """id → decoded sample, reading each needed shard once."""
    by_shard: dict[int, set] = {}
    for sid in ids:
        s, p = split_id(sid)
        by_shard.setdefault(s, set()).add(p)
    out = {}
    for shard, positions in sorted(by_shard.items()):
        for s in iter_shard(ss, shard, resolution):
            if s["__pos__"] in positions and "__reject__" not in s:
                out[sample_id(shard, s["__pos__"])] = s
    return out
