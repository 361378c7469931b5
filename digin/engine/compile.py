"""torch.compile / CUDA-graph wrappers for the hot step functions, with fixed shapes and an eager fallback.

What is compiled (each one graph for every timestep, SGD step and batch of the run):
- `guided_ddim_step`: UNet call on [x, x] with [∅, C] + fused CFG/DDIM update → (x_prev, x̂0);
- `unet_cfg`: the UNet call alone → (eps_u, eps_c) halves;
- `decode`: VAE decode of x̂0 → image in [0, 1];
- `classify_cutouts`: fused cutouts + classifier → logits (B, N, K).
Or, for code that calls `sd.unet(...)`/`sd.decode(...)` itself (engine.sampling, guidance, inversion),
`compile_sd(sd)` swaps the UNet's and VAE decoder's `forward` for compiled ones in place.

Fixed shapes: timesteps and DDIM coefficients go in as tensors (a Python int/float would be specialised and
recompile at every step; the recompile limit is 8), tail batches are padded to the run's batch size
(`pad_batch`), and `dynamic=False`. On CUDA with `cudagraphs=True` the inductor mode is
"reduce-overhead" (CUDA graph trees); call `mark_step()` at the start of each SGD iteration.
If compilation fails, the wrapper warns once and runs eagerly from then on (results stay correct).
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor


@dataclass
class CompileConfig:
    enabled: bool = True
    backend: str = "inductor"  # inductor | aot_eager (CPU tests) | eager | cudagraphs
    mode: str | None = None  # None: reduce-overhead on CUDA with cudagraphs, else max-autotune-no-cudagraphs
    cudagraphs: bool = True  # only applies to inductor on CUDA tensors
    fullgraph: bool = False
    dynamic: bool = False
    cache_dir: str | None = None  # inductor/AOT-autograd cache; None keeps torch's default
    channels_last: bool = True  # convolution layout for UNet/VAE in `compile_sd`


def enable_compile_caches(cache_dir: str | os.PathLike | None = None):
    """Persistent FX-graph and AOT-autograd caches, so a second run (or rank) skips most compile time."""
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    if hasattr(functorch_config, "enable_autograd_cache"):
        functorch_config.enable_autograd_cache = True


def _compile_kwargs(cfg: CompileConfig, device: torch.device | None) -> dict:
    kw = dict(backend=cfg.backend, fullgraph=cfg.fullgraph, dynamic=cfg.dynamic)
    if cfg.backend == "inductor":
        on_cuda = device is not None and torch.device(device).type == "cuda"
        kw["mode"] = cfg.mode or ("reduce-overhead" if (cfg.cudagraphs and on_cuda) else "max-autotune-no-cudagraphs")
    return kw


class CompiledFunction:
    """`fn` compiled with torch.compile; on a compile error: one warning, then eager for good.

    Attributes: `name`, `fell_back` (bool), `error` (the exception text), `first_call_s` (wall time of the
    first call, i.e. tracing + compilation + one run).
    """

    def __init__(self, fn, cfg: CompileConfig | None = None, name: str | None = None, device=None):
        self.cfg = cfg or CompileConfig()
        self.eager = fn
        self.name = name or getattr(fn, "__name__", "fn")
        self.fell_back, self.error, self.first_call_s = False, None, None
        if self.cfg.enabled:
            if self.cfg.cache_dir is not None:
                enable_compile_caches(self.cfg.cache_dir)
            self.compiled = torch.compile(fn, **_compile_kwargs(self.cfg, device))
        else:
            self.compiled = None

    def __call__(self, *args, **kwargs):
        if self.compiled is None or self.fell_back:
            return self.eager(*args, **kwargs)
        t0 = time.perf_counter() if self.first_call_s is None else None
        try:
            out = self.compiled(*args, **kwargs)
        except (torch.OutOfMemoryError, *_must_propagate()):
            raise
        except Exception as e:  # compiler/tracing failure: stay correct, say so once
            self.fell_back, self.error = True, f"{type(e).__name__}: {e}"
            warnings.warn(f"digin.compile: compiling {self.name!r} failed, running it eagerly ({self.error[:500]})",
                          RuntimeWarning, stacklevel=2)
            return self.eager(*args, **kwargs)
        if t0 is not None:
            self.first_call_s = time.perf_counter() - t0
        return out


def _must_propagate() -> tuple:
    """Errors that are not compile failures: a recompile under error_on_recompile (a test asking for none)."""
    from torch._dynamo import exc

    return tuple(getattr(exc, n) for n in ("RecompileError", "FailOnRecompileLimitHit") if hasattr(exc, n))


def mark_step():
    """Start a new CUDA-graph-tree iteration (once per SGD step, before its forward chain)."""
    if torch.cuda.is_available():
        torch.compiler.cudagraph_mark_step_begin()


# --------------------------------------------------------------------------------- fixed batch shapes

def pad_batch(x: Tensor, batch_size: int) -> tuple[Tensor, int]:
    """Pad dim 0 to `batch_size` by repeating the last row (finite values for the padded samples).
    → (padded, number of real rows). Results of padded rows are dropped with `x[:n]`."""
    n = x.shape[0]
    if n > batch_size:
        raise ValueError(f"batch of {n} exceeds the compiled batch size {batch_size}")
    if n == batch_size:
        return x, n
    if n == 0:
        raise ValueError("cannot pad an empty batch")
    return torch.cat([x, x[-1:].expand(batch_size - n, *x.shape[1:])]), n


def valid_mask(n: int, batch_size: int, device=None) -> Tensor:
    """(batch_size,) bool: True for real rows, False for padding (mask losses / optimiser steps)."""
    return torch.arange(batch_size, device=device) < n


# ------------------------------------------------------------------------------------ step functions

def guided_ddim_step_eager(unet, x_BCHW: Tensor, t: Tensor, uncond_BLD: Tensor, cond_BLD: Tensor, guidance_scale,
                           a_t: Tensor, a_prev: Tensor, prediction_type: str = "epsilon"):
    """One CFG-guided DDIM step: UNet on [x, x] with [∅, C], then the fused CFG + DDIM update → (x_prev, x̂0)."""
    from ..kernels import fused_cfg_ddim

    eps_u, eps_c = unet_cfg_eager(unet, x_BCHW, t, uncond_BLD, cond_BLD)
    return fused_cfg_ddim(eps_u, eps_c, x_BCHW, guidance_scale, a_t, a_prev, prediction_type)


def unet_cfg_eager(unet, x_BCHW: Tensor, t: Tensor, uncond_BLD: Tensor, cond_BLD: Tensor):
    """UNet on the CFG batch → (eps_u, eps_c) in the weight dtype (the fused step upcasts)."""
    dt = next(unet.parameters()).dtype
    B = x_BCHW.shape[0]
    x2 = torch.cat([x_BCHW, x_BCHW]).to(dt)
    emb = torch.cat([uncond_BLD, cond_BLD]).to(dt)
    out = unet(x2, t, encoder_hidden_states=emb, return_dict=False)[0]
    return out[:B], out[B:]


def decode_eager(vae, z_BCHW: Tensor) -> Tensor:
    """x̂0 latent → image in [0, 1], fp32 (as SDModel.decode)."""
    dt = next(vae.parameters()).dtype
    img = vae.decode((z_BCHW / vae.config.scaling_factor).to(dt), return_dict=False)[0].float()
    return (img / 2 + 0.5).clamp(0, 1)


def classify_cutouts_eager(classifier, img_BCHW: Tensor, boxes_BN3: Tensor, noise_BNCss: Tensor | None,
                           size: int, mean_C, std_C) -> Tensor:
    """Fused cutouts → classifier → logits (B, N, K) fp32."""
    from ..kernels import fused_cutouts

    dt = next(classifier.parameters()).dtype
    cut = fused_cutouts(img_BCHW, boxes_BN3, size, mean_C, std_C, noise_BNCss, out_dtype=dt)
    B, N = cut.shape[:2]
    return classifier(cut.flatten(0, 1)).float().view(B, N, -1)


@dataclass
class StepFunctions:
    """The compiled (or eager) hot functions for one model set and one fixed batch size."""

    guided_ddim_step: object
    unet_cfg: object
    decode: object
    classify_cutouts: object | None

    def compiled(self):
        return [f for f in (self.guided_ddim_step, self.unet_cfg, self.decode, self.classify_cutouts)
                if isinstance(f, CompiledFunction)]


def build_step_functions(sd, classifier=None, cfg: CompileConfig | None = None,
                         prediction_type: str | None = None) -> StepFunctions:
    """Compile the step functions over `sd`'s UNet/VAE (and a classifier). `cfg.enabled=False` → eager."""
    cfg = cfg or CompileConfig()
    pt = prediction_type or sd.prediction_type
    unet, vae, dev = sd.unet, sd.vae, sd.device

    def guided_ddim_step(x_BCHW, t, uncond_BLD, cond_BLD, guidance_scale, a_t, a_prev):
        return guided_ddim_step_eager(unet, x_BCHW, t, uncond_BLD, cond_BLD, guidance_scale, a_t, a_prev, pt)

    def unet_cfg(x_BCHW, t, uncond_BLD, cond_BLD):
        return unet_cfg_eager(unet, x_BCHW, t, uncond_BLD, cond_BLD)

    def decode(z_BCHW):
        return decode_eager(vae, z_BCHW)

    def classify_cutouts(img_BCHW, boxes_BN3, noise_BNCss, size, mean_C, std_C):
        return classify_cutouts_eager(classifier, img_BCHW, boxes_BN3, noise_BNCss, size, mean_C, std_C)

    def wrap(fn, name):
        return CompiledFunction(fn, cfg, name, dev) if cfg.enabled else fn

    return StepFunctions(wrap(guided_ddim_step, "guided_ddim_step"), wrap(unet_cfg, "unet_cfg"),
                         wrap(decode, "vae_decode"),
                         wrap(classify_cutouts, "classify_cutouts") if classifier is not None else None)


