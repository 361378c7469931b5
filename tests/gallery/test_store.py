import io

import numpy as np
import pytest

from digin.stages.gallery.store import ImageStore, thumb_size
from digin.stages.gallery.synthetic import base_pngs, stamp_png


def test_thumb_size():
    assert thumb_size(64, 64, 128) == (64, 64)  # never upscaled
    assert thumb_size(512, 256, 128) == (128, 64) and thumb_size(100, 700, 70) == (10, 70)


def test_images_stored_once_with_thumbnails_made_once(tmp_path):
    from PIL import Image

    big, small = base_pngs(1, 200, seed=0)[0], base_pngs(1, 40, seed=1)[0]
    store = ImageStore(tmp_path, thumb_px=64)
    a, b = store.put(big), store.put(big)
    assert a == b and a.src.startswith("img/") and a.src.endswith(".png") and (a.width, a.height) == (200, 200)
    assert (tmp_path / a.src).read_bytes() == big  # copied byte for byte
    with Image.open(tmp_path / a.thumb) as t:
        assert t.size == (64, 64) == (a.thumb_width, a.thumb_height) and t.format == "JPEG"
    s = store.put(small)
    assert s.thumb == s.src and (s.thumb_width, s.thumb_height) == (40, 40)
    arr = store.put(np.full((10, 12), 7, np.uint8))  # arrays are encoded as PNG
    assert (arr.width, arr.height) == (12, 10)
    jpg = io.BytesIO()
    Image.new("RGB", (300, 100), (1, 2, 3)).save(jpg, format="JPEG")
    j = store.put(jpg.getvalue())
    assert j.src.endswith(".jpg") and (j.thumb_width, j.thumb_height) == (64, 21)
    assert store.decoded == 2  # the two thumbnails; the small images were only checked
    mask = base_pngs(1, 100, seed=4, grey=True)[0]
    m = store.put(mask, thumb=False)  # shown in full only: no thumbnail
    assert m.thumb == m.src and store.decoded == 2 and not store.has_thumb(m)
    m2 = store.put(mask)  # wanted in the grid after all
    assert m2.src == m.src and m2.thumb.startswith("thumb/") and store.has_thumb(m2) and store.decoded == 3
    again = ImageStore(tmp_path, thumb_px=64)  # a rebuild: nothing decoded, same files
    assert again.put(big) == a and again.put(jpg.getvalue()) == j and again.put(mask) == m2
    assert again.decoded == 0
    assert stamp_png(big, "x") != big and again.put(stamp_png(big, "x")).src != a.src  # other bytes, another file


def test_broken_image_names_the_sample_and_prune_removes_stale_files(tmp_path):
    store = ImageStore(tmp_path, thumb_px=32)
    with pytest.raises(ValueError, match="'key/7/ours' does not decode"):
        store.put(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, "key/7/ours")
    assert list((tmp_path / "img").iterdir()) == []  # nothing half-written
    kept = store.put(base_pngs(1, 64, seed=2)[0])
    ImageStore(tmp_path, thumb_px=32).put(base_pngs(1, 64, seed=3)[0])  # an earlier build's image
    assert store.prune() == 2  # the other build's image and thumbnail
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == [kept.src[4:]]
    assert sorted(p.name for p in (tmp_path / "thumb").iterdir()) == [kept.thumb[6:]]


def test_stage_thumbnails_are_small_jpegs_made_once():
    import io

    import numpy as np
    from PIL import Image

    from digin.stages.results import thumbnail_fields

    fields = {"orig": np.zeros((512, 384, 3), np.uint8), "recon": np.full((512, 512, 3), 9, np.uint8),
              "mask": np.zeros((512, 512), np.uint8), "metrics": {}}
    thumbs = thumbnail_fields(fields)
    assert set(thumbs) == {"orig_thumb", "recon_thumb"}  # only the grid's columns, not the mask
    ext, data = thumbs["orig_thumb"]
    assert ext == "jpg" and Image.open(io.BytesIO(data)).size == (96, 128) and len(data) < 8000
    assert thumbnail_fields({**fields, **thumbs}) == {}  # nothing twice
    assert thumbnail_fields(fields) == thumbs  # the same bytes every time (reruns stay byte-identical)
