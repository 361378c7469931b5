"""`mae:<cub|num_classes>`: an MAE fine-tuned ViT (the reference's CUB MAE ViT-L/16), built through timm."""
from __future__ import annotations

from .imagenet import IMAGENET_MEAN, IMAGENET_STD
from .timm_nets import build_timm


def build_mae(arg: str, checkpoint, kw: dict, **_):
    """MAE fine-tuned ViT (global average pool + fc_norm, ImageNet normalisation): the reference's CUB MAE ViT-L/16.
    mae:<cub|num_classes> + checkpoint=<checkpoint-49.pth> (MAE's {'model': ...} layout = timm's key names)."""
    key = (arg or "cub").lower()
    if key not in ("cub", "bird") and not key.isdigit():
        raise ValueError(f"mae:{arg}: expected 'cub' or a class count")
    if not checkpoint and not kw.get("allow_random", False):
        raise ValueError(f"mae:{arg} needs checkpoint=<MAE fine-tuned checkpoint> (random init refused)")
    n = int(kw.get("num_classes", 200 if not key.isdigit() else key))
    model, pre = build_timm(kw.get("arch", "vit_large_patch16_224"), checkpoint,
                            {"num_classes": n, "model_kwargs": {"global_pool": "avg", **kw.get("model_kwargs", {})}})
    return model, dict(pre, mean=IMAGENET_MEAN, std=IMAGENET_STD)

