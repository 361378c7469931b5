"""The kill-switch shared by all kernels (env `DIGIN_KERNELS`, or `set_kernels`)."""
from __future__ import annotations

import os

import torch

KERNEL_NAMES = ("cfg_ddim", "cutouts")


def _from_env() -> dict[str, bool]:
    raw = os.environ.get("DIGIN_KERNELS", "1").strip().lower()
    if raw in ("1", "true", "on", "all", ""):
        return {k: True for k in KERNEL_NAMES}
    if raw in ("0", "false", "off", "none"):
        return {k: False for k in KERNEL_NAMES}
    names = {s.strip() for s in raw.split(",") if s.strip()}
    unknown = names - set(KERNEL_NAMES)
    if unknown:
        raise ValueError(f"DIGIN_KERNELS names unknown kernels {sorted(unknown)}; known: {KERNEL_NAMES}")
    return {k: k in names for k in KERNEL_NAMES}


_ENABLED = _from_env()


def kernel_enabled(name: str) -> bool:
    return _ENABLED[name]


def set_kernels(enabled: bool | str | dict = True) -> dict[str, bool]:
    """Turn kernels on/off: True/False for all, "a,b" for a subset, or {name: bool}. Returns the old state."""
    old = dict(_ENABLED)
    if isinstance(enabled, bool):
        new = {k: enabled for k in KERNEL_NAMES}
    elif isinstance(enabled, str):
        names = {s.strip() for s in enabled.split(",") if s.strip()}
        new = {k: k in names for k in KERNEL_NAMES}
    else:
        new = {**old, **enabled}
    _ENABLED.update(new)
    return old


def triton_runs_on(t: torch.Tensor) -> bool:
    """Triton can run here: a CUDA tensor, or any tensor in interpreter mode (CPU tests)."""
    if t.is_cuda:
        return True
    return os.environ.get("TRITON_INTERPRET", "0") == "1" and t.device.type == "cpu"
