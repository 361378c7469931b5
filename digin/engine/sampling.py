"""The DDIM sampling chain with classifier-free guidance — one function for generation, reconstruction,
the initial (no-grad) pass and the differentiable DiG-IN forward pass.

Conditioning may be shared over steps (B, L, D) or per step (B, T, L, D). Optional per-step pieces:
latent mask blending (x_t ← m_i·template_i + (1−m_i)·x_t) and an attention controller (capture / P2P
injection), whose processors learn the step index through `cross_attention_kwargs["digin_step"]` so that a
recomputed step (checkpointing) sees the same index.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

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


def unet_halves(sd, sched: DDIMSchedule, i: int, x_BCHW, cond_BLD, uncond_BLD, controller=None):
    """One UNet call on [x, x] with [∅, C] → (ε_uncond, ε_cond) in the weight dtype."""
    t = sched.timesteps[i].to(x_BCHW.device)
    B = x_BCHW.shape[0]
    kwargs = {"digin_step": i} if controller is not None else None
    dt = sd.dtype
    out = sd.unet(torch.cat([x_BCHW, x_BCHW]).to(dt), t, encoder_hidden_states=torch.cat([uncond_BLD, cond_BLD]).to(dt),
                  cross_attention_kwargs=kwargs, return_dict=False)[0]
    return out[:B], out[B:]


def unet_cond(sd, sched: DDIMSchedule, i: int, x_BCHW, cond_BLD):
    """One UNet call on x with C only → ε_cond in the weight dtype."""
    t = sched.timesteps[i].to(x_BCHW.device)
    dt = sd.dtype
    return sd.unet(x_BCHW.to(dt), t, encoder_hidden_states=cond_BLD.to(dt), return_dict=False)[0]


def guided_eps(sd, sched: DDIMSchedule, i: int, x_BCHW, cond_BLD, uncond_BLD, guidance_scale: float,
               controller=None) -> torch.Tensor:
    eps_u, eps_c = (e.float() for e in unet_halves(sd, sched, i, x_BCHW, cond_BLD, uncond_BLD, controller))
    return eps_u + guidance_scale * (eps_c - eps_u)


def denoise_step(sd, sched, i, x_BCHW, cond_BLD, uncond_BLD, guidance_scale, controller=None,
                 guidance_rescale: float = 0.0):
    """One guided DDIM step → (x_prev, x̂0). On CUDA the CFG combine and the DDIM update run as one fused
    Triton kernel (digin.kernels, DIGIN_KERNELS=0 falls back); elsewhere the eager formulas. guidance_rescale > 0
    (SDXL's rescale_noise_cfg) takes the eager path. At guidance 1 (SDXL-Turbo) ε = ε_cond exactly in
    exact arithmetic, so without an attention controller (which reads the [∅, C] batch layout) only the conditional
    half is run: half the UNet work; the unconditional embedding then gets no gradient, as its weight 1 − g is 0."""
    if guidance_scale == 1.0 and controller is None:
        eps_c = unet_cond(sd, sched, i, x_BCHW, cond_BLD)
        if x_BCHW.is_cuda:
            from digin.kernels import fused_cfg_ddim

            return fused_cfg_ddim(eps_c, eps_c, x_BCHW, 1.0, sched.alpha_t[i], sched.alpha_prev[i],
                                  sched.prediction_type)
        return ddim_step(sched, i, eps_c.float(), x_BCHW)
    eps_u, eps_c = unet_halves(sd, sched, i, x_BCHW, cond_BLD, uncond_BLD, controller)
    if x_BCHW.is_cuda and not guidance_rescale:
        from digin.kernels import fused_cfg_ddim

        return fused_cfg_ddim(eps_u, eps_c, x_BCHW, guidance_scale, sched.alpha_t[i], sched.alpha_prev[i],
                              sched.prediction_type)
    eps_u, eps_c = eps_u.float(), eps_c.float()
    eps = eps_u + guidance_scale * (eps_c - eps_u)
    if guidance_rescale:
        eps = rescale_noise_cfg(eps, eps_c, guidance_rescale)
    return ddim_step(sched, i, eps, x_BCHW)


@dataclass
class ChainOutput:
    z_final: torch.Tensor  # x_{t_end} after the last step
    x0_last: torch.Tensor  # x̂0 of the last step (the image that is reported)
    x0_kept: dict  # step index → x̂0 (for loss steps)
    latents: list | None  # x_t before each step (after blending), when requested


def run_chain(sd, sched: DDIMSchedule, z_T_BCHW: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
              guidance_scale: float, *, keep_x0: set | None = None, blend: Blend | None = None, controller=None,
              checkpoint: str = "none", record_latents: bool = False, guidance_rescale: float = 0.0) -> ChainOutput:
    """Run all T steps. `checkpoint="step"` stores only per-step latents and recomputes each UNet call in
    backward (torch.utils.checkpoint, non-reentrant); "none" keeps every activation."""
    x = z_T_BCHW
    kept, lat = {}, ([] if record_latents else None)
    keep_x0 = keep_x0 or set()
    x0 = None
    for i in range(sched.num_steps):
        if blend is not None:
            x = blend.apply(i, x)
        if record_latents:
            lat.append(x.detach())
        c, u = step_embedding(cond, i), step_embedding(uncond, i)
        if checkpoint == "step" and torch.is_grad_enabled():
            x, x0 = _checkpoint(denoise_step, sd, sched, i, x, c, u, guidance_scale, controller, guidance_rescale,
                                use_reentrant=False)
        else:
            x, x0 = denoise_step(sd, sched, i, x, c, u, guidance_scale, controller, guidance_rescale)
        if i in keep_x0:
            kept[i] = x0
    return ChainOutput(x, x0, kept, lat)


@torch.no_grad()
def denoise(sd, sched, z_T_BCHW, cond, uncond, guidance_scale, **kw):
    """No-grad sampling: returns (z_final, x̂0 of the last step)."""
    out = run_chain(sd, sched, z_T_BCHW, cond, uncond, guidance_scale, **kw)
    return out.z_final, out.x0_last
