"""Rank- and worker-split reading of a committed shard set, verified against its manifest.

Samples are dicts: `__key__` (str), `__shard__` (int), `__pos__` (position in the shard) and one entry per field:
`image` -> uint8 HWC RGB numpy array (original size, or res×res after Resize(1.25·res)+CenterCrop(res) when
`resolution` is given), `*.json` -> dict, `*.txt` -> str, `*.safetensors` -> dict[str, Tensor].
A sample that cannot be decoded is a reject: `{"__key__", "__shard__", "__pos__", "__reject__": reason}`
(yielded only with include_rejects=True, else passed to `on_reject`).
"""
from __future__ import annotations

from pathlib import Path

from digin.shards.decode import DecodeError, decode_member
from digin.shards.manifest import ShardError, ShardSet
from digin.shards.tario import TarFormatError, group_members
from digin.shards.wdsindex import foreign_sample


def assign_shards(indices, rank: int = 0, world: int = 1, worker: int = 0, num_workers: int = 1) -> list[int]:
    """Shard i goes to rank i % world and, within that rank, to dataloader worker (i // world) % num_workers.

    Depends only on the shard index, so every shard has exactly one owner whatever is already committed.
    """
    if not (0 <= rank < world and 0 <= worker < num_workers):
        raise ValueError(f"bad rank/world {rank}/{world} or worker {worker}/{num_workers}")
    return [i for i in sorted(indices) if i % world == rank and (i // world) % num_workers == worker]


def group_shard_members(data: bytes, where: str, naming: str = "digin"):
    """Tar bytes -> list of [key, {field: (ext, bytes)} | reject reason] (webdataset's iteration and grouping with
    digin's name checks, see tario.group_members). Structural problems -> ShardError naming the shard.
    naming="webdataset" (an indexed foreign tar): [source key, {suffix: bytes} | reason]."""
    try:
        groups = group_members(data, naming)
    except TarFormatError as e:
        raise ShardError(f"shard {where}: {e}") from None
    if naming != "digin":
        return groups
    for g in groups:
        if isinstance(g[1], dict):
            g[1] = {suffix.split(".", 1)[0]: (suffix.split(".", 1)[1], payload) for suffix, payload in g[1].items()}
    return groups


def iter_shard(ss: ShardSet, index: int, resolution: int | None = None, required=(), check_hash: bool = True,
               center_crop: bool = True, decode=decode_member):
    """All samples of one shard, in order, rejects included (with `__reject__`). Verifies bytes, sha256, a complete
    tar (end-of-archive marker, every member header read), count and keys against the shard's record before yielding
    anything. A shard of an indexed webdataset set (a foreign tar) is checked against its record's `source_keys`
    and its samples mapped to digin's fields.
    `decode` (same signature as decode_member) lets a reader keep some members encoded (the gallery copies PNG
    bytes as they are)."""
    rec = ss.records[index]
    where = ss.where(index)
    foreign = "webdataset" in ss.meta
    data = ss.read_verified(index, check_hash, check_tar=False)  # (grouping checks the tar is complete)
    groups = group_shard_members(data, where, "webdataset" if foreign else "digin")
    if len(groups) != rec["count"]:
        raise ShardError(f"shard {where}: {len(groups)} samples, manifest says {rec['count']}")
    keys = rec.get("source_keys" if foreign else "keys")
    if keys is not None and [g[0] for g in groups] != keys:
        raise ShardError(f"shard {where}: keys differ from the manifest")
    for pos, (key, fields) in enumerate(groups):
        yield sample_from_group(ss, index, pos, key, fields, resolution, required, center_crop, decode)


def sample_from_group(ss: ShardSet, index: int, pos: int, key: str, fields, resolution=None, required=(),
                      center_crop: bool = True, decode=decode_member) -> dict:
    """One member group of shard `index` (position `pos`) as a sample dict: decoded fields, or `__reject__`. A group
    of an indexed foreign tar is mapped to digin's key and fields first."""
    if "webdataset" in ss.meta:
        rec = ss.records[index]
        key, fields = rec["keys"][pos], foreign_sample(ss, index, key, fields)
    base = {"__key__": key, "__shard__": index, "__pos__": pos}
    if isinstance(fields, str):
        return {**base, "__reject__": fields}
    missing = [f for f in required if f not in fields]
    if missing:
        return {**base, "__reject__": f"missing_field:{','.join(missing)}"}
    sample = dict(base)
    try:
        for field, (ext, payload) in fields.items():
            sample[field] = decode(ext, payload, resolution if field == "image" else None, center_crop)
    except DecodeError as e:
        return {**base, "__reject__": f"{field}:{e.reason}", "__detail__": str(e)}
    return sample


def _worker_split(worker, num_workers):
    if worker is not None:
        return worker, num_workers or 1
    try:
        from torch.utils.data import get_worker_info
    except ImportError:  # pragma: no cover
        return 0, 1
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def iter_samples(shard_dir_or_manifest, rank: int = 0, world: int = 1, worker: int | None = None,
                 num_workers: int | None = None, resolution: int | None = None, required=(),
                 check_hash: bool = True, include_rejects: bool = False, on_reject=None, indices=None,
                 center_crop: bool = True):
    """Every sample of the shards owned by (rank, dataloader worker), each exactly once over all owners.

    Inside a torch DataLoader worker the worker split is detected automatically.
    """
    ss = shard_dir_or_manifest if isinstance(shard_dir_or_manifest, ShardSet) else ShardSet.load(
        Path(shard_dir_or_manifest))
    w, nw = _worker_split(worker, num_workers)
    pool = ss.indices() if indices is None else [i for i in indices if i in ss.records]
    for index in assign_shards(pool, rank, world, w, nw):
        for sample in iter_shard(ss, index, resolution, required, check_hash, center_crop):
            if "__reject__" in sample and not include_rejects:
                if on_reject is not None:
                    on_reject(sample)
                continue
            yield sample
