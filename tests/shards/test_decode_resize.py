"""The one centre-crop resize (shards/decode.py, Pillow alone) equals the reference's read-time transform,
torchvision `Resize(int(1.25·res))` + `CenterCrop(res)` on PIL images, on real images: the toy world's shipped
contact sheets, whole and cut to landscape / small / odd-sized pieces, as PNG and JPEG."""
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import digin
from digin.shards.decode import decode_image

FIGURES = sorted((Path(digin.__file__).parent / "toy" / "figures").glob("*.png"))


def _real_images():
    """name → encoded bytes: each figure, plus pieces of the first one in other shapes and formats."""
    assert FIGURES, "the toy world's figures are missing"
    out = {p.name: p.read_bytes() for p in FIGURES}
    sheet = Image.open(FIGURES[0]).convert("RGB")
    w, h = sheet.size
    pieces = {"landscape": (0, 0, w, h // 3), "small": (5, 7, 75, 97),
              "odd": (w // 3, h // 2, w // 3 + 201, h // 2 + 143)}
    for name, box in pieces.items():
        for fmt in ("PNG", "JPEG"):
            buf = io.BytesIO()
            sheet.crop(box).save(buf, format=fmt, quality=90)
            out[f"{name}.{fmt.lower()}"] = buf.getvalue()
    return out


@pytest.mark.parametrize("res", [224, 64, 37])
def test_center_crop_resize_equals_torchvision_on_real_images(res):
    import torchvision.transforms as T

    reference = T.Compose([T.Resize(int(1.25 * res), interpolation=T.InterpolationMode.BILINEAR, antialias=True),
                           T.CenterCrop(res)])
    for name, data in _real_images().items():
        full = Image.fromarray(decode_image(data))  # the same RGB pixels both sides: only the resize is compared
        want = np.asarray(reference(full))
        got = decode_image(data, res)
        assert got.shape == (res, res, 3), name
        np.testing.assert_array_equal(got, want, err_msg=f"{name} at {res}px")
