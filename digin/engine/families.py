"""Which Stable Diffusion family a `model_path` holds, and one loader for all of them.

Families: `sd1` (SD-1.x, ε-prediction, 512 px), `sd2` (SD-2.x: OpenCLIP-H text encoder, D = 1024; the 768-px
checkpoints predict v), `sdxl` (two text encoders, pooled embedding + time ids; see engine/sdxl.py). SD-1.x and
SD-2.x share `SDModel` — v-prediction is read from the scheduler config and handled by the schedule — SDXL
loads as `SDXLModel` with the same interface. A folder's family is read from its configs by
`detect_family` (engine/model_files.py, beside the completeness checks that also need it).
"""
from __future__ import annotations

import os
from pathlib import Path

from digin.engine.classifiers.pretrained import cached_hf_file
from digin.errors import ConfigError

from .model_files import detect_family, require_complete
from .models import build_tiny_sd, load_sd, resolve_dtype
from .sdxl import load_sdxl

FAMILIES = ("sd1", "sd2", "sdxl")

# Native resolution / default solver per family (what a preset or the user starts from).
FAMILY_DEFAULTS = {
    "sd1": dict(resolution=512, solver="ddim"),
    "sd2": dict(resolution=768, solver="ddim"),  # 768-v; the 512 "base" SD-2 checkpoints are ε-prediction
    "sdxl": dict(resolution=1024, solver="euler"),
}

TINY = {"tiny": "sd1", "tiny-sd2": "sd2", "tiny-sdxl": "sdxl"}


def family_of(model_path: str | os.PathLike, model_config: str | None = None) -> str:
    """Family of a tiny preset name, a diffusers folder, or a single file (read from its `model_config` folder)."""
    if str(model_path) in TINY:
        return TINY[str(model_path)]
    p = Path(model_path)
    if p.is_dir():
        return detect_family(p)
    if model_config is not None and Path(model_config).is_dir():
        return detect_family(model_config)
    return "sd1"  # load_sd explains what is missing


def build_tiny_sd2(seed: int = 0, folder: str | os.PathLike | None = None, words: list[str] = ()):
    """Tiny SD-2.x-shaped model: the tiny SD UNet/VAE/text encoder with a v-prediction scheduler."""
    return build_tiny_sd(seed=seed, folder=folder, prediction_type="v_prediction", words=words)


def resolve_model_path(model_path):
    """A local model path as given, or a diffusers hub id (`stable-diffusion-v1-5/stable-diffusion-v1-5`) resolved to
    its snapshot folder in the local Hugging Face hub cache — never downloaded. ConfigError when it is neither."""
    from pathlib import Path

    text = str(model_path)
    if text in TINY or Path(text).exists() or text.startswith(("/", ".", "~")) or text.count("/") != 1:
        return model_path

    index, looked = cached_hf_file(text, ("model_index.json",))
    if index is None:
        raise ConfigError(f"model_path={text}: not a local folder or file, and not a diffusers repo in the local "
                          f"Hugging Face hub cache (looked in {looked[0]}); nothing is downloaded: copy the model "
                          "to a folder (or into the hub cache) and point model_path= at it")
    return str(Path(index).parent)


def load_model(model_path: str | os.PathLike, dtype="fp32", device="cpu", model_config: str | None = None):
    """SDModel (sd1, sd2) or SDXLModel (sdxl) from a local folder, a single file + model_config, a diffusers hub id
    found in the local Hugging Face cache, or a tiny preset name ('tiny', 'tiny-sd2', 'tiny-sdxl'). Offline."""
    model_path = resolve_model_path(model_path)
    if str(model_path) not in TINY:
        require_complete(model_path, model_config)  # names a missing or cut-short file before a loader meets it
    fam = family_of(model_path, model_config)
    if str(model_path) == "tiny-sd2":
        return build_tiny_sd2().to(device=device, dtype=resolve_dtype(dtype)).freeze()
    if fam == "sdxl":
        return load_sdxl(model_path, dtype=dtype, device=device, model_config=model_config)
    return load_sd(model_path, dtype=dtype, device=device, model_config=model_config)


def model_family(sd) -> str:
    """Family of a loaded model."""
    if getattr(sd, "text_encoder_2", None) is not None:
        return "sdxl"
    if sd.scheduler_config.get("prediction_type") == "v_prediction" or sd.text_encoder.config.hidden_size == 1024:
        return "sd2"
    return "sd1"
