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
    cfg = build_config(diff.Config, ["config=sdxl_turbo", "num_ddim_steps=3", "out=o", "model_path=/m"])
    assert cfg.solver == "euler" and cfg.num_ddim_steps == 3  # (loss_steps=3 needs ≥ 3 steps)


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
# ---------------------------------------------------------------------------------- issue 16 #5, #6: one line
@pytest.fixture
def shards(tmp_path):
    from digin.shards.synthetic import make_image_folder

    make_image_folder(tmp_path / "src", classes=["a", "b"], n_per_class=2, size=16, seed=0)
    assert main(["shard", "source=imagefolder", f"root={tmp_path / 'src'}", "split=all", f"out={tmp_path / 'sh'}",
                 "workers=1", "samples_per_shard=2"]) == 0
    return tmp_path / "sh"


def _caption(inputs, out, *extra):
    return main(["caption", f"inputs={inputs}", f"out={out}", "backend=template", "progress=false", *extra])


def _one_line(err: str, start: str):
    lines = [x for x in err.splitlines() if x.startswith("digin ")]
    assert len(lines) == 1 and lines[0].startswith(start) and "Traceback" not in err, err
    return lines[0]


def test_expected_errors_are_one_line_and_exit_1(shards, tmp_path, capsys, monkeypatch):
    import json

    from digin.shards.manifest import MANIFEST
    from digin.shards.writer import ShardWriter

    capsys.readouterr()
    assert _caption(tmp_path / "nope", tmp_path / "c") == 1  # a missing input folder
    _one_line(capsys.readouterr().err, "digin caption: ConfigError: images=")  # names the key and the folder
    # duplicate keys: shard 1 repeats a key of shard 0
    rec1 = json.loads((shards / "commits" / "000001.json").read_text())
    rec0 = json.loads((shards / "commits" / "000000.json").read_text())
    rec1["keys"][0] = rec0["keys"][0]
    (shards / "commits" / "000001.json").write_text(json.dumps(rec1))
    assert _caption(shards, tmp_path / "c") == 1
    _one_line(capsys.readouterr().err, "digin caption: ShardError:")
    rec1["keys"][0] = "x/y/z"
    (shards / "commits" / "000001.json").write_text(json.dumps(rec1))
    # a bad rank environment
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _caption(shards, tmp_path / "c") == 1
    assert "RANK/WORLD_SIZE = 3/2" in _one_line(capsys.readouterr().err, "digin caption: ConfigError:")
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    # out = the input folder, force or not (#6): refused, the input's manifest untouched
    before = (shards / MANIFEST).read_bytes()
    assert _caption(shards, shards, "force=true") == 1
    _one_line(capsys.readouterr().err, "digin caption: ConfigError: the output folder")
    assert (shards / MANIFEST).read_bytes() == before
    # a full disk while writing: one line with what to do, the traceback in the rank's log
    def full(self, key, fields):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ShardWriter, "add", full)
    assert _caption(shards, tmp_path / "c") == 1
    line = _one_line(capsys.readouterr().err, "digin caption: OSError: [Errno 28] No space left on device; free")
    log = line.split("(traceback in ")[1].rstrip(")")
    (ev,) = [e for e in map(json.loads, open(log)) if e["event"] == "error"]
    assert "Traceback" in ev["traceback"] and "No space left" in ev["traceback"]


def test_unexpected_errors_keep_their_traceback(shards, tmp_path, monkeypatch):
    from digin.shards.writer import ShardWriter

    def bug(self, key, fields):
        raise KeyError("a bug")

    monkeypatch.setattr(ShardWriter, "add", bug)
    with pytest.raises(KeyError, match="a bug"):
        _caption(shards, tmp_path / "c")
    monkeypatch.setenv("DIGIN_TRACEBACK", "1")  # and an expected one shows its traceback when asked
    from digin.errors import ConfigError

    with pytest.raises(ConfigError, match="no manifest.json"):
        _caption(tmp_path / "nope", tmp_path / "c")
