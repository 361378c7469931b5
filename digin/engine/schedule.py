"""DDIM tables and differentiable, batched DDIM steps (SD-style schedules).

Matches diffusers' DDIMScheduler (eta = 0) for `scaled_linear`/`linear` betas, `leading`/`trailing`/
`linspace` spacing, `steps_offset` and `set_alpha_to_one`, with epsilon- and v-prediction. Step index
i = 0 is the noisiest step; coefficients are looked up per step so the same step function serves every
timestep (no Python branching on t inside the hot path).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SD_SCHEDULER_DEFAULTS = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
    prediction_type="epsilon",
)


def train_alphas_cumprod(cfg: dict) -> torch.Tensor:
    """ᾱ_t for t = 0..N-1, computed in float32 exactly as diffusers does."""
    n = cfg["num_train_timesteps"]
    kind = cfg["beta_schedule"]
    if kind == "scaled_linear":
        betas = torch.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n, dtype=torch.float32) ** 2
    elif kind == "linear":
        betas = torch.linspace(cfg["beta_start"], cfg["beta_end"], n, dtype=torch.float32)
    else:
        raise ValueError(f"unsupported beta_schedule {kind!r} (scaled_linear or linear)")
    return torch.cumprod(1.0 - betas, dim=0)


def inference_timesteps(cfg: dict, num_steps: int) -> torch.Tensor:
    """The T timesteps the sampler visits, noisiest first (as DDIMScheduler.set_timesteps)."""
    n = cfg["num_train_timesteps"]
    spacing = cfg.get("timestep_spacing", "leading")
    if num_steps > n:
        raise ValueError(f"num_ddim_steps={num_steps} exceeds num_train_timesteps={n}")
    if spacing == "leading":
        ratio = n // num_steps
        ts = (torch.arange(num_steps) * ratio).flip(0) + cfg.get("steps_offset", 0)
    elif spacing == "trailing":
        ratio = n / num_steps
        ts = (torch.arange(n, 0, -ratio).round() - 1).long()
    elif spacing == "linspace":
        ts = torch.linspace(0, n - 1, num_steps).round().flip(0).long()
    else:
        raise ValueError(f"unsupported timestep_spacing {spacing!r}")
    return ts.long()


@dataclass(frozen=True)
class DDIMSchedule:
    """Per-step DDIM coefficients for T inference steps (index 0 = noisiest)."""

    timesteps: torch.Tensor  # (T,) long
    alpha_t: torch.Tensor  # (T,) ᾱ at timesteps[i]
    alpha_prev: torch.Tensor  # (T,) ᾱ at timesteps[i] - ratio (final ᾱ for the last step)
    prediction_type: str
    num_train_timesteps: int

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.numel())

    def to(self, device) -> "DDIMSchedule":
        return DDIMSchedule(self.timesteps.to(device), self.alpha_t.to(device), self.alpha_prev.to(device),
                            self.prediction_type, self.num_train_timesteps)


SCHEDULER_FILE = "scheduler/scheduler_config.json"
# Scheduler options whose non-default value changes the sampler in ways these tables do not reproduce.
DDIM_UNSUPPORTED = ("clip_sample", "thresholding", "rescale_betas_zero_snr")
EULER_UNSUPPORTED = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "rescale_betas_zero_snr")


def refuse_unsupported(cfg: dict | None, flags: tuple, solver: str) -> None:
    """A one-line error for the first of `flags` set (truthy) in the model's scheduler config."""
    for flag in flags:
        if (cfg or {}).get(flag):
            raise ValueError(f"{solver} solver: {flag}={cfg[flag]!r} in the model's {SCHEDULER_FILE} is not "
                             f"supported (set it to false there or use another model)")


