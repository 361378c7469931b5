"""A model on disk is checked from its file headers: every problem names the file and where it was looked for."""
import json
import shutil
import sys

import pytest

from digin.engine.model_files import check_model, require_complete, weights_file_problem

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture
def sd_copy(tmp_path, tiny_sd_dir):
    dst = tmp_path / "sd"
    shutil.copytree(tiny_sd_dir, dst)
    return dst


def test_complete_folder(tiny_sd_dir):
    report = check_model(str(tiny_sd_dir))
    assert report.ok, report.problems
    assert report.kind == "sd1 diffusers folder" and len(report.weight_files) == 3 and report.weight_bytes > 0


def test_missing_weights_name_the_file_and_what_was_found(sd_copy):
    (sd_copy / UNET_WEIGHTS).rename(sd_copy / "unet" / "diffusion_pytorch_model.bin")
    (sd_copy / "tokenizer" / "merges.txt").unlink()
    assert check_model(str(sd_copy)).problems == [
        f"unet weights missing: looked for {sd_copy / UNET_WEIGHTS} (or a sharded "
        "diffusion_pytorch_model.safetensors.index.json); found diffusion_pytorch_model.bin: digin loads "
        ".safetensors only (convert with save_pretrained(..., safe_serialization=True))"]  # tokenizer.json serves
    (sd_copy / "tokenizer" / "tokenizer.json").unlink()
    problems = check_model(str(sd_copy)).problems
    assert len(problems) == 2 and f"looked for {sd_copy / 'tokenizer' / 'tokenizer.json'} or" in problems[1]
    assert "merges.txt absent" in problems[1]


def test_the_bundled_toy_model_is_complete():
    from digin import toy

    if not toy.available():
        pytest.skip("toy models not bundled here")
    report = check_model(str(toy.paths()["sd"]))
    assert report.ok, report.problems


def test_cut_short_weights_are_found_from_the_header(sd_copy):
    f = sd_copy / "vae" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    (problem,) = check_model(str(sd_copy)).problems
    assert str(f) in problem and "cut short" in problem
    assert weights_file_problem(f) == problem


def test_sharded_weights_follow_the_index(sd_copy):
    (sd_copy / UNET_WEIGHTS).rename(sd_copy / "unet" / "part-1.safetensors")
    index = {"metadata": {}, "weight_map": {"conv_in.weight": "part-1.safetensors", "x": "part-2.safetensors"}}
    (sd_copy / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    (problem,) = check_model(str(sd_copy)).problems
    assert "part-2.safetensors missing" in problem and str(sd_copy / "unet" / "part-2.safetensors") in problem


def test_loading_refuses_an_incomplete_model_naming_the_file(sd_copy):
    from digin.engine.families import load_model

    (sd_copy / "text_encoder" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=str(sd_copy / "text_encoder" / "model.safetensors")):
        load_model(sd_copy)


def test_single_file_needs_its_config_folder(tmp_path, tiny_sd_dir):
    junk = tmp_path / "model.safetensors"
    junk.write_bytes(b"not safetensors")
    problems = check_model(str(junk)).problems
    assert any(str(junk) in p and "not a safetensors file" in p for p in problems)
    assert any("model_config" in p for p in problems)
    with pytest.raises(ValueError, match="model_config"):
        require_complete(str(junk))


def test_torch_archives_are_checked_without_unpickling(tmp_path):
    import torch

    good = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(2)}, good)
    assert weights_file_problem(good) is None
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:-200])
    assert str(cut) in weights_file_problem(cut)
    assert weights_file_problem(tmp_path / "absent.pth") == f"{tmp_path / 'absent.pth'} not found"


def test_a_missing_optional_stack_names_the_install(monkeypatch):
    from digin.extras import require

    monkeypatch.setitem(sys.modules, "lpips", None)
    with pytest.raises(ImportError, match=r"px_lpips needs LPIPS.*pip install 'digin\[lpips\]'"):
        require("lpips", "px_lpips")


def _garbage_header(f):
    f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\0" * 64)


@pytest.mark.parametrize("fault", ["truncated", "garbage_header", "bad_config", "json_path"])
def test_a_broken_model_is_one_line_through_the_cli(sd_copy, tmp_path, capsys, fault):
    """Issue 32: each fault gives one stderr line naming the file and what is wrong, no traceback, exit code 1,
    and nothing written (on every rank alike: ModelFileError is an expected error)."""
    from digin.cli import main
    from tests.shards.test_lock_budget import make_input

    weights = sd_copy / UNET_WEIGHTS
    model_path, named = sd_copy, weights
    if fault == "truncated":
        weights.write_bytes(weights.read_bytes()[:-1000])
    elif fault == "garbage_header":
        _garbage_header(weights)
    elif fault == "bad_config":
        named = sd_copy / "unet" / "config.json"
        named.write_text('{"sample_size": 8,')
    else:
        model_path = named = sd_copy / "model_index.json"
    inp = make_input(tmp_path / "images", 1, 2)
    out = tmp_path / "out"
    code = main(["invert", f"inputs={inp}", f"out={out}", f"model_path={model_path}", "device=cpu"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("digin invert: ModelFileError: model_path ") and str(named) in lines[0]
    assert "Traceback" not in err and not out.exists()
