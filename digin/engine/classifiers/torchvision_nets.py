"""`torchvision:<name>`: a torchvision model (random init, or weights from checkpoint=<file>), 224 px, ImageNet
normalisation."""
from __future__ import annotations

from .imagenet import IMAGENET_MEAN, IMAGENET_STD
from .weights import load_into


def build_torchvision(name: str, checkpoint, kw: dict, **_):
    import torchvision

    extra = {"num_classes": kw["num_classes"]} if "num_classes" in kw else {}
    model = torchvision.models.get_model(name, weights=None, **extra, **kw.get("model_kwargs", {}))
    if checkpoint:
        load_into(model, checkpoint)
    return model, dict(size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