def make_ddim_schedule(cfg: dict | None, num_steps: int, prediction_type: str | None = None) -> DDIMSchedule:
    refuse_unsupported(cfg, DDIM_UNSUPPORTED, "DDIM")
    full = dict(SD_SCHEDULER_DEFAULTS)
    full.update({k: v for k, v in (cfg or {}).items() if k in SD_SCHEDULER_DEFAULTS})
    if prediction_type is not None:
        full["prediction_type"] = prediction_type
    if full["prediction_type"] not in ("epsilon", "v_prediction"):
        raise ValueError(f"unsupported prediction_type {full['prediction_type']!r}")
    ac = train_alphas_cumprod(full)
    final = torch.tensor(1.0) if full["set_alpha_to_one"] else ac[0]
    ts = inference_timesteps(full, num_steps)
    ratio = full["num_train_timesteps"] // num_steps
    prev = ts - ratio
    alpha_prev = torch.where(prev >= 0, ac[prev.clamp(min=0)], final)
    return DDIMSchedule(ts, ac[ts], alpha_prev, full["prediction_type"], full["num_train_timesteps"])


def _eps_and_x0(model_out: torch.Tensor, x_t: torch.Tensor, a_t: torch.Tensor, prediction_type: str):
    b_t = 1 - a_t
    if prediction_type == "epsilon":
        x0 = (x_t - b_t ** 0.5 * model_out) / a_t ** 0.5
        eps = model_out
    else:  # v_prediction
        x0 = a_t ** 0.5 * x_t - b_t ** 0.5 * model_out
        eps = a_t ** 0.5 * model_out + b_t ** 0.5 * x_t
    return eps, x0


def ddim_step(sched: DDIMSchedule, i: int, model_out: torch.Tensor, x_t: torch.Tensor):
    """One deterministic DDIM step (eta = 0). Returns (x_{t-1}, x̂0). Differentiable, batched over dim 0."""
    a_t = sched.alpha_t[i]
    a_prev = sched.alpha_prev[i]
    eps, x0 = _eps_and_x0(model_out, x_t, a_t, sched.prediction_type)
    x_prev = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    return x_prev, x0


