"""Content-addressed image copies and thumbnails for a gallery folder.

`img/<id>.<png|jpg>` holds each image once, copied byte for byte when it is PNG or JPEG; `thumb/<id>.jpg` is its
thumbnail. The id is a hash of where the bytes come from when the record says so (a committed shard's sha256, the
sample key and the member: immutable, so nothing has to be hashed) and of the bytes otherwise. The original of an
image, written again with each of its UVCE targets, is stored once: equal bytes in the same slot (member name) as the
image before are recognised by comparison. A thumbnail the stage wrote (`<name>_thumb`) is used as it is when it
has the size the gallery wants (else it is scaled, or the full image decoded); a rebuild over the same results
finds every file and decodes nothing. Every image is checked before it is written (its PNG checksums verified, or
decoded for its thumbnail); images no larger than the thumbnail box serve as their own thumbnail.
"""
from __future__ import annotations

import hashlib
import io
import os
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from digin.stages.gallery.records import image_to_png
from digin.stages.gallery.thumbs import thumb_box

PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"


@dataclass(frozen=True)
class StoredImage:
    src: str  # full image, relative to the gallery root
    width: int
    height: int
    thumb: str  # thumbnail (== src when the image is small), relative to the gallery root
    thumb_width: int
    thumb_height: int


def image_header_size(data: bytes) -> tuple[int, int]:
    """(width, height) of encoded image bytes from their header: a PNG's IHDR chunk when its checksum holds, else
    Pillow's reading of the header."""
    from PIL import Image

    if data[:8] == PNG_MAGIC and data[12:16] == b"IHDR" and len(data) >= 33 and data[8:12] == b"\0\0\0\r":
        if zlib.crc32(data[12:29]) == int.from_bytes(data[29:33], "big"):
            w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
            if w > 0 and h > 0:
                return w, h
    with Image.open(io.BytesIO(data)) as im:
        return im.size


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)


def jpeg_header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame segment, walking the segments before it; None when the bytes are
    not laid out that way (then Pillow reads them)."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # segments without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before them
            return None
        if marker in _JPEG_SOF:
            if i + 9 > n:
                return None
            h, w = int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
            return (w, h) if w > 0 and h > 0 else None
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if length < 2:
            return None
        i += 2 + length
    return None


