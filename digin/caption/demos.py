"""In-context demos for few-shot captioning: (train index, caption) lists from digin/data/caption_fewshot_demos.json
(or a JSON file of your own) and their images from the train split — a shard set or a folder of `<index>.<ext>`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import digin
from digin.caption.importer import key_index
from digin.shards.decode import decode_image
from digin.shards.manifest import ShardSet
from digin.shards.reader import iter_shard

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".JPEG", ".webp", ".bmp")


def load_demo_list(demos: str) -> list[tuple[int, str]]:
    """`demos`: a set name of the packaged file (imagenet_train, cub_train, cars_train, food101_train,
    flowers_train) or a JSON file holding [[index, caption], ...] (or {name: [[...]]} with one entry)."""
    p = Path(demos)
    if p.suffix == ".json" and p.exists():
        data = json.loads(p.read_text())
        if isinstance(data, dict):
            if len(data) != 1:
                raise ValueError(f"{p}: a dict of demo sets must hold exactly one set, found {sorted(data)}")
            data = next(iter(data.values()))
    else:
        table = json.loads((Path(digin.__file__).parent / "data" / "caption_fewshot_demos.json").read_text())
        if demos not in table:
            raise ValueError(f"unknown demo set {demos!r}; one of {sorted(table)} or a .json file")
        data = table[demos]
    return [(int(i), str(c)) for i, c in data]


def load_demo_images(source, indices, resolution: int) -> dict[int, np.ndarray]:
    """index -> uint8 HWC image (Resize(1.25·res)+CenterCrop(res), as the query images) for every wanted index.
    `source`: a shard set of the train split (keys <name>/<split>/<index>; only the shards holding the wanted
    keys are read) or a folder of <index>.<ext> files."""
    want = set(int(i) for i in indices)
    src = Path(source)
    found: dict[int, np.ndarray] = {}
    if (src / "manifest.json").exists():
        ss = ShardSet.load(src)
        shards = sorted({i for i, rec in ss.records.items()
                         if rec.get("keys") is None or any(key_index(k) in want for k in rec["keys"])})
        for i in shards:
            for s in iter_shard(ss, i, resolution):
                idx = key_index(s["__key__"])
                if idx in want and "image" in s:
                    found[idx] = s["image"]
    elif src.is_dir():
        for f in sorted(src.iterdir()):
            if f.suffix in IMAGE_EXTS and f.stem.isdigit() and int(f.stem) in want:
                found[int(f.stem)] = decode_image(f.read_bytes(), resolution)
    else:
        raise FileNotFoundError(f"demo_images {src} is neither a shard set nor a folder")
    missing = sorted(want - set(found))
    if missing:
        raise FileNotFoundError(f"demo images {missing[:10]} not found in {src} (need the train-split images "
                                "the demo captions describe)")
    return found
