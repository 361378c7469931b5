"""Exit codes a job script can trust, through the real console script: 0 on success (tasks that return a path or a
list of files included — never a repr on stderr), 1 on a reported failure; `python -m digin` too; single values for
list keys and "did you mean" for typos."""
import subprocess
import sys
from pathlib import Path

import pytest

from digin.cli import exit_code, main, normalise_args
from digin.tasks import TASKS

DIGIN = str(Path(sys.executable).parent / "digin")


def test_every_task_answers_help_with_exit_code_0(capsys):
    for task in TASKS:
        assert main([task, "--help"]) == 0, task
    assert "status" in capsys.readouterr().out


def test_return_values_become_exit_codes():
    assert [exit_code(v) for v in (0, 1, 75, None, Path("x"), ["a"], {"k": 1}, True)] == [0, 1, 75, 0, 0, 0, 0, 0]


def test_result_tools_exit_0_through_the_console_script(tmp_path):
    from digin.stages.gallery.synthetic import write_uvce_results

    res = write_uvce_results(tmp_path / "uvce", n_images=3, targets_per_image=1, classes=["a", "b"], size=16,
                             per_shard=2)
    for args in (["eval", f"results={res}", f"out={tmp_path / 'ev'}", "lpips=false"],  # a single value: a list
                 ["gallery", f"results=[{res}]", f"out={tmp_path / 'g'}"],
                 ["export", f"results={res}", f"out={tmp_path / 'x'}", "task=uvce"],
                 ["verify", f"path={res}"], ["status", f"out={res}"], ["index", f"path={res}"]):
        r = subprocess.run([DIGIN, *args], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (args[0], r.stderr[-2000:])
        assert "PosixPath" not in r.stderr and not r.stderr.strip().startswith("["), (args[0], r.stderr[-500:])
    r = subprocess.run([sys.executable, "-m", "digin", "verify", f"path={tmp_path / 'nothing'}"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1


def test_typos_get_did_you_mean_and_list_keys_take_single_values():
    from digin.tasks import eval as ev
    from digin.tasks import uvce

    with pytest.raises(SystemExit, match="did you mean 'classifier'"):
        normalise_args(uvce.Config, ["classifer=x"])
    with pytest.raises(SystemExit, match="did you mean 'optim_params.sgd_steps'"):
        normalise_args(uvce.Config, ["optim_params.sgd_step=3"])
    assert normalise_args(ev.Config, ["results=/runs/a"]) == ["results=[/runs/a]"]
    assert normalise_args(ev.Config, ["results=[/a,/b]", "out=o"]) == ["results=[/a,/b]", "out=o"]


def test_torch_threads_follow_the_cpus_the_job_may_use(monkeypatch):
    import torch

    from digin.cli import size_torch_threads, usable_cpus

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert usable_cpus() == 1
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        size_torch_threads()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_toy_train_refuses_to_overwrite_the_shipped_models():
    import digin.toy
    from digin.errors import ConfigError
    from digin.tasks import toy_train

    bundled = Path(digin.toy.__file__).parent / "models"
    with pytest.raises(ConfigError, match="replace_bundled=true"):
        toy_train.run(toy_train.Config(out=str(bundled)))
