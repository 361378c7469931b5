"""Batched DiG-IN optimisation: back-propagate a classifier objective through the DDIM chain.

B samples are optimised at once. Everything that the reference does per image is done per sample here:
Adam/AdamW/SGD state and step counts, gradient clipping / normalisation, the z_T norm re-projection,
early stopping and NaN handling are all masked per sample, so a sample's result never depends on the batch
it lands in. Optimised variables (z_T, per-step conditioning deltas ΔC, per-step null-text deltas Δ∅) and the
latent chain are fp32 whatever the weight dtype.

Per SGD iteration k (k = 0..K): forward chain → decode the x̂0 of the last `loss_steps` steps → log the
non-augmented loss of the last x̂0 (the reported image) → augmented multi-step loss → gradient → masked optimiser
step. Iteration K only evaluates. Result: iterate 0 (`sd`) and the logged argmin (`ours`).

Gradient paths (`checkpoint`):
- `step` (default): the forward chain runs without grad and keeps each step's input latent; each loss step's image
  is decoded with grad and its loss pulled back to x̂0 at once; then the steps are walked in reverse, each
  recomputed with grad and pulled back (`sampling.step_vjp`). The same FLOPs as per-step checkpointing, but every
  UNet call is a fixed-shape call of its own (compiled no-grad forward graph, compiled recompute graph), no autograd
  graph spans steps, and only one decoder graph is alive at a time.
- `none`: one autograd graph over the whole chain (every activation kept); `block`: the same with diffusers'
  UNet/VAE gradient checkpointing (the reference's compute path).
The only host sync is the per-iteration "every sample stopped → leave the loop" check (the reference's break).

Learnable edit schedules (engine/learnable.py) come with the blend / controller that apply them: their (B, T) factors
are extra optimised variables with their own step sizes, clamped to [0, 1] after each step.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from digin.fields import ANY, COUNT, COUNT0, NONNEG, RATE, Int, Real, key
from digin.shards.progress import report_activity

from .learnable import clamp_schedules, learned_schedules, mask_schedule_grads
from .sampling import Blend, decode_latents, run_chain, step_embedding, step_vjp
from .schedule import loss_step_weights, make_schedule


@dataclass
class OptimParams:
    """The reference's OptimParams (same names and defaults)."""

    SECTION = "optim_params (the gradient steps through the sampling chain)"
    sgd_steps: int = key(20, "gradient steps per sample (0: plain sampling)", rule=COUNT0)
    sgd_stepsize: float = key(0.01, "base learning rate of the optimised variables", rule=RATE)
    sgd_optim: str = key("adam", "adam | adamw | sgd (momentum 0.9)", choices=("adam", "adamw", "sgd"))
    sgd_scheduler: str | None = key(None, "learning-rate schedule: None (constant) | cosine", choices=("cosine",))
    latent_lr_factor: float = key(0.1, "learning rate of the start latent z_T = sgd_stepsize × this", rule=NONNEG)
    conditioning_lr_factor: float = key(1.0, "learning rate of the text embeddings = sgd_stepsize × this",
                                        rule=NONNEG)
    uncond_lr_factor: float = key(1.0, "learning rate of the null-text embeddings = sgd_stepsize × this",
                                  rule=NONNEG)
    early_stopping_loss: float | None = key(None, "a sample stops once its loss is below this (None: never)",
                                            rule=ANY)
    loss_steps: int = key(3, "the loss is taken on the decoded images of the last loss_steps steps' x0 "
                             "predictions (≤ num_ddim_steps)", rule=COUNT)
    loss_steps_schedule: str = key("linear", "weights of those steps: linear | uniform", choices=("linear", "uniform"))
    solver_order: int = key(1, "DDIM solver order (the reference supports 1)", rule=Int(1, 1))
    optimize_latents: bool = key(True, "optimise the start latent z_T")
    optimize_conditioning: bool = key(True, "optimise the text embeddings")
    optimize_uncond: bool = key(True, "optimise the null-text embeddings")
    per_timestep_conditioning_delta: bool = key(True, "one text-embedding offset per sampling step (else one shared)")
    per_timestep_uncond_delta: bool = key(True, "one null-text offset per sampling step (else one shared)")
    normalize_gradients: bool = key(False, "divide each variable's gradient by its norm before the step")
    gradient_clipping: float | None = key(None, "clip each variable's gradient norm to this (None: no clipping)",
                                          rule=Real(0, lo_open=True))


