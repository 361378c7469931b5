"""`torchvision:<name>`: a torchvision model, 224 px, ImageNet normalisation. Weights: `checkpoint=<file>`, else
its default pretrained weights from the torch hub cache (pretrained.py), else refused unless `allow_random`."""
from __future__ import annotations

from .imagenet import IMAGENET_MEAN, IMAGENET_STD
from .pretrained import torchvision_weights
from .weights import load_into


def build_torchvision(name: str, checkpoint, kw: dict, **_):
    import torchvision

    extra = {"num_classes": kw["num_classes"]} if "num_classes" in kw else {}
    model = torchvision.models.get_model(name, weights=None, **extra, **kw.get("model_kwargs", {}))
    if not checkpoint and not kw.get("allow_random"):
        checkpoint = torchvision_weights(name, kw.get("weights_key", "classifier_checkpoint"))
    if checkpoint:
        load_into(model, checkpoint)
    return model, dict(size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
