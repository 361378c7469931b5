"""Fixtures: a generated ImageFolder as 2 shards (cat/dog/fox × 2 → 3 + 3), tiny Flamingo and BLIP folders."""
import json

import numpy as np
import pytest


@pytest.fixture(scope="session")
def image_shards(tmp_path_factory):
    from digin.shards.convert import convert
    from digin.shards.synthetic import make_image_folder

    root = tmp_path_factory.mktemp("cap_images")
    make_image_folder(root / "raw", classes=["cat", "dog", "fox"], n_per_class=2, size=40, seed=0)
    convert("imagefolder", root / "raw", "val", root / "images", name="toyset", samples_per_shard=3, progress=False)
    return root / "images"


@pytest.fixture(scope="session")
def tiny_flamingo_dir(tmp_path_factory):
    pytest.importorskip("open_flamingo")
    from tests.caption.builders import save_tiny_flamingo

    return save_tiny_flamingo(tmp_path_factory.mktemp("flamingo"), seed=0, image_size=32)


@pytest.fixture(scope="session")
def tiny_blip_dir(tmp_path_factory):
    from tests.caption.builders import save_tiny_blip

    return save_tiny_blip(tmp_path_factory.mktemp("blip"), seed=0, image_size=32)


@pytest.fixture(scope="session")
def demo_set(tmp_path_factory):
    """Two in-context demos: a JSON list [[index, caption]] and a folder of <index>.png train images."""
    from PIL import Image

    root = tmp_path_factory.mktemp("demos")
    demos = [[7, "an image of a dog on grass"], [11, "an image of a cat on a sofa"]]
    (root / "demos.json").write_text(json.dumps(demos))
    rng = np.random.default_rng(3)
    (root / "images").mkdir()
    for idx, _ in demos:
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / "images" / f"{idx}.png")
    return root