def write_once(path: Path, data: bytes):
    """Write through a temporary name, so an interrupted build never leaves a half file that a rebuild reuses."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


thumb_size = thumb_box  # the name the gallery used before thumbnails moved to thumbs.py


class ImageStore:
    RECENT = 64  # images put lately, by object identity: a UVCE original shared by its targets is hashed once

    def __init__(self, root, thumb_px: int = 128, quality: int = 85):
        self.root = Path(root)
        self.thumb_px, self.quality = int(thumb_px), int(quality)
        (self.root / "img").mkdir(parents=True, exist_ok=True)
        (self.root / "thumb").mkdir(parents=True, exist_ok=True)
        self._known: dict[str, StoredImage] = {}
        self._recent: OrderedDict[int, tuple] = OrderedDict()
        self._slots: dict[str, tuple] = {}  # slot -> (bytes, StoredImage) of the last image put there
        self.decoded = 0  # full images this build decoded for a thumbnail
        self.given = 0  # thumbnails taken from the results (as they are, or scaled)

    def has_thumb(self, s: StoredImage) -> bool:
        return (s.thumb_width, s.thumb_height) == thumb_size(s.width, s.height, self.thumb_px)

    def put(self, value, name: str = "image", thumb: bool = True, origin: str | None = None,
            small: bytes | None = None, slot: str | None = None) -> StoredImage:
        """Store an image (PNG/JPEG bytes, other encoded bytes, a path or a uint8 array) and, with `thumb`, its
        thumbnail (images only shown in full, such as masks, need none). `name` only labels errors; `origin` names
        the bytes (see the module doc); `small`: the thumbnail the stage wrote; `slot`: equal bytes put in the same
        slot one after the other are stored once (an image's original, repeated by each of its targets)."""
        hit = self._recent.get(id(value))
        if hit is not None and hit[0] is value and (not thumb or self.has_thumb(hit[1])):
            return hit[1]
        data = value if isinstance(value, (bytes, bytearray)) else image_to_png(value)
        data = bytes(data)
        last = self._slots.get(slot) if slot else None
        if last is not None and last[0] == data and (not thumb or self.has_thumb(last[1])):
            return last[1]
        if not (data.startswith(PNG_MAGIC) or data.startswith(JPEG_MAGIC)):
            data, origin = image_to_png(data), None  # webp/bmp/...: one PNG copy, so every page shows the same formats
        ext = "png" if data.startswith(PNG_MAGIC) else "jpg"
        digest = hashlib.blake2b(origin.encode() if origin else data, digest_size=10,
                                 person=b"origin" if origin else b"").hexdigest()
        stored = self._known.get(digest)
        if stored is None or (thumb and not self.has_thumb(stored)):
            src, tsrc = f"img/{digest}.{ext}", f"thumb/{digest}.jpg"
            stored = self._reuse(data, src, tsrc, thumb) if (self.root / src).exists() else None
            if stored is None:
                stored = self._make(data, name, src, tsrc, thumb, small, checked=origin is not None)
            self._known[digest] = stored
        self._recent[id(value)] = (value, stored)  # holding `value` keeps its id from being reused
        if len(self._recent) > self.RECENT:
            self._recent.popitem(last=False)
        if slot:
            self._slots[slot] = (data, stored)
        return stored

    def _reuse(self, data: bytes, src: str, tsrc: str, thumb: bool) -> StoredImage | None:
        """An image an earlier build wrote (and checked) under the id of these bytes: its size from the header of the
        bytes in hand (the file is not read again)."""
        w, h = image_header_size(data)
        tw, th = thumb_size(w, h, self.thumb_px)
        if (tw, th) != (w, h) and (self.root / tsrc).exists():
            return StoredImage(src, w, h, tsrc, tw, th)
        if (tw, th) != (w, h) and thumb:
            return None  # the thumbnail is still to be made
        return StoredImage(src, w, h, src, w, h)

    def _given_thumb(self, small: bytes | None, box: tuple[int, int], checked: bool = False) -> bytes | None:
        """The stage's thumbnail as the gallery wants it: as it is when it has the box's size, scaled down when it
        is larger; None when there is none, it is smaller (decode the full image) or it does not decode (checked
        only from its header when it comes from a committed shard)."""
        from PIL import Image

        if not small or not bytes(small[:3]) == JPEG_MAGIC:
            return None
        try:
            with Image.open(io.BytesIO(small)) as im:
                if im.size == box:
                    if not checked:
                        im.load()  # a broken thumbnail is made again from the full image
                    return bytes(small)
                if im.width < box[0] or im.height < box[1]:
                    return None
                im.draft("RGB", box)
                out = im.convert("L" if im.mode in ("L", "1") else "RGB").resize(box, Image.BICUBIC)
        except Exception:  # any decoder failure: fall back to the full image
            return None
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=self.quality)
        return buf.getvalue()

    def _quick_given(self, data: bytes, small: bytes) -> tuple[int, int, int, int] | None:
        """(width, height, thumbnail width, height) when the thumbnail the stage wrote can be taken as it is, read from
        the headers alone (bytes of a committed shard: what _make does with them, without Pillow); None otherwise."""
        try:
            w, h = image_header_size(data)
        except Exception:  # Pillow's reading of a header it refuses: _make reports it
            return None
        box = thumb_size(w, h, self.thumb_px)
        if box == (w, h) or jpeg_header_size(bytes(small[:65536])) != box:
            return None
        return (w, h, *box)

    def _make(self, data: bytes, name: str, src: str, tsrc: str, thumb: bool, small: bytes | None = None,
              checked: bool = False) -> StoredImage:
        """Check the image (its header; its PNG chunk checksums unless `checked`: bytes of a committed shard, whose
        sha256 the reader verified; a full decode when its thumbnail has to be made), then write it and its
        thumbnail."""
        from PIL import Image

        if checked and thumb and small and data.startswith(PNG_MAGIC):
            quick = self._quick_given(data, small)
            if quick is not None:  # a committed shard's PNG and the stage's thumbnail at the size wanted
                write_once(self.root / src, data)
                write_once(self.root / tsrc, bytes(small))
                self.given += 1
                return StoredImage(src, *quick[:2], tsrc, *quick[2:])
        buf = None
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                tw, th = thumb_size(w, h, self.thumb_px)
                given = self._given_thumb(small, (tw, th), checked) if thumb and (tw, th) != (w, h) else None
                if given is not None:
                    if not checked:
                        im.verify()
                    buf = io.BytesIO(given)
                    self.given += 1
                elif thumb and (tw, th) != (w, h):
                    im.draft("RGB", (tw, th))  # JPEG: decode at a reduced scale
                    im.thumbnail((self.thumb_px, self.thumb_px))
                    made = im.convert("L" if im.mode in ("L", "1") else "RGB")
                    buf = io.BytesIO()
                    made.save(buf, format="JPEG", quality=self.quality)
                    tw, th = made.size
                    self.decoded += 1
                elif not checked:
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
