import json

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from safetensors.torch import save_file

from digin.engine.augment import augment, cutout_noise
from digin.engine.classifiers import (IMAGENET_MEAN, IMAGENET_STD, IMAGENET_TEMPLATES, ImageClassifier,
                                      build_tiny_net, imagenet_class_names, load_classifier, parse_spec,
                                      save_tiny_classifier)


def _save_st(model, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def reference_resize(x, size):
    """The reference wrapper's non-augmented resize: torchvision TF.resize(x, size, BILINEAR)."""
    return TF.resize(x, size, interpolation=TF.InterpolationMode.BILINEAR)


def _norm(x, mean, std):
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.fixture
def img():
    return torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))


def test_spec_parsing():
    assert parse_spec("vit_base_patch16_224") == ("timm", "vit_base_patch16_224")
    assert parse_spec("timm:resnet50.a1_in1k") == ("timm", "resnet50.a1_in1k")
    assert parse_spec("hf:/x/y") == ("hf", "/x/y")
    assert parse_spec("madry:/ckpt/madry_l2.pt") == ("madry", "/ckpt/madry_l2.pt")
    assert parse_spec("madry_l2") == ("madry", "")
    assert parse_spec("tiny") == ("tiny", "")
    assert len(IMAGENET_TEMPLATES) == 80 and all("{}" in t for t in IMAGENET_TEMPLATES)
    names = imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[2] == "great white shark"


def test_resize_path_and_cutout_path_match_manual(img):
    clf = load_classifier("tiny", num_classes=5, size=16, num_cutouts=3, noise_sd=0.02, seed=3)
    net = build_tiny_net(5, 8, 3)
    x = reference_resize(img, 16)
    expect = net(_norm(x, IMAGENET_MEAN, IMAGENET_STD))
    out = clf(img)
    assert out.shape == (2, 1, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 0], expect, rtol=0, atol=1e-6)
    views = augment(img, [4, 9], 16, 3, 0.3, 0.02 * 0.5)
    expect_aug = net(_norm(views.flatten(0, 1), IMAGENET_MEAN, IMAGENET_STD)).view(2, 3, 5)
    torch.testing.assert_close(clf(img, [4, 9], noise_scale=0.5), expect_aug, rtol=0, atol=1e-6)
    # No cutouts and no noise configured → the augmented view is the plain resize.
    plain = load_classifier("tiny", num_classes=5, size=16, seed=3)
    torch.testing.assert_close(plain(img, [4, 9]), out, rtol=0, atol=0)


def test_no_cutouts_with_noise_resizes_then_adds_per_sample_noise(img):
    """augmentation_num_cutouts=0 with noise_sd > 0: the reference's cutout wrapper resizes and adds noise; here
    from each sample's noise stream (the one its cutouts would use), so batch-independent."""
    clf = load_classifier("tiny", num_classes=5, size=16, num_cutouts=0, noise_sd=0.1, seed=3)
    net = build_tiny_net(5, 8, 3)
    x = reference_resize(img, 16)
    noise = cutout_noise([4, 9], (1, 3, 16, 16), 0.1 * 0.5, "cpu")[:, 0]
    want = net(_norm(x + noise, IMAGENET_MEAN, IMAGENET_STD))[:, None]
    got = clf(img, [4, 9], noise_scale=0.5)
    assert got.shape == (2, 1, 5)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (got - clf(img)).abs().amax() > 1e-3  # the noise really is there
    torch.testing.assert_close(clf(img, [4, 9], noise_scale=0.0), clf(img), rtol=0, atol=0)
    torch.testing.assert_close(clf(img[1:], [9], noise_scale=0.5), got[1:], rtol=0, atol=1e-6)


