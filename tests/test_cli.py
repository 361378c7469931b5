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
