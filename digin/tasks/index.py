"""Add the key index to a shard set made before commit records had it (digin.shards.keyed):

  digin index path=/data/shards/imagenet-val

Every commit record gets each sample's byte span and hash (and its label, when the samples carry `meta.label`),
so stages read samples by key with one seek and plan from the records alone. Reads each shard once (checked
against its sha256), then replaces its record atomically; records that already have spans are left as they are.
Without this, such a set still works: each rank indexes the shards it needs on first use, in memory.
"""
from __future__ import annotations

from dataclasses import dataclass

from digin.fields import key
from digin.stages.index import index_set


@dataclass
class Config:
    path: str = key("???", "a shard-set folder (the one holding manifest.json)")
    progress: bool = key(True, "progress of the shards indexed, on stderr", results=False)


def run(cfg: Config) -> int:
    return index_set(cfg.path, progress=cfg.progress)