def test_fused_cutout_views_equal_the_eager_views_forward_and_backward(img):
    """The CUDA path (fused crop + area-resize + noise + normalise op; Triton in interpreter mode here) gives the
    views and image gradients of the eager path for the same per-sample boxes and noise."""
    clf = load_classifier("tiny", num_classes=5, size=16, num_cutouts=3, noise_sd=0.02, seed=3)
    x = img.clone().requires_grad_(True)
    eager = clf.views(x, [4, 9], noise_scale=0.5)
    fused = clf._fused_views(x, [4, 9], noise_scale=0.5)  # on a CPU tensor its generators are the CPU ones
    torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-5)
    w = torch.randn(eager.shape, generator=torch.Generator().manual_seed(1))
    (g_eager,) = torch.autograd.grad((eager * w).sum(), x)
    (g_fused,) = torch.autograd.grad((fused * w).sum(), x)
    torch.testing.assert_close(g_fused, g_eager, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("image_size", [64, 45])
def test_non_augmented_logits_and_gradients_are_the_references_tf_resize(image_size):
    """The non-augmented path resizes as the reference's wrapper (torchvision TF.resize, antialiased bilinear):
    logits and image gradients of a 32-px classifier equal a literal recomputation on 64- and 45-px images."""
    clf = load_classifier("tiny", num_classes=6, size=32, seed=1)
    net = build_tiny_net(6, 8, 1)
    x = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(image_size),
                   requires_grad=True)
    got = clf(x)[:, 0]
    want = net(_norm(reference_resize(x, 32), IMAGENET_MEAN, IMAGENET_STD))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    w = torch.randn(got.shape, generator=torch.Generator().manual_seed(0))
    (g_got,) = torch.autograd.grad((got * w).sum(), x)
    (g_want,) = torch.autograd.grad((want * w).sum(), x)
    torch.testing.assert_close(g_got, g_want, rtol=1e-6, atol=1e-7)
    # The check can tell: a plain (aliasing) bilinear resize gives other logits.
    plain = net(_norm(F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False), IMAGENET_MEAN,
                      IMAGENET_STD))
    assert (plain - want).abs().max() > 1e-3


def test_features_final_linear_input_and_named_module(img):
    clf = load_classifier("tiny", num_classes=5, size=16, num_cutouts=2, seed=1)
    assert clf.feature_module == "fc" and clf.feature_capture == "input" and clf.num_classes == 5
    net = clf.model
    logits, feats = clf.features(img, [1, 2])
    views = clf.views(img, [1, 2]).flatten(0, 1)
    h = F.relu(net.conv2(F.relu(net.conv1(views))))
    torch.testing.assert_close(feats, net.pool(h).flatten(1).view(2, 2, -1), rtol=0, atol=1e-6)
    torch.testing.assert_close(logits, net.fc(feats), rtol=0, atol=1e-6)
    # A non-final module gives its (spatially pooled) output.
    mid = load_classifier("tiny", num_classes=5, size=16, seed=1, feature_module="conv1")
    assert mid.feature_capture == "output"
    _, f1 = mid.features(img)
    v = mid.views(img)[:, 0]
    torch.testing.assert_close(f1[:, 0], net.conv1(v).mean(dim=(2, 3)), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="nope"):
        load_classifier("tiny", feature_module="nope")


def test_bf16_model_returns_fp32(img):
    c32 = load_classifier("tiny", num_classes=4, size=16)
    c16 = load_classifier("tiny", num_classes=4, size=16, dtype="bf16")
    assert c16.dtype == torch.bfloat16
    out = c16(img)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, c32(img), rtol=0.05, atol=0.05)


def test_tiny_round_trip(tmp_path, img):
    folder = save_tiny_classifier(tmp_path / "tiny", num_classes=6, size=20, seed=5)
    clf = load_classifier(f"tiny:{folder}")
    ref = load_classifier("tiny", num_classes=6, size=20, seed=5)
    assert clf.size == 20 and clf.num_classes == 6
    torch.testing.assert_close(clf(img), ref(img), rtol=0, atol=0)
    assert not torch.allclose(clf(img), load_classifier("tiny", num_classes=6, size=20, seed=6)(img))


def test_timm_round_trip(tmp_path, img):
    import timm

    model = timm.create_model("test_resnet", pretrained=False, num_classes=7).eval()
    ckpt = _save_st(model, tmp_path / "timm.safetensors")
    clf = load_classifier("timm:test_resnet", checkpoint=str(ckpt), num_classes=7, size=32)
    assert clf.feature_module == "fc" and clf.num_classes == 7 and clf.size == 32
    assert torch.allclose(clf.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))  # from the pretrained cfg
    x = reference_resize(img, 32)
    torch.testing.assert_close(clf(img)[:, 0], model(_norm(x, (0.5,) * 3, (0.5,) * 3)), rtol=1e-5, atol=1e-5)
    bare = load_classifier("test_resnet", num_classes=7, size=32, allow_random=True)  # bare name = timm, random
    assert not torch.allclose(bare(img), clf(img))


def test_torchvision_round_trip_with_weights_only_pth(tmp_path, img):
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    ckpt = tmp_path / "rn18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    clf = load_classifier("torchvision:resnet18", checkpoint=str(ckpt), num_classes=5, size=32)
    x = reference_resize(img, 32)
    torch.testing.assert_close(clf(img)[:, 0], model(_norm(x, IMAGENET_MEAN, IMAGENET_STD)), rtol=1e-5, atol=1e-5)
    _, feats = clf.features(img)
    assert clf.feature_module == "fc" and feats.shape == (2, 1, 512)


