"""Safe decoding of tar members: images, JSON, text, safetensors. Nothing here can execute code from a shard.

Image policy (recorded in manifests as `IMAGE_POLICY`): EXIF orientation applied; first frame of animations;
16-bit greyscale scaled to 8 bits (not clamped: Pillow's convert("RGB") turns a 16-bit ramp white); alpha composited
over white; CMYK/L/P/... converted to RGB. Output: uint8 HWC numpy array, RGB.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings

import numpy as np

IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm"})
JSON_EXTS = frozenset({"json"})
TEXT_EXTS = frozenset({"txt", "cls"})
TENSOR_EXTS = frozenset({"safetensors"})
# Members that would unpickle (code execution) or that we do not know how to read safely.
FORBIDDEN_EXTS = frozenset({"pyd", "pickle", "pkl", "pth", "pt", "ckpt", "bin", "npy", "npz", "mp", "msgpack"})
# ~134 Mpx: above this an image is a reject (`too_large`), never an OOM. The one limit: the reader and
# `digin verify deep=true` both apply it through _pixel_limit().
MAX_IMAGE_PIXELS = 16384 * 16384 // 2
IMAGE_POLICY = {"exif": "transpose", "alpha": "composite_white", "i16": "scale_to_8bit", "frames": "first"}


class DecodeError(ValueError):
    """A member that cannot be decoded; `reason` is a short code recorded in the reject log."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def decode_member(ext: str, data: bytes, resolution: int | None = None, center_crop: bool = True):
    """Decode one member by extension; raises DecodeError (never anything else for bad data)."""
    ext = ext.lower()
    if ext in FORBIDDEN_EXTS:
        raise DecodeError("forbidden_member", f".{ext} members are refused (pickle-like)")
    if ext in IMAGE_EXTS:
        return decode_image(data, resolution, center_crop)
    if ext in JSON_EXTS:
        return decode_json(data)
    if ext in TEXT_EXTS:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError("bad_text", str(e)) from None
    if ext in TENSOR_EXTS:
        return decode_safetensors(data)
    raise DecodeError("unknown_extension", f".{ext}")


def _no_constants(name):
    raise ValueError(f"non-finite constant {name} in JSON")


def decode_json(data: bytes):
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError) as e:
        raise DecodeError("bad_json", str(e)[:200]) from None


def decode_safetensors(data: bytes):
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as e:  # SafetensorError and friends: the bytes are data, any failure is a reject
        raise DecodeError("bad_safetensors", str(e)[:200]) from None


def _to_rgb(im):
    """Any Pillow mode -> RGB PIL image, following IMAGE_POLICY."""
    from PIL import Image

    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im, dtype=np.int64 if mode == "I" else np.uint16).astype(np.float64)
        peak = 65535.0 if mode != "I" or a.max(initial=0) > 255 else 255.0
        a8 = np.clip(np.round(a * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(a8, "L").convert("RGB")
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a8 = np.clip(np.round(a * (255.0 if a.max(initial=0) <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(a8, "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im if mode == "RGB" else im.convert("RGB")


def center_crop_resize(im, resolution: int):
    """The reference's read-time transform, torchvision `Resize(int(1.25·res))` + `CenterCrop(res)` on a PIL
    image, re-implemented on Pillow alone (same output sizes, bilinear resample and crop offsets; a test compares
    it with torchvision) so decode workers do not pay torchvision's import."""
    from PIL import Image

    size = int(1.25 * resolution)
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), Image.BILINEAR)
    top, left = int(round((new_h - resolution) / 2.0)), int(round((new_w - resolution) / 2.0))
    return im.crop((left, top, left + resolution, top + resolution))


def squash_resize(im, resolution: int):
    """Resize to res×res without cropping (aspect not kept): for images that are already the model's size, such as
    the toy world's 64-px scenes, where the reference's 1.25× resize + crop would cut the border away."""
    from PIL import Image

    return im if im.size == (resolution, resolution) else im.resize((resolution, resolution), Image.BILINEAR)


@contextlib.contextmanager
def _pixel_limit():
    """Pillow refuses images above MAX_IMAGE_PIXELS (its bomb warning made an error) inside this block only."""
    from PIL import Image

    old_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit  # our limit applies to shard data only, not to the caller's Pillow use


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the image header alone (no pixel decoding), under the reader's pixel limit;
    DecodeError (`empty`, `too_large`, `unidentified_image`, `decode_error`) otherwise."""
    from PIL import Image

    if not data:
        raise DecodeError("empty")
    try:
        with _pixel_limit(), Image.open(io.BytesIO(data)) as im:
            return im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeError("too_large", str(e)[:200]) from None
    except Image.UnidentifiedImageError as e:
        raise DecodeError("unidentified_image", str(e)[:200]) from None
    except Exception as e:  # bytes from disk: any failure to identify is bad data, never a crash
        raise DecodeError("decode_error", f"{type(e).__name__}: {str(e)[:200]}") from None


def decode_image(data: bytes, resolution: int | None = None, center_crop: bool = True) -> np.ndarray:
    """Bytes -> uint8 HWC RGB array, optionally brought to res×res (Resize+CenterCrop, or a plain resize when
    `center_crop` is False); DecodeError with a reason code on failure."""
    from PIL import Image, ImageOps

    if not data:
        raise DecodeError("empty")
    try:
        with _pixel_limit():
            im = Image.open(io.BytesIO(data))
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            im.load()  # decoding happens here: truncation errors must surface inside this try
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb(im)
            if resolution:
                rgb = (center_crop_resize if center_crop else squash_resize)(rgb, resolution)
            arr = np.asarray(rgb, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeError("too_large", str(e)[:200]) from None
    except Image.UnidentifiedImageError as e:
        raise DecodeError("unidentified_image", str(e)[:200]) from None
    except Exception as e:  # OSError (truncated), SyntaxError, ValueError, ...: bad data, never a crash
        reason = "truncated" if "truncated" in str(e).lower() else "decode_error"
        raise DecodeError(reason, f"{type(e).__name__}: {str(e)[:200]}") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DecodeError("decode_error", f"unexpected array shape {arr.shape}")
    return np.ascontiguousarray(arr)
