"""Synthetic dataset trees in the layouts of the converters' sources (CUB, Food-101, Stanford Cars, Flowers-102),
for the conversion round trips. The ImageFolder builder the package itself uses is digin.shards.synthetic."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from digin.shards.synthetic import _image, _save


def make_cub_tree(root, classes=3, n_per_class=4, size=32, seed=0) -> Path:
    """CUB_200_2011 layout: images.txt, image_class_labels.txt, train_test_split.txt, images/<cls>/<file>."""
    root = Path(root) / "CUB_200_2011"
    rng = np.random.default_rng(seed)
    lines_img, lines_lbl, lines_split = [], [], []
    img_id = 0
    for c in range(classes):
        for i in range(n_per_class):
            img_id += 1
            rel = f"{c + 1:03d}.Bird_{c}/Bird_{c}_{i:04d}.jpg"
            _save(_image(rng, size), root / "images" / rel, "JPEG")
            lines_img.append(f"{img_id} {rel}")
            lines_lbl.append(f"{img_id} {c + 1}")
            lines_split.append(f"{img_id} {int(i % 2 == 0)}")
    for fname, lines in (("images.txt", lines_img), ("image_class_labels.txt", lines_lbl),
                         ("train_test_split.txt", lines_split)):
        (root / fname).write_text("\n".join(lines) + "\n")
    return root.parent


def make_food101_tree(root, classes=("apple_pie", "baklava", "waffles"), n_per_class=4, size=32, seed=0) -> Path:
    """food-101 layout: meta/{train,test}.json ({class: ["class/id", ...]}) + images/<class>/<id>.jpg."""
    root = Path(root) / "food-101"
    rng = np.random.default_rng(seed)
    meta = {"train": {}, "test": {}}
    for c in classes:
        for i in range(n_per_class):
            rel = f"{c}/{1000 + i}"
            _save(_image(rng, size), root / "images" / f"{rel}.jpg", "JPEG")
            meta["test" if i % 2 else "train"].setdefault(c, []).append(rel)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    for split, m in meta.items():
        (root / "meta" / f"{split}.json").write_text(json.dumps(m))
    return root.parent


def make_cars_tree(root, classes=3, n_per_class=4, size=32, seed=0) -> Path:
    """Stanford Cars layout: devkit/cars_meta.mat, devkit/cars_{train_annos,test_annos_withlabels}.mat, cars_*/."""
    from scipy.io import savemat

    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "devkit").mkdir(parents=True, exist_ok=True)
    for split, fname in (("train", "cars_train_annos.mat"), ("test", "cars_test_annos_withlabels.mat")):
        recs = []
        for n in range(classes * n_per_class):
            f = f"{n + 1:05d}.jpg"
            _save(_image(rng, size), root / f"cars_{split}" / f, "JPEG")
            recs.append((1, 1, size - 1, size - 1, (n * 7) % classes + 1, f))
        dt = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"),
              ("fname", "O")]
        savemat(root / "devkit" / fname, {"annotations": np.array(recs, dtype=dt)[None, :]})
    savemat(root / "devkit" / "cars_meta.mat",
            {"class_names": np.array([f"car {c}" for c in range(classes)], dtype=object)[None, :]})
    return root


def make_flowers_tree(root, classes=3, n_per_class=4, size=32, seed=0) -> Path:
    """flowers-102 layout: jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat (trnid/valid/tstid)."""
    from scipy.io import savemat

    root = Path(root) / "flowers-102"
    rng = np.random.default_rng(seed)
    n = classes * n_per_class
    for i in range(1, n + 1):
        _save(_image(rng, size), root / "jpg" / f"image_{i:05d}.jpg", "JPEG")
    labels = np.array([(i % classes) + 1 for i in range(n)])[None, :]
    ids = np.arange(1, n + 1)
    savemat(root / "imagelabels.mat", {"labels": labels})
    savemat(root / "setid.mat", {"trnid": ids[0::3][None, :], "valid": ids[1::3][None, :],
                                 "tstid": ids[2::3][::-1].copy()[None, :]})
    return root.parent
