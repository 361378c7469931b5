"""The one model-preparation path: every stage that runs Stable Diffusion or a classifier (invert, uvce, diff,
neurons, segment, eval) and the benchmark call `prepare_sd` / `prepare_classifier` with the run's resolved
`ComputeSettings` (engine/presets.py), so what `digin bench` measures is what a dataset-wide run executes.

prepare_sd: weight dtype (optimised variables and the latent chain stay fp32), the attention backend (digin's own
processors on every layer, SDPA or xformers, kept for the model's life so Prompt-to-Prompt only attaches a
controller), channels_last on CUDA, and the compiled call sites — the UNet call (`attention.unet_forward`: plain, or
with the attention control as tensor inputs and captured maps as outputs) and the VAE decode, each one graph per
(grad mode, shape, control layout) (engine/compile.py), CUDA graph trees for the no-grad ones under `cudagraphs`.
The TF32 switches of `settings.tf32` are set on CUDA (`presets.apply_tf32`). `SDRuntime.outcomes()` says how each call
site ran (compiled / CUDA graphs / fell back and why, compile seconds, calls run eagerly).
prepare_classifier: dtype, the compiled classifier forward on its views, the fused cutouts op on CUDA, and timm's
gradient checkpointing only under `checkpoint=block` (the reference's).
`set_kernels(settings.kernels)` switches the fused Triton kernels (off in the reference preset).
"""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field

import torch

from digin.kernels import set_kernels
from digin.shards.interrupt import urgent

from .attention import unet_forward, use_backend
from .compile import (Compiled, CompileConfig, _contiguous, _must_propagate, _signature, compiled_or_eager,
                      oom_inside)
from .models import resolve_dtype
from .presets import ComputeSettings, apply_tf32


def compile_config(settings: ComputeSettings, cache_dir: str | None = None) -> CompileConfig:
    return CompileConfig(enabled=settings.compile, backend=settings.compile_backend, cudagraphs=settings.cudagraphs,
                         cache_dir=cache_dir, strict=settings.strict_compile)


@dataclass
class SDRuntime:
    """What `sampling.call_unet` / `sampling.decode_latents` run for a prepared model."""

    settings: ComputeSettings
    unet: object  # (x, t, emb) → prediction in the weight dtype
    decode: object  # x̂0 latent → image in [0, 1] fp32
    notes: list = field(default_factory=list)  # decisions said once (e.g. no CUDA graphs on this device)

    def compiled(self) -> dict:
        """name → compiled graph keys so far (empty when eager)."""
        return {c.name: c.graphs for c in (self.unet, self.decode) if isinstance(c, Compiled)}

    def fell_back(self) -> list[str]:
        return [c.name for c in (self.unet, self.decode) if isinstance(c, Compiled) and c.fell_back]

    def outcomes(self) -> list[dict]:
        """engine.compile outcomes of the UNet and decoder call sites."""
        return [c.outcome() for c in (self.unet, self.decode) if isinstance(c, Compiled)]

    def eager_unet_calls(self) -> int:
        """UNet calls that ran eagerly (compile off, or a fallback): 0 is the fast preset's promise."""
        return self.unet.calls["eager"] if isinstance(self.unet, Compiled) else 0

    def note_once(self, text: str):
        """A compute decision worth one line (stderr, so it lands in the job's log), said once per model."""
        if text not in self.notes and self.settings.compile:
            self.notes.append(text)
            print(f"[digin] {text}", file=sys.stderr, flush=True)


