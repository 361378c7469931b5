"""Fused cutouts: square crop + area resize (adaptive_avg_pool2d) + additive noise + normalisation,
forward and backward (w.r.t. the image), for the classifier-on-cutouts augmentation.

Contract (as `engine.augment.make_cutouts` + the classifier wrapper's noise/normalise):
    crop_bn = img[b, :, y0:y0+side, x0:x0+side]            boxes_BN3[b, n] = (side, y0, x0), inside the image
    out[b, n] = (adaptive_avg_pool2d(crop_bn, size) + noise[b, n] − mean[:, None, None]) / std[:, None, None]
Eager this is N crops + N pools + noise + normalise kernels per image (and a scatter backward); fused it
is one kernel each way, reading each image pixel a few times. The backward is a gather (one program per
image pixel block, looping over cutouts), so it is deterministic — no atomics.

`min_side`: a lower bound on crop sides known to the caller (default `size`: crops never upsample, as in
the reference's cut_power sampling); the backward sizes its loop over covering windows from it (a crop
smaller than min_side would get a wrong gradient, so pass an honest bound).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .switch import kernel_enabled, triton_runs_on


def cutouts_reference(img_BCHW: Tensor, boxes_BN3: Tensor, size: int, mean_C: Tensor, std_C: Tensor,
                      noise_BNCss: Tensor | None = None, out_dtype: torch.dtype | None = None) -> Tensor:
    """Eager reference (loops over boxes, host syncs): → (B, N, C, size, size)."""
    B, C = img_BCHW.shape[:2]
    rows = []
    for b, boxes_N3 in enumerate(boxes_BN3.tolist()):
        crops = [F.adaptive_avg_pool2d(img_BCHW[b:b + 1, :, y0:y0 + side, x0:x0 + side].float(), size)
                 for side, y0, x0 in boxes_N3]
        rows.append(torch.cat(crops))
    out = torch.stack(rows)  # (B, N, C, s, s)
    if noise_BNCss is not None:
        out = out + noise_BNCss.float()
    out = (out - mean_C.float().view(C, 1, 1)) / std_C.float().view(C, 1, 1)
    return out.to(out_dtype or img_BCHW.dtype)


def boxes_from_uniforms(u_N3: Tensor, H: int, W: int, size: int, cut_power: float) -> Tensor:
    """(..., 3) uniforms in [0, 1) → long boxes (side, y0, x0) by the reference's MakeCutouts rule:
    side = int(u^cut_power·(S_max − S_min) + S_min) with S_max = min(H, W), S_min = min(S_max, size) (an image
    smaller than `size` gives whole-image crops that the pool upsamples), offsets uniform in [0, H − side] ×
    [0, W − side]. Callers draw the uniforms (engine/augment.py: one stream per sample)."""
    max_size = min(H, W)
    min_size = min(max_size, size)
    u = u_N3.double()
    side = (u[..., 0] ** cut_power * (max_size - min_size) + min_size).long().clamp_(min_size, max_size)
    y0 = (u[..., 1] * (H - side + 1)).long().clamp_max_(H - side)
    x0 = (u[..., 2] * (W - side + 1)).long().clamp_max_(W - side)
    return torch.stack([side, y0, x0], dim=-1)


def random_boxes(B: int, N: int, image_size: int, size: int, cut_power: float = 0.3,
                 generator: torch.Generator | None = None, device=None) -> Tensor:
    """(B, N, 3) long boxes (side, y0, x0) drawn like the reference from one generator. For benchmarks and tests;
    the engine draws per-sample streams in engine/augment.py."""
    u = torch.rand(B, N, 3, generator=generator, dtype=torch.float64)
    return boxes_from_uniforms(u, image_size, image_size, size, cut_power).to(device)


def pool_matrix(offset_BN: Tensor, side_BN: Tensor, size: int, length: int, dtype) -> Tensor:
    """(B, N, size, length) rows that average input[offset + ⌊i·L/s⌋ : offset + ⌈(i+1)·L/s⌉] (L = side): the
    windows of `F.adaptive_avg_pool2d` on a side-L crop, so crop + pool = pool_y · img · pool_xᵀ."""
    i = torch.arange(size, device=side_BN.device)
    L = side_BN[..., None]
    start = offset_BN[..., None] + torch.div(i * L, size, rounding_mode="floor")  # (B,N,size)
    end = offset_BN[..., None] + torch.div((i + 1) * L + size - 1, size, rounding_mode="floor")
    r = torch.arange(length, device=side_BN.device)
    inside = (r >= start[..., None]) & (r < end[..., None])  # (B,N,size,length)
    return inside.to(dtype) / (end - start)[..., None].to(dtype)


def _max_window(max_side: int, size: int) -> int:
    """Longest adaptive-pool window when pooling ≤ max_side pixels to `size`."""
    return max(1, math.ceil(max_side / size) + 1)


def _max_cover(min_side: int, size: int) -> int:
    """Most pool windows that can contain one input pixel when sides are ≥ min_side."""
    return max(2, math.ceil(size / max(1, min_side)) + 1)


# ----------------------------------------------------------------------------------------- custom ops

@torch.library.custom_op("digin::cutouts", mutates_args=())
def _cutouts_op(img_BCHW: Tensor, boxes_BN3: Tensor, noise_BNCss: Tensor | None, mean_C: Tensor, std_C: Tensor,
                size: int, min_side: int, out_dtype: torch.dtype) -> Tensor:
    if triton_runs_on(img_BCHW):
        from .cutouts_triton import cutouts_forward  # optional stack: triton

        H, W = img_BCHW.shape[-2:]
        return cutouts_forward(img_BCHW.contiguous(), boxes_BN3.contiguous(),
                               None if noise_BNCss is None else noise_BNCss.contiguous(),
                               mean_C.float().contiguous(), std_C.float().contiguous(), size,
                               _max_window(min(H, W), size), out_dtype)
    return cutouts_reference(img_BCHW, boxes_BN3, size, mean_C, std_C, noise_BNCss, out_dtype)


@_cutouts_op.register_fake
def _(img_BCHW, boxes_BN3, noise_BNCss, mean_C, std_C, size, min_side, out_dtype):
    B, C = img_BCHW.shape[:2]
    return img_BCHW.new_empty((B, boxes_BN3.shape[1], C, size, size), dtype=out_dtype)


@torch.library.custom_op("digin::cutouts_backward", mutates_args=())
def _cutouts_backward_op(grad_BNCss: Tensor, boxes_BN3: Tensor, std_C: Tensor, H: int, W: int, min_side: int,
                         img_dtype: torch.dtype) -> Tensor:
    size = grad_BNCss.shape[-1]
    if triton_runs_on(grad_BNCss):
        from .cutouts_triton import cutouts_backward  # optional stack: triton

        return cutouts_backward(grad_BNCss.contiguous(), boxes_BN3.contiguous(), std_C.float().contiguous(),
                                H, W, _max_cover(min_side, size), img_dtype)
    return _reference_backward(grad_BNCss, boxes_BN3, std_C, H, W, img_dtype)


@_cutouts_backward_op.register_fake
def _(grad_BNCss, boxes_BN3, std_C, H, W, min_side, img_dtype):
    B, _, C = grad_BNCss.shape[:3]
    return grad_BNCss.new_empty((B, C, H, W), dtype=img_dtype)


def _reference_backward(grad_BNCss, boxes_BN3, std_C, H, W, img_dtype):
    """VJP of crop + area-resize + normalise in closed form: the crop-pool is P_y·img·P_xᵀ per box, so its
    transpose is P_yᵀ·g·P_x (no autograd: custom-op implementations run below the autograd key)."""
    B, N, C, s, _ = grad_BNCss.shape
    g = grad_BNCss.float() / std_C.float().view(1, 1, C, 1, 1)
    boxes = boxes_BN3.to(grad_BNCss.device)
    side, y0, x0 = boxes[..., 0], boxes[..., 1], boxes[..., 2]
    pool_y_BNsH = pool_matrix(y0, side, s, H, torch.float32)
    pool_x_BNsW = pool_matrix(x0, side, s, W, torch.float32)
    rows_BNCsW = torch.einsum("bncij,bnjw->bnciw", g, pool_x_BNsW)
    return torch.einsum("bnciw,bnih->bchw", rows_BNCsW, pool_y_BNsH).to(img_dtype)


def _setup_context(ctx, inputs, output):
    img_BCHW, boxes_BN3, _, _, std_C, _, min_side, _ = inputs
    ctx.save_for_backward(boxes_BN3, std_C)
    ctx.H, ctx.W, ctx.img_dtype, ctx.min_side = img_BCHW.shape[-2], img_BCHW.shape[-1], img_BCHW.dtype, min_side


def _backward(ctx, grad_BNCss):
    boxes_BN3, std_C = ctx.saved_tensors
    g = _cutouts_backward_op(grad_BNCss, boxes_BN3, std_C, ctx.H, ctx.W, ctx.min_side, ctx.img_dtype)
    return g, None, None, None, None, None, None, None


_cutouts_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------- public API

def fused_cutouts(img_BCHW: Tensor, boxes_BN3: Tensor, size: int, mean_C, std_C, noise_BNCss: Tensor | None = None,
                  out_dtype: torch.dtype | None = None, min_side: int | None = None) -> Tensor:
    """Crop + area-resize + noise + normalise in one kernel → (B, N, C, size, size) in out_dtype (default img's).

    img_BCHW: images in [0, 1]; boxes_BN3: long (side, y0, x0) with size ≤ side and the crop inside the image
    (as drawn by the reference's cutout sampler); mean_C/std_C: per-channel normalisation; noise_BNCss: the
    additive noise (already scaled by noise_sd), or None. min_side: a lower bound on the crop sides (default
    `size`; pass a smaller one if crops may upsample). Differentiable w.r.t. img_BCHW only.
    With `DIGIN_KERNELS=0` (or set_kernels(cutouts=False)) this is the eager reference.
    """
    C = img_BCHW.shape[1]
    mean_C = torch.as_tensor(mean_C, dtype=torch.float32, device=img_BCHW.device).expand(C)
    std_C = torch.as_tensor(std_C, dtype=torch.float32, device=img_BCHW.device).expand(C)
    out_dtype = out_dtype or img_BCHW.dtype
    if not kernel_enabled("cutouts"):
        return cutouts_reference(img_BCHW, boxes_BN3, size, mean_C, std_C, noise_BNCss, out_dtype)
    min_side = int(size if min_side is None else min_side)
    return _cutouts_op(img_BCHW, boxes_BN3, noise_BNCss, mean_C, std_C, int(size), min_side, out_dtype)
