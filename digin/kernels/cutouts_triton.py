"""Triton kernels of the fused cutouts (see cutouts.py for the contract).

Forward: one program per (b, n, c) × block of output pixels; each output pixel averages its adaptive-pool
window (≤ KMAX × KMAX image pixels), adds noise and normalises. Backward: one program per (b, c) × block of
image pixels; each pixel loops over the N cutouts and the ≤ KCOVER × KCOVER pool windows that contain it
(a gather, so deterministic). Window i of a side-L crop pooled to s: [⌊i·L/s⌋, ⌈(i+1)·L/s⌉) as in PyTorch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_OUT = 256
BLOCK_IMG = 256


@triton.jit
def _cutouts_fwd(img_ptr, box_ptr, noise_ptr, mean_ptr, std_ptr, out_ptr, N, C, H, W, S,
                 HAS_NOISE: tl.constexpr, KMAX: tl.constexpr, BLOCK: tl.constexpr):
    bnc = tl.program_id(0)
    c = bnc % C
    bn = bnc // C
    b = bn // N
    side = tl.load(box_ptr + bn * 3)
    y0 = tl.load(box_ptr + bn * 3 + 1)
    x0 = tl.load(box_ptr + bn * 3 + 2)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < S * S
    i = offs // S
    j = offs % S
    h0 = (i * side) // S
    h1 = ((i + 1) * side + S - 1) // S
    w0 = (j * side) // S
    w1 = ((j + 1) * side + S - 1) // S
    base = img_ptr + (b * C + c) * H * W
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for dy in tl.static_range(KMAX):
        yy = h0 + dy
        for dx in tl.static_range(KMAX):
            xx = w0 + dx
            m = mask & (yy < h1) & (xx < w1)
            acc += tl.load(base + (y0 + yy) * W + (x0 + xx), mask=m, other=0.0).to(tl.float32)
    val = acc / ((h1 - h0) * (w1 - w0)).to(tl.float32)
    if HAS_NOISE:
        val += tl.load(noise_ptr + bnc * S * S + offs, mask=mask, other=0.0).to(tl.float32)
    val = (val - tl.load(mean_ptr + c)) / tl.load(std_ptr + c)
    tl.store(out_ptr + bnc * S * S + offs, val, mask=mask)


@triton.jit
def _cutouts_bwd(grad_ptr, box_ptr, std_ptr, gimg_ptr, N, C, H, W, S,
                 KCOVER: tl.constexpr, BLOCK: tl.constexpr):
    bc = tl.program_id(0)
    c = bc % C
    b = bc // C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H * W
    y = offs // W
    x = offs % W
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for n in range(N):
        side = tl.load(box_ptr + (b * N + n) * 3)
        ry = y - tl.load(box_ptr + (b * N + n) * 3 + 1)
        rx = x - tl.load(box_ptr + (b * N + n) * 3 + 2)
        inside = mask & (ry >= 0) & (ry < side) & (rx >= 0) & (rx < side)
        ry = tl.maximum(ry, 0)
        rx = tl.maximum(rx, 0)
        i_lo = (ry * S) // side
        i_hi = tl.minimum(((ry + 1) * S + side - 1) // side - 1, S - 1)
        j_lo = (rx * S) // side
        j_hi = tl.minimum(((rx + 1) * S + side - 1) // side - 1, S - 1)
        gbase = grad_ptr + ((b * N + n) * C + c) * S * S
        for ki in tl.static_range(KCOVER):
            i = i_lo + ki
            h_len = ((i + 1) * side + S - 1) // S - (i * side) // S
            for kj in tl.static_range(KCOVER):
                j = j_lo + kj
                w_len = ((j + 1) * side + S - 1) // S - (j * side) // S
                m = inside & (i <= i_hi) & (j <= j_hi)
                g = tl.load(gbase + i * S + j, mask=m, other=0.0).to(tl.float32)
                acc += g / tl.maximum(h_len * w_len, 1).to(tl.float32)
    acc = acc / tl.load(std_ptr + c)
    tl.store(gimg_ptr + bc * H * W + offs, acc, mask=mask)


def cutouts_forward(img_BCHW, boxes_BN3, noise_BNCss, mean_C, std_C, size: int, kmax: int, out_dtype):
    B, C, H, W = img_BCHW.shape
    N = boxes_BN3.shape[1]
    out = img_BCHW.new_empty((B, N, C, size, size), dtype=out_dtype)
    if out.numel():
        grid = (B * N * C, triton.cdiv(size * size, BLOCK_OUT))
        _cutouts_fwd[grid](img_BCHW, boxes_BN3, img_BCHW if noise_BNCss is None else noise_BNCss, mean_C, std_C,
                           out, N, C, H, W, size, HAS_NOISE=noise_BNCss is not None, KMAX=kmax, BLOCK=BLOCK_OUT)
    return out


def cutouts_backward(grad_BNCss, boxes_BN3, std_C, H: int, W: int, kcover: int, img_dtype):
    B, N, C, S, _ = grad_BNCss.shape
    g_img = grad_BNCss.new_empty((B, C, H, W), dtype=img_dtype)
    if g_img.numel():
        grid = (B * C, triton.cdiv(H * W, BLOCK_IMG))
        _cutouts_bwd[grid](grad_BNCss, boxes_BN3, std_C, g_img, N, C, H, W, S, KCOVER=kcover, BLOCK=BLOCK_IMG)
    return g_img
