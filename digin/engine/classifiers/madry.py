"""`madry:<file>` (also the reference's names `madry_l2` / `resnet50_sin` + checkpoint=<file>): a torchvision
ResNet-50 from a Madry robustness-lib L2 or Stylized-ImageNet checkpoint."""
from __future__ import annotations

from .imagenet import IMAGENET_MEAN, IMAGENET_STD
from .weights import clean_robust_state_dict, load_into


def build_madry(arg: str, checkpoint, kw: dict, **_):
    """torchvision ResNet-50 (or kw arch) from a Madry L2 / Stylized-ImageNet checkpoint (madry:<file> or
    checkpoint=<file>; the spec's file wins)."""
    import torchvision

    path = arg or checkpoint
    if not path:
        raise ValueError("madry classifier needs a checkpoint path: madry:<file> or checkpoint=<file>")
    model = torchvision.models.get_model(kw.get("arch", "resnet50"), weights=None,
                                         **({"num_classes": kw["num_classes"]} if "num_classes" in kw else {}))
    load_into(model, path, clean=clean_robust_state_dict)
    return model, dict(size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
