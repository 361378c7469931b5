"""Per-sample distances (B,) between image or latent batches, for the regularisers, the evaluation metrics and the
inversion report. Each caller keeps its own reduction (a mean, a sum, a norm), so its numbers are what they were.

Masks / weights are (B, 1, H, W), broadcast over channels, never divided by their area.
"""
from __future__ import annotations

import torch


def _abs_pow(d: torch.Tensor, p: int) -> torch.Tensor:
    d = d.abs()
    return d if p == 1 else d.pow(p)


def mean_lp(x_BCHW, y_BCHW, p: int, weight_B1HW=None) -> torch.Tensor:
    """mean over C,H,W of w·|x − y|^p in fp32: the l1 / l2 regularisers; p = 2 unweighted is the MSE."""
    d = _abs_pow(x_BCHW.float() - y_BCHW.float(), p)
    if weight_B1HW is not None:
        d = d * weight_B1HW.float()
    return d.flatten(1).mean(1)


def sum_lp(x_BCHW, y_BCHW, p: int, weight_B1HW) -> torch.Tensor:
    """Σ over C,H,W of w·|x − y|^p (the reference's `calculate_lp_distances` before the p-th root)."""
    return (weight_B1HW * _abs_pow(x_BCHW - y_BCHW, p)).flatten(1).sum(1)


def l2_norm(x_BCHW, y_BCHW) -> torch.Tensor:
    """Euclidean norm of the difference (over all channels and pixels), fp32."""
    return (x_BCHW.float() - y_BCHW.float()).flatten(1).norm(dim=1)


def psnr(x_BCHW, y_BCHW) -> torch.Tensor:
    """PSNR in dB for images in [0, 1] (capped at 100 dB for identical images, so JSON stays finite)."""
    return (10 * torch.log10(1.0 / mean_lp(x_BCHW, y_BCHW, 2).clamp_min(1e-10))).clamp(max=100.0)
