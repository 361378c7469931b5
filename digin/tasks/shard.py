r"""Convert a dataset on disk into webdataset shards + manifest, or index an existing webdataset shard set.

  digin shard source=imagenet root=/data/imagenet split=val out=/data/shards/imagenet-val
  digin shard source=imagefolder root=/data/my_images split=all out=/data/shards/mine samples_per_shard=500
  digin shard source=webdataset urls='/data/inet/imagenet1k-validation-{0000..0063}.tar' key_scheme=imagenet_val \
      out=/data/shards/imagenet-val workers=8
  digin shard source=webdataset urls='pipe:aws s3 cp s3://bucket/laion-{00000..00099}.tar -' label_member=none \
      out=/data/shards/laion name=laion split=train

sources: imagefolder | imagenet | cub | cars | food101 | flowers102 | webdataset. Originals are stored unchanged;
keys are <name>/<split>/<index> in the reference's index order (ImageNet val: class·50 + k).
source=webdataset writes only a manifest (per tar: url, sha256, sample count, keys); stages read the tars where
they are. copy=true re-shards them into digin's layout instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class Config:
    source: str = "imagefolder"        # imagefolder | imagenet | cub | cars | food101 | flowers102 | webdataset
    root: Optional[str] = None         # dataset folder on disk (every source but webdataset)
    split: str = "val"                 # train | val | test (imagefolder: sub-folder if present, else root)
    out: str = "???"                   # output folder (shards + manifest.json)
    name: Optional[str] = None         # dataset name in keys and file names (default: the source name)
    samples_per_shard: int = 1000      # (webdataset: one digin shard per tar)
    workers: int = 4                   # parallel conversion / indexing processes
    limit: Optional[int] = None        # only the first N samples (smoke tests; not with webdataset)
    force: bool = False                # overwrite a conversion with a different config
    verify: bool = False               # re-hash every shard after writing
    # source=webdataset: an existing webdataset shard set
    urls: Any = None                   # brace pattern or list: local paths, file: or pipe:<command> URLs
    copy: bool = False                 # false: index the tars in place; true: re-shard into digin's layout
    image_member: str = "auto"         # auto (first of jpg, jpeg, png, webp) or a member suffix
    label_member: str = "auto"         # cls | json:<field> | <suffix> | none; auto: cls when the first sample has one
    caption_member: str = "auto"       # txt | json:<field> | <suffix> | none; auto: txt when the first sample has one
    filename_member: str = "none"      # original file name, e.g. json:filename (key_scheme=imagenet_val's default)
    key_scheme: str = "index"          # index (position) | source (the tar's own key) | imagenet_val (class·50 + k)
    classes: Any = None                # class names: [a,b,...] | imagenet | cub | cars | food101 | flowers102 | file
    dataset: Optional[str] = None      # what the tars hold (picks stage defaults, e.g. imagenet); default: imagenet
                                       # with key_scheme=imagenet_val, else webdataset


def _webdataset(cfg: Config):
    from digin.shards.wdsindex import FieldMap, WebdatasetError, index_webdataset

    if cfg.limit is not None:
        raise SystemExit("digin shard: limit= does not apply to source=webdataset (pass fewer urls)")
    fields = FieldMap(image=cfg.image_member, label=cfg.label_member, caption=cfg.caption_member,
                      filename=cfg.filename_member)
    try:
        return index_webdataset(cfg.urls, cfg.out, name=cfg.name, split=cfg.split, fields=fields,
                                key_scheme=cfg.key_scheme, classes=cfg.classes, dataset=cfg.dataset, copy=cfg.copy,
                                workers=cfg.workers, force=cfg.force)
    except WebdatasetError as e:
        raise SystemExit(f"digin shard: {e}") from None


def run(cfg: Config):
    from digin.shards.convert import convert

    if cfg.source == "webdataset":
        ss = _webdataset(cfg)
    elif cfg.urls is not None:
        raise SystemExit(f"digin shard: urls= is for source=webdataset (source={cfg.source} reads root=)")
    elif cfg.root is None:
        raise SystemExit(f"digin shard: source={cfg.source} needs root=<dataset folder>")
    else:
        ss = convert(cfg.source, cfg.root, cfg.split, cfg.out, name=cfg.name,
                     samples_per_shard=cfg.samples_per_shard, workers=cfg.workers, force=cfg.force, limit=cfg.limit)
    if cfg.verify:
        problems = ss.verify()
        for p in problems:
            print("[shard] problem:", p)
        return 1 if problems else 0
    return 0
