"""Output value -> (extension, bytes). Deterministic encoders so reruns are byte-identical."""
from __future__ import annotations

import io
import json

import numpy as np


def encode_value(value) -> tuple[str, bytes]:
    """PIL.Image / uint8 HWC (or HW) array -> png; dict of Tensors -> safetensors; dict -> json; str -> txt."""
    import torch
    from PIL import Image

    if isinstance(value, Image.Image):
        return "png", _png(value)
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim not in (2, 3):
            raise TypeError(f"arrays are written as PNG and must be uint8 HW/HWC, got {value.dtype} {value.shape}")
        return "png", _png(Image.fromarray(np.ascontiguousarray(value)))
    if isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
        return "safetensors", encode_tensors(value)
    if isinstance(value, dict):
        return "json", json.dumps(value, allow_nan=False, sort_keys=True, separators=(",", ":")).encode("utf-8")
    if isinstance(value, str):
        return "txt", value.encode("utf-8")
    raise TypeError(f"cannot write a {type(value).__name__} (allowed: PIL.Image, uint8 array, dict, str, "
                    "dict[str, Tensor])")


def encode_tensors(tensors: dict) -> bytes:
    from safetensors.torch import save

    for name, t in tensors.items():
        if t.is_floating_point() and not bool(t.isfinite().all()):
            raise ValueError(f"non-finite values in tensor {name!r}: refusing to write them")
    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def _png(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=6)  # no metadata, fixed level: same pixels -> same bytes
    return buf.getvalue()
