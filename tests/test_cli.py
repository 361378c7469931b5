import pytest

from digin.cli import build_config, main


def test_help_lists_keys_with_defaults(capsys):
    assert main(["diff", "--help"]) == 0
    out = capsys.readouterr().out
    assert "optim_params.sgd_steps=20" in out and "guidance_scale=3.0" in out and "classifier1=" in out


def test_overrides_nested_and_lists():
    from digin.tasks import uvce

    req = ["images=i", "inversions=v", "out=o", "model_path=tiny"]
    cfg = build_config(uvce.Config, req + ["optim_params.sgd_steps=7", "regularizers=[px_l2]", "regularizers_ws=[2.5]",
                                     "p2p.xa_interpolation_schedule=[threshold_0.0_0.2]"])
    assert cfg.optim_params.sgd_steps == 7 and cfg.regularizers == ["px_l2"] and cfg.regularizers_ws == [2.5]
    assert cfg.p2p.xa_interpolation_schedule == ["threshold_0.0_0.2"]
    assert cfg.mask_blend.foreground_blend is False  # UVCE pins the background


def test_errors_name_the_problem():
    from digin.tasks import uvce

    with pytest.raises(SystemExit, match="unknown task 'uvec'"):
        main(["uvec"])
    with pytest.raises(SystemExit, match="not key=value"):
        build_config(uvce.Config, ["guidance_scale"])
    with pytest.raises(SystemExit, match="guidance_scale"):
        build_config(uvce.Config, ["guidance_scale=high"])
    with pytest.raises(SystemExit, match="config 'nope'"):
        build_config(uvce.Config, ["config=nope"])
    with pytest.raises(SystemExit, match="use config=sdxl_turbo"):
        build_config(uvce.Config, ["preset=sdxl_turbo"])


def test_preset_then_overrides():
    from digin.tasks import diff

    with pytest.raises(SystemExit, match="missing required key.*model_path"):
        build_config(diff.Config, ["config=sdxl_turbo", "out=o"])
    cfg = build_config(diff.Config, ["config=sdxl_turbo", "num_ddim_steps=2", "out=o", "model_path=/m"])
    assert cfg.solver == "euler" and cfg.num_ddim_steps == 2


def test_operational_stops_print_the_reason_and_exit_1(tmp_path, capsys):
    """Resuming into an output made with another config is refused: one clear line, exit code 1, no traceback."""
    from digin.shards.synthetic import make_image_folder

    make_image_folder(tmp_path / "src", classes=["a", "b"], n_per_class=2, size=16, seed=0)
    base = ["shard", "source=imagefolder", f"root={tmp_path / 'src'}", "split=all", f"out={tmp_path / 'sh'}",
            "workers=1"]
    assert main(base + ["samples_per_shard=2"]) == 0
    capsys.readouterr()
    assert main(base + ["samples_per_shard=3"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("digin shard: ConfigMismatch:") and "Traceback" not in err


def test_main_help_lists_every_task_with_its_line_in_run_order(capsys):
    from digin.cli import TASKS, available_tasks, task_summaries

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    summaries = task_summaries()
    assert set(TASKS) == set(summaries), "every registered task needs a one-line description in TASK_GROUPS"
    for task in available_tasks():
        assert f"  {task} " in out and summaries[task] in out
    order = [out.index(f"  {t} ") for t in ("shard", "caption", "invert", "segment", "uvce", "diff", "neurons",
                                             "eval", "gallery", "export", "bench", "verify", "demo", "toy-train")]
    assert order == sorted(order)
    assert "digin <task> --help" in out and "verbose=" in out


def test_version_names_the_release_and_the_checkout(capsys):
    from digin.shards.environment import git_commit, package_version

    assert main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("digin ") and (package_version("digin") or "unknown") in out
    commit = git_commit()
    if commit:  # running from a git checkout
        assert f"(git {commit})" in out


def test_verbose_is_a_key_of_every_task(capsys):
    from digin.cli import pop_verbose

    assert pop_verbose(["a=1", "verbose=true"]) == (True, ["a=1"])
    assert pop_verbose(["verbose=false", "b=2"]) == (False, ["b=2"])
    assert pop_verbose(["b=2"]) == (False, ["b=2"])
    with pytest.raises(SystemExit, match="verbose must be true or false"):
        main(["verify", "path=.", "verbose=loud"])
    assert main(["verify", "--help", "verbose=true"]) == 0
    assert "verbose=false" in capsys.readouterr().out
