"""Compute presets: how a stage runs its models (weight dtype, compile, batch, checkpointing, attention backend,
CUDA graphs, fused kernels), resolved once per run from `preset=` and any single-key override.

    fast       bf16 weights (optimised variables and latents stay fp32), torch.compile (inductor), fused Triton
               kernels, batch 8, per-step recompute, CUDA graph trees for the no-grad chains, TF32 for the few
               fp32 matmuls and convolutions left — the default on CUDA.
    reference  fp32, eager, batch 1, block checkpointing (diffusers' UNet/VAE gradient checkpointing), kernels off,
               TF32 as the reference ran (`tf32=conv`: cuDNN convolutions in TF32, matmuls in full fp32 — PyTorch's
               defaults, which the reference never changes): its compute path, for parity runs and the
               benchmark's baseline.
    eager      fp32, eager, batch 4, per-step recompute, tf32=conv — the default on a CPU (compiling costs minutes
               there).
    auto       fast on CUDA, eager elsewhere.

`tf32`: off (convolutions and matmuls in full fp32) | conv (TF32 convolutions only) | on (both); applied process-wide
by engine/prepare.py (`apply_tf32`) on CUDA, recorded everywhere. `strict_compile`: a call site that falls back to
eager (or loses the CUDA graphs it asked for) stops the run with one line instead of a warning. `compile_scope`: full
(the whole UNet call one graph per grad mode: the most fusion, CUDA graphs) | regional (only its repeated transformer
blocks, one graph per block shape: a fraction of the cold compile, convolutions eager, no CUDA graphs).

The resolved values are recorded in each stage's manifest (they move results through float rounding).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

PRESETS = ("auto", "fast", "reference", "eager")
DTYPES = ("fp32", "bf16", "fp16")
DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
CHECKPOINTS = ("step", "none", "block")
TF32_MODES = ("off", "conv", "on")
COMPILE_SCOPES = ("full", "regional")
ATTENTION_BACKENDS = ("sdpa", "xformers")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")

# The keys a preset fills; a task config may set any of them to override the preset (None = from the preset).
COMPUTE_KEYS = ("dtype", "compile", "compile_backend", "batch_size", "checkpoint", "attention", "cudagraphs",
                "kernels", "tf32", "strict_compile", "compile_scope")


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
    tf32: str = "conv"  # off | conv (cuDNN convolutions only: PyTorch's default, the reference's) | on
    strict_compile: bool = False  # a compile fallback is an error (one line naming the call site), not a warning
    compile_scope: str = "full"  # full: the whole UNet call one graph | regional: its repeated blocks, once each

    def as_dict(self) -> dict:
        return asdict(self)


_VALUES = {
    "fast": dict(dtype="bf16", compile=True, compile_backend="inductor", batch_size=8, checkpoint="step",
                 attention="sdpa", cudagraphs=True, kernels=True, tf32="on", strict_compile=False,
                 compile_scope="full"),
    "reference": dict(dtype="fp32", compile=False, compile_backend="inductor", batch_size=1, checkpoint="block",
                      attention="sdpa", cudagraphs=False, kernels=False, tf32="conv", strict_compile=False,
                      compile_scope="full"),
    "eager": dict(dtype="fp32", compile=False, compile_backend="inductor", batch_size=4, checkpoint="step",
                  attention="sdpa", cudagraphs=False, kernels=True, tf32="conv", strict_compile=False,
                  compile_scope="full"),
}

_ALLOWED = {"dtype": DTYPES, "checkpoint": CHECKPOINTS, "attention": ATTENTION_BACKENDS,
            "compile_backend": COMPILE_BACKENDS, "tf32": TF32_MODES, "compile_scope": COMPILE_SCOPES}


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
    for key in ("compile", "cudagraphs", "kernels", "strict_compile"):
        values[key] = bool(values[key])
    if values["attention"] == "xformers":
        problem = xformers_problem(device)
        if problem:
            raise ValueError(f"attention=xformers: {problem}; use attention=sdpa")
    return ComputeSettings(preset=name, **values)


def compute_of(cfg, device=None) -> ComputeSettings:
    """Resolve a ComputeArgs section's `preset` + compute keys (keys it lacks count as not set)."""
    overrides = {k: getattr(cfg, k, None) for k in COMPUTE_KEYS}
    return resolve_compute(getattr(cfg, "preset", "auto") or "auto", device, **overrides)


def describe(settings: ComputeSettings) -> str:
    """One line for logs and `digin doctor`."""
    s = settings
    comp = f"compile {s.compile_backend}" + (" regional" if s.compile_scope == "regional" else "") if s.compile \
        else "eager"
    graphs = ", CUDA graphs" if (s.compile and s.cudagraphs) else ""
    strict = " (strict)" if (s.compile and s.strict_compile) else ""
    return (f"preset {s.preset}: {s.dtype}, {comp}{strict}{graphs}, batch {s.batch_size}, checkpoint {s.checkpoint}, "
            f"attention {s.attention}, kernels {'on' if s.kernels else 'off'}, tf32 {s.tf32}")


def apply_tf32(mode: str) -> dict:
    """Set PyTorch's TF32 switches for `mode` (process-wide, like the kernel switch) → the flags now in force, for
    rows and manifests. off: convolutions and matmuls in IEEE fp32; conv: TF32 cuDNN convolutions, fp32 matmuls
    (PyTorch's defaults since 1.12, what the reference ran with); on: both TF32."""
    if mode not in TF32_MODES:
        raise ValueError(f"tf32={mode!r} is not allowed (allowed: one of {', '.join(TF32_MODES)})")
    torch.backends.cuda.matmul.allow_tf32 = mode == "on"
    torch.backends.cudnn.allow_tf32 = mode in ("conv", "on")
    return tf32_flags()


def tf32_flags() -> dict:
    """The TF32 switches in force (what a row or manifest records)."""
    return {"matmul_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32)}


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