@dataclass
class GuidanceConfig:
    guidance_scale: float = 3.0
    num_ddim_steps: int = 20
    optim_params: OptimParams = field(default_factory=OptimParams)
    checkpoint: str = "step"  # step (recompute each UNet call) | none | block (UNet's own, like the reference)
    keep_trajectory: bool = False  # keep every iterate's image (on CPU)
    solver: str = "ddim"  # ddim | euler (EulerDiscreteScheduler's σ table, run by the same DDIM step)
    guidance_rescale: float = 0.0  # SDXL's rescale_noise_cfg factor (0 = plain CFG)


@dataclass
class GuidanceResult:
    sd_images: torch.Tensor  # (B,3,H,W) iterate 0
    ours_images: torch.Tensor  # (B,3,H,W) iterate with the lowest logged total
    best_iter: torch.Tensor  # (B,) long
    losses: torch.Tensor  # (K+1, B) non-augmented total of the final x̂0; NaN where not logged
    parts: dict  # name → (K+1, B) non-augmented sub-losses / regularisers
    confidences: dict  # name → (K+1, B) non-augmented classifier confidences / activations
    aug_losses: torch.Tensor  # (K, B) augmented multi-step loss used for the gradient
    num_logged: torch.Tensor  # (B,) iterates logged (stopped samples log fewer)
    stopped_early: torch.Tensor  # (B,) bool: early-stopping criterion met
    nonfinite: torch.Tensor  # (B,) bool: loss turned NaN/inf, sample stopped and flagged
    z_T: torch.Tensor  # (B,C,h,w) optimised latent at the best iterate
    cond_delta: torch.Tensor | None  # (B,T|1,L,D) at the best iterate
    uncond_delta: torch.Tensor | None
    trajectory: torch.Tensor | None = None  # (K+1,B,3,H,W) on CPU when requested
    schedules: dict = field(default_factory=dict)  # learned schedule name → (B,T) factors at the best iterate
    schedule_trajectory: dict = field(default_factory=dict)  # name → (K+1,B,T) factors of each iterate; NaN unlogged


# ------------------------------------------------------------------------------ per-sample optimiser

