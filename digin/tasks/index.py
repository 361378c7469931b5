"""Add the key index to a shard set made before commit records had it (digin.shards.keyed):

  digin index path=/data/shards/imagenet-val

Every commit record gets each sample's byte span and hash (and its label, when the samples carry `meta.label`),
so stages read samples by key with one seek and plan from the records alone. Reads each shard once (checked
against its sha256), then replaces its record atomically; records that already have spans are left as they are.
Without this, such a set still works: each rank indexes the shards it needs on first use, in memory.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Config:
    path: str = "???"  # a shard-set folder (the one holding manifest.json)
    progress: bool = True


def run(cfg: Config) -> int:
    from digin.shards.keyed import index_record
    from digin.shards.manifest import ShardError, ShardSet, write_commit
    from digin.shards.progress import Progress

    try:
        ss = ShardSet.load(cfg.path)
    except FileNotFoundError as e:
        raise SystemExit(f"digin index: {e}") from None
    todo = [i for i, r in ss.records.items() if not isinstance(r.get("spans"), list)]
    bar = Progress(len(todo), f"index {ss.name}", enabled=cfg.progress, unit="shard")
    for i in todo:
        try:
            rec = index_record(ss, i)
        except ShardError as e:
            raise SystemExit(f"digin index: {e}; nothing more was changed (records already rewritten stay valid)")
        write_commit(ss.dir, rec)
        bar.update(1)
    bar.close()
    print(f"[index] {ss.dir}: {len(todo)} of {len(ss.records)} shard records indexed "
          f"({len(ss.records) - len(todo)} had spans already)", flush=True)
    return 0