# ------------------------------------------------------------------------------------ in-place modules

def compile_module(module: torch.nn.Module, cfg: CompileConfig | None = None, name: str | None = None):
    """Replace `module.forward` by a compiled one (with eager fallback); `uncompile_module` undoes it."""
    cfg = cfg or CompileConfig()
    if not cfg.enabled:
        return module
    dev = next(module.parameters()).device
    module.forward = CompiledFunction(type(module).forward.__get__(module), cfg, name or type(module).__name__, dev)
    return module


def uncompile_module(module: torch.nn.Module):
    if isinstance(module.__dict__.get("forward"), CompiledFunction):
        del module.forward
    return module


def compile_sd(sd, cfg: CompileConfig | None = None):
    """Compile the UNet and the VAE decoder of an SDModel in place (what sd.unet(...) / sd.decode(...) run)."""
    cfg = cfg or CompileConfig()
    if cfg.channels_last and sd.device.type == "cuda":
        sd.unet.to(memory_format=torch.channels_last)
        sd.vae.to(memory_format=torch.channels_last)
    compile_module(sd.unet, cfg, "unet")
    compile_module(sd.vae.decoder, cfg, "vae_decoder")
    return sd


def uncompile_sd(sd):
    uncompile_module(sd.unet)
    uncompile_module(sd.vae.decoder)
    return sd
