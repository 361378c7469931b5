"""ImageNet's normalisation and class names, shared by the classifier families."""
from __future__ import annotations

import json
from pathlib import Path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DATA_DIR = Path(__file__).resolve().parent.parent.parent / "data"


def imagenet_class_names() -> list[str]:
    """First synonym of each ImageNet class (digin/data/imagenet_classes.json)."""
    table = json.loads((DATA_DIR / "imagenet_classes.json").read_text())
    return [table[str(i)].split(",")[0].strip() for i in range(len(table))]
