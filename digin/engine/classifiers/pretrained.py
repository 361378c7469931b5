"""Pretrained weights of a named timm / torchvision classifier, found offline or refused.

A classifier named without a checkpoint file loads its pretrained weights from the local caches only — the
Hugging Face hub cache (timm's `hf_hub_id` repos, `$HF_HUB_CACHE` or `$HF_HOME/hub`) and the torch hub cache
(`$TORCH_HOME/hub/checkpoints`, where timm's and torchvision's URL weights land) — never from the network. When
none is there the stage stops before writing anything, naming the spec, the key to give and every place it
looked. Random weights only when asked for (`allow_random=True`; the stages' `random_weights=true`).
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from digin.errors import ConfigError

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def hf_cache_dir() -> str:
    """The hub cache as the environment says now (huggingface_hub reads it once at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def torch_hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_hf_file(repo_id: str, filenames=HF_WEIGHT_FILES) -> tuple[str | None, list[str]]:
    """(path of the first of `filenames` in the local hub cache of `repo_id`, or None; where it looked)."""
    from huggingface_hub import try_to_load_from_cache

    cache, looked = hf_cache_dir(), []
    for fn in filenames:
        looked.append(f"{cache}/models--{repo_id.replace('/', '--')}/snapshots/*/{fn}")
        path = try_to_load_from_cache(repo_id, fn, cache_dir=cache)
        if isinstance(path, str):
            return path, looked
    return None, looked


def cached_url_file(url: str) -> tuple[str | None, list[str]]:
    path = torch_hub_checkpoints() / os.path.basename(urlparse(url).path)
    return (str(path) if path.is_file() else None), [str(path)]


def refuse(spec: str, key: str, looked: list[str]) -> ConfigError:
    where = "; ".join(looked) if looked else "no pretrained weights are known for this name"
    return ConfigError(f"classifier {spec}: no weights: give {key}=<weights file>, or put its pretrained weights in "
                       f"the local caches (looked in: {where}); random_weights=true runs it with random weights "
                       "(tests, smoke runs only)")


def timm_weights(name: str, key: str = "classifier_checkpoint") -> str:
    """The local file of a timm model's pretrained weights (`name` may carry a tag: vit_base_patch16_384.augreg_...),
    or ConfigError naming where it looked."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except (RuntimeError, ValueError):
        cfg = None
    looked: list[str] = []
    if cfg is not None:
        if getattr(cfg, "hf_hub_id", None):
            files = ((cfg.hf_hub_filename,) if getattr(cfg, "hf_hub_filename", None) else ()) + HF_WEIGHT_FILES
            path, where = cached_hf_file(cfg.hf_hub_id, files)
            looked += where
            if path:
                return path
        for url in (getattr(cfg, "url", None), getattr(cfg, "file", None)):
            if url:
                path, where = cached_url_file(url) if "://" in str(url) else (
                    (str(url) if Path(url).is_file() else None), [str(url)])
                looked += where
                if path:
                    return path
    raise refuse(f"timm:{name}", key, looked)


def torchvision_weights(name: str, key: str = "classifier_checkpoint") -> str:
    import torchvision

    try:
        url = torchvision.models.get_model_weights(name).DEFAULT.url
    except (ValueError, AttributeError, KeyError):
        raise refuse(f"torchvision:{name}", key, []) from None
    path, looked = cached_url_file(url)
    if path:
        return path
    raise refuse(f"torchvision:{name}", key, looked)

