"""Resizing as the reference does it: torchvision's `TF.resize` on tensors.

The reference resizes with `torchvision.transforms.functional.resize` everywhere (classifier inputs, masks for
the masked LPIPS / CLIP regularisers, cross-attention maps → masks, pixel → latent masks). On a float tensor that
is `F.interpolate(..., align_corners=False, antialias=True)` — antialiased since torchvision 0.17 (the reference
pins 0.18). Antialiasing changes downsampling (a 64 → 32 px classifier input moves the logits by several %) and,
for bicubic, upsampling too (PyTorch's antialiased bicubic uses PIL's kernel, a = −0.5, not a = −0.75).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def tv_resize(x_BCHW: torch.Tensor, hw, mode: str = "bilinear") -> torch.Tensor:
    """`TF.resize(x, [H, W], interpolation=mode)` on a float (B, C, H, W) tensor; differentiable.

    hw: (H, W), or S for S×S — for a square input the same as torchvision's `size=S` (shorter edge → S).
    Returns the input itself when it already has that size (as torchvision does)."""
    hw = (int(hw), int(hw)) if isinstance(hw, int) else tuple(int(v) for v in hw)
    if tuple(x_BCHW.shape[-2:]) == hw:
        return x_BCHW
    return F.interpolate(x_BCHW, size=hw, mode=mode, align_corners=False, antialias=True)
