"""Fused Triton kernels, each with an eager reference, a torch.library custom op (fake impl for
torch.compile, autograd formula) and a kill-switch back to the reference.

Switch: env `DIGIN_KERNELS` = `1` (default: all on), `0` (all off: eager references), or a comma list of
kernel names to enable (`cfg_ddim,cutouts`). `set_kernels(...)` changes it at run time (tests, bench).
The Triton path runs on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 (tests); otherwise the
custom op computes the reference math itself, so results never depend on where Triton is available.
"""
from __future__ import annotations

from .switch import KERNEL_NAMES, kernel_enabled, set_kernels, triton_runs_on
from .cfg_ddim import cfg_ddim_reference, fused_cfg_ddim
from .cutouts import cutouts_reference, fused_cutouts, random_boxes

__all__ = ["KERNEL_NAMES", "kernel_enabled", "set_kernels", "triton_runs_on", "cfg_ddim_reference",
           "fused_cfg_ddim", "cutouts_reference", "fused_cutouts", "random_boxes"]
