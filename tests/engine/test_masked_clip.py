"""Masked CLIP distance (px_{foreground,background}_clip): pooling matches the tower's own embedding, the mask
selects patches, the Objective and the task helper wire it, and weights are required."""
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from digin.engine.classifiers import load_classifier
from digin.engine.masked_clip import MaskedCLIPDistance, build_masked_clip
from digin.engine.objectives import Objective

open_clip = pytest.importorskip("open_clip")

VISION = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16}
TOWERS = {  # CLIPA's pooling (the reference's model) and an OpenAI-style class-token tower
    "clipa": {**VISION, "no_ln_pre": True, "pool_type": "avg", "final_ln_after_pool": True},
    "cls": VISION,
}


def _tower(root, kind: str, seed: int = 0):
    folder = root / kind
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": 16, "vision_cfg": TOWERS[kind],
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}}))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False).eval()
    with torch.no_grad():  # random LayerNorm affine so that where the norm sits matters
        for m in model.visual.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "weights.safetensors"))
    return folder, model


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip_towers")
    return {k: _tower(root, k) for k in TOWERS}


def _images(n=2, size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.rand(n, 3, size, size, generator=g)


def test_without_mask_clipa_pooling_is_the_towers_own_embedding(towers):
    folder, model = towers["clipa"]
    dist = build_masked_clip(str(folder))
    x, x0 = _images(size=48)  # resized to the tower's 32 px inside
    prep = lambda im: (F.interpolate(im, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)  # noqa
                       - dist.mean) / dist.std
    with torch.no_grad():
        e, e0 = model.encode_image(prep(x)), model.encode_image(prep(x0))
        torch.testing.assert_close(dist.embed(x), e, rtol=1e-5, atol=1e-5)
        ones = torch.ones(2, 1, 48, 48)
        torch.testing.assert_close(dist.embed(x, dist.patch_weights(ones)), e, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dist(x, x0), 1 - F.cosine_similarity(e, e0, dim=-1), rtol=1e-5, atol=1e-5)
        assert dist(x, x).abs().max() < 1e-5


def test_patch_weights_average_the_mask_over_each_patch(towers):
    dist = build_masked_clip(str(towers["cls"][0]))
    m = torch.zeros(1, 1, 32, 32)
    m[..., :16, :8] = 1.0  # patches (0,0) and (1,0) full
    m[..., 24:, 28:] = 1.0  # 8 rows × 4 columns: half of patch (3,3)
    w = dist.patch_weights(m)[0, :, 0].view(4, 4)
    expect = torch.zeros(4, 4)
    expect[0, 0] = expect[1, 0] = 1.0
    expect[3, 3] = 0.5
    torch.testing.assert_close(w, expect)


@pytest.mark.parametrize("kind", list(TOWERS))
def test_mask_selects_the_region_when_tokens_do_not_mix(towers, kind):
    # With every residual branch zeroed, each output token depends on its own patch only: then changing the
    # foreground must leave the background distance at zero and move the foreground one.
    dist = build_masked_clip(str(towers[kind][0]))
    with torch.no_grad():
        for blk in dist.visual.transformer.resblocks:
            for lin in (blk.attn.out_proj, blk.mlp.c_proj):
                lin.weight.zero_()
                lin.bias.zero_()
    fg = torch.zeros(2, 1, 32, 32)
    fg[..., 8:24, 8:24] = 1.0  # the 2×2 centre patches
    x0, other = _images()
    x = x0.clone()
    x[..., 8:24, 8:24] = other[..., 8:24, 8:24]
    with torch.no_grad():
        assert dist(x, x0, 1 - fg).abs().max() < 1e-5
        assert dist(x, x0, fg).min() > 1e-3
        y = x0.clone()
        y[..., :8, :8] = other[..., :8, :8]  # a background patch
        assert dist(y, x0, 1 - fg).min() > 1e-4


def test_objective_uses_it_with_the_region_mask_and_gradients_flow(towers):
    dist = build_masked_clip(str(towers["clipa"][0]))
    clf = load_classifier("tiny", num_classes=5, size=16, num_cutouts=4, noise_sd=0.05, seed=0)
    x0, x = _images(n=3)
    fg = torch.zeros(3, 1, 32, 32)
    fg[..., 4:20, 6:30] = 1.0
    obj = Objective("CE", [clf], torch.tensor([0, 1, 2]), ["a", "b", "c"],
                    regularizers=["px_background_clip", "px_foreground_clip"], regularizers_ws=[2.0, 0.5],
                    img0=x0, px_mask=fg, clip_model=dist)
    x.requires_grad_(True)
    total, parts = obj(x, None)
    torch.testing.assert_close(parts["px_background_clip"], dist(x, x0, 1 - fg))
    torch.testing.assert_close(parts["px_foreground_clip"], dist(x, x0, fg))
    torch.testing.assert_close(total, parts["CE"] + 2.0 * parts["px_background_clip"]
                               + 0.5 * parts["px_foreground_clip"])
    total.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    sub = obj.select([2])  # batch subsets (early stopping) keep the model and their masks
    torch.testing.assert_close(sub(x[2:].detach(), None)[1]["px_background_clip"],
                               dist(x[2:].detach(), x0[2:], 1 - fg[2:]))


def test_weights_are_required_and_errors_name_the_keys(tmp_path, towers):
    with pytest.raises(ValueError, match="clip_regularizer_weights"):
        build_masked_clip("ViT-L-14-CLIPA-336")
    with pytest.raises(ValueError, match="not an open_clip model name"):
        build_masked_clip("ViT-Bogus-1", weights=str(tmp_path / "w.safetensors"))
    wrong = tmp_path / "wrong.safetensors"
    save_file({"visual.proj": torch.zeros(3, 3)}, str(wrong))
    with pytest.raises(ValueError, match="does not match"):
        build_masked_clip(str(towers["cls"][0]), weights=str(wrong))
    with pytest.raises(ValueError, match="VisionTransformer"):
        MaskedCLIPDistance(torch.nn.Identity(), 32, (0, 0, 0), (1, 1, 1))


def test_task_helper_builds_once_and_only_when_asked(towers):
    from digin.stages.models import regularizer_models
    from digin.tasks.uvce import Config

    cfg = Config(model_path="tiny")
    assert regularizer_models(cfg, "cpu") == {}  # the default UVCE regularisers need no model
    cfg.regularizers, cfg.regularizers_ws = ["px_background_clip"], [1.0]
    cfg.clip_regularizer_model = str(towers["clipa"][0])
    first = regularizer_models(cfg, "cpu")["clip_model"]
    assert isinstance(first, MaskedCLIPDistance) and regularizer_models(cfg, "cpu")["clip_model"] is first
    cfg.clip_regularizer_model = "ViT-L-14-CLIPA-336"
    with pytest.raises(ValueError, match="clip_regularizer_weights"):
        regularizer_models(cfg, "cpu")
