"""The one step function and the DDIM sampling chain with classifier-free guidance — for generation,
reconstruction, the initial (no-grad) pass, the DiG-IN forward pass and its per-step recompute, and inversion.

A step is: (latent blending) → one UNet call on [x, x] with [∅, C] → CFG combine + DDIM update. Every UNet call
goes through the model's prepared runtime (compiled per call site, see engine/prepare.py); an attention controller
(capture / Prompt-to-Prompt injection) adds the step's factors and maps as tensor inputs and gets the captured maps
back as outputs (engine/attention.py), so controlled steps run the compiled graph too, and a step recomputed in the
adjoint sees the same injection. The CFG + DDIM update is the fused Triton op on CUDA (its eager reference
elsewhere, and on CUDA with kernels off); its guidance scale is a cached device constant (no host→device copy per
step).

Conditioning may be shared over steps (B, L, D) or per step (B, T, L, D).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from digin.kernels import cfg_ddim_reference, fused_cfg_ddim

from .attention import unet_forward
from .schedule import DDIMSchedule, ddim_step, rescale_noise_cfg


@dataclass
class Blend:
    """Latent blending: at step i, x_t ← f_i·M·template_i + (1 − f_i·M)·x_t."""

    mask_B1hw: torch.Tensor  # mask in [0, 1], broadcast over channels
    templates_TBCHW: torch.Tensor  # latents x_t of the initial pass, before each step
    factors_BT: torch.Tensor  # per-sample, per-step factor in [0, 1]

    def apply(self, i: int, x_BCHW: torch.Tensor) -> torch.Tensor:
        m = self.factors_BT[:, i].view(-1, 1, 1, 1) * self.mask_B1hw
        return m * self.templates_TBCHW[i] + (1 - m) * x_BCHW


def step_embedding(emb: torch.Tensor, i: int) -> torch.Tensor:
    """(B, L, D) shared or (B, T, L, D) per-step → (B, L, D) for step i."""
    return emb[:, i] if emb.dim() == 4 else emb


# ------------------------------------------------------------------------------------------ model calls

def call_unet(sd, x_NCHW: torch.Tensor, t: torch.Tensor, emb_NLD: torch.Tensor, controller=None,
              step: int | None = None) -> torch.Tensor:
    """One UNet call on N rows → prediction in the weight dtype (inputs cast to it). Under an attention controller
    the call carries the step's control tensors and returns the captured maps, which the controller keeps
    (engine/attention.py): the same call site, and the same compiled graph, at every step."""
    dt = sd.dtype
    x, emb = x_NCHW.to(dt), emb_NLD.to(dt)
    runtime = getattr(sd, "runtime", None)
    ctl = controller.control(sd, step, x, t, emb, dense=unet_compiles(sd)) if controller is not None else None
    if ctl is None:
        if runtime is not None:
            return runtime.unet(x, t, emb)
        return unet_forward(sd.unet, x, t, emb)
    tensors, layout = ctl
    if runtime is not None:
        out, captured = runtime.unet(x, t, emb, tensors, layout=layout)
    else:
        out, captured = unet_forward(sd.unet, x, t, emb, tensors, layout=layout)
    controller.keep(step, captured)
    return out


def unet_compiles(sd) -> bool:
    """Whether this model's UNet calls run a compiled graph (then attention control keeps one input structure over
    the whole run; eager calls skip the steps where it does nothing)."""
    unet = getattr(getattr(sd, "runtime", None), "unet", None)
    cfg = getattr(unet, "cfg", None)
    return bool(cfg is not None and cfg.enabled and not unet.fell_back)


def decode_latents(sd, z_BCHW: torch.Tensor) -> torch.Tensor:
    """x̂0 latent → image in [0, 1] fp32, through the prepared (compiled) decoder when there is one."""
    runtime = getattr(sd, "runtime", None)
    return runtime.decode(z_BCHW) if runtime is not None else sd.decode(z_BCHW)


def cfg_ddim_update(sched: DDIMSchedule, i: int, eps_u: torch.Tensor, eps_c: torch.Tensor, x_BCHW: torch.Tensor,
                    guidance_scale) -> tuple[torch.Tensor, torch.Tensor]:
    """The CFG combine + DDIM update → (x_prev, x̂0) fp32: the fused op on CUDA, its eager reference elsewhere."""
    update = fused_cfg_ddim if x_BCHW.is_cuda else cfg_ddim_reference
    return update(eps_u, eps_c, x_BCHW, guidance_scale, sched.alpha_t[i], sched.alpha_prev[i], sched.prediction_type)


def denoise_step(sd, sched: DDIMSchedule, i: int, x_BCHW, cond_BLD, uncond_BLD, guidance_scale, controller=None,
                 guidance_rescale: float = 0.0, blend: Blend | None = None):
    """One guided DDIM step → (x_prev, x̂0), blending first when given. guidance_rescale > 0 (SDXL's
    rescale_noise_cfg) takes the eager formulas. At guidance 1 (SDXL-Turbo) ε = ε_cond in exact arithmetic, so
    without an attention controller (which reads the [∅, C] batch layout) only the conditional half is run: half
    the UNet work; the unconditional embedding then gets no gradient, as its weight 1 − g is 0."""
    if blend is not None:
        x_BCHW = blend.apply(i, x_BCHW)
    t = sched.timesteps[i]
    if guidance_scale == 1.0 and controller is None:
        eps_c = call_unet(sd, x_BCHW, t, cond_BLD)
        return cfg_ddim_update(sched, i, eps_c, eps_c, x_BCHW, 1.0)
    B = x_BCHW.shape[0]
    out = call_unet(sd, torch.cat([x_BCHW, x_BCHW]), t, torch.cat([uncond_BLD, cond_BLD]), controller, i)
    eps_u, eps_c = out[:B], out[B:]
    if guidance_rescale:
        eps_u, eps_c = eps_u.float(), eps_c.float()
        eps = rescale_noise_cfg(eps_u + guidance_scale * (eps_c - eps_u), eps_c, guidance_rescale)
        return ddim_step(sched, i, eps, x_BCHW)
    return cfg_ddim_update(sched, i, eps_u, eps_c, x_BCHW, guidance_scale)


# ------------------------------------------------------------------------------------------ the chain

@dataclass
class ChainOutput:
    z_final: torch.Tensor  # x_{t_end} after the last step
    x0_last: torch.Tensor  # x̂0 of the last step (the image that is reported)
    x0_kept: dict  # step index → x̂0 (for loss steps)
    latents: list | None  # x_t before each step (after blending), when requested
    inputs: list | None = None  # x_t entering each step (before blending): what a per-step recompute starts from


def run_chain(sd, sched: DDIMSchedule, z_T_BCHW: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
              guidance_scale: float, *, keep_x0: set | None = None, blend: Blend | None = None, controller=None,
              record_latents: bool = False, record_inputs: bool = False, guidance_rescale: float = 0.0) -> ChainOutput:
    """Run all T steps (with grad enabled: one autograd graph over the chain; the per-step recompute is
    `step_vjp`, driven by guidance)."""
    x = z_T_BCHW
    kept, lat = {}, ([] if record_latents else None)
    ins = [] if record_inputs else None
    keep_x0 = keep_x0 or set()
    x0 = None
    for i in range(sched.num_steps):
        if record_inputs:
            ins.append(x)
        if record_latents:
            lat.append((blend.apply(i, x) if blend is not None else x).detach())
        c, u = step_embedding(cond, i), step_embedding(uncond, i)
        x, x0 = denoise_step(sd, sched, i, x, c, u, guidance_scale, controller, guidance_rescale, blend)
        if i in keep_x0:
            kept[i] = x0
    return ChainOutput(x, x0, kept, lat, ins)


@torch.no_grad()
def denoise(sd, sched, z_T_BCHW, cond, uncond, guidance_scale, **kw):
    """No-grad sampling: returns (z_final, x̂0 of the last step)."""
    out = run_chain(sd, sched, z_T_BCHW, cond, uncond, guidance_scale, **kw)
    return out.z_final, out.x0_last


def step_vjp(sd, sched: DDIMSchedule, i: int, x_in: torch.Tensor, cond_BLD: torch.Tensor, uncond_BLD: torch.Tensor,
             guidance_scale: float, g_xprev: torch.Tensor | None, g_x0: torch.Tensor | None, *, wrt_cond: bool,
             wrt_uncond: bool, controller=None, guidance_rescale: float = 0.0, blend: Blend | None = None,
             factors=()):
    """Recompute step i with grad and pull (g_xprev, g_x0) back → (g_x_in, g_cond | None, g_uncond | None,
    [g_factor (B, T)] for the learned schedule leaves `factors` (engine/learnable.py; only column i gets one)).

    The per-step adjoint of the DiG-IN chain: the forward pass runs without grad and keeps only each step's input
    latent; the backward walks the steps in reverse, one recompute + one VJP each (what per-step checkpointing
    computes, with every UNet call at a fixed shape and no autograd graph spanning steps)."""
    with torch.enable_grad():
        x = x_in.detach().requires_grad_(True)
        c = cond_BLD.detach().requires_grad_(wrt_cond)
        u = uncond_BLD.detach().requires_grad_(wrt_uncond)
        x_prev, x0 = denoise_step(sd, sched, i, x, c, u, guidance_scale, controller, guidance_rescale, blend)
        outs, grads = [], []
        for o, g in ((x_prev, g_xprev), (x0, g_x0)):
            if g is not None:
                outs.append(o)
                grads.append(g)
        wrt = [x] + ([c] if wrt_cond else []) + ([u] if wrt_uncond else []) + list(factors)
        got = list(torch.autograd.grad(outs, wrt, grads, allow_unused=True))
    got = [torch.zeros_like(v) if g is None else g for g, v in zip(got, wrt)]
    g_x = got.pop(0)
    g_c = got.pop(0) if wrt_cond else None
    g_u = got.pop(0) if wrt_uncond else None
    return g_x, g_c, g_u, got
