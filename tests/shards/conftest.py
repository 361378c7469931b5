import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def toy_shards(tmp_path_factory):
    """A converted 3-class × 7-image ImageFolder (48×40 JPEGs), 4 samples per shard -> 6 shards."""
    from digin.shards.convert import convert
    from digin.shards.synthetic import make_image_folder

    root = tmp_path_factory.mktemp("toy")
    make_image_folder(root / "src", classes=3, n_per_class=7, size=40, seed=1)
    return convert("imagefolder", root / "src", "all", root / "shards", name="toy", samples_per_shard=4,
                   workers=1, progress=False).dir


def stage_cmd(*args):
    return [sys.executable, str(HERE / "stage_script.py"), *map(str, args)]
