import numpy as np
import torch

from .helpers import read_set, run_caption


def _images(n, seed=0, size=32):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8))


def _captioner(d, **kw):
    from digin.caption.backends import load_captioner

    return load_captioner("hf", model_path=str(d), **{"num_beams": 1, "max_new_tokens": 5, **kw})


def test_hf_blip_task_over_two_shards(tiny_blip_dir, image_shards, tmp_path):
    out = tmp_path / "cap"
    args = [f"inputs={image_shards}", f"out={out}", "backend=hf", f"hf.model_path={tiny_blip_dir}",
            "resolution=32", "batch_size=3", "num_beams=2", "max_new_tokens=4"]
    assert run_caption(args) == 0
    caps, images = read_set(out), read_set(image_shards)
    assert sorted(caps) == sorted(images)
    for key, s in caps.items():
        label = images[key]["meta"]["label_name"]
        assert s["caption_info"]["backend"] == "hf" and s["caption_info"]["fallback"] is None
        assert s["caption"].startswith(f"an image of a {label} ")  # prefix + a continuation word
        assert len(s["caption"]) > len(f"an image of a {label} ")


def test_hf_batch_equals_one_by_one(tiny_blip_dir):
    cap = _captioner(tiny_blip_dir)
    assert cap.mode == "prefix"  # BLIP has no chat template
    x, labels = _images(3), ["cat", "hot dog", "fox"]  # two prompt lengths: grouped, never padded
    batched = cap.caption(x, labels)
    assert batched == [cap.caption(x[i:i + 1], [lab])[0] for i, lab in enumerate(labels)]
    assert batched == cap.caption(x, labels)


def test_instruct_answers_without_label_fall_back_and_are_recorded(tiny_blip_dir):
    from digin.caption import caption_images

    cap = _captioner(tiny_blip_dir, mode="instruct", instruction="describe the {label}")  # random: disobeys
    res = caption_images(_images(2), ["cat", "dog"], captioner=cap, dataset="food101")
    for (text, info), label in zip(res, ["cat", "dog"]):
        assert info["fallback"] == "label_missing" and info["raw"] != text
        assert text == f"an image of a {label} macro shot close-up"


def test_backend_error_policy(tiny_blip_dir):
    import pytest

    from digin.caption import caption_images

    class Broken:
        name = "broken"

        def caption(self, images, labels):
            raise RuntimeError("generation exploded")

    with pytest.raises(RuntimeError):
        caption_images(_images(1), ["cat"], captioner=Broken())
    (text, info), = caption_images(_images(1), ["cat"], captioner=Broken(), on_error="fallback")
    assert text == "an image of a cat on background" and info["fallback"].startswith("backend_error:RuntimeError")


def test_hf_ask_objects_and_cache(tiny_blip_dir, monkeypatch):
    from PIL import Image

    import digin.caption.backends as backends
    from digin.caption import ask_objects

    loads = []
    real = backends.load_captioner
    monkeypatch.setattr(backends, "_CACHE", {})
    monkeypatch.setattr(backends, "load_captioner", lambda *a, **k: loads.append(1) or real(*a, **k))
    pils = [Image.fromarray(np.full((40, 30, 3), v, np.uint8)) for v in (10, 200)]  # PIL input, odd sizes
    cfg = dict(backend="hf", model_path=str(tiny_blip_dir), num_beams=1, max_new_tokens=4)
    a1 = ask_objects(pils, **cfg)
    a2 = ask_objects(pils, **cfg)
    assert len(a1) == 2 and a1 == a2 and len(loads) == 1


def test_trust_remote_code_is_off_unless_configured(tiny_blip_dir, monkeypatch):
    import transformers

    seen = []
    real = transformers.AutoConfig.from_pretrained
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained",
                        lambda *a, **k: seen.append(k.get("trust_remote_code")) or real(*a, **k))
    _captioner(tiny_blip_dir)
    assert seen and not any(seen)
