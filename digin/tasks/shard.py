"""Convert a dataset on disk into webdataset shards + manifest.

  digin shard source=imagenet root=/data/imagenet split=val out=/data/shards/imagenet-val
  digin shard source=imagefolder root=/data/my_images split=all out=/data/shards/mine samples_per_shard=500

sources: imagefolder | imagenet | cub | cars | food101 | flowers102. Originals are stored unchanged; keys are
<name>/<split>/<index> in the reference's index order (ImageNet val: class·50 + k).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class Config:
    source: str = "imagefolder"        # imagefolder | imagenet | cub | cars | food101 | flowers102
    root: str = "???"                  # dataset folder on disk
    split: str = "val"                 # train | val | test (imagefolder: sub-folder if present, else root)
    out: str = "???"                   # output folder (shards + manifest.json)
    name: Optional[str] = None         # dataset name in keys and file names (default: the source name)
    samples_per_shard: int = 1000
    workers: int = 4                   # parallel conversion processes
    limit: Optional[int] = None        # only the first N samples (smoke tests)
    force: bool = False                # overwrite a conversion with a different config
    verify: bool = False               # re-hash every shard after writing


def run(cfg: Config):
    from digin.shards.convert import convert

    ss = convert(cfg.source, cfg.root, cfg.split, cfg.out, name=cfg.name, samples_per_shard=cfg.samples_per_shard,
                 workers=cfg.workers, force=cfg.force, limit=cfg.limit)
    if cfg.verify:
        problems = ss.verify()
        for p in problems:
            print("[shard] problem:", p)
        return 1 if problems else 0
    return 0
