"""`digin doctor`: one screen about this machine; non-zero exit only when something asked for is missing."""
import shutil

import pytest
import torch

from digin.cli import main

CUDA = torch.cuda.is_available()


def _doctor(capsys, *args):
    code = main(["doctor", *args])
    return code, capsys.readouterr().out


def _line(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line[2:].split()[1:2] == [name])


@pytest.mark.skipif(CUDA, reason="checks the CPU-only report")
def test_no_gpu_is_information_unless_a_gpu_is_needed(capsys):
    code, out = _doctor(capsys)
    assert code == 0, out
    device = _line(out, "device")
    assert device.split()[0] == "info" and "no GPU" in device
    for name in ("versions", "triton", "xformers", "sam", "flamingo", "lpips", "clip", "wandb", "cache", "ranks"):
        _line(out, name)  # every section is on the screen
    assert "torch " + torch.__version__.split("+")[0] in _line(out, "versions")
    assert "rank 0 of 1" in _line(out, "ranks")
    assert out.rstrip().endswith("nothing that was asked for is missing")

    code, out = _doctor(capsys, "needs=[gpu]")
    assert code == 1 and _line(out, "device").split()[0] == "FAIL" and "GPU node" in out


def test_triton_kernel_is_launched_where_it_can_run(capsys, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU: the interpreter runs the same kernel
    _, out = _doctor(capsys, "needs=[triton]")
    assert _line(out, "triton").split()[0] == "ok" and "matches its reference" in _line(out, "triton")


def test_a_missing_stack_that_is_needed_fails_and_names_the_extra(capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    code, out = _doctor(capsys)
    assert code == 0 and _line(out, "wandb").split()[0] == "info"
    code, out = _doctor(capsys, "needs=[wandb]")
    assert code == 1 and _line(out, "wandb").split()[0] == "FAIL" and "pip install 'digin[wandb]'" in out


def test_model_folder_passes_then_fails_naming_the_removed_weight_file(capsys, tmp_path, tiny_sd_dir):
    code, out = _doctor(capsys, f"model_path={tiny_sd_dir}")
    assert code == 0, out
    assert "complete" in _line(out, "model") and "3 weight file(s)" in _line(out, "model")

    broken = tmp_path / "sd"
    shutil.copytree(tiny_sd_dir, broken)
    removed = broken / "unet" / "diffusion_pytorch_model.safetensors"
    removed.unlink()
    code, out = _doctor(capsys, f"model_path={broken}")
    assert code == 1
    line = _line(out, "model")
    assert line.split()[0] == "FAIL" and f"looked for {removed}" in line


def test_stage_inputs_and_classifier(capsys, tmp_path):
    code, out = _doctor(capsys, "stage=uvce", "classifier=tiny")
    assert code == 1 and "uvce needs model_path" in _line(out, "stage")
    assert _line(out, "classifier").split()[0] == "ok" and "TinyConvNet" in _line(out, "classifier")

    missing = tmp_path / "vit.safetensors"
    code, out = _doctor(capsys, "classifier=tiny", f"classifier_checkpoint={missing}")
    assert code == 1 and f"{missing} not found" in _line(out, "classifier")

    code, out = _doctor(capsys, "stage=gallery")
    assert code == 0 and "needs no model" in _line(out, "stage")


def test_bad_keys_are_refused_by_name():
    with pytest.raises(SystemExit, match="needs=.*'gpus'"):
        main(["doctor", "needs=[gpus]"])
    with pytest.raises(SystemExit, match="stage='uvces'"):
        main(["doctor", "stage=uvces"])


@pytest.mark.gpu
def test_gpu_node_report(capsys):
    """On a GPU: the device line names it, and digin's Triton kernel runs on it."""
    code, out = _doctor(capsys, "needs=[gpu,triton]")
    assert code == 0, out
    device = _line(out, "device")
    assert device.split()[0] == "ok" and torch.cuda.get_device_name() in device and "GiB" in device
    assert "ran on cuda" in _line(out, "triton")
    assert _line(out, "xformers").split()[0] in ("ok", "info")


def test_compute_settings_are_what_a_stage_would_pick(capsys):
    code, out = _doctor(capsys, "preset=reference", "batch_size=2")
    assert code == 0 and "preset reference: fp32, eager, batch 2, checkpoint block" in _line(out, "compute")
    code, out = _doctor(capsys, "attention=xformers", "device=cpu")
    assert code == 1 and _line(out, "compute").split()[0] == "FAIL" and "attention=sdpa" in _line(out, "compute")


def test_an_unusable_compile_cache_is_one_fail_line_naming_the_variable(capsys, monkeypatch, tmp_path):
    """Issue 32: TORCHINDUCTOR_CACHE_DIR under a file (or on an unreadable path) is a FAIL line naming the variable;
    the rest of the screen is still there."""
    from pathlib import Path

    from digin.stages.doctor import check_compile_cache

    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(afile / "cache"))
    code, out = _doctor(capsys)
    line = _line(out, "cache")
    assert code == 1 and line.split()[0] == "FAIL" and f"TORCHINDUCTOR_CACHE_DIR={afile / 'cache'}" in line
    assert "is a file, not a folder" in line and _line(out, "ranks")
    real_exists = Path.exists

    def unreadable(self):  # what a path under a folder this user may not enter does
        if str(self).startswith(str(tmp_path / "locked")):
            raise PermissionError(13, "Permission denied", str(self))
        return real_exists(self)

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "locked" / "cache"))
    monkeypatch.setattr(Path, "exists", unreadable)
    check = check_compile_cache()
    assert check.status == "FAIL" and "TORCHINDUCTOR_CACHE_DIR" in check.detail and "Permission" in check.detail
