"""Content-addressed image copies and thumbnails for a gallery folder.

`img/<hash>.<png|jpg>` holds each distinct image once (the original of an image is shared by all its UVCE targets),
copied byte for byte when it is PNG or JPEG; `thumb/<hash>.jpg` is a small copy, made once: a rebuild over the
same results finds it and decodes nothing. Every image is checked before it is written (decoded for its
thumbnail, else its PNG checksums verified); images no larger than the thumbnail box serve as their own
thumbnail.
"""
from __future__ import annotations

import hashlib
import io
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from digin.gallery.records import image_to_png

PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"


@dataclass(frozen=True)
class StoredImage:
    src: str  # full image, relative to the gallery root
    width: int
    height: int
    thumb: str  # thumbnail (== src when the image is small), relative to the gallery root
    thumb_width: int
    thumb_height: int


def write_once(path: Path, data: bytes):
    """Write through a temporary name, so an interrupted build never leaves a half file that a rebuild reuses."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def thumb_size(width: int, height: int, box: int) -> tuple[int, int]:
    """Size of the thumbnail of a width×height image inside a box×box square (aspect kept, never upscaled)."""
    if max(width, height) <= box:
        return width, height
    scale = box / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


class ImageStore:
    RECENT = 64  # images put lately, by object identity: a UVCE original shared by its targets is hashed once

    def __init__(self, root, thumb_px: int = 128, quality: int = 85):
        self.root = Path(root)
        self.thumb_px, self.quality = int(thumb_px), int(quality)
        (self.root / "img").mkdir(parents=True, exist_ok=True)
        (self.root / "thumb").mkdir(parents=True, exist_ok=True)
        self._known: dict[str, StoredImage] = {}
        self._recent: OrderedDict[int, tuple] = OrderedDict()
        self.decoded = 0  # thumbnails this build made (each a full decode)

    def has_thumb(self, s: StoredImage) -> bool:
        return (s.thumb_width, s.thumb_height) == thumb_size(s.width, s.height, self.thumb_px)

    def put(self, value, name: str = "image", thumb: bool = True) -> StoredImage:
        """Store an image (PNG/JPEG bytes, other encoded bytes, a path or a uint8 array) and, with `thumb`, its
        thumbnail (images only shown in full, such as masks, need none). `name` only labels errors."""
        hit = self._recent.get(id(value))
        if hit is not None and hit[0] is value and (not thumb or self.has_thumb(hit[1])):
            return hit[1]
        data = value if isinstance(value, (bytes, bytearray)) else image_to_png(value)
        data = bytes(data)
        if not (data.startswith(PNG_MAGIC) or data.startswith(JPEG_MAGIC)):
            data = image_to_png(data)  # webp/bmp/...: one PNG copy, so every page shows the same formats
        ext = "png" if data.startswith(PNG_MAGIC) else "jpg"
        digest = hashlib.blake2b(data, digest_size=10).hexdigest()
        stored = self._known.get(digest)
        if stored is None or (thumb and not self.has_thumb(stored)):
            src, tsrc = f"img/{digest}.{ext}", f"thumb/{digest}.jpg"
            stored = self._reuse(src, tsrc, thumb) if (self.root / src).exists() else None
            if stored is None:
                stored = self._make(data, name, src, tsrc, thumb)
            self._known[digest] = stored
        self._recent[id(value)] = (value, stored)  # holding `value` keeps its id from being reused
        if len(self._recent) > self.RECENT:
            self._recent.popitem(last=False)
        return stored

    def _reuse(self, src: str, tsrc: str, thumb: bool) -> StoredImage | None:
        """An image an earlier build wrote (and checked): read its size from the header only."""
        from PIL import Image

        with Image.open(self.root / src) as im:
            w, h = im.size
        tw, th = thumb_size(w, h, self.thumb_px)
        if (tw, th) != (w, h) and (self.root / tsrc).exists():
            return StoredImage(src, w, h, tsrc, tw, th)
        if (tw, th) != (w, h) and thumb:
            return None  # the thumbnail is still to be made
        return StoredImage(src, w, h, src, w, h)

    def _make(self, data: bytes, name: str, src: str, tsrc: str, thumb: bool) -> StoredImage:
        """Check the image (a thumbnail decodes it fully; otherwise the PNG chunk checksums are verified), then
        write it and its thumbnail."""
        from PIL import Image

        buf = None
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                tw, th = thumb_size(w, h, self.thumb_px)
                if thumb and (tw, th) != (w, h):
                    im.draft("RGB", (tw, th))  # JPEG: decode at a reduced scale
                    im.thumbnail((self.thumb_px, self.thumb_px))
                    small = im.convert("L" if im.mode in ("L", "1") else "RGB")
                    buf = io.BytesIO()
                    small.save(buf, format="JPEG", quality=self.quality)
                    tw, th = small.size
                    self.decoded += 1
                else:
                    im.verify()
        except Exception as e:  # any decoder failure: the image is broken
            raise ValueError(f"image {name!r} does not decode ({type(e).__name__}: {e})") from None
        write_once(self.root / src, data)
        if buf is None:
            return StoredImage(src, w, h, src, w, h)
        write_once(self.root / tsrc, buf.getvalue())
        return StoredImage(src, w, h, tsrc, tw, th)

    def prune(self) -> int:
        """Delete the images and thumbnails of earlier builds that this build did not use; returns how many."""
        keep = {p for s in self._known.values() for p in (s.src, s.thumb)}
        removed = 0
        for sub in ("img", "thumb"):
            for p in (self.root / sub).iterdir():
                if p.is_file() and f"{sub}/{p.name}" not in keep:
                    p.unlink()
                    removed += 1
        return removed
