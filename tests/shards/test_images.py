"""Malformed-image corpus: every member becomes a correct RGB array or a recorded reject; nothing crashes."""
import io

import numpy as np
import pytest
from PIL import Image

from digin.shards.decode import DecodeError, decode_image
from digin.shards.manifest import FORMAT, ShardSet, write_json

from digin.shards.writer import ShardWriter
from .stage_script import run_keys


def _enc(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb_ramp(w=32, h=24):
    x = np.linspace(0, 255, w, dtype=np.float64)
    a = np.stack(np.broadcast_arrays(x[None, :], np.linspace(0, 255, h)[:, None], np.full((h, w), 77.0)), -1)
    return a.astype(np.uint8)


def corpus():
    """name -> (bytes, expected): expected is an HWC uint8 array, a callable check, or a reject reason."""
    rgb = _rgb_ramp()
    jpg = _enc(Image.fromarray(rgb), "JPEG", quality=95)
    c = {}
    c["truncated_jpeg"] = (jpg[: len(jpg) // 2], "truncated")
    c["zero_bytes"] = (b"", "empty")
    c["random_bytes"] = (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
                         "unidentified_image")
    cmyk = Image.fromarray(rgb).convert("CMYK")
    c["cmyk_jpeg"] = (_enc(cmyk, "JPEG", quality=95),
                      lambda a: np.abs(a.astype(int) - rgb.astype(int)).mean() < 6)
    grey = (np.arange(32 * 24) % 256).reshape(24, 32).astype(np.uint8)
    c["L"] = (_enc(Image.fromarray(grey, "L"), "PNG"), np.repeat(grey[..., None], 3, 2))
    la = Image.fromarray(np.stack([grey, np.full_like(grey, 255)], -1), "LA")
    c["LA_opaque"] = (_enc(la, "PNG"), np.repeat(grey[..., None], 3, 2))
    p = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16)
    p.info["transparency"] = 0
    pal_rgb = np.asarray(p.convert("RGB"))
    idx = np.asarray(p)
    exp_p = np.where((idx == 0)[..., None], 255, pal_rgb).astype(np.uint8)  # transparent -> white
    c["P_transparency"] = (_enc(p, "PNG", transparency=0), exp_p)
    rgba = np.concatenate([rgb, np.zeros((24, 32, 1), np.uint8)], -1)
    rgba[:, :16, 3] = 255  # left half opaque, right half fully transparent
    exp_rgba = rgb.copy()
    exp_rgba[:, 16:] = 255
    c["RGBA"] = (_enc(Image.fromarray(rgba, "RGBA"), "PNG"), exp_rgba)
    ramp16 = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (4, 1))
    png16 = _enc(Image.fromarray(ramp16), "PNG")
    c["png16_gradient"] = (png16, lambda a: len(np.unique(a[..., 0])) >= 250 and (a == 255).mean() <= 0.01
                           and np.all(np.diff(a[0, :, 0].astype(int)) >= 0))
    c["one_by_one"] = (_enc(Image.new("RGB", (1, 1), (9, 200, 3)), "PNG"), np.array([[[9, 200, 3]]], np.uint8))
    tall = Image.fromarray(rgb)  # 32 wide x 24 high; EXIF orientation 6 = rotate 90° clockwise to display
    exif = Image.Exif()
    exif[0x0112] = 6
    c["exif_rotated"] = (_enc(tall, "PNG", exif=exif.tobytes()), np.rot90(rgb, k=-1))
    return c


@pytest.mark.parametrize("name", list(corpus()))
def test_each_case_decodes_or_rejects(name):
    data, expected = corpus()[name]
    if isinstance(expected, str):
        with pytest.raises(DecodeError) as e:
            decode_image(data)
        assert e.value.reason == expected
        return
    a = decode_image(data)
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    if callable(expected):
        assert expected(a), name
    else:
        np.testing.assert_array_equal(a, expected)


def test_pillow_default_would_whiten_16bit():
    """Guard for the 16-bit case: the naive convert("RGB") is what we must not do."""
    data, _ = corpus()["png16_gradient"]
    naive = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert (naive == 255).mean() > 0.9
    assert (decode_image(data) == 255).mean() <= 0.01


def test_decompression_bomb_is_a_reject(monkeypatch):
    import digin.shards.decode as dec
    monkeypatch.setattr(dec, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DecodeError) as e:
        decode_image(_enc(Image.new("RGB", (64, 64)), "PNG"))
    assert e.value.reason == "too_large"


@pytest.mark.parametrize("wh", [(40, 30), (30, 40), (20, 20), (1, 1), (97, 13), (20, 25)])
def test_resize_center_crop_matches_torchvision(wh):
    import torchvision.transforms as T
    rgb = np.random.default_rng(0).integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8)
    data = _enc(Image.fromarray(rgb), "PNG")
    for res in (16, 7):
        ref = np.asarray(T.Compose([T.Resize(int(1.25 * res)), T.CenterCrop(res)])(Image.fromarray(rgb)))
        np.testing.assert_array_equal(decode_image(data, res), ref)


