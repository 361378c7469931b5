"""The one model-preparation path: every stage that runs Stable Diffusion or a classifier (invert, uvce, diff,
neurons, segment, eval) and the benchmark call `prepare_sd` / `prepare_classifier` with the run's resolved
`ComputeSettings` (engine/presets.py), so what `digin bench` measures is what a dataset-wide run executes.

prepare_sd: weight dtype (optimised variables and the latent chain stay fp32), the attention backend (digin's own
processors on every layer, SDPA or xformers, kept for the model's life so Prompt-to-Prompt only attaches a
controller), channels_last on CUDA, and the compiled call sites — the UNet call and the VAE decode, each one graph
per (grad mode, shape) (engine/compile.py), CUDA graph trees for the no-grad ones under `cudagraphs`.
prepare_classifier: dtype, the compiled classifier forward on its views, the fused cutouts op on CUDA, and timm's
gradient checkpointing only under `checkpoint=block` (the reference's).
`set_kernels(settings.kernels)` switches the fused Triton kernels (off in the reference preset).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

from .compile import Compiled, CompileConfig, compiled_or_eager
from .presets import ComputeSettings

def compile_config(settings: ComputeSettings, cache_dir: str | None = None) -> CompileConfig:
    return CompileConfig(enabled=settings.compile, backend=settings.compile_backend, cudagraphs=settings.cudagraphs,
                         cache_dir=cache_dir)


@dataclass
class SDRuntime:
    """What `sampling.call_unet` / `sampling.decode_latents` run for a prepared model."""

    settings: ComputeSettings
    unet: object  # (x, t, emb) → prediction in the weight dtype
    decode: object  # x̂0 latent → image in [0, 1] fp32
    notes: list = field(default_factory=list)  # decisions said once (e.g. eager steps under a controller)

    def compiled(self) -> dict:
        """name → compiled graph keys so far (empty when eager)."""
        return {c.name: c.graphs for c in (self.unet, self.decode) if isinstance(c, Compiled)}

    def fell_back(self) -> list[str]:
        return [c.name for c in (self.unet, self.decode) if isinstance(c, Compiled) and c.fell_back]

    def note_once(self, text: str):
        """A compute decision worth one line (stderr, so it lands in the job's log), said once per model."""
        if text not in self.notes and self.settings.compile:
            self.notes.append(text)
            print(f"[digin] {text}", file=sys.stderr, flush=True)


def _apply_kernels(settings: ComputeSettings):
    from digin.kernels import set_kernels

    set_kernels(settings.kernels)


def prepare_sd(sd, settings: ComputeSettings, cache_dir: str | None = None):
    """Prepare an SDModel / SDXLModel in place for `settings`; returns it. Calling it again replaces the runtime."""
    from .attention import use_backend
    from .models import resolve_dtype

    dev = sd.device
    dt = resolve_dtype(settings.dtype)
    if sd.dtype != dt:
        sd.to(dtype=dt)
    use_backend(sd.unet, settings.attention)
    if settings.compile and dev.type == "cuda":
        sd.unet.to(memory_format=torch.channels_last)
        sd.vae.to(memory_format=torch.channels_last)
    ccfg = compile_config(settings, cache_dir)
    unet = sd.unet

    def unet_call(x, t, emb):
        return unet(x, t, encoder_hidden_states=emb, return_dict=False)[0]

    def vae_decode(z):
        return sd.decode(z)

    sd.runtime = SDRuntime(settings, compiled_or_eager(unet_call, ccfg, "unet", dev),
                           compiled_or_eager(vae_decode, ccfg, "vae_decode", dev))
    if settings.compile and settings.cudagraphs and (dev.type != "cuda" or settings.compile_backend != "inductor"):
        sd.runtime.note_once(f"CUDA graphs need inductor on a CUDA device (here {dev.type}, "
                             f"{settings.compile_backend}): compiled without them")
    _apply_kernels(settings)
    return sd


def prepare_classifier(clf, settings: ComputeSettings, cache_dir: str | None = None):
    """Prepare an ImageClassifier in place: weight dtype, compiled forward on its views, fused cutouts on CUDA."""
    from .models import resolve_dtype

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
    _apply_kernels(settings)
    return clf
