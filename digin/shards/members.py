"""Cheap decode checks of one shard member (no pixel decoding, no tensor loading): what `digin verify` and the
webdataset index report as a bad member."""
from __future__ import annotations

import json
import math

from digin.shards.decode import (FORBIDDEN_EXTS, IMAGE_EXTS, JSON_EXTS, TENSOR_EXTS, TEXT_EXTS, DecodeError,
                                 decode_json, image_size)

SAFETENSORS_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2,
                           "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8,
                           "F64": 8, "C64": 8}


def member_problem(ext: str, payload: bytes) -> str | None:
    """Cheap decode check of one member: JSON parsed, text UTF-8, safetensors header, image header."""
    ext = ext.lower()
    if ext in FORBIDDEN_EXTS:
        return f"forbidden_member (.{ext} would unpickle)"
    if ext in JSON_EXTS:
        try:
            decode_json(payload)
        except DecodeError as e:
            return str(e)
        return None
    if ext in TEXT_EXTS:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError as e:
            return f"bad_text: {e}"
        return None
    if ext in TENSOR_EXTS:
        return safetensors_header_problem(payload)
    if ext in IMAGE_EXTS:
        return _image_header_problem(payload)
    return f"unknown_extension .{ext}"


def safetensors_header_problem(data: bytes, size: int | None = None) -> str | None:
    """Check a safetensors blob's header against its length without loading any tensor: header size, JSON,
    dtypes, shapes, and data offsets that tile the data area exactly (the format's own rule). `size`: the whole
    file's length when `data` holds only its start (at least the header), e.g. a model weight file on disk."""
    size = len(data) if size is None else size
    if len(data) < 8:
        return f"bad_safetensors: {len(data)} bytes, shorter than the 8-byte header length"
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        return f"bad_safetensors: header length {n} exceeds the {len(data) - 8} bytes that follow"
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        return f"bad_safetensors: header is not JSON ({str(e)[:100]})"
    if not isinstance(header, dict):
        return "bad_safetensors: header is not a JSON object"
    body, spans = size - 8 - n, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        problem = _tensor_entry_problem(info, body)
        if problem:
            return f"bad_safetensors: tensor {name!r}: {problem}"
        spans.append(tuple(info["data_offsets"]))
    end = 0
    for start, stop in sorted(spans):
        if start != end:
            return f"bad_safetensors: data area has a gap or overlap at byte {min(start, end)}"
        end = stop
    if end != body:
        return f"bad_safetensors: tensors cover {end} of the {body} data bytes"
    return None


def _tensor_entry_problem(info, body: int) -> str | None:
    if not isinstance(info, dict):
        return "entry is not an object"
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPE_BYTES:
        return f"unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        return f"bad shape {shape!r}"
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= body):
        return f"data_offsets {offsets!r} outside the {body}-byte data area"
    want = math.prod(shape) * SAFETENSORS_DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != want:
        return f"{offsets[1] - offsets[0]} bytes for {dtype}{shape} (want {want})"
    return None


def _image_header_problem(payload: bytes) -> str | None:
    """Format and size from the header only (no pixel decoding), under the reader's pixel limit: an image the
    stage reader would reject as too_large is a finding here too."""
    try:
        w, h = image_size(payload)
    except DecodeError as e:
        return f"image {e}"[:200]
    return None if w > 0 and h > 0 else f"image of size {w}x{h}"
