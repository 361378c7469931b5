"""`hf:<folder>`: a local Hugging Face *ForImageClassification folder (the reference's Food-101 / CUB / Flowers
ViTs). Preprocessing from its preprocessor_config.json; its id2label names go out as `labels` so the logits can
be reordered to a dataset's classes (labels.py)."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from .imagenet import IMAGENET_MEAN, IMAGENET_STD


def read_hf_preprocessor(folder: Path, model) -> dict:
    cfg_path = folder / "preprocessor_config.json"
    size = getattr(model.config, "image_size", 224)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if cfg_path.is_file():
        pp = json.loads(cfg_path.read_text())
        s = pp.get("crop_size") if pp.get("do_center_crop") else pp.get("size", size)
        if isinstance(s, Mapping):
            s = s.get("height", s.get("shortest_edge", size))
        size = int(s)
        mean, std = pp.get("image_mean", mean), pp.get("image_std", std)
        if pp.get("do_normalize") is False:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    size = size[0] if isinstance(size, (list, tuple)) else size
    return dict(size=int(size), mean=tuple(mean), std=tuple(std))


def build_hf(folder: str, checkpoint, kw: dict, *, trust_remote_code: bool = False, **_):
    from transformers import AutoModelForImageClassification

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"hf classifier folder not found: {folder}")
    model = AutoModelForImageClassification.from_pretrained(str(folder), local_files_only=True,
                                                            trust_remote_code=bool(trust_remote_code))
    pre = read_hf_preprocessor(folder, model)
    id2label = getattr(model.config, "id2label", None) or {}
    if len(id2label) == getattr(model.config, "num_labels", -1):
        pre["labels"] = [str(id2label[i]) for i in range(len(id2label))]
    return model, pre

