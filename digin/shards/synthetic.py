"""A small synthetic ImageFolder on disk for tests and demos (`digin demo` world=tiny). The CUB-, Food-101-, Cars- and
Flowers-style trees the converter tests use are in tests/shards/builders.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _image(rng, size: int):
    from PIL import Image

    low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)  # smooth content: compresses like a photo
    im = Image.fromarray(low).resize((size, size), Image.BILINEAR)
    noise = rng.integers(-8, 9, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(im, dtype=np.int64) + noise, 0, 255).astype(np.uint8))


def _save(im, path: Path, fmt: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def make_image_folder(root, classes=3, n_per_class=4, size=32, seed=0, ext="jpg") -> Path:
    """root/<class_name>/<i>.<ext>; `classes` is a count or a list of folder names. Returns root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = [f"class_{c:03d}" for c in range(classes)] if isinstance(classes, int) else list(classes)
    fmt = {"jpg": "JPEG", "png": "PNG"}[ext]
    for name in names:
        for i in range(n_per_class):
            _save(_image(rng, size), root / name / f"img_{i:04d}.{ext}", fmt)
    return root
