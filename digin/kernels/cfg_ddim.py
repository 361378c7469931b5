"""Fused classifier-free-guidance combine + deterministic DDIM step (eta = 0), forward and backward.

    eps  = eps_u + g·(eps_c − eps_u)                                   (cfg_combine)
    x̂0   = (x_t − √(1−ᾱ_t)·eps)/√ᾱ_t,  e = eps                         (epsilon prediction)
    x̂0   = √ᾱ_t·x_t − √(1−ᾱ_t)·v,  e = √ᾱ_t·v + √(1−ᾱ_t)·x_t         (v prediction, v = eps above)
    x_prev = √ᾱ_prev·x̂0 + √(1−ᾱ_prev)·e                              (ddim_step)

Eager it is ~10 elementwise kernels forward and as many backward on the latent; fused it is one each
way. It saves launches and memory passes, not FLOPs. Coefficients (g, ᾱ_t, ᾱ_prev) are floats, 0-dim
tensors or per-sample (B,) tensors; pass ᾱ as tensors under torch.compile so one graph serves every
timestep; a Python float (the guidance scale) becomes a cached device constant, never a per-step host→device copy.
Gradients flow to eps_u, eps_c and x_t (not to the coefficients).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .switch import kernel_enabled, triton_runs_on

PREDICTION_TYPES = ("epsilon", "v_prediction")


_CONSTANTS: dict = {}


def device_constant(value: float, device) -> Tensor:
    """A 0-dim fp32 tensor holding `value` on `device`, made once (torch.full: a fill kernel, no host→device copy)
    and reused: a Python coefficient such as the guidance scale costs no blocking copy per step."""
    key = (float(value), str(device))
    t = _CONSTANTS.get(key)
    if t is None:
        if len(_CONSTANTS) > 4096:  # distinct values are few (guidance scales); bound it anyway
            _CONSTANTS.clear()
        t = _CONSTANTS[key] = torch.full((), float(value), dtype=torch.float32, device=device)
    return t


def _per_sample(c, B: int, like: Tensor) -> Tensor:
    """float / 0-dim / (B,) coefficient → (B, 1, 1, 1) fp32 on like's device (Python numbers: a cached constant)."""
    if isinstance(c, Tensor):
        c = c.to(device=like.device, dtype=torch.float32)
    else:
        c = device_constant(c, like.device)
    return c.reshape(-1).expand(B).reshape(B, *([1] * (like.dim() - 1)))


