"""The classifier package keeps the single module's behaviour: every spec it accepted reaches the same family, and
a tiny classifier's outputs equal the ones the single module produced before the move."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from digin.engine import classifiers
from digin.engine.classifiers import BUILDERS, load_classifier, parse_spec, save_tiny_classifier

# Written by the single-module digin/engine/classifiers.py (commit 14903b1) from the calls in test_outputs_*.
REFERENCE_OUTPUTS = Path(__file__).parent / "data" / "tiny_classifier_outputs.safetensors"

# Every spec form the single module accepted → (family, argument).
SPECS = {
    "timm:vit_base_patch16_384": ("timm", "vit_base_patch16_384"),
    "seresnet152d.ra2_in1k": ("timm", "seresnet152d.ra2_in1k"),  # bare names are timm
    "hf_hub:org/model": ("timm", "hf_hub:org/model"),  # an unknown prefix is part of a timm name
    "torchvision:resnet50": ("torchvision", "resnet50"),
    "hf:/models/vit_cub": ("hf", "/models/vit_cub"),
    "madry:/ckpt/madry_l2.pt": ("madry", "/ckpt/madry_l2.pt"),
    "madry_l2": ("madry", ""),
    "resnet50_sin": ("madry", ""),
    "clip:ViT-B-16": ("clip", "ViT-B-16"),
    "cal:car": ("cal", "car"),
    "mae:cub": ("mae", "cub"),
    "tiny": ("tiny", ""),
    "tiny:/tmp/clf": ("tiny", "/tmp/clf"),
}


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_every_spec_prefix_reaches_its_family(spec):
    kind, arg = parse_spec(spec)
    assert (kind, arg) == SPECS[spec]
    assert kind in BUILDERS


def test_the_registry_has_exactly_the_old_families():
    assert set(BUILDERS) == {"timm", "torchvision", "hf", "madry", "clip", "cal", "mae", "tiny"}
    assert {kind for kind, _ in SPECS.values()} == set(BUILDERS)


def test_load_classifier_builds_through_the_registry(monkeypatch):
    """A family is reached through BUILDERS alone: replacing its entry replaces what load_classifier builds."""
    calls = []

    def fake_timm(arg, checkpoint, kw, **ctx):
        calls.append((arg, checkpoint, sorted(ctx)))
        return BUILDERS["tiny"]("", None, {"num_classes": 3})

    monkeypatch.setitem(BUILDERS, "timm", fake_timm)
    clf = load_classifier("some_timm_name", checkpoint="w.safetensors")
    assert calls == [("some_timm_name", "w.safetensors", ["device", "trust_remote_code"])]
    assert clf(torch.rand(1, 3, 32, 32)).shape == (1, 1, 3)


def test_a_reference_alias_without_its_checkpoint_is_refused():
    with pytest.raises(ValueError, match="madry classifier needs a checkpoint path"):
        load_classifier("madry_l2")


@pytest.fixture(scope="module")
def reference():
    return load_file(str(REFERENCE_OUTPUTS))


def test_outputs_equal_the_single_modules(reference, tmp_path):
    img = reference["image"]
    assert torch.equal(img, torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0)))
    got = {"plain": load_classifier("tiny", num_classes=5, size=24)(img)}
    clf = load_classifier("tiny", num_classes=5, size=24, num_cutouts=3, noise_sd=0.1)
    got["cutouts"] = clf(img, seeds=[1, 2])
    got["features_logits"], got["features"] = clf.features(img, seeds=[1, 2], noise_scale=0.5)
    folder = save_tiny_classifier(tmp_path / "clf", num_classes=4, size=16, width=4, seed=3)
    got["folder"] = load_classifier(f"tiny:{folder}")(img)
    for name, value in got.items():
        # bitwise on the machine that wrote them; a few ulps of slack for another CPU's conv kernels
        torch.testing.assert_close(value, reference[name], rtol=1e-6, atol=1e-6, msg=name)


def test_package_exports_the_names_callers_import():
    for name in ("IMAGENET_MEAN", "IMAGENET_STD", "IMAGENET_TEMPLATES", "ImageClassifier", "build_tiny_net",
                 "final_linear_name", "imagenet_class_names", "label_permutation", "load_classifier",
                 "open_clip_model", "parse_spec", "save_tiny_classifier"):
        assert hasattr(classifiers, name), name
