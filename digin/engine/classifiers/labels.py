"""Label order: which model logit answers for each of a dataset's classes, matched by class name."""
from __future__ import annotations

import re


def _label_key(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(name).lower()).strip()


def label_permutation(model_labels: list[str] | None, dataset_classes: list[str] | None, mode: str = "auto",
                      spec: str = "") -> list[int] | None:
    """Model logit index of each dataset class, matched by (normalised) name, or None to keep the model's order.

    mode 'model': never reorder. 'dataset': reorder, and fail naming the classes the model lacks. 'auto': reorder
    only when every dataset class is found among the model's labels in a different order (e.g. the HF Flowers-102
    ViT, whose id2label is not torchvision's order — the reference re-indexes it), else keep the model's order."""
    if mode not in ("auto", "model", "dataset"):
        raise ValueError(f"classifier_label_order must be auto, model or dataset, got {mode!r}")
    if mode == "model" or (mode == "auto" and not (model_labels and dataset_classes)):
        return None
    if not model_labels or not dataset_classes:
        raise ValueError(f"classifier {spec!r}: classifier_label_order=dataset needs label names on both sides "
                         f"(model labels: {'yes' if model_labels else 'none'}, dataset classes: "
                         f"{'yes' if dataset_classes else 'none'})")
    where: dict[str, int] = {}
    for i, name in enumerate(model_labels):
        where.setdefault(_label_key(name), i)
    missing = [c for c in dataset_classes if _label_key(c) not in where]
    if missing:
        if mode == "auto":
            return None
        raise ValueError(f"classifier {spec!r}: {len(missing)} dataset classes have no model label of that name "
                         f"(e.g. {missing[:5]})")
    index = [where[_label_key(c)] for c in dataset_classes]
    return None if index == list(range(len(index))) and len(index) == len(model_labels) else index

