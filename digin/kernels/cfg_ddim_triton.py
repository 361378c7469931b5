"""Triton kernels of the fused CFG + DDIM step (see cfg_ddim.py for the math). Flat 1-D grid over the
latent; each element reads its sample's (g, ᾱ_t, ᾱ_prev) from a (B, 3) fp32 table, so there is no host
sync and no per-timestep specialisation. IEEE sqrt/div so results track the eager reference to ~1 ulp."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _cfg_ddim_fwd(eu_ptr, ec_ptr, x_ptr, coef_ptr, xprev_ptr, x0_ptr, n_total, per_sample,
                  V_PRED: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_total
    b = offs // per_sample
    g = tl.load(coef_ptr + b * 3, mask=mask, other=0.0)
    a_t = tl.load(coef_ptr + b * 3 + 1, mask=mask, other=1.0)
    a_p = tl.load(coef_ptr + b * 3 + 2, mask=mask, other=1.0)
    eu = tl.load(eu_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    ec = tl.load(ec_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m = eu + g * (ec - eu)
    sa_t = tl.sqrt_rn(a_t)
    sb_t = tl.sqrt_rn(1.0 - a_t)
    if V_PRED:
        x0 = sa_t * x - sb_t * m
        e = sa_t * m + sb_t * x
    else:
        x0 = tl.div_rn(x - sb_t * m, sa_t)
        e = m
    x_prev = tl.sqrt_rn(a_p) * x0 + tl.sqrt_rn(1.0 - a_p) * e
    tl.store(xprev_ptr + offs, x_prev, mask=mask)
    tl.store(x0_ptr + offs, x0, mask=mask)


@triton.jit
def _cfg_ddim_bwd(gxp_ptr, gx0_ptr, coef_ptr, gu_ptr, gc_ptr, gx_ptr, n_total, per_sample,
                  V_PRED: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_total
    b = offs // per_sample
    g = tl.load(coef_ptr + b * 3, mask=mask, other=0.0)
    a_t = tl.load(coef_ptr + b * 3 + 1, mask=mask, other=1.0)
    a_p = tl.load(coef_ptr + b * 3 + 2, mask=mask, other=1.0)
    gxp = tl.load(gxp_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    gx0 = tl.load(gx0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    sa_t = tl.sqrt_rn(a_t)
    sb_t = tl.sqrt_rn(1.0 - a_t)
    g0 = gx0 + tl.sqrt_rn(a_p) * gxp
    ge = tl.sqrt_rn(1.0 - a_p) * gxp
    if V_PRED:
        gm = sa_t * ge - sb_t * g0
        gx = sa_t * g0 + sb_t * ge
    else:
        gm = ge - tl.div_rn(sb_t, sa_t) * g0
        gx = tl.div_rn(g0, sa_t)
    tl.store(gu_ptr + offs, (1.0 - g) * gm, mask=mask)
    tl.store(gc_ptr + offs, g * gm, mask=mask)
    tl.store(gx_ptr + offs, gx, mask=mask)


def _grid(n: int):
    return (triton.cdiv(n, BLOCK),)


def cfg_ddim_forward(eps_u, eps_c, x_t, coef_B3, v_pred: bool):
    x_prev = torch.empty_like(x_t, dtype=torch.float32)
    x0 = torch.empty_like(x_t, dtype=torch.float32)
    n = x_t.numel()
    if n:
        _cfg_ddim_fwd[_grid(n)](eps_u, eps_c, x_t, coef_B3, x_prev, x0, n, n // x_t.shape[0],
                                V_PRED=v_pred, BLOCK=BLOCK)
    return x_prev, x0


def cfg_ddim_backward(g_xprev, g_x0, coef_B3, v_pred: bool, eps_dtype, x_dtype):
    gu = torch.empty_like(g_xprev, dtype=eps_dtype)
    gc = torch.empty_like(g_xprev, dtype=eps_dtype)
    gx = torch.empty_like(g_xprev, dtype=x_dtype)
    n = g_xprev.numel()
    if n:
        _cfg_ddim_bwd[_grid(n)](g_xprev, g_x0, coef_B3, gu, gc, gx, n, n // g_xprev.shape[0],
                                V_PRED=v_pred, BLOCK=BLOCK)
    return gu, gc, gx
