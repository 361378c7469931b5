"""Foreground masks from cross-attention maps, squash functions, post-processing and the SAM-HQ path."""
import pytest
import torch

from digin.engine import segment
from digin.engine.segment import (SegmentationConfig, build_tiny_sam_hq, foreground_mask_from_maps, load_sam_hq,
                                  mask_boxes, mask_steps, postprocess_mask, refine_with_sam, segment_foreground, squash,
                                  word_maps)


def test_mask_steps_are_the_noisier_half():
    assert mask_steps(20) == list(range(10))
    assert mask_steps(20, 0.0, 1.0) == list(range(20))


def test_squash_functions():
    m = torch.tensor([0.0, 0.3, 0.5, 1.0])
    torch.testing.assert_close(squash(m, "linear_0.3"), torch.tensor([0.0, 0.0, 0.2 / 0.7, 1.0]))
    torch.testing.assert_close(squash(m, "sqrt_0.3"), torch.tensor([0.0, 0.0, (0.2 / 0.7) ** 0.5, 1.0]))
    torch.testing.assert_close(squash(m, "sqr_0.3"), torch.tensor([0.0, 0.0, (0.2 / 0.7) ** 2, 1.0]))
    assert squash(m, "threshold_0.4").tolist() == [0.0, 0.0, 1.0, 1.0]
    assert torch.equal(squash(m, "none"), m)
    with pytest.raises(ValueError):
        squash(m, "cube_0.1")


def _maps(B=2, N=6, r=16, K=77, fg=(5, 6)):
    """Random maps where the foreground tokens attend to a known square per sample."""
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(B, N, r * r, K, generator=g) * 0.1
    boxes = [(2, 8, 3, 10), (9, 15, 6, 14)]
    for b in range(B):
        y0, y1, x0, x1 = boxes[b]
        grid = torch.zeros(r, r)
        grid[y0:y1, x0:x1] = 1
        maps[b, :, :, list(fg)] += 4 * grid.flatten()[None, :, None]
    return maps.softmax(-1), boxes


def test_foreground_mask_from_maps_matches_a_loop_and_finds_the_object():
    maps, boxes = _maps()
    w = torch.zeros(2, 77)
    w[:, [5, 6]] = 1
    px, lat, raw = foreground_mask_from_maps(maps, w, (16, 16), (32, 32), "sqrt_0.3")
    assert px.shape == (2, 1, 32, 32) and lat.shape == (2, 1, 16, 16) and raw.shape == (2, 1, 16, 16)
    for b in range(2):
        ref = maps[b][:, :, [5, 6]].mean(-1).mean(0)  # loop reference: tokens, then stack
        torch.testing.assert_close(raw[b].flatten(), ref / ref.max())
        y0, y1, x0, x1 = boxes[b]
        inside = lat[b, 0, y0 + 1:y1 - 1, x0 + 1:x1 - 1]
        assert inside.min() > 0.9 and lat[b, 0].sum() < 1.5 * (y1 - y0) * (x1 - x0)
    # per-word maps (unsquashed, pixel resolution)
    words = word_maps(maps, [{"dog": [5, 6], "a": [1]}, {"car": [5]}], (32, 32))
    assert set(words[0]) == {"dog", "a"} and words[1]["car"].shape == (1, 32, 32)
    assert words[0]["dog"].max() <= 1 and words[0]["dog"].min() >= 0


def test_masks_are_resized_as_the_references_tf_resize():
    """The reference resizes the 16² map to the latent and pixel grids with TF.resize(BICUBIC) (antialiased: PIL's
    bicubic kernel, also when upsampling), clamps, squashes; post-processed pixel masks go to the latent grid with
    TF.resize (bilinear)."""
    import torchvision.transforms.functional as TF

    maps, _ = _maps()
    w = torch.zeros(2, 77)
    w[:, [5, 6]] = 1
    px, lat, raw = foreground_mask_from_maps(maps, w, (64, 64), (128, 128), "sqrt_0.3")
    bicubic = TF.InterpolationMode.BICUBIC
    for got, hw in ((px, [128, 128]), (lat, [64, 64])):
        want = squash(TF.resize(raw, hw, interpolation=bicubic).clamp(0, 1), "sqrt_0.3")
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    plain = torch.nn.functional.interpolate(raw, size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 1)
    assert (squash(plain, "sqrt_0.3") - lat).abs().max() > 1e-2  # the non-antialiased kernel is another mask
    out = segment_foreground(maps, w, (16, 16), (128, 128), SegmentationConfig(sam_segmentation=False))
    torch.testing.assert_close(out["latent"], TF.resize(out["px"], [16, 16]).clamp(0, 1), rtol=0, atol=1e-6)


def test_postprocess_equals_kornia():
    kornia = pytest.importorskip("kornia")
    g = torch.Generator().manual_seed(0)
    m = (torch.rand(2, 1, 48, 40, generator=g) > 0.6).float()
    ours = postprocess_mask(m, ["erosion_3", "dilation_20", "blur_45_30"])
    ref = kornia.morphology.erosion(m, torch.ones(3, 3))
    ref = kornia.morphology.dilation(ref, torch.ones(20, 20))
    ref = kornia.filters.gaussian_blur2d(ref, (45, 45), (30.0, 30.0))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    for k in (4, 5):
        torch.testing.assert_close(segment.dilate(m, k), kornia.morphology.dilation(m, torch.ones(k, k)))
        torch.testing.assert_close(segment.erode(m, k), kornia.morphology.erosion(m, torch.ones(k, k)))