def test_center_crop_false_is_a_plain_resize():
    rgb = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    data = _enc(Image.fromarray(rgb), "PNG")
    # already at the asked size: untouched (the reference's transform would zoom 1.25× and cut the border)
    np.testing.assert_array_equal(decode_image(_enc(Image.fromarray(rgb[:, :24]), "PNG"), 24, center_crop=False),
                                  rgb[:, :24])
    assert not np.array_equal(decode_image(_enc(Image.fromarray(rgb[:, :24]), "PNG"), 24), rgb[:, :24])
    # other sizes: squashed to res×res, nothing cropped
    np.testing.assert_array_equal(decode_image(data, 16, center_crop=False),
                                  np.asarray(Image.fromarray(rgb).resize((16, 16), Image.BILINEAR)))


def test_stage_reads_images_with_or_without_the_center_crop(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_json(folder / "manifest.json", {"format": FORMAT, "kind": "dataset", "name": "px", "num_shards": 1})
    rgbs = [np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8) for i in range(3)]
    w = ShardWriter(folder, 0, "px-000000.tar")
    for i, rgb in enumerate(rgbs):
        w.add(f"px/{i}", {"image": ("png", _enc(Image.fromarray(rgb), "PNG"))})
    w.commit()
    seen = {}

    def grab(tag):
        def process(b):
            seen[tag] = b.images[:b.n_real].permute(0, 2, 3, 1).numpy()
            return [{"n": str(i)} for i in range(b.n_real)]
        return process

    run_keys(folder, tmp_path / "plain", grab("plain"), 4, {}, resolution=16, center_crop=False, progress=False)
    run_keys(folder, tmp_path / "crop", grab("crop"), 4, {}, resolution=16, progress=False)
    np.testing.assert_array_equal(seen["plain"], np.stack(rgbs))
    assert not np.array_equal(seen["crop"], np.stack(rgbs))


def test_corpus_through_a_stage_counts_add_up(tmp_path):
    cases = corpus()
    folder = tmp_path / "in"
    folder.mkdir()
    write_json(folder / "manifest.json", {"format": FORMAT, "kind": "dataset", "name": "bad", "num_shards": 1})
    w = ShardWriter(folder, 0, "bad-000000.tar")
    keys = []
    for i, (name, (data, _)) in enumerate(cases.items()):
        key = f"bad/test/{i:05d}"
        w.add(key, {"image": ("png" if name != "truncated_jpeg" else "jpg", data)})
        keys.append(key)
    w.commit()
    summary = run_keys(folder, tmp_path / "out", lambda b: [{"img": s["image"]} for s in b.samples[:b.n_real]],
                        4, {}, resolution=8, progress=False)
    n_reject = sum(isinstance(e, str) for _, e in cases.values())
    assert summary.processed + summary.rejected == len(cases)
    assert summary.rejected == n_reject == 3
    out = ShardSet.load(tmp_path / "out")
    rec = out.records[0]
    assert sorted(rec["keys"] + [r["key"] for r in rec["rejects"]]) == keys
    assert {r["reason"] for r in rec["rejects"]} == {"image:truncated", "image:empty", "image:unidentified_image"}
