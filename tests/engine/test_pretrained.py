"""Weights are real or refused: a named timm / torchvision classifier without a checkpoint loads its pretrained
weights from a real local hub-cache layout (huggingface_hub's models--org--name/snapshots/..., the torch hub's
checkpoints/), never from the network, or the stage stops naming the key and every place it looked."""
import json

import pytest
import torch

from digin.engine.classifiers import load_classifier
from digin.errors import ConfigError


def _hf_cache(root, repo_id: str, files: dict) -> None:
    """A huggingface_hub cache entry: refs/main → a snapshot holding `files` (name → bytes)."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    rev = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)


def _st_bytes(model) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in model.state_dict().items()})


@pytest.fixture
def caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "hf").mkdir()
    return tmp_path


def test_a_timm_name_without_weights_is_refused_naming_where_it_looked(caches):
    with pytest.raises(ConfigError) as e:
        load_classifier("resnet10t", weights_key="classifier1_checkpoint")
    msg = str(e.value)
    assert "classifier1_checkpoint=<weights file>" in msg and "models--timm--resnet10t.c3_in1k" in msg
    assert "resnet10t_176_c3-f3215ab1.pth" in msg and "random_weights=true" in msg and "\n" not in msg
    clf = load_classifier("resnet10t", allow_random=True)  # the explicit opt-in
    assert clf.num_classes == 1000


def test_timm_weights_load_from_the_local_hub_cache(caches):
    import timm

    ref = timm.create_model("resnet10t", pretrained=False).eval()
    _hf_cache(caches / "hf", "timm/resnet10t.c3_in1k", {"model.safetensors": _st_bytes(ref)})
    clf = load_classifier("resnet10t", size=64)
    x = torch.rand(2, 3, 64, 64)
    norm = (x - clf.mean) / clf.std
    torch.testing.assert_close(clf(x)[:, 0], ref(norm), rtol=1e-5, atol=1e-5)


def test_hf_hub_specs_load_from_the_cached_snapshot(caches):
    import timm

    ref = timm.create_model("resnet10t", pretrained=False, num_classes=5).eval()
    config = {"architecture": "resnet10t", "num_classes": 5, "pretrained_cfg": {"input_size": [3, 64, 64],
                                                                                "mean": [0.5] * 3, "std": [0.5] * 3}}
    _hf_cache(caches / "hf", "someone/tiny-resnet", {"config.json": json.dumps(config).encode(),
                                                     "model.safetensors": _st_bytes(ref)})
    clf = load_classifier("hf-hub:someone/tiny-resnet")
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(clf(x)[:, 0], ref((x - 0.5) / 0.5), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="hf-hub:someone/other"):
        load_classifier("hf-hub:someone/other")


def test_torchvision_weights_load_from_the_torch_hub_cache(caches):
    import torchvision

    with pytest.raises(ConfigError, match="resnet18-f37072fd.pth"):
        load_classifier("torchvision:resnet18")
    ref = torchvision.models.resnet18(weights=None).eval()
    (caches / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(ref.state_dict(), caches / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    clf = load_classifier("torchvision:resnet18", size=32)
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(clf(x)[:, 0], ref((x - clf.mean) / clf.std), rtol=1e-5, atol=1e-5)


def test_a_stage_refuses_a_classifier_without_weights_before_writing(caches, tmp_path, capsys):
    from digin.cli import main
    from digin.shards.convert import convert
    from digin.shards.synthetic import make_image_folder

    make_image_folder(tmp_path / "raw", classes=2, n_per_class=2, size=16, seed=0)
    convert("imagefolder", tmp_path / "raw", "val", tmp_path / "images", progress=False)
    rc = main(["eval", f"results=[{tmp_path / 'images'}]", f"out={tmp_path / 'ev'}", "classifier=resnet10t",
               "device=cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "classifier timm:resnet10t" in err[0] and "classifier_checkpoint=" in err[0]
    assert not (tmp_path / "ev").exists()


def test_a_diffusers_hub_id_loads_from_the_local_hub_cache(caches, tiny_sd_dir):
    import shutil

    from digin.engine.families import load_model, resolve_model_path

    repo = caches / "hf" / "models--someone--tiny-sd"
    rev = "89abcdef0123456789abcdef0123456789abcdef"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    shutil.copytree(tiny_sd_dir, repo / "snapshots" / rev)
    assert resolve_model_path("someone/tiny-sd") == str(repo / "snapshots" / rev)
    sd = load_model("someone/tiny-sd")
    assert sd.unet is not None
    with pytest.raises(ConfigError, match="model_path=someone/other: not a local folder"):
        load_model("someone/other")


def test_doctor_says_where_a_classifier_s_weights_come_from(caches, capsys):
    import timm

    from digin.cli import main

    ref = timm.create_model("resnet10t", pretrained=False).eval()
    _hf_cache(caches / "hf", "timm/resnet10t.c3_in1k", {"model.safetensors": _st_bytes(ref)})
    main(["doctor", "classifier=resnet10t", "device=cpu"])
    out = capsys.readouterr().out
    assert "pretrained weights from the local cache:" in out and "models--timm--resnet10t.c3_in1k" in out
    main(["doctor", "classifier=torchvision:resnet18", "device=cpu"])
    assert "no weights: give classifier_checkpoint=" in capsys.readouterr().out  # the refusal is its FAIL line
