"""Safe decoding of tar members: images, JSON, text, safetensors. Nothing here can execute code from a shard.

Image policy (recorded in manifests as `IMAGE_POLICY`): EXIF orientation applied; first frame of animations;
16-bit greyscale scaled to 8 bits (not clamped: Pillow's convert("RGB") turns a 16-bit ramp white); alpha composited
over white; CMYK/L/P/... converted to RGB. Output: uint8 HWC numpy array, RGB.

Memory: one decode holds the decoded image and at most one converted copy at a time (wide conversions and the output
array are made strip by strip, each decoded copy is dropped as soon as the next exists), so its peak is at most
PEAK_BYTES_PER_PIXEL bytes per pixel (Pillow keeps RGB as 4 bytes) plus the member's encoded bytes: at most about
1.1 GB for the largest accepted image (MAX_IMAGE_PIXELS), per decode worker.
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
PEAK_BYTES_PER_PIXEL = 8  # decoded (≤ 4 B/px) + one converted copy (≤ 4 B/px); see the module docstring
STRIP_BYTES = 16 << 20  # row strips of this size for the wide temporaries
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


def _rows(im, bytes_per_pixel: int):
    """(top, bottom) row strips of about STRIP_BYTES each."""
    w, h = im.size
    step = max(1, STRIP_BYTES // max(1, w * bytes_per_pixel))
    return [(y, min(h, y + step)) for y in range(0, h, step)]


def _eight_bit(im):
    """A 16/32-bit integer or float greyscale image -> L, by IMAGE_POLICY, strip by strip (the float64 copy of a
    whole 134 MP image alone would be a gigabyte). Same values as scaling the whole array at once: every step is
    elementwise; the integer peak (65535, or 255 for a 32-bit image whose values fit 8 bits) and the float scale
    (255 when every value is ≤ 1) are decided over the whole image first."""
    from PIL import Image

    mode, (w, h) = im.mode, im.size
    strips = _rows(im, 8)
    dtype = np.float64 if mode == "F" else np.int64 if mode == "I" else np.uint16
    top = max((np.asarray(im.crop((0, y0, w, y1)), dtype=dtype).max(initial=0) for y0, y1 in strips), default=0)
    if mode == "F":
        scale = 255.0 if top <= 1.0 else 1.0  # (a NaN anywhere makes top NaN: scale 1, as before)
    else:
        scale = 255.0 / (65535.0 if mode != "I" or top > 255 else 255.0)
    a8 = np.empty((h, w), dtype=np.uint8)
    for y0, y1 in strips:
        a = np.asarray(im.crop((0, y0, w, y1)), dtype=dtype).astype(np.float64)
        a8[y0:y1] = np.clip(np.round(a * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(a8, "L")


def _over_white(im):
    """Alpha composited over white -> RGB, strip by strip (no whole-image RGBA copy or white canvas)."""
    from PIL import Image

    w, _ = im.size
    out = Image.new("RGB", im.size)
    for y0, y1 in _rows(im, 16):
        rgba = im.crop((0, y0, w, y1)).convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out.paste(Image.alpha_composite(white, rgba).convert("RGB"), (0, y0))
    return out


WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _to_rgb(im):
    """Any Pillow mode -> RGB PIL image, following IMAGE_POLICY."""
    mode = im.mode
    if mode in WIDE_MODES:
        return _eight_bit(im).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info)
    if has_alpha:
        return _over_white(im)
    return im if mode == "RGB" else im.convert("RGB")


def _as_array(rgb) -> np.ndarray:
    """uint8 (H, W, 3) copy of an RGB image, strip by strip (np.asarray of a whole image goes through one big
    bytes object, a second full copy)."""
    w, h = rgb.size
    if w * h * 4 <= STRIP_BYTES:
        return np.asarray(rgb, dtype=np.uint8)
    arr = np.empty((h, w, 3), dtype=np.uint8)
    for y0, y1 in _rows(rgb, 4):
        arr[y0:y1] = np.asarray(rgb.crop((0, y0, w, y1)), dtype=np.uint8)
    return arr


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
            ImageOps.exif_transpose(im, in_place=True)  # (a copy only when it has to turn the image)
            if im.mode in WIDE_MODES:  # each step rebinds `im`: the previous copy is freed once the next exists
                im = _eight_bit(im)
            im = _to_rgb(im)
            if resolution:
                im = (center_crop_resize if center_crop else squash_resize)(im, resolution)
            arr = _as_array(im)
            del im
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
