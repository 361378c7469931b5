"""timm classifiers: `timm:<name>` (and bare names). Preprocessing from the model's own data config."""
from __future__ import annotations

from .weights import load_into


def build_timm(name: str, checkpoint, kw: dict, **_):
    import timm

    model = timm.create_model(name, pretrained=False, **({"num_classes": kw["num_classes"]}
                                                          if "num_classes" in kw else {}), **kw.get("model_kwargs", {}))
    if checkpoint:
        load_into(model, checkpoint)
    cfg = timm.data.resolve_model_data_config(model)
    _, h, w = cfg["input_size"]
    if h != w:
        raise ValueError(f"timm model {name} has a non-square input size {(h, w)}")
    return model, dict(size=h, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))