def test_madry_checkpoint_with_prefixes(tmp_path, img):
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    sd = {}
    for k, v in model.state_dict().items():
        sd[f"module.model.{k}"] = v
        sd[f"module.attacker.model.{k}"] = torch.zeros_like(v)  # must be ignored
    sd["module.normalizer.new_mean"] = torch.zeros(3, 1, 1)
    sd["module.normalizer.new_std"] = torch.ones(3, 1, 1)
    ckpt = tmp_path / "madry_l2.pt"
    torch.save({"model": sd, "epoch": 90}, ckpt)
    clf = load_classifier(f"madry:{ckpt}", arch="resnet18", num_classes=4, size=32)
    x = reference_resize(img, 32)
    torch.testing.assert_close(clf(img)[:, 0], model(_norm(x, IMAGENET_MEAN, IMAGENET_STD)), rtol=1e-5, atol=1e-5)
    # Stylized-ImageNet style: {'state_dict': {'module.<key>'}}, via the reference alias + checkpoint=.
    sin = tmp_path / "sin.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 60}, sin)
    clf2 = load_classifier("resnet50_sin", checkpoint=str(sin), arch="resnet18", num_classes=4, size=32)
    torch.testing.assert_close(clf2(img), clf(img), rtol=0, atol=0)
    with pytest.raises(ValueError, match="checkpoint"):
        load_classifier("madry_l2")


def test_hf_vit_round_trip(tmp_path, img):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, num_labels=7)
    torch.manual_seed(0)
    model = ViTForImageClassification(cfg).eval()
    model.save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6],
                      image_std=[0.2, 0.3, 0.4]).save_pretrained(tmp_path / "vit")
    clf = load_classifier(f"hf:{tmp_path / 'vit'}")
    assert clf.size == 32 and clf.num_classes == 7 and clf.feature_module == "classifier"
    x = _norm(reference_resize(img, 32), (0.4, 0.5, 0.6),
              (0.2, 0.3, 0.4))
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    torch.testing.assert_close(clf(img)[:, 0], out.logits, rtol=1e-5, atol=1e-5)
    _, feats = clf.features(img)
    cls_token = model.vit.layernorm(out.hidden_states[-1])[:, 0]
    torch.testing.assert_close(feats[:, 0], cls_token, rtol=1e-5, atol=1e-5)