def cfg_ddim_reference(eps_u: Tensor, eps_c: Tensor, x_t: Tensor, guidance_scale, a_t, a_prev,
                       prediction_type: str = "epsilon") -> tuple[Tensor, Tensor]:
    """Eager reference, same operation order as schedule.cfg_combine + schedule.ddim_step. → (x_prev, x̂0) fp32."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    B = x_t.shape[0]
    g, a_t, a_prev = (_per_sample(c, B, x_t) for c in (guidance_scale, a_t, a_prev))
    eu, ec, x = eps_u.float(), eps_c.float(), x_t.float()
    m = eu + g * (ec - eu)
    b_t = 1 - a_t
    if prediction_type == "epsilon":
        x0 = (x - b_t ** 0.5 * m) / a_t ** 0.5
        e = m
    else:
        x0 = a_t ** 0.5 * x - b_t ** 0.5 * m
        e = a_t ** 0.5 * m + b_t ** 0.5 * x
    x_prev = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * e
    return x_prev, x0


def _reference_backward(g_xprev, g_x0, coef_B3, v_pred: bool, shape):
    """Closed-form VJP of the fused step (the reference math of the backward kernel)."""
    B = shape[0]
    view = (B,) + (1,) * (len(shape) - 1)
    g, a_t, a_p = (coef_B3[:, k].reshape(view) for k in range(3))
    sa_t, sb_t, sa_p, sb_p = a_t.sqrt(), (1 - a_t).sqrt(), a_p.sqrt(), (1 - a_p).sqrt()
    g0 = g_x0 + sa_p * g_xprev  # total gradient reaching x̂0
    if v_pred:
        ge = sb_p * g_xprev  # gradient reaching e
        gm = sa_t * ge - sb_t * g0
        gx = sa_t * g0 + sb_t * ge
    else:
        gm = sb_p * g_xprev - sb_t / sa_t * g0
        gx = g0 / sa_t
    return (1 - g) * gm, g * gm, gx


# ----------------------------------------------------------------------------------------- custom ops

@torch.library.custom_op("digin::cfg_ddim", mutates_args=())
def _cfg_ddim_op(eps_u: Tensor, eps_c: Tensor, x_t: Tensor, coef_B3: Tensor, v_pred: bool) -> tuple[Tensor, Tensor]:
    if triton_runs_on(x_t):
        from .cfg_ddim_triton import cfg_ddim_forward  # optional stack: triton

        return cfg_ddim_forward(eps_u.contiguous(), eps_c.contiguous(), x_t.contiguous(), coef_B3.contiguous(), v_pred)
    return cfg_ddim_reference(eps_u, eps_c, x_t, coef_B3[:, 0], coef_B3[:, 1], coef_B3[:, 2],
                              "v_prediction" if v_pred else "epsilon")


@_cfg_ddim_op.register_fake
def _(eps_u, eps_c, x_t, coef_B3, v_pred):
    return torch.empty_like(x_t, dtype=torch.float32), torch.empty_like(x_t, dtype=torch.float32)


@torch.library.custom_op("digin::cfg_ddim_backward", mutates_args=())
def _cfg_ddim_backward_op(g_xprev: Tensor, g_x0: Tensor, coef_B3: Tensor, v_pred: bool, eps_dtype: torch.dtype,
                          x_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    if triton_runs_on(g_xprev):
        from .cfg_ddim_triton import cfg_ddim_backward  # optional stack: triton

        return cfg_ddim_backward(g_xprev.contiguous(), g_x0.contiguous(), coef_B3.contiguous(), v_pred,
                                 eps_dtype, x_dtype)
    gu, gc, gx = _reference_backward(g_xprev.float(), g_x0.float(), coef_B3, v_pred, g_xprev.shape)
    return gu.to(eps_dtype), gc.to(eps_dtype), gx.to(x_dtype)


@_cfg_ddim_backward_op.register_fake
def _(g_xprev, g_x0, coef_B3, v_pred, eps_dtype, x_dtype):
    return (torch.empty_like(g_xprev, dtype=eps_dtype), torch.empty_like(g_xprev, dtype=eps_dtype),
            torch.empty_like(g_xprev, dtype=x_dtype))


def _setup_context(ctx, inputs, output):
    eps_u, _, x_t, coef_B3, v_pred = inputs
    ctx.save_for_backward(coef_B3)
    ctx.v_pred, ctx.eps_dtype, ctx.x_dtype = v_pred, eps_u.dtype, x_t.dtype


def _backward(ctx, g_xprev, g_x0):
    (coef_B3,) = ctx.saved_tensors
    gu, gc, gx = _cfg_ddim_backward_op(g_xprev, g_x0, coef_B3, ctx.v_pred, ctx.eps_dtype, ctx.x_dtype)
    return gu, gc, gx, None, None


_cfg_ddim_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------- public API

def fused_cfg_ddim(eps_u: Tensor, eps_c: Tensor, x_t: Tensor, guidance_scale, a_t, a_prev,
                   prediction_type: str = "epsilon") -> tuple[Tensor, Tensor]:
    """CFG combine + DDIM step in one kernel → (x_prev, x̂0), both fp32 with x_t's shape.

    eps_u, eps_c: the two UNet halves (any float dtype); x_t: the latent; coefficients: float, 0-dim or (B,).
    With `DIGIN_KERNELS=0` (or set_kernels(cfg_ddim=False)) this is the eager reference.
    """
    if not kernel_enabled("cfg_ddim"):
        return cfg_ddim_reference(eps_u, eps_c, x_t, guidance_scale, a_t, a_prev, prediction_type)
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    B = x_t.shape[0]
    coef_B3 = torch.cat([_per_sample(c, B, x_t).reshape(B, 1) for c in (guidance_scale, a_t, a_prev)], dim=1)
    return _cfg_ddim_op(eps_u, eps_c, x_t, coef_B3, prediction_type == "v_prediction")