def ddim_invert_step(sched: DDIMSchedule, j: int, model_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Inversion step j = 0..T-1 from clean to noisy (the prompt-to-prompt `next_step`).

    The model is evaluated at timestep sched.timesteps[T-1-j] on the current (less noisy) latent; the
    latent moves from ᾱ_prev of that step to ᾱ of that step.
    """
    i = sched.num_steps - 1 - j
    a_cur = sched.alpha_prev[i]
    a_next = sched.alpha_t[i]
    eps, x0 = _eps_and_x0(model_out, x, a_cur, sched.prediction_type)
    return a_next ** 0.5 * x0 + (1 - a_next) ** 0.5 * eps


def cfg_combine(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def loss_step_weights(num_steps: int, loss_steps: int, schedule: str = "linear") -> list[float]:
    """Weight of each DDIM step's x̂0 in the loss (zero outside the last `loss_steps`)."""
    if not 1 <= loss_steps <= num_steps:
        raise ValueError(f"loss_steps={loss_steps} must be in 1..num_ddim_steps={num_steps}")
    w = [0.0] * num_steps
    L = loss_steps
    for i in range(num_steps - L, num_steps):
        if schedule == "uniform":
            w[i] = 1.0 / L
        elif schedule == "linear":
            w[i] = (1 + L - num_steps + i) / (L * (L + 1) / 2)
        else:
            raise ValueError(f"loss_steps_schedule must be 'linear' or 'uniform', got {schedule!r}")
    return w


# ------------------------------------------------------------------------- Euler solver, guidance rescale


def rescale_noise_cfg(eps_cfg: torch.Tensor, eps_cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, §3.4; diffusers' rescale_noise_cfg): per sample, scale the CFG
    prediction to the std of the conditional one and mix with factor phi (0 = plain CFG)."""
    if phi == 0:
        return eps_cfg
    dims = list(range(1, eps_cfg.dim()))
    std_c = eps_cond.std(dim=dims, keepdim=True)
    std_g = eps_cfg.std(dim=dims, keepdim=True)
    return phi * (eps_cfg * (std_c / std_g)) + (1 - phi) * eps_cfg


EULER_DEFAULTS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      timestep_spacing="leading", steps_offset=1, prediction_type="epsilon",
                      interpolation_type="linear", final_sigmas_type="zero", timestep_type="discrete")


def _euler_cfg(cfg: dict | None) -> dict:
    full = dict(EULER_DEFAULTS)
    full.update({k: v for k, v in (cfg or {}).items() if k in EULER_DEFAULTS and v is not None})
    refuse_unsupported(cfg, EULER_UNSUPPORTED, "Euler")
    if full["interpolation_type"] != "linear" or full["timestep_type"] != "discrete":
        raise ValueError("Euler solver supports interpolation_type='linear' and timestep_type='discrete' only")
    return full


def euler_timesteps_sigmas(cfg: dict | None, num_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps (T,) float32, sigmas (T+1,) float32) exactly as EulerDiscreteScheduler.set_timesteps."""
    import numpy as np

    full = _euler_cfg(cfg)
    n = full["num_train_timesteps"]
    spacing = full["timestep_spacing"]
    if spacing == "linspace":
        ts = np.linspace(0, n - 1, num_steps, dtype=np.float32)[::-1].copy()
    elif spacing == "leading":
        ratio = n // num_steps
        ts = (np.arange(0, num_steps) * ratio).round()[::-1].copy().astype(np.float32) + full["steps_offset"]
    elif spacing == "trailing":
        ts = np.arange(n, 0, -n / num_steps).round().copy().astype(np.float32) - 1
    else:
        raise ValueError(f"unsupported timestep_spacing {spacing!r}")
    ac = train_alphas_cumprod(full)
    sig_full = (((1 - ac) / ac) ** 0.5).numpy()
    sig = np.interp(ts, np.arange(0, len(sig_full)), sig_full)
    last = float(sig_full[0]) if full["final_sigmas_type"] == "sigma_min" else 0.0
    sig = np.concatenate([sig, [last]]).astype(np.float32)
    return torch.from_numpy(ts.astype(np.float32)), torch.from_numpy(sig)


def make_euler_schedule(cfg: dict | None, num_steps: int, prediction_type: str | None = None) -> DDIMSchedule:
    """Euler-discrete (ancestral-free) as a DDIMSchedule: ᾱ = 1/(σ²+1) at Euler's σ table (see module doc)."""
    full = _euler_cfg(cfg)
    pt = prediction_type or full["prediction_type"]
    if pt not in ("epsilon", "v_prediction"):
        raise ValueError(f"unsupported prediction_type {pt!r}")
    ts, sig = euler_timesteps_sigmas(full, num_steps)
    alpha = 1.0 / (sig.double() ** 2 + 1.0)
    ts_out = ts.long() if torch.equal(ts, ts.round()) else ts  # integer timesteps stay long (as DDIM's)
    return DDIMSchedule(ts_out, alpha[:-1].float(), alpha[1:].float(), pt, full["num_train_timesteps"])


def euler_init_scale(cfg: dict | None, num_steps: int) -> float:
    """x_T = n · this reproduces diffusers' Euler start x̄_T = n · init_noise_sigma (1.0 for 'leading')."""
    full = _euler_cfg(cfg)
    _, sig = euler_timesteps_sigmas(full, num_steps)
    s = float(sig.max())
    init = s if full["timestep_spacing"] in ("linspace", "trailing") else (s * s + 1) ** 0.5
    return init / (float(sig[0]) ** 2 + 1) ** 0.5


SOLVERS = ("ddim", "euler")


def make_schedule(cfg: dict | None, num_steps: int, solver: str = "ddim",
                  prediction_type: str | None = None) -> DDIMSchedule:
    """The step table for `solver` (ddim | euler); both run through schedule.ddim_step."""
    if solver == "ddim":
        return make_ddim_schedule(cfg, num_steps, prediction_type)
    if solver == "euler":
        return make_euler_schedule(cfg, num_steps, prediction_type)
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