class MaskedOptimizer:
    """Adam / AdamW / SGD(momentum) over batch-first tensors, updated only where `active` (B,) is set.

    Elementwise like torch.optim, plus a per-sample step count, so stopping one sample never touches another.
    """

    def __init__(self, kind: str, params: list[torch.Tensor], lrs: list[float], betas=(0.9, 0.999), eps=1e-8,
                 weight_decay: float = 0.01, momentum: float = 0.9):
        if kind not in ("adam", "adamw", "sgd"):
            raise ValueError(f"optim_params.sgd_optim must be adam, adamw or sgd, got {kind!r}")
        self.kind, self.params, self.base_lrs = kind, params, list(lrs)
        self.betas, self.eps, self.wd, self.momentum = betas, eps, weight_decay, momentum
        B = params[0].shape[0]
        self.steps = torch.zeros(B, device=params[0].device)
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def _bias_corrections(self, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample Adam step size lr/(1 − β1^t) and √(1 − β2^t), (B,) fp32. Computed in float64 and then rounded,
        as torch.optim.Adam does with its Python-float corrections: in fp32, 1 − β2^t alone is off by ~1e-6
        relative (β2 = 0.999), which made every step ~6e-6 short."""
        b1, b2 = self.betas
        t = self.steps.double().clamp(min=1)
        return (lr / (1 - b1 ** t)).float(), (1 - b2 ** t).sqrt().float()

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor], active_B: torch.Tensor, lrs: list[float] | None = None):
        """One update; `lrs`: this step's learning rate per variable (default: the base rates)."""
        self.steps += active_B.float()
        b1, b2 = self.betas
        for p, g, m, v, lr in zip(self.params, grads, self.m, self.v, self.base_lrs if lrs is None else lrs):
            shape = (-1, *([1] * (p.dim() - 1)))
            act = active_B.view(shape)
            g = torch.where(act, g, torch.zeros_like(g))
            if self.kind == "sgd":
                first = (self.steps == 1).view_as(act)
                new_m = torch.where(first, g, self.momentum * m + g)
                m.copy_(torch.where(act, new_m, m))
                p.copy_(torch.where(act, p - lr * m, p))
                continue
            new_p = p * (1 - lr * self.wd) if self.kind == "adamw" else p
            new_m = torch.lerp(m, g, 1 - b1)  # torch.optim.Adam's own formulas, rounding included
            new_v = (v * b2).addcmul(g, g, value=1 - b2)
            step_B, bc2_sqrt_B = self._bias_corrections(lr)
            denom = new_v.sqrt() / bc2_sqrt_B.view(shape) + self.eps
            new_p = new_p - (step_B.view(shape) * new_m) / denom  # addcdiv's order
            m.copy_(torch.where(act, new_m, m))
            v.copy_(torch.where(act, new_v, v))
            p.copy_(torch.where(act, new_p, p))


def cosine_lrs(base_lrs: list[float], k: int, total: int, eta_min: float) -> list[float]:
    """The reference's one CosineAnnealingLR(T_max=total, eta_min) over all variable groups, at scheduler step k.

    eta_min is absolute (the reference's sgd_stepsize/10) and shared, so each group anneals from its own base lr
    to the same floor: z_T (factor 0.1 → base = eta_min) stays put, a group below the floor rises to it."""
    w = (1 + math.cos(math.pi * k / total)) / 2
    return [eta_min + (lr - eta_min) * w for lr in base_lrs]


def _per_sample(fn, x: torch.Tensor) -> torch.Tensor:
    return fn(x.flatten(1)).view(-1, *([1] * (x.dim() - 1)))


def condition_grads(grads: list[torch.Tensor], clip: float | None, normalize: bool) -> list[torch.Tensor]:
    """Per-sample max-abs clipping (clip_grad_norm_ with norm_type=inf) and/or L2 normalisation."""
    out = []
    for g in grads:
        if clip is not None:
            gmax = _per_sample(lambda f: f.abs().amax(1), g)
            g = g * (clip / (gmax + 1e-6)).clamp(max=1.0)
        if normalize:
            g = g / _per_sample(lambda f: f.norm(dim=1), g).clamp_min(1e-12)
        out.append(g)
    return out


# ------------------------------------------------------------------------------------- main loop

def any_left(active_B: torch.Tensor) -> bool:
    """The loop's one host sync per iteration: does any sample still run (the reference's break)? It is the only
    device→host read of a step, and the one a `torch.cuda.set_sync_debug_mode("error")` check lets through."""
    if active_B.is_cuda and torch.cuda.get_sync_debug_mode():
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(0)
        try:
            return bool(active_B.any())
        finally:
            torch.cuda.set_sync_debug_mode(mode)
    return bool(active_B.any())


def _select_rows(mask_B: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(mask_B.view(-1, *([1] * (new.dim() - 1))), new, old)


def chain_conditioning(cond_BLD, uncond, dC, dU, T: int):
    """Per-step conditioning with the optimised deltas: (B, T, L, D) each."""
    cond_TBLD = (cond_BLD.unsqueeze(1) + dC).expand(-1, T, -1, -1)
    base_u = uncond if uncond.dim() == 4 else uncond.unsqueeze(1)
    return cond_TBLD, (base_u + dU).expand(-1, T, -1, -1)


def chain_images(sd, sched, z, dC, dU, cond_BLD, uncond, cfg: GuidanceConfig, loss_steps, blend=None, controller=None):
    """Forward DDIM chain with the deltas applied (with grad when enabled: one autograd graph over the chain), then
    decode the x̂0 of every loss step."""
    cond_TBLD, uncond_TBLD = chain_conditioning(cond_BLD, uncond, dC, dU, sched.num_steps)
    out = run_chain(sd, sched, z, cond_TBLD, uncond_TBLD, cfg.guidance_scale, keep_x0=set(loss_steps), blend=blend,
                    controller=controller, guidance_rescale=cfg.guidance_rescale)
    imgs = {i: decode_latents(sd, out.x0_kept[i]) for i in loss_steps}
    return out, imgs


def augmented_loss(objective, imgs: dict, x0s: dict, weights: list[float], k: int) -> torch.Tensor:
    """Σ_i w_i · objective(image_i, augmented with per-sample seeds salted by (k, i)) → (B,)."""
    total = 0
    for i, img in imgs.items():
        t_loss, _ = objective(img, x0s[i], (k, i))
        total = total + weights[i] * t_loss
    return total


def with_iterate0_reference(objective, img, x0):
    """txt2img: regularisers without a given reference compare against iterate 0 (the reference
    implementation's behaviour). A new objective; the caller's is left as it was."""
    if getattr(objective, "needs_reference", False):
        return objective.with_reference(img0=img, z0=x0)
    return objective


class IterateLog:
    """Per-iterate non-augmented logs and the best iterate so far (per sample, masked), and the objective this
    run evaluates (the caller's, given iterate 0 as its reference when it had none)."""

    def __init__(self, K: int, B: int, dev, keep_trajectory: bool, objective, learned=()):
        nan = float("nan")
        self.K, self.dev, self.objective = K, dev, objective
        self.learned = list(learned)  # learned schedules: logged per iterate, kept at the best one
        self.schedules = {s.name: torch.full((K + 1, *s.factors_BT.shape), nan, device=dev) for s in self.learned}
        self.losses = torch.full((K + 1, B), nan, device=dev)
        self.aug_losses = torch.full((max(K, 1), B), nan, device=dev)
        self.parts, self.confs = {}, {}
        self.active = torch.ones(B, dtype=torch.bool, device=dev)
        self.stopped_early = torch.zeros(B, dtype=torch.bool, device=dev)
        self.nonfinite = torch.zeros(B, dtype=torch.bool, device=dev)
        self.num_logged = torch.zeros(B, dtype=torch.long, device=dev)
        self.best_loss = torch.full((B,), float("inf"), device=dev)
        self.best_iter = torch.zeros(B, dtype=torch.long, device=dev)
        self.best_img = self.sd_img = None
        self.best_vars = None
        self.trajectory = [] if keep_trajectory else None

    def _put(self, log: dict, name: str, k: int, val, logged):
        nan = torch.full_like(val.float(), float("nan"))
        log.setdefault(name, torch.full((self.K + 1, logged.shape[0]), float("nan"), device=self.dev))[k] = \
            torch.where(logged, val.float(), nan)

    @torch.no_grad()
    def record(self, k: int, img_final, x0_final, variables):
        """Log iterate k's non-augmented objective on the reported image; update the best iterate."""
        variables = (*variables, *(s.factors_BT for s in self.learned))
        if k == 0:
            self.objective = with_iterate0_reference(self.objective, img_final, x0_final)
        objective = self.objective
        total, parts = objective(img_final, x0_final, None)
        confs = objective.confidences(img_final) if hasattr(objective, "confidences") else {}
        logged = self.active.clone()
        finite = torch.isfinite(total)
        self.nonfinite |= logged & ~finite
        logged &= finite
        self.losses[k] = torch.where(logged, total, torch.full_like(total, float("nan")))
        for name, val in parts.items():
            self._put(self.parts, name, k, val, logged)
        for name, val in confs.items():
            self._put(self.confs, name, k, val, logged)
        for s in self.learned:
            self.schedules[s.name][k] = _select_rows(logged, s.factors_BT.detach(), self.schedules[s.name][k])
        self.num_logged += logged.long()
        if k == 0:
            self.sd_img, self.best_img = img_final.clone(), img_final.clone()
            self.best_vars = [v.detach().clone() for v in variables]
        better = logged & (total < self.best_loss)
        self.best_loss = torch.where(better, total, self.best_loss)
        self.best_iter = torch.where(better, torch.full_like(self.best_iter, k), self.best_iter)
        self.best_img = _select_rows(better, img_final, self.best_img)
        self.best_vars = [_select_rows(better, v.detach(), bv) for v, bv in zip(variables, self.best_vars)]
        if self.trajectory is not None:
            self.trajectory.append(img_final.cpu())
        self.active &= logged

    @torch.no_grad()
    def record_augmented(self, k: int, aug_total, early_stopping_loss):
        """Flag non-finite augmented losses and early stops; returns the samples still optimised."""
        self.aug_losses[k] = torch.where(self.active, aug_total.detach(), torch.full_like(self.best_loss, float("nan")))
        aug_finite = torch.isfinite(aug_total)
        self.nonfinite |= self.active & ~aug_finite
        self.active &= aug_finite
        if early_stopping_loss is not None:
            stop = self.active & (aug_total < early_stopping_loss)
            self.stopped_early |= stop
            self.active &= ~stop
        return self.active


def _grads_autograd(sd, sched, z, dC, dU, cond_f, uncond_f, cfg, loss_steps, weights, k, log,
                    variables, blend, controller):
    """One iterate with a single autograd graph over the chain (checkpoint none | block). → grads or None."""
    T = sched.num_steps
    with torch.enable_grad():
        out, imgs = chain_images(sd, sched, z, dC, dU, cond_f, uncond_f, cfg, loss_steps, blend, controller)
    log.record(k, imgs[T - 1].detach(), out.x0_kept[T - 1].detach(), (z, dC, dU))
    with torch.enable_grad():
        aug_total = augmented_loss(log.objective, imgs, out.x0_kept, weights, k)
    active = log.record_augmented(k, aug_total, cfg.optim_params.early_stopping_loss)
    if not any_left(active):  # the loop's one host sync per iteration
        return None
    masked = torch.where(active, aug_total, torch.zeros_like(aug_total)).sum()
    grads = torch.autograd.grad(masked, variables, allow_unused=True)
    return [torch.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]


def _grads_adjoint(sd, sched, z, dC, dU, cond_f, uncond_f, cfg, loss_steps, weights, k, log,
                   blend, controller):
    """One iterate by the per-step adjoint (checkpoint step). → (g_z, g_dC, g_dU, *g_schedules) or None when all
    stopped."""
    T = sched.num_steps
    op = cfg.optim_params
    cond_TBLD, uncond_TBLD = chain_conditioning(cond_f, uncond_f, dC, dU, T)
    with torch.no_grad():
        out = run_chain(sd, sched, z, cond_TBLD, uncond_TBLD, cfg.guidance_scale, keep_x0=set(loss_steps),
                        blend=blend, controller=controller, record_inputs=True, guidance_rescale=cfg.guidance_rescale)
    g_x0, aug_total = {}, 0
    for i in sorted(loss_steps, reverse=True):  # the final step first: its image is also the logged one
        x0 = out.x0_kept[i].detach().requires_grad_(True)
        with torch.enable_grad():
            img = decode_latents(sd, x0)
            if i == T - 1:
                log.record(k, img.detach(), x0.detach(), (z, dC, dU))
            loss_B, _ = log.objective(img, x0, (k, i))
            loss_B = weights[i] * loss_B
            masked = torch.where(log.active, loss_B, torch.zeros_like(loss_B)).sum()
            (g_x0[i],) = torch.autograd.grad(masked, x0)
        aug_total = aug_total + loss_B.detach()
        del img, loss_B, masked
    active = log.record_augmented(k, aug_total, op.early_stopping_loss)
    if not any_left(active):  # the loop's one host sync per iteration
        return None
    g_x0 = {i: _select_rows(active, g, torch.zeros_like(g)) for i, g in g_x0.items()}
    wrt_c, wrt_u = op.optimize_conditioning, op.optimize_uncond
    g_dC, g_dU = torch.zeros_like(dC), torch.zeros_like(dU)
    factors = [s.factors_BT for s in log.learned]
    g_factors = [torch.zeros_like(f) for f in factors]
    g_x = None
    for i in reversed(range(T)):
        g0 = g_x0.get(i)
        if g_x is None and g0 is None:
            continue
        g_x, g_c, g_u, g_f = step_vjp(sd, sched, i, out.inputs[i], step_embedding(cond_TBLD, i),
                                      step_embedding(uncond_TBLD, i), cfg.guidance_scale, g_x, g0, wrt_cond=wrt_c,
                                      wrt_uncond=wrt_u, factors=factors, controller=controller,
                                      guidance_rescale=cfg.guidance_rescale, blend=blend)
        for g_all, g_i in ((g_dC, g_c), (g_dU, g_u)):
            if g_i is not None:
                g_all[:, i if g_all.shape[1] == T else 0] += g_i
        for g_all, g_i in zip(g_factors, g_f):
            g_all += g_i
    return (g_x, g_dC, g_dU, *g_factors)


@torch.no_grad()
def _evaluate(sd, sched, z, dC, dU, cond_f, uncond_f, cfg, k, log, blend, controller):
    """The last iterate: forward chain and the reported image only."""
    T = sched.num_steps
    cond_TBLD, uncond_TBLD = chain_conditioning(cond_f, uncond_f, dC, dU, T)
    out = run_chain(sd, sched, z, cond_TBLD, uncond_TBLD, cfg.guidance_scale, blend=blend, controller=controller,
                    guidance_rescale=cfg.guidance_rescale)
    log.record(k, decode_latents(sd, out.x0_last), out.x0_last, (z, dC, dU))


def _check_config(cfg: GuidanceConfig) -> None:
    op = cfg.optim_params
    if op.solver_order != 1:
        raise ValueError("only first-order DDIM (solver_order=1) is supported")
    if cfg.checkpoint not in ("step", "none", "block"):
        raise ValueError(f"checkpoint must be step, none or block, got {cfg.checkpoint!r}")
    if op.sgd_scheduler not in (None, "cosine", "none"):
        raise ValueError(f"optim_params.sgd_scheduler must be None or cosine, got {op.sgd_scheduler!r}")


def optimised_variables(z_T, cond, op: OptimParams, T: int):
    """z_T and the conditioning deltas ΔC, Δ∅ (fp32, batch-first), the ones switched on with their learning rates.
    → (z, dC, dU, variables, lrs)."""
    B, dev = z_T.shape[0], z_T.device
    z = z_T.detach().float().clone()
    L, D = cond.shape[-2:]
    dC = torch.zeros(B, T if op.per_timestep_conditioning_delta else 1, L, D, device=dev)
    dU = torch.zeros(B, T if op.per_timestep_uncond_delta else 1, L, D, device=dev)
    variables, lrs = [], []
    for on, var, factor in ((op.optimize_latents, z, op.latent_lr_factor),
                            (op.optimize_conditioning, dC, op.conditioning_lr_factor),
                            (op.optimize_uncond, dU, op.uncond_lr_factor)):
        if on:
            var.requires_grad_(True)
            variables.append(var)
            lrs.append(op.sgd_stepsize * factor)
    return z, dC, dU, variables, lrs


@contextmanager
def block_checkpointing(sd, on: bool):
    """The reference's compute path: diffusers' block checkpointing in the UNet and the VAE, for one run."""
    if on:
        sd.unet.enable_gradient_checkpointing()
        sd.vae.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if on:
            sd.unet.disable_gradient_checkpointing()
            sd.vae.disable_gradient_checkpointing()


def sgd_update(opt: MaskedOptimizer, grads, active_B, z, z_norm0, op: OptimParams, k: int, K: int,
               learned=()) -> None:
    """Clean and condition the gradients, one masked optimiser step, then put each z_T back on its norm and each
    learned schedule back into [0, 1]. The learned schedules' gradients come last in `grads`."""
    grads = [torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0) for g in grads]
    if learned:
        n = len(learned)
        grads = grads[:-n] + mask_schedule_grads(grads[-n:], learned)
    grads = condition_grads(grads, op.gradient_clipping, op.normalize_gradients)
    lrs = cosine_lrs(opt.base_lrs, k, K, op.sgd_stepsize / 10) if op.sgd_scheduler == "cosine" else None
    opt.step(grads, active_B, lrs)
    if op.optimize_latents:
        with torch.no_grad():  # keep each sample's Gaussian / inverted latent norm
            z.copy_(_select_rows(active_B, z * z_norm0 / _per_sample(lambda f: f.norm(dim=1), z), z))
    clamp_schedules(learned)


def guidance_result(log: IterateLog, op: OptimParams, K: int) -> GuidanceResult:
    trajectory = log.trajectory
    if trajectory:  # after an all-stopped break the later iterates equal the last one
        trajectory += [trajectory[-1]] * (K + 1 - len(trajectory))
    best = log.best_vars
    schedules = {s.name: v for s, v in zip(log.learned, best[3:])}
    return GuidanceResult(
        sd_images=log.sd_img, ours_images=log.best_img, best_iter=log.best_iter, losses=log.losses,
        parts=log.parts, confidences=log.confs, aug_losses=log.aug_losses[:K], num_logged=log.num_logged,
        stopped_early=log.stopped_early, nonfinite=log.nonfinite, z_T=best[0],
        cond_delta=best[1] if op.optimize_conditioning else None,
        uncond_delta=best[2] if op.optimize_uncond else None,
        trajectory=torch.stack(trajectory) if trajectory else None, schedules=schedules,
        schedule_trajectory=dict(log.schedules))


def optimise(sd, objective, *, z_T: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
             cfg: GuidanceConfig | None = None, blend: Blend | None = None, controller=None,
             progress=None) -> GuidanceResult:
    """Optimise B samples at once.

    z_T (B,C,h,w) start latent (noise or an inversion); cond (B,L,D) prompt embedding; uncond (B,L,D) or per-step
    null texts (B,T,L,D). `objective(img, z, augment_salt) -> (total_B, parts)` and `objective.confidences(img)`;
    an objective that `needs_reference` is run as `objective.with_reference(iterate 0's image, x̂0)`.
    A `learnable.LearnableBlend` / a controller with `learn` set also optimises those schedules (from copies: the
    blend and controller given keep their factors).
    """
    cfg = cfg or GuidanceConfig()
    _check_config(cfg)
    if uncond.dim() == 4 and uncond.shape[1] != cfg.num_ddim_steps:
        raise ValueError(f"null-text embeddings have {uncond.shape[1]} steps but num_ddim_steps={cfg.num_ddim_steps}")
    with learned_schedules(blend, controller) as (run_blend, learned):
        return _optimise(sd, objective, z_T, cond, uncond, cfg, run_blend, controller, learned, progress)


def _optimise(sd, objective, z_T, cond, uncond, cfg: GuidanceConfig, blend, controller, learned, progress):
    op = cfg.optim_params
    dev = z_T.device
    T, K = cfg.num_ddim_steps, op.sgd_steps
    sched = make_schedule(sd.scheduler_config, T, cfg.solver).to(dev)
    weights = loss_step_weights(T, op.loss_steps, op.loss_steps_schedule)
    loss_steps = [i for i, w in enumerate(weights) if w > 0]
    z, dC, dU, variables, lrs = optimised_variables(z_T, cond, op, T)
    variables += [s.factors_BT for s in learned]  # the reference's extra groups, after z_T, ΔC, Δ∅
    lrs += [s.spec.lr for s in learned]
    z_norm0 = _per_sample(lambda f: f.norm(dim=1), z)
    opt = MaskedOptimizer(op.sgd_optim, variables, lrs) if variables else None
    switched_on = (op.optimize_latents, op.optimize_conditioning, op.optimize_uncond) + (True,) * len(learned)

    cond_f, uncond_f = cond.float(), uncond.float()
    log = IterateLog(K, z.shape[0], dev, cfg.keep_trajectory, objective, learned)
    chain = dict(blend=blend, controller=controller)
    with block_checkpointing(sd, cfg.checkpoint == "block"):
        for k in range(K + 1):
            report_activity("sgd", k, K)  # what a stage's progress heartbeat says inside a long batch
            if k == K or opt is None:
                _evaluate(sd, sched, z, dC, dU, cond_f, uncond_f, cfg, k, log, **chain)
                break
            args = (sd, sched, z, dC, dU, cond_f, uncond_f, cfg, loss_steps, weights, k, log)
            if cfg.checkpoint == "step":
                all_grads = _grads_adjoint(*args, **chain)
                grads = None if all_grads is None else [g for g, on in zip(all_grads, switched_on) if on]
            else:
                grads = _grads_autograd(*args, variables, **chain)
            if grads is None:  # every sample has stopped: the remaining iterations would change nothing
                break
            sgd_update(opt, grads, log.active, z, z_norm0, op, k, K, learned)
            if progress is not None:
                progress(k, log.losses[k])
    return guidance_result(log, op, K)