def test_clip_zero_shot_round_trip(tmp_path, img):
    import open_clip

    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}}))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False).eval()
    ckpt = _save_st(model, tmp_path / "clip_weights.safetensors")
    names, templates = ["cat", "dog", "bird"], ["a photo of a {}.", "a drawing of a {}."]
    clf = load_classifier(f"clip:{folder}", checkpoint=str(ckpt), class_names=names, templates=templates)
    assert clf.size == 32 and clf.num_classes == 3 and clf.feature_module == "head"
    tok = open_clip.get_tokenizer(f"local-dir:{folder}")
    with torch.no_grad():
        cls = torch.stack([F.normalize(F.normalize(model.encode_text(tok([t.format(n) for t in templates])),
                                                   dim=-1).mean(0), dim=0) for n in names])
        x = _norm(reference_resize(img, 32),
                  open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
        e = F.normalize(model.encode_image(x), dim=-1)
    logits, feats = clf.features(img)
    torch.testing.assert_close(logits[:, 0], 100 * e @ cls.T, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(feats[:, 0], e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(clf.encode_text(["a cat"]), F.normalize(model.encode_text(tok(["a cat"])), dim=-1))
    # Zero-shot head cache: written on first load, read (not recomputed) on the next.
    cache = tmp_path / "zs.safetensors"
    first = load_classifier(f"clip:{folder}", checkpoint=str(ckpt), class_names=names, templates=templates,
                            zeroshot_cache=str(cache))
    assert cache.is_file()
    save_file({"class_embeddings": torch.eye(3, 16)}, str(cache))
    cached = load_classifier(f"clip:{folder}", checkpoint=str(ckpt), class_names=names, templates=templates,
                             zeroshot_cache=str(cache))
    torch.testing.assert_close(first(img), logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached(img)[:, 0], 100 * e[:, :3], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="checkpoint"):
        load_classifier(f"clip:{tmp_path / 'missing_dir_is_a_builtin_name'}")


def _write_sentinel(path):  # what a malicious pickle would run on load
    with open(path, "w") as f:
        f.write("pwned")
    return {}


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return _write_sentinel, (self.path,)


def test_pickle_checkpoint_is_never_executed(tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    bad = tmp_path / "evil.pt"
    torch.save({"state_dict": _Evil(str(sentinel))}, bad)
    for spec, kw in (("tiny", {}), (f"madry:{bad}", {"arch": "resnet18"}), ("torchvision:resnet18", {})):
        with pytest.raises(ValueError, match="refusing"):
            load_classifier(spec, checkpoint=None if spec.startswith("madry") else str(bad), **kw)
    assert not sentinel.exists()
    # Sanity: the file really is a payload (a full unpickle would have fired it).
    torch.load(bad, weights_only=False)
    assert sentinel.read_text() == "pwned"


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    other = _save_st(build_tiny_net(3, 4), tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="does not match"):
        load_classifier("tiny", checkpoint=str(other), num_classes=5)


def test_hf_labels_in_another_order_are_matched_to_the_dataset_classes(tmp_path, img, capsys):
    """A HF model whose id2label is a permutation of the dataset's class names (the Flowers-102 case): 'auto' and
    'dataset' give the logits in the dataset's order, 'model' keeps the model's; unknown names fail in 'dataset'."""
    from transformers import ViTConfig, ViTForImageClassification

    from digin.engine.classifiers import label_permutation

    dataset = ["pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea"]
    model_labels = ["Sweet_Pea", "pink primrose", "Canterbury Bells", "hard leaved pocket orchid", "extra"]
    cfg = ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, num_labels=5, id2label=dict(enumerate(model_labels)),
                    label2id={n: i for i, n in enumerate(model_labels)})
    torch.manual_seed(0)
    ViTForImageClassification(cfg).save_pretrained(tmp_path / "vit")
    spec = f"hf:{tmp_path / 'vit'}"
    raw = load_classifier(spec)(img)[:, 0]
    for mode in ("auto", "dataset"):
        clf = load_classifier(spec, dataset_classes=dataset, label_order=mode)
        assert clf.num_classes == 4
        torch.testing.assert_close(clf(img)[:, 0], raw[:, [1, 3, 2, 0]])
        logits, _ = clf.features(img)
        torch.testing.assert_close(logits[:, 0], raw[:, [1, 3, 2, 0]])
    assert "logits reordered" in capsys.readouterr().err
    torch.testing.assert_close(load_classifier(spec, dataset_classes=dataset, label_order="model")(img)[:, 0], raw)
    # names the model lacks: auto keeps the model order, dataset refuses and names them
    assert load_classifier(spec, dataset_classes=dataset + ["daisy"]).label_index is None
    with pytest.raises(ValueError, match="daisy"):
        load_classifier(spec, dataset_classes=dataset + ["daisy"], label_order="dataset")
    # same names in the same order: nothing to do
    assert label_permutation(["a", "b"], ["A", "b"]) is None
    with pytest.raises(ValueError, match="auto, model or dataset"):
        label_permutation(["a"], ["a"], "sorted")


def test_wrapper_accepts_hf_style_outputs(img):
    class Out:
        def __init__(self, logits):
            self.logits = logits

    class HFish(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.classifier = torch.nn.Linear(3, 2)

        def forward(self, x):
            return Out(self.classifier(x.mean(dim=(2, 3))))

    clf = ImageClassifier(HFish(), size=8, mean=(0, 0, 0), std=(1, 1, 1))
    logits, feats = clf.features(img)
    x = reference_resize(img, 8).mean(dim=(2, 3))
    torch.testing.assert_close(feats[:, 0], x)
    torch.testing.assert_close(logits[:, 0], clf.model.classifier(x))


def test_mae_checkpoint_is_a_global_pool_vit_with_imagenet_normalisation(tmp_path, img):
    import timm

    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, global_pool="avg", num_classes=5).eval()
    with torch.no_grad():
        ref.fc_norm.weight.normal_(1.0, 0.2)
        ref.head.weight.normal_(0.0, 0.2)
    path = tmp_path / "checkpoint-49.pth"
    torch.save({"model": ref.state_dict(), "epoch": 49}, path)  # MAE's fine-tuning checkpoint layout
    clf = load_classifier("mae:5", checkpoint=str(path), arch="vit_tiny_patch16_224")
    assert clf.size == 224 and clf.num_classes == 5
    with torch.no_grad():
        x = _norm(reference_resize(img, 224), IMAGENET_MEAN,
                  IMAGENET_STD)
        torch.testing.assert_close(clf(img)[:, 0], ref(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="checkpoint"):
        load_classifier("mae:cub")
