"""Thumbnails made where the pixels already are: the stages write `<name>_thumb.jpg` beside each image the
gallery's grid shows (orig, recon, sd, ours), so a gallery over 10,000 results at 512 px never decodes a full image.

A thumbnail fits a THUMB_PX square (aspect kept, never upscaled), is JPEG (small, fast to decode) and is made the
same way from the same pixels every time (fixed quality, no metadata), so reruns stay byte-identical.
"""
from __future__ import annotations

import io

import numpy as np

THUMB_PX = 128
THUMBED = ("orig", "recon", "sd", "ours")  # the grid's columns: the members that get a thumbnail
SUFFIX = "_thumb"
QUALITY = 85


def thumb_box(width: int, height: int, box: int) -> tuple[int, int]:
    """Size of the thumbnail of a width×height image inside a box×box square (aspect kept, never upscaled)."""
    if max(width, height) <= box:
        return width, height
    scale = box / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def thumbnail_jpeg(img: np.ndarray, px: int = THUMB_PX) -> bytes:
    """uint8 HWC (or HW grey) pixels → JPEG bytes of the thumbnail (box-filtered: no aliasing at 4× down)."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(img))
    size = thumb_box(im.width, im.height, px)
    if size != im.size:
        im = im.resize(size, Image.BOX if min(im.width / size[0], im.height / size[1]) >= 2 else Image.BICUBIC)
    buf = io.BytesIO()
    im.convert("L" if im.mode in ("L", "1") else "RGB").save(buf, format="JPEG", quality=QUALITY)
    return buf.getvalue()


def thumbnail_members(fields: dict, names=THUMBED, px: int = THUMB_PX) -> dict:
    """`<name>_thumb` → ("jpg", bytes) for each of `names` that `fields` holds as a uint8 array and that has no
    thumbnail yet (calling it twice adds nothing)."""
    out = {}
    for name in names:
        value = fields.get(name)
        if isinstance(value, np.ndarray) and value.dtype == np.uint8 and name + SUFFIX not in fields:
            out[name + SUFFIX] = ("jpg", thumbnail_jpeg(value, px))
    return out
