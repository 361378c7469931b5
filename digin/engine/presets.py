"""Compute presets: how a stage runs its models (weight dtype, compile, batch, checkpointing, attention backend,
CUDA graphs, fused kernels), resolved once per run from `preset=` and any single-key override.

    fast       bf16 weights (optimised variables and latents stay fp32), torch.compile (inductor), fused Triton
               kernels, batch 8, per-step recompute, CUDA graph trees for the no-grad chains — the default on CUDA.
    reference  fp32, eager, batch 1, block checkpointing (diffusers' UNet/VAE gradient checkpointing), kernels off:
               the reference implementation's compute path, for parity runs and the benchmark's baseline.
    eager      fp32, eager, batch 4, per-step recompute — the default on a CPU (compiling costs minutes there).
    auto       fast on CUDA, eager elsewhere.

The resolved values are recorded in each stage's manifest (they move results through float rounding).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

PRESETS = ("auto", "fast", "reference", "eager")
DTYPES = ("fp32", "bf16", "fp16")
DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
CHECKPOINTS = ("step", "none", "block")
ATTENTION_BACKENDS = ("sdpa", "xformers")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")

# The keys a preset fills; a task config may set any of them to override the preset (None = from the preset).
COMPUTE_KEYS = ("dtype", "compile", "compile_backend", "batch_size", "checkpoint", "attention", "cudagraphs",
                "kernels")


@dataclass(frozen=True)
class ComputeSettings:
    preset: str  # the preset the defaults came from: fast | reference | eager
    dtype: str
    compile: bool
    compile_backend: str
    batch_size: int
    checkpoint: str  # step (per-step recompute) | none (keep every activation) | block (the UNet's own)
    attention: str  # sdpa | xformers
    cudagraphs: bool  # CUDA graph trees for the compiled no-grad chains (inductor on CUDA only)
    kernels: bool  # fused Triton kernels (CFG+DDIM step, cutouts) where they run

    def as_dict(self) -> dict:
        return asdict(self)


_VALUES = {
    "fast": dict(dtype="bf16", compile=True, compile_backend="inductor", batch_size=8, checkpoint="step",
                 attention="sdpa", cudagraphs=True, kernels=True),
    "reference": dict(dtype="fp32", compile=False, compile_backend="inductor", batch_size=1, checkpoint="block",
                      attention="sdpa", cudagraphs=False, kernels=False),
    "eager": dict(dtype="fp32", compile=False, compile_backend="inductor", batch_size=4, checkpoint="step",
                  attention="sdpa", cudagraphs=False, kernels=True),
}

_ALLOWED = {"dtype": DTYPES, "checkpoint": CHECKPOINTS, "attention": ATTENTION_BACKENDS,
            "compile_backend": COMPILE_BACKENDS}


def _device_type(device) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def preset_for(preset: str, device=None) -> str:
    """The concrete preset `auto` stands for on `device` (fast on CUDA, eager elsewhere)."""
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is not allowed (allowed: one of {', '.join(PRESETS)})")
    if preset != "auto":
        return preset
    return "fast" if _device_type(device) == "cuda" else "eager"


def resolve_compute(preset: str = "auto", device=None, **overrides) -> ComputeSettings:
    """Preset values for `device`, then every override that is not None. Bad names raise one-line ValueErrors
    that name the key and the allowed values."""
    unknown = set(overrides) - set(COMPUTE_KEYS)
    if unknown:
        raise ValueError(f"unknown compute key(s) {sorted(unknown)}; known: {', '.join(COMPUTE_KEYS)}")
    name = preset_for(preset, device)
    values = dict(_VALUES[name])
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["dtype"] = DTYPE_ALIASES.get(values["dtype"], values["dtype"])
    for key, allowed in _ALLOWED.items():
        if values[key] not in allowed:
            raise ValueError(f"{key}={values[key]!r} is not allowed (allowed: one of {', '.join(allowed)})")
    if isinstance(values["batch_size"], bool) or not isinstance(values["batch_size"], int) \
            or values["batch_size"] < 1:
        raise ValueError(f"batch_size={values['batch_size']!r} is not allowed (allowed: an integer ≥ 1)")
    for key in ("compile", "cudagraphs", "kernels"):
        values[key] = bool(values[key])
    if values["attention"] == "xformers":
        problem = xformers_problem(device)
        if problem:
            raise ValueError(f"attention=xformers: {problem}; use attention=sdpa")
    return ComputeSettings(preset=name, **values)


def compute_of(cfg, device=None) -> ComputeSettings:
    """Resolve a task config's `preset` + compute keys (fields it lacks count as not set)."""
    overrides = {k: getattr(cfg, k, None) for k in COMPUTE_KEYS}
    return resolve_compute(getattr(cfg, "preset", "auto") or "auto", device, **overrides)


def apply_compute(cfg, settings: ComputeSettings):
    """Write the resolved values back into the task config (so the manifest records them). Returns cfg."""
    for f in fields(settings):
        if hasattr(cfg, f.name) and f.name != "preset":
            setattr(cfg, f.name, getattr(settings, f.name))
    return cfg


def describe(settings: ComputeSettings) -> str:
    """One line for logs and `digin doctor`."""
    s = settings
    comp = f"compile {s.compile_backend}" if s.compile else "eager"
    graphs = ", CUDA graphs" if (s.compile and s.cudagraphs) else ""
    return (f"preset {s.preset}: {s.dtype}, {comp}{graphs}, batch {s.batch_size}, checkpoint {s.checkpoint}, "
            f"attention {s.attention}, kernels {'on' if s.kernels else 'off'}")


_XFORMERS_PROBLEM: dict = {}


def xformers_problem(device=None) -> str | None:
    """Why xformers cannot serve attention here (None: it imports and runs a tiny attention on CUDA)."""
    if _device_type(device) != "cuda":
        return "xformers needs a CUDA device"
    if "v" not in _XFORMERS_PROBLEM:
        try:
            import xformers.ops as xops

            q = torch.zeros(1, 8, 1, 8, device="cuda", dtype=torch.float16)
            xops.memory_efficient_attention(q, q, q)
            _XFORMERS_PROBLEM["v"] = None
        except Exception as e:  # ImportError, or a wheel built for another torch/CUDA (no kernels)
            _XFORMERS_PROBLEM["v"] = f"xformers does not work here ({type(e).__name__}: {str(e)[:120]})"
    return _XFORMERS_PROBLEM["v"]
