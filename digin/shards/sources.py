"""Dataset listings in the reference's index order: (file path, label index) items + class-name table.

Each `list_<source>(root, split)` returns (items, classes); the sample key is `<name>/<split>/<position>`, so the
position must follow the reference reader (torchvision ImageFolder / ImageNet, BirdDataset, CarDataset,
torchvision Food101 / Flowers102). ImageNet val in the torchvision layout gives position = class·50 + k.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import digin

IMG_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's list


def class_table(name: str):
    """Contents of digin/data/<name>.json (package data)."""
    return json.loads((Path(digin.__file__).parent / "data" / f"{name}.json").read_text())


def _indexed(table: dict) -> list[str]:
    return [table[str(i)] for i in range(len(table))]


# Class-name tables shipped with digin, in label order (the names the converters record).
NAMED_CLASSES = {"imagenet": "imagenet_classes", "cub": "cub_classes", "cars": "cars_classes",
                 "food101": "food101_classes", "flowers102": "flowers_classes"}


def named_classes(name: str) -> list[str]:
    """A shipped class-name table: ImageNet names are the first synonym, Food-101 names have '_' -> ' '."""
    if name not in NAMED_CLASSES:
        raise ValueError(f"no class-name table {name!r}; one of {sorted(NAMED_CLASSES)}")
    names = _indexed(class_table(NAMED_CLASSES[name]))
    if name == "imagenet":
        return [n.split(",")[0].strip() for n in names]
    return [n.replace("_", " ") for n in names] if name == "food101" else names


# ImageNet val in the reference's order: index = class·IMAGENET_VAL_PER_CLASS + rank of the file name in its class.
IMAGENET_VAL_PER_CLASS = 50


def _image_files(folder: Path) -> list[Path]:
    out = []
    for dirpath, _, fnames in sorted(os.walk(folder, followlinks=True)):
        out += [Path(dirpath) / f for f in sorted(fnames) if f.lower().endswith(IMG_SUFFIXES)]
    return out


def _split_dir(root: Path, split: str) -> Path:
    return root / split if (root / split).is_dir() else root


def list_imagefolder(root, split):
    """torchvision ImageFolder: classes = sorted sub-folders, files sorted per class (root/<split>/ if present)."""
    folder = _split_dir(Path(root), split)
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    items = [(p, c) for c, name in enumerate(classes) for p in _image_files(folder / name)]
    return items, classes


def list_imagenet(root, split):
    """ImageNet in the torchvision `ImageNet` layout (root/<split>/<wnid>/*.JPEG) or a plain wnid-folder layout
    (root/<wnid>/...). Labels come from the wnid table, names = first synonym."""
    folder = _split_dir(Path(root), split)
    wnids = class_table("imagenet_wnids")
    classes = named_classes("imagenet")
    dirs = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    unknown = [d for d in dirs if d not in wnids]
    if unknown:
        raise ValueError(f"{folder}: folders that are not ImageNet wnids: {unknown[:5]}")
    items = [(p, wnids[d]) for d in sorted(dirs, key=wnids.get) for p in _image_files(folder / d)]
    return items, classes


def list_cub(root, split):
    """CUB-200-2011: images.txt order, filtered by train_test_split.txt (1 = train, 0 = test); 0-based labels."""
    root = Path(root)
    root = root / "CUB_200_2011" if (root / "CUB_200_2011").is_dir() else root
    paths = dict(line.split(maxsplit=1) for line in (root / "images.txt").read_text().splitlines() if line.strip())
    labels = dict(line.split() for line in (root / "image_class_labels.txt").read_text().splitlines() if line.strip())
    train = dict(line.split() for line in (root / "train_test_split.txt").read_text().splitlines() if line.strip())
    want = {"train": "1", "test": "0"}[split]
    ids = sorted((i for i in paths if train[i] == want), key=int)
    items = [(root / "images" / paths[i].strip(), int(labels[i]) - 1) for i in ids]
    return items, named_classes("cub")


def list_cars(root, split):
    """Stanford Cars with the devkit .mat annotations (annotation order; labels = class - 1)."""
    from scipy.io import loadmat

    root = Path(root)
    devkit = root / "devkit"
    name = {"train": "cars_train_annos.mat", "test": "cars_test_annos_withlabels.mat"}[split]
    ann_path = next(p for p in (devkit / name, root / name) if p.exists())
    ann = loadmat(ann_path, squeeze_me=True)["annotations"]
    img_dir = root / f"cars_{split}"
    items = [(img_dir / str(a["fname"]), int(a["class"]) - 1) for a in ann]
    return items, named_classes("cars")


def list_food101(root, split):
    """torchvision Food101: meta/<split>.json order; classes sorted; names with '_' -> ' '."""
    root = Path(root)
    root = root / "food-101" if (root / "food-101").is_dir() else root
    meta = json.loads((root / "meta" / f"{split}.json").read_text())
    classes = sorted(meta)
    cidx = {c: i for i, c in enumerate(classes)}
    items = [(root / "images" / f"{rel}.jpg", cidx[c]) for c, rels in meta.items() for rel in rels]
    names = [c.replace("_", " ") for c in classes]
    return items, names


def list_flowers102(root, split):
    """torchvision Flowers102: setid.mat (trnid/valid/tstid) order, imagelabels.mat labels - 1."""
    from scipy.io import loadmat

    root = Path(root)
    root = root / "flowers-102" if (root / "flowers-102").is_dir() else root
    key = {"train": "trnid", "val": "valid", "test": "tstid"}[split]
    ids = loadmat(root / "setid.mat", squeeze_me=True)[key].tolist()
    labels = loadmat(root / "imagelabels.mat", squeeze_me=True)["labels"].tolist()
    items = [(root / "jpg" / f"image_{i:05d}.jpg", int(labels[i - 1]) - 1) for i in ids]
    return items, named_classes("flowers102")


SOURCES = {"imagefolder": list_imagefolder, "imagenet": list_imagenet, "cub": list_cub, "cars": list_cars,
           "food101": list_food101, "flowers102": list_flowers102}
