"""Classifier weight files: safetensors preferred; anything else goes through `torch.load(weights_only=True)`,
never a plain unpickle. State-dict key clean-up for the checkpoint layouts the families load."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn


def load_weights_file(path) -> dict:
    """State dict from a .safetensors file, or from torch.load(weights_only=True) — never a full unpickle."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import pickle

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
        raise ValueError(f"refusing to load {path}: it is not a plain tensor checkpoint (weights_only=True "
                         f"rejected it: {str(e).splitlines()[0][:200]}). Convert it to safetensors with a "
                         f"trusted tool.") from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return dict(obj)


def unwrap_state_dict(sd: Mapping) -> dict:
    """Follow `state_dict` / `model` nesting and keep tensors only."""
    for _ in range(3):
        nested = next((sd[k] for k in ("state_dict", "model") if isinstance(sd.get(k), Mapping)), None)
        if nested is None:
            break
        sd = nested
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def clean_robust_state_dict(sd: Mapping) -> dict:
    """Madry robustness-lib / SIN keys → torchvision keys: strip `module.` and `model.`, drop attacker/normalizer."""
    out = {}
    for k, v in unwrap_state_dict(sd).items():
        if k.startswith("module."):
            k = k[len("module."):]
        if k.startswith(("attacker.", "normalizer.")):
            continue
        if k.startswith("model."):
            k = k[len("model."):]
        out[k] = v
    return out


def load_into(model: nn.Module, checkpoint, clean=unwrap_state_dict) -> None:
    sd = clean(load_weights_file(checkpoint))
    if clean is unwrap_state_dict:
        sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"checkpoint {checkpoint} does not match {type(model).__name__}: {e}") from None
    if missing or unexpected:
        raise ValueError(f"checkpoint {checkpoint} does not match {type(model).__name__}: "
                         f"missing {sorted(missing)[:8]}{'…' if len(missing) > 8 else ''}, "
                         f"unexpected {sorted(unexpected)[:8]}{'…' if len(unexpected) > 8 else ''}")