@pytest.fixture(scope="module")
def sam_ckpt(tmp_path_factory):
    pytest.importorskip("segment_anything_hq")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    sam = build_tiny_sam_hq()
    folder = tmp_path_factory.mktemp("sam")
    good = folder / "tiny_sam_hq.safetensors"
    save_file({k: v.contiguous() for k, v in sam.state_dict().items()}, str(good))
    bad_state = dict(sam.state_dict())
    bad_state["mask_decoder.not_a_weight"] = torch.zeros(1)
    bad = folder / "bad.pth"
    torch.save(bad_state, bad)
    return good, bad


def test_sam_hq_strict_load_and_cache(sam_ckpt):
    good, bad = sam_ckpt
    a = load_sam_hq(str(good), "tiny")
    assert load_sam_hq(str(good), "tiny") is a  # built once per process
    ref = build_tiny_sam_hq()
    ref.load_state_dict(torch.load(bad, weights_only=True), strict=False)
    for k, v in ref.state_dict().items():
        assert torch.equal(a.state_dict()[k], v)  # the weights came from the file
    with pytest.raises(RuntimeError, match="not_a_weight"):
        load_sam_hq(str(bad), "tiny")
    with pytest.raises(FileNotFoundError):
        load_sam_hq(str(good) + ".missing", "tiny")


def test_sam_hq_refinement_gives_binary_masks(sam_ckpt):
    sam = load_sam_hq(str(sam_ckpt[0]), "tiny")
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(2, 3, 40, 40, generator=g)
    xa = torch.zeros(2, 1, 40, 40)
    xa[0, :, 5:20, 5:25] = 0.9
    xa[1] = 0.1  # nothing above the threshold → keep the cross-attention mask
    out, ok = refine_with_sam(sam, imgs, xa, num_points=5, threshold=0.35, generator=g)
    assert out.shape == (2, 1, 40, 40) and ok.tolist() == [True, False]
    assert set(out[0].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(out[1], xa[1])


def test_segment_foreground_end_to_end(sam_ckpt):
    maps, _ = _maps()
    w = torch.zeros(2, 77)
    w[:, [5, 6]] = 1
    cfg = SegmentationConfig(sam_checkpoint=str(sam_ckpt[0]), sam_model_type="tiny",
                             postprocessing=["erosion_3", "dilation_4", "blur_5_2"])
    imgs = torch.rand(2, 3, 32, 32)
    res = segment_foreground(maps, w, (16, 16), (32, 32), cfg, imgs, torch.Generator().manual_seed(0))
    assert res["px"].shape == (2, 1, 32, 32) and res["latent"].shape == (2, 1, 16, 16)
    assert res["sam_ok"].all() and 0 <= res["latent"].min() and res["latent"].max() <= 1
    import dataclasses

    boxed = segment_foreground(maps, w, (16, 16), (32, 32), dataclasses.replace(cfg, sam_prompt="bb"), imgs)
    assert boxed["sam_ok"].all() and boxed["px"].shape == (2, 1, 32, 32)
    xa_only = segment_foreground(maps, w, (16, 16), (32, 32), SegmentationConfig(sam_segmentation=False,
                                                                                postprocessing=[]))
    ref_px, ref_lat, _ = foreground_mask_from_maps(maps, w, (16, 16), (32, 32), "sqrt_0.3")
    assert torch.equal(xa_only["latent"], ref_lat) and xa_only["sam_ok"] is None


def test_mask_boxes_are_tight_and_flag_empty_masks():
    m = torch.zeros(3, 1, 20, 30)
    m[0, :, 4:9, 10:25] = 0.8
    m[1, :, 0:1, 29:30] = 0.5  # a single corner pixel
    boxes, ok = mask_boxes(m, 0.35)
    assert ok.tolist() == [True, True, False]
    assert boxes.tolist() == [[10, 4, 25, 9], [29, 0, 30, 1], [0, 0, 30, 20]]


def test_sam_hq_box_prompt(sam_ckpt):
    sam = load_sam_hq(str(sam_ckpt[0]), "tiny")
    seen = []

    def spy(batch, **kw):  # what SAM is asked: the box in SAM's input coordinates, no points
        seen.extend(batch)
        return sam(batch, **kw)

    spy.parameters, spy.image_encoder = sam.parameters, sam.image_encoder
    imgs = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    xa = torch.zeros(2, 1, 40, 40)
    xa[0, :, 5:20, 10:30] = 0.9
    xa[1] = 0.1  # nothing above the threshold → keep the cross-attention mask
    out, ok = refine_with_sam(spy, imgs, xa, threshold=0.35, prompt="bb")
    s = sam.image_encoder.img_size / 40
    assert ok.tolist() == [True, False] and "point_coords" not in seen[0]
    assert seen[0]["boxes"].tolist() == [[10 * s, 5 * s, 30 * s, 20 * s]]
    assert set(out[0].unique().tolist()) <= {0.0, 1.0} and torch.equal(out[1], xa[1])
    with pytest.raises(ValueError, match="sam_prompt"):
        refine_with_sam(sam, imgs, xa, prompt="box")
