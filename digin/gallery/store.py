"""Content-addressed image copies and thumbnails for a gallery folder.

`img/<hash>.<png|jpg>` holds each distinct image once (the original of an image is shared by all its UVCE targets),
copied byte for byte when it is PNG or JPEG; `thumb/<hash>.jpg` is a small copy, made once: a rebuild over the
same results finds it and decodes nothing. Every image written was decoded once first, so a file in `img/` is
known to open; images no larger than the thumbnail box serve as their own thumbnail.
"""
from __future__ import annotations

import hashlib
import io
import os
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
    def __init__(self, root, thumb_px: int = 128, quality: int = 85):
        self.root = Path(root)
        self.thumb_px, self.quality = int(thumb_px), int(quality)
        (self.root / "img").mkdir(parents=True, exist_ok=True)
        (self.root / "thumb").mkdir(parents=True, exist_ok=True)
        self._known: dict[str, StoredImage] = {}
        self.decoded = 0  # images decoded by this build (thumbnails made / images checked)

    def put(self, value, name: str = "image") -> StoredImage:
        """Store an image (PNG/JPEG bytes, other encoded bytes, a path or a uint8 array) and its thumbnail.
        `name` only labels errors."""
        data = value if isinstance(value, (bytes, bytearray)) else image_to_png(value)
        data = bytes(data)
        if not (data.startswith(PNG_MAGIC) or data.startswith(JPEG_MAGIC)):
            data = image_to_png(data)  # webp/bmp/...: one PNG copy, so every page shows the same formats
        ext = "png" if data.startswith(PNG_MAGIC) else "jpg"
        digest = hashlib.blake2b(data, digest_size=10).hexdigest()
        if digest in self._known:
            return self._known[digest]
        src, thumb = f"img/{digest}.{ext}", f"thumb/{digest}.jpg"
        full_path, thumb_path = self.root / src, self.root / thumb
        stored = self._reuse(full_path, thumb_path, src, thumb) if full_path.exists() else None
        if stored is None:
            stored = self._make(data, name, full_path, thumb_path, src, thumb)
        self._known[digest] = stored
        return stored

    def _reuse(self, full_path: Path, thumb_path: Path, src: str, thumb: str) -> StoredImage | None:
        """An image an earlier build wrote (and decoded): read its size from the header only."""
        from PIL import Image

        with Image.open(full_path) as im:
            w, h = im.size
        tw, th = thumb_size(w, h, self.thumb_px)
        if (tw, th) == (w, h):
            return StoredImage(src, w, h, src, w, h)
        if not thumb_path.exists():
            return None
        return StoredImage(src, w, h, thumb, tw, th)

    def _make(self, data: bytes, name: str, full_path: Path, thumb_path: Path, src: str, thumb: str) -> StoredImage:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                tw, th = thumb_size(w, h, self.thumb_px)
                if (tw, th) != (w, h):
                    im.draft("RGB", (tw, th))  # JPEG: decode at a reduced scale
                    small = im.convert("L" if im.mode in ("L", "1") else "RGB")
                    small.thumbnail((self.thumb_px, self.thumb_px))
                    buf = io.BytesIO()
                    small.save(buf, format="JPEG", quality=self.quality)
                    tw, th = small.size
                else:
                    im.load()  # decoded once here, so check_gallery need not decode it again
                    buf = None
        except Exception as e:  # any decoder failure: the image is broken
            raise ValueError(f"image {name!r} does not decode ({type(e).__name__}: {e})") from None
        self.decoded += 1
        write_once(full_path, data)
        if buf is None:
            return StoredImage(src, w, h, src, w, h)
        write_once(thumb_path, buf.getvalue())
        return StoredImage(src, w, h, thumb, tw, th)

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