class RegionalUNet(Compiled):
    """The UNet call site under `compile_scope=regional`: the call runs eagerly and each repeated transformer block
    (diffusers' `_repeated_blocks`, BasicTransformerBlock) is compiled — one graph per (block shape, grad mode,
    control layout), shared by every block of that shape, so a cold start compiles a few small graphs instead of the
    whole UNet twice (bench/compile_cold.py measures both). Convolutions, ResNets and the time embedding stay eager
    and there are no CUDA graphs. Keys, compile seconds (the first call of a key), calls and a fallback are recorded
    as for any call site; a compile error restores the eager blocks (or stops the run under strict_compile)."""

    def __init__(self, fn, unet, cfg: CompileConfig, device=None):
        super().__init__(fn, cfg, "unet", device)
        import torch._dynamo.config as dynamo_config

        self.blocks = repeated_blocks(unet)
        # every compiled block shares nn.Module._call_impl's cache: shapes × grad modes × layouts entries
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
        for b in self.blocks:
            b.compile(backend=self.cfg.backend, dynamic=False, fullgraph=self.cfg.fullgraph)

    def uses_cudagraphs(self, grad: bool) -> bool:
        return False

    def __call__(self, *args, **static):
        if self.fell_back:
            self.calls["eager"] += 1
            return self.eager(*args, **static)
        args = _contiguous(args)
        key = (torch.is_grad_enabled(), _signature(args, static))
        first = key not in self._compiled
        t0 = time.perf_counter()
        try:
            with urgent("compiling the UNet's blocks") if first else contextlib.nullcontext():
                out = self.eager(*args, **static)
        except _must_propagate():
            raise
        except Exception as e:
            if oom_inside(e):
                raise torch.OutOfMemoryError(f"out of memory while compiling 'unet' blocks: {str(e)[:300]}") from e
            for b in self.blocks:
                b._compiled_call_impl = None
            return self._give_up(f"{type(e).__name__}: {e}", args, static)
        if first:
            self._compiled[key] = True
            self.compile_s[key] = time.perf_counter() - t0
        self.calls["compiled"] += 1
        return out


def repeated_blocks(unet) -> list:
    """The modules a regional compile compiles: those whose class is in the (inner) UNet's `_repeated_blocks`."""
    inner = getattr(unet, "_modules", {}).get("unet", unet)  # SDXL's wrapper holds the diffusers UNet
    names = set(getattr(inner, "_repeated_blocks", None) or ("BasicTransformerBlock",))
    return [m for m in unet.modules() if type(m).__name__ in names]


def _apply_kernels(settings: ComputeSettings, device):
    set_kernels(settings.kernels)
    if torch.device(device).type == "cuda":  # (on a CPU the switches would change nothing digin runs)
        apply_tf32(settings.tf32)


def prepare_sd(sd, settings: ComputeSettings, cache_dir: str | None = None):
    """Prepare an SDModel / SDXLModel in place for `settings`; returns it. Calling it again replaces the runtime."""
    dev = sd.device
    dt = resolve_dtype(settings.dtype)
    if sd.dtype != dt:
        sd.to(dtype=dt)
    use_backend(sd.unet, settings.attention)
    for b in repeated_blocks(sd.unet):  # a previous regional preparation compiled these in place
        b._compiled_call_impl = None
    if settings.compile and dev.type == "cuda":
        sd.unet.to(memory_format=torch.channels_last)
        sd.vae.to(memory_format=torch.channels_last)
    ccfg = compile_config(settings, cache_dir)
    unet = sd.unet

    def unet_call(x, t, emb, ctl=None, *, layout=None):
        return unet_forward(unet, x, t, emb, ctl, layout=layout)

    def vae_decode(z):
        return sd.decode(z)

    regional = settings.compile and settings.compile_scope == "regional"
    unet_site = RegionalUNet(unet_call, unet, ccfg, dev) if regional else compiled_or_eager(unet_call, ccfg, "unet",
                                                                                              dev)
    sd.runtime = SDRuntime(settings, unet_site, compiled_or_eager(vae_decode, ccfg, "vae_decode", dev))
    if settings.compile and settings.cudagraphs and (dev.type != "cuda" or settings.compile_backend != "inductor"):
        sd.runtime.note_once(f"CUDA graphs need inductor on a CUDA device (here {dev.type}, "
                             f"{settings.compile_backend}): compiled without them")
    _apply_kernels(settings, dev)
    return sd


def prepare_classifier(clf, settings: ComputeSettings, cache_dir: str | None = None):
    """Prepare an ImageClassifier in place: weight dtype, compiled forward on its views, fused cutouts on CUDA."""
    dt = resolve_dtype(settings.dtype)
    if clf.dtype != dt:
        clf.model.to(dtype=dt)
    dev = clf.device
    model = clf.model
    if hasattr(model, "set_grad_checkpointing"):  # the reference checkpoints timm classifiers under cutouts; the
        model.set_grad_checkpointing(settings.checkpoint == "block")  # per-step presets keep one loss step's graph

    def classify_views(x):
        return model(x)

    clf.model_call = compiled_or_eager(classify_views, compile_config(settings, cache_dir), "classifier", dev)
    clf.fused_cutouts = bool(settings.kernels and dev.type == "cuda")
    _apply_kernels(settings, dev)
    return clf
