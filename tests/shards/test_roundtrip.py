"""Conversion round trips: same pixels, labels and keys (in the reference's index order) after shard + read."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digin.shards.convert import convert
from digin.shards.reader import iter_samples
from digin.shards import synthetic
from tests.shards import builders


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _check(ss, items_expected, name, split):
    """items_expected: list of (path, label) in reference order."""
    got = list(iter_samples(ss.dir))
    assert [s["__key__"] for s in got] == [f"{name}/{split}/{i:05d}" for i in range(len(items_expected))]
    for s, (path, label) in zip(got, items_expected):
        assert s["meta"]["label"] == label
        assert s["meta"]["label_name"] == ss.classes[label]
        np.testing.assert_array_equal(s["image"], _pixels(path))
    return got


def test_imagefolder_round_trip(tmp_path):
    root = synthetic.make_image_folder(tmp_path / "src", classes=["b_cls", "a_cls", "c_cls"], n_per_class=3,
                                       size=24, seed=3, ext="png")
    ss = convert("imagefolder", root, "all", tmp_path / "out", name="toy", samples_per_shard=4, workers=2,
                 progress=False)
    assert ss.classes == ["a_cls", "b_cls", "c_cls"]  # ImageFolder: sorted folders
    assert [r["count"] for r in ss.records.values()] == [4, 4, 1]
    expected = [(p, c) for c, n in enumerate(ss.classes) for p in sorted((root / n).iterdir())]
    _check(ss, expected, "toy", "all")
    m = json.loads((ss.dir / "manifest.json").read_text())
    assert [s["first_key"] for s in m["shards"]] == ["toy/all/00000", "toy/all/00004", "toy/all/00008"]
    assert all(len(s["sha256"]) == 64 for s in m["shards"]) and m["num_samples"] == 9
    assert sorted(p.name for p in ss.dir.glob("*.tar")) == [f"toy-all-{i:06d}.tar" for i in range(3)]
    # originals kept byte-for-byte (no resize at write time)
    import tarfile
    with tarfile.open(ss.dir / "toy-all-000000.tar") as tf:
        assert tf.extractfile("toy~all~00000.image.png").read() == expected[0][0].read_bytes()


def test_cub_round_trip(tmp_path):
    root = builders.make_cub_tree(tmp_path / "cub", classes=3, n_per_class=4, size=20)
    ss = convert("cub", root, "test", tmp_path / "out", samples_per_shard=5, progress=False)
    base = root / "CUB_200_2011"
    lines = (base / "images.txt").read_text().split("\n")
    split = dict(line.split() for line in (base / "train_test_split.txt").read_text().splitlines())
    expected = [(base / "images" / rel, int(rel[:3]) - 1) for i, rel in (ln.split() for ln in lines if ln)
                if split[i] == "0"]
    assert len(expected) == 6
    _check(ss, expected, "cub", "test")
    assert ss.classes[0] == "Black footed Albatross"


def test_food101_round_trip(tmp_path):
    root = builders.make_food101_tree(tmp_path / "food", n_per_class=4, size=20)
    ss = convert("food101", root, "test", tmp_path / "out", samples_per_shard=4, workers=2, progress=False)
    meta = json.loads((root / "food-101" / "meta" / "test.json").read_text())
    classes = sorted(meta)
    expected = [(root / "food-101" / "images" / f"{r}.jpg", classes.index(c)) for c, rs in meta.items() for r in rs]
    _check(ss, expected, "food101", "test")
    assert ss.classes == ["apple pie", "baklava", "waffles"]


def test_cars_and_flowers_listing(tmp_path):
    from digin.shards.sources import list_cars, list_flowers102

    cars = builders.make_cars_tree(tmp_path / "cars", classes=3, n_per_class=2, size=16)
    items, classes = list_cars(cars, "test")
    assert [lbl for _, lbl in items] == [(n * 7) % 3 for n in range(6)] and len(classes) == 196
    assert items[0][0] == cars / "cars_test" / "00001.jpg"
    fl = builders.make_flowers_tree(tmp_path / "fl", classes=3, n_per_class=3, size=16)
    items, classes = list_flowers102(fl, "test")
    ids = list(range(3, 10, 3))[::-1]  # tstid = ids[2::3] reversed: order follows setid.mat, not file names
    assert [p.name for p, _ in items] == [f"image_{i:05d}.jpg" for i in ids]
    assert [lbl for _, lbl in items] == [(i - 1) % 3 for i in ids]
    ss = convert("flowers102", fl, "test", tmp_path / "out", progress=False)
    _check(ss, items, "flowers102", "test")


def test_imagenet_val_keys_follow_class_times_50(tmp_path):
    """torchvision ImageNet layout: wnid folders -> label from the wnid table, key index = class·50 + k."""
    wnids = json.loads((Path(synthetic.__file__).parents[1] / "data" / "imagenet_wnids.json").read_text())
    names = ["n01440764", "n01443537"]  # classes 0 and 1
    for w in names:
        synthetic.make_image_folder(tmp_path / "inet" / "val", classes=[w], n_per_class=50, size=8,
                                    seed=wnids[w])
    ss = convert("imagenet", tmp_path / "inet", "val", tmp_path / "out", samples_per_shard=30, workers=2,
                 progress=False)
    got = {s["__key__"]: s for s in iter_samples(ss.dir)}
    assert len(got) == 100
    assert got["imagenet/val/00057"]["meta"]["label"] == 1  # 1·50 + 7
    assert got["imagenet/val/00057"]["meta"]["source"] == "val/n01443537/img_0007.jpg"
    assert got["imagenet/val/00000"]["meta"]["label_name"] == "tench"


def test_reconvert_skips_and_config_change_refused(tmp_path, toy_shards):
    from digin.shards.manifest import ConfigMismatch
    root = synthetic.make_image_folder(tmp_path / "src", classes=2, n_per_class=3, size=16)
    a = convert("imagefolder", root, "all", tmp_path / "out", samples_per_shard=2, progress=False)
    mtimes = {p.name: p.stat().st_mtime_ns for p in a.dir.glob("*.tar")}
    b = convert("imagefolder", root, "all", tmp_path / "out", samples_per_shard=2, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in b.dir.glob("*.tar")} == mtimes
    with pytest.raises(ConfigMismatch, match="samples_per_shard: 2 → 3"):
        convert("imagefolder", root, "all", tmp_path / "out", samples_per_shard=3, progress=False)
