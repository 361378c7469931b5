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

from digin.fields import COUNT, key
from digin.stages.shard import make_shards


@dataclass
class Config:
    source: str = key("imagefolder", "imagefolder | imagenet | cub | cars | food101 | flowers102 | webdataset")
    root: Optional[str] = key(None, "dataset folder on disk (every source but webdataset)")
    split: str = key("val", "train | val | test (imagefolder: sub-folder if present, else root)")
    out: str = key("???", "output folder (shards + manifest.json)", results=False)
    name: Optional[str] = key(None, "dataset name in keys and file names (default: the source name)")
    samples_per_shard: int = key(1000, "samples per output shard (webdataset: one digin shard per tar)", rule=COUNT)
    workers: int = key(4, "parallel conversion / indexing processes", rule=COUNT)
    limit: Optional[int] = key(None, "only the first N samples (smoke tests; not with webdataset)", rule=COUNT)
    force: bool = key(False, "overwrite a conversion with a different config", results=False)
    verify: bool = key(False, "re-hash every shard after writing")
    # source=webdataset: an existing webdataset shard set
    urls: Any = key(None, "brace pattern or list: local paths, file: or pipe:<command> URLs")
    copy: bool = key(False, "false: index the tars in place; true: re-shard into digin's layout")
    image_member: str = key("auto", "auto (first of jpg, jpeg, png, webp) or a member suffix")
    label_member: str = key("auto", "cls | json:<field> | <suffix> | none; auto: cls when the first sample has one")
    caption_member: str = key("auto", "txt | json:<field> | <suffix> | none; auto: txt when the first sample has one")
    filename_member: str = key("none", "original file name, e.g. json:filename (key_scheme=imagenet_val's default)")
    key_scheme: str = key("index", "index (position) | source (the tar's own key) | imagenet_val (class·50 + k)")
    classes: Any = key(None, "class names: [a,b,...] | imagenet | cub | cars | food101 | flowers102 | file")
    dataset: Optional[str] = key(None, "what the tars hold (picks stage defaults, e.g. imagenet); default: imagenet")
                                       # with key_scheme=imagenet_val, else webdataset


def run(cfg: Config):
    return make_shards(cfg)
