"""Per-dataset fallback captions (the reference's generic "an image of a {label}") and the label of a sample
(meta.label_name)."""
from __future__ import annotations

IMAGENET_STYLE = "an image of a {label} on background"
FINE_GRAINED = "an image of a {label} macro shot close-up"
TEMPLATES = {
    "imagenet": IMAGENET_STYLE,
    "imagefolder": IMAGENET_STYLE,
    "cub": FINE_GRAINED,
    "cars": FINE_GRAINED,
    "food101": FINE_GRAINED,
    "flowers102": FINE_GRAINED,
    "flowers": FINE_GRAINED,
}
# Few-shot demo set of each dataset in digin/data/caption_fewshot_demos.json. The reference reuses the Food demos
# for Flowers (a bug of its open_flamingo_cub_cars_food.py); the demo file ships Flowers demos of their own, which we
# use.
DEMO_SETS = {"imagenet": "imagenet_train", "imagefolder": "imagenet_train", "cub": "cub_train",
             "cars": "cars_train", "food101": "food101_train", "flowers102": "flowers_train",
             "flowers": "flowers_train"}


def template_for(dataset: str | None, override: str | None = None) -> str:
    """The fallback template of `dataset` (ImageNet style when unknown), or `override`."""
    if override:
        if "{label}" not in override:
            raise ValueError(f"caption template {override!r} has no {{label}} placeholder")
        return override
    return TEMPLATES.get((dataset or "imagenet").lower(), IMAGENET_STYLE)


def label_of(sample_or_meta: dict) -> str:
    """The class name used in captions: meta.label_name (ImageNet: first synonym, set by `digin shard`)."""
    meta = sample_or_meta.get("meta", sample_or_meta) or {}
    name = meta.get("label_name")
    if isinstance(name, str) and name.strip():
        return name.split(",")[0].strip()
    return str(meta.get("label", "object"))
