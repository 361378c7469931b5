"""Batched real-image inversion: DDIM inversion + per-timestep null-text optimisation (or negative-prompt).

Semantics follow the reference's src/utils/null_text_inversion.py (prompt-to-prompt's null-text inversion), for B
images at once:

1. z_0 = VAE posterior mean × scaling.
2. DDIM inversion z_0 → z_T with the *conditional* prediction only (guidance 1, the p2p convention).
3. Null-text optimisation, step i = 0..T−1 from noisy to clean: starting from the previous step's null text
   (first: the embedding of ""), up to `num_inner_steps` Adam iterations (lr 1e-2·(1 − i/100), fresh Adam state
   per step) minimise MSE(ddim_step(ε_u(∅) + g·(ε_c − ε_u)), z_{T−i−1}). As in the reference, the iteration's
   Adam step is taken and *then* the sample stops if its (pre-step) loss < ε + i·2e-5. The latent then advances
   with CFG using the optimised ∅_i.

Batching: early stopping is a per-sample mask (a stopped sample's embedding and Adam moments stay frozen while
the rest of the batch continues; the engine's per-sample masked Adam, as in guidance), the loss for backward is the
sum of per-sample MSE means, so each sample's gradient equals its gradient when inverted alone.
The only host sync is the optional "every sample stopped → leave the inner loop" check (the reference's break).

Negative-prompt inversion (Miyake et al. 2023, arXiv 2305.16807): no inner optimisation; the null text of
every step is the prompt embedding itself, so CFG collapses to the conditional prediction and sampling from the
inverted z_T retraces the DDIM inversion. Same outputs, ~T UNet calls per image instead of ~(3T + Σ inner).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from digin.shards.progress import report_activity

from .distances import l2_norm, mean_lp, psnr
from .guidance import MaskedOptimizer, any_left
from .sampling import call_unet, cfg_ddim_update, decode_latents, denoise
from .schedule import DDIMSchedule, ddim_invert_step, make_ddim_schedule

METHODS = ("null_text", "negative_prompt")


@dataclass
class InversionResult:
    z_T: torch.Tensor  # (B,C,h,w) fp32
    null_texts: torch.Tensor  # (B,T,L,D) fp32, step 0 = noisiest
    prompts: list[str]
    metrics: list[dict] = field(default_factory=list)  # one JSON-able dict per sample
    ddim_latents: list[torch.Tensor] | None = None  # z_0..z_T, each (B,C,h,w)
    reconstruction: torch.Tensor | None = None  # (B,3,H,W) decode of the null-text chain's last x̂0
    vae_reconstruction: torch.Tensor | None = None  # (B,3,H,W) decode(z_0)


# ------------------------------------------------------------------------------------ DDIM inversion

def _unet_eps(sd, x_BCHW, t, emb_BLD) -> torch.Tensor:
    """One B-row UNet call (the inversion's calls are single halves of the CFG batch) → fp32."""
    return call_unet(sd, x_BCHW, t, emb_BLD).float()


@torch.no_grad()
def ddim_inversion(sd, sched: DDIMSchedule, z0_BCHW: torch.Tensor, cond_BLD: torch.Tensor) -> list[torch.Tensor]:
    """Deterministic DDIM inversion with the conditional prediction: returns [z_0, z_1, …, z_T]."""
    T = sched.num_steps
    z = z0_BCHW.float()
    latents = [z]
    for j in range(T):
        z = ddim_invert_step(sched, j, _unet_eps(sd, z, sched.timesteps[T - 1 - j], cond_BLD), z)
        latents.append(z)
    return latents


# ------------------------------------------------------------------------------ null-text optimisation

@dataclass
class NullTextTrace:
    null_texts: torch.Tensor  # (B,T,L,D)
    inner_steps: torch.Tensor  # (B,T) long: Adam steps taken per timestep
    last_loss: torch.Tensor  # (B,T) loss of each timestep's last executed inner iteration
    nonfinite: torch.Tensor  # (B,) bool
    x0_last: torch.Tensor  # (B,C,h,w) x̂0 of the last step of the optimised chain (the reconstruction latent)
    unet_batches: int  # UNet calls made on the whole batch (forward; backward counted in grad_batches)
    grad_batches: int  # UNet forward+backward calls on the whole batch


def null_text_optimisation(sd, sched: DDIMSchedule, latents: list[torch.Tensor], cond_BLD: torch.Tensor,
                           uncond_BLD: torch.Tensor, guidance_scale: float, num_inner_steps: int = 10,
                           epsilon: float = 1e-5, early_exit: bool = True) -> NullTextTrace:
    """Per-timestep null-text optimisation for a batch (see module doc). `latents` = [z_0..z_T].

    Every step goes through the engine's one step function: the B-row UNet call (compiled: one no-grad graph for
    ε_c and the advance, one graph with grad for the inner iterations) and the CFG + DDIM update."""
    T = sched.num_steps
    B = cond_BLD.shape[0]
    dev = cond_BLD.device
    emb_BLD = uncond_BLD.detach().float().clone()
    null_BTLD = torch.empty(B, T, *emb_BLD.shape[1:], device=dev)
    inner_BT = torch.zeros(B, T, dtype=torch.long, device=dev)
    loss_BT = torch.full((B, T), float("nan"), device=dev)
    nonfinite_B = torch.zeros(B, dtype=torch.bool, device=dev)
    z_BCHW = latents[-1]
    x0 = z_BCHW
    calls = grads = 0
    for i in range(T):
        report_activity("inversion step", i, T)  # what a stage's heartbeat says inside a long batch
        t = sched.timesteps[i]
        target_BCHW = latents[T - i - 1]
        with torch.no_grad():
            eps_c = _unet_eps(sd, z_BCHW, t, cond_BLD)
        calls += 1
        # fresh Adam state per timestep (the reference builds a new optimiser for each step)
        opt = MaskedOptimizer("adam", [emb_BLD], [1e-2 * (1.0 - i / 100.0)])
        active_B = ~nonfinite_B
        threshold = epsilon + i * 2e-5
        for _ in range(num_inner_steps):
            emb = emb_BLD.detach().requires_grad_(True)
            with torch.enable_grad():
                eps_u = _unet_eps(sd, z_BCHW, t, emb)
                x_prev, _ = cfg_ddim_update(sched, i, eps_u, eps_c, z_BCHW, guidance_scale)
                loss_B = (x_prev - target_BCHW).pow(2).flatten(1).mean(1)
                # Sum of per-sample means: each sample's gradient is its gradient when alone.
                (grad,) = torch.autograd.grad(loss_B.sum(), emb)
            grads += 1
            with torch.no_grad():
                loss_B = loss_B.detach()
                finite_B = torch.isfinite(loss_B) & torch.isfinite(grad).flatten(1).all(1)
                nonfinite_B |= active_B & ~finite_B
                active_B = active_B & finite_B
                opt.step([torch.nan_to_num(grad)], active_B)
                inner_BT[:, i] += active_B.long()
                loss_BT[:, i] = torch.where(active_B, loss_B, loss_BT[:, i])
                active_B = active_B & ~(loss_B < threshold)
            if early_exit and not any_left(active_B):  # the reference's break; one host sync per iteration
                break
        null_BTLD[:, i] = emb_BLD
        with torch.no_grad():
            eps_u = _unet_eps(sd, z_BCHW, t, emb_BLD)
            z_BCHW, x0 = cfg_ddim_update(sched, i, eps_u, eps_c, z_BCHW, guidance_scale)
        calls += 1
    return NullTextTrace(null_BTLD, inner_BT, loss_BT, nonfinite_B, x0, calls, grads)


def _finite(x: float) -> float | None:
    return x if x == x and abs(x) != float("inf") else None


# ------------------------------------------------------------------------------------------ invert

def invert(sd, images_B3HW: torch.Tensor, prompts: list[str], num_steps: int = 20, guidance_scale: float = 3.0,
           method: str = "null_text", num_inner_steps: int = 10, epsilon: float = 1e-5,
           compute_metrics: bool = True, keep_ddim_latents: bool = False, early_exit: bool = True) -> InversionResult:
    """Invert B images (in [0, 1]) with their prompts → z_T, per-step null texts, per-sample metrics.

    metrics per sample: PSNR/L2 of the inversion's reconstruction (the chain from z_T with the returned null
    texts) and of the plain DDIM reconstruction (same z_T, null text "") against the VAE reconstruction and the
    original; latent MSE of both against z_0; Adam steps per timestep; final loss; status; UNet call counts.
    """
    if method not in METHODS:
        raise ValueError(f"inversion method must be one of {METHODS}, got {method!r}")
    if len(prompts) != images_B3HW.shape[0]:
        raise ValueError(f"{len(prompts)} prompts for {images_B3HW.shape[0]} images")
    dev = sd.device
    images = images_B3HW.to(dev).float()
    B = images.shape[0]
    sched = make_ddim_schedule(sd.scheduler_config, num_steps).to(dev)
    T = sched.num_steps
    z0 = sd.encode_image(images)
    cond = sd.encode_text(list(prompts))
    empty = sd.encode_text([""] * B)
    latents = ddim_inversion(sd, sched, z0, cond)
    z_T = latents[-1]

    trace = None
    if method == "null_text":
        trace = null_text_optimisation(sd, sched, latents, cond, empty, guidance_scale, num_inner_steps,
                                       epsilon, early_exit)
        null_texts = trace.null_texts
    else:
        null_texts = cond.unsqueeze(1).expand(-1, T, -1, -1).contiguous()

    result = InversionResult(z_T=z_T.clone(), null_texts=null_texts, prompts=list(prompts),
                             ddim_latents=latents if keep_ddim_latents else None)
    # Per-image UNet evaluations (one sample through one UNet forward; CFG counts 2), and the batch's cost
    # when samples keep computing masked after they stop.
    if trace is not None:
        steps = trace.inner_steps
        fwd_alone = 3 * T + steps.sum(1)  # inversion + (ε_c + advance ε_u) per step + one ε_u per Adam step
        bwd_alone = steps.sum(1)
    else:
        fwd_alone = torch.full((B,), T, device=dev)
        bwd_alone = torch.zeros(B, dtype=torch.long, device=dev)

    if not compute_metrics:
        result.metrics = _base_metrics(trace, fwd_alone, bwd_alone, B)
        return result

    with torch.no_grad():
        vae_rec = decode_latents(sd, z0)
        if trace is not None:
            x0_inv = trace.x0_last
        else:
            _, x0_inv = denoise(sd, sched, z_T, cond, null_texts, guidance_scale)
        _, x0_ddim = denoise(sd, sched, z_T, cond, empty, guidance_scale)
        rec_inv, rec_ddim = decode_latents(sd, x0_inv), decode_latents(sd, x0_ddim)
        rows = {
            "psnr_inv_vs_vae": psnr(rec_inv, vae_rec), "l2_inv_vs_vae": l2_norm(rec_inv, vae_rec),
            "psnr_inv_vs_orig": psnr(rec_inv, images), "l2_inv_vs_orig": l2_norm(rec_inv, images),
            "psnr_ddim_vs_vae": psnr(rec_ddim, vae_rec), "l2_ddim_vs_vae": l2_norm(rec_ddim, vae_rec),
            "psnr_ddim_vs_orig": psnr(rec_ddim, images), "l2_ddim_vs_orig": l2_norm(rec_ddim, images),
            "psnr_vae_vs_orig": psnr(vae_rec, images),
            "latent_mse_inv": mean_lp(x0_inv, z0, 2), "latent_mse_ddim": mean_lp(x0_ddim, z0, 2),
        }
        host = {k: v.cpu().tolist() for k, v in rows.items()}
    result.metrics = _base_metrics(trace, fwd_alone, bwd_alone, B)
    for b, m in enumerate(result.metrics):
        m.update({k: _finite(float(v[b])) for k, v in host.items()})
    result.reconstruction, result.vae_reconstruction = rec_inv, vae_rec
    return result


def _base_metrics(trace: NullTextTrace | None, fwd_B, bwd_B, B: int) -> list[dict]:
    fwd, bwd = fwd_B.cpu().tolist(), bwd_B.cpu().tolist()
    if trace is None:
        return [{"method": "negative_prompt", "status": "ok", "unet_forward": int(fwd[b]),
                 "unet_backward": int(bwd[b])} for b in range(B)]
    inner = trace.inner_steps.cpu().tolist()
    loss = trace.last_loss.cpu().tolist()
    bad = trace.nonfinite.cpu().tolist()
    out = []
    for b in range(B):
        last = loss[b][-1]
        out.append({"method": "null_text", "status": "nonfinite" if bad[b] else "ok",
                    "inner_steps": [int(s) for s in inner[b]], "loss_per_step": [_finite(x) for x in loss[b]],
                    "final_loss": _finite(last), "unet_forward": int(fwd[b]), "unet_backward": int(bwd[b])})
    return out
