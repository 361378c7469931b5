"""Issue 16 #4: every numeric key of every task is checked before anything is written, in one line that names
the key, the value and the allowed range."""
import dataclasses
import importlib
import math

import pytest

from digin import config_check as C
from digin import fields as F
from digin.cli import available_tasks, build_config, main
from digin.errors import ConfigError
from digin.tasks.neurons import MODE_CONFIGS

CONFIGS = {task: importlib.import_module(mod).Config for task, mod in available_tasks().items()}
CONFIGS.update({f"neurons-{mode}": cls for mode, cls in MODE_CONFIGS.items()})


@pytest.mark.parametrize("task", sorted(CONFIGS))
def test_every_numeric_key_has_a_rule_and_the_defaults_pass(task):
    cls = CONFIGS[task]
    missing = [lf.name for lf in F.numeric_leaves(cls) if lf.meta.rule is None]
    assert not missing, f"{task}: numeric keys without a rule (key(..., rule=...)): {missing}"
    C.validate(cls())  # the defaults are allowed


def _outside(rule: F.Num):
    """A value the rule refuses (NaN for an unbounded real)."""
    if rule.lo is not None:
        return rule.lo if rule.lo_open else (rule.lo - 1 if rule.integer else rule.lo - 0.5)
    if rule.hi is not None:
        return rule.hi + 1
    return float("nan")


@pytest.mark.parametrize("task", sorted(CONFIGS))
def test_each_rule_refuses_a_value_outside_its_range_naming_the_key(task):
    cls = CONFIGS[task]
    for lf in F.numeric_leaves(cls):
        key, rule = lf.name, lf.meta.rule
        cfg = cls()
        *parents, leaf = key.split(".")
        holder = cfg
        for p in parents:
            holder = getattr(holder, p)
        bad = _outside(rule)
        setattr(holder, leaf, bad)
        with pytest.raises(ConfigError) as e:
            C.validate(cfg)
        assert str(e.value).startswith(f"{key}={bad!r} is not allowed (allowed: "), str(e.value)


@pytest.mark.parametrize("arg, named", [
    ("batch_size=0", "batch_size=0 is not allowed (allowed: an integer ≥ 1)"),
    ("batch_size=-1", "batch_size=-1"),
    ("num_ddim_steps=0", "num_ddim_steps=0 is not allowed (allowed: an integer in [1, 1000])"),
    ("num_ddim_steps=-3", "num_ddim_steps=-3"),
    ("resolution=0", "resolution=0"),
    ("resolution=63", "resolution=63 is not allowed (allowed: a multiple of 8 in [8, 8192])"),
    ("guidance_scale=nan", "guidance_scale=nan is not allowed (allowed: a finite number ≥ 0)"),
    ("optim_params.sgd_stepsize=0", "optim_params.sgd_stepsize=0.0"),
    ("optim_params.loss_steps=5", "optim_params.loss_steps=5 is not allowed (allowed: an integer in [1, "
                                  "num_ddim_steps=4])"),
    ("regularizers_ws=[1.0]", "one weight per regulariser (2 for regularizers=['latent_background_l2', "
                              "'px_background_l2'])"),
    ("dtype=fp8", "dtype='fp8' is not allowed (allowed: one of fp32, bf16, fp16"),
    ("device=gpu0", "device='gpu0'"),
    ("device=cuda:7", "device='cuda:7'"),
])
def test_the_cli_refuses_bad_values_before_writing_anything(tmp_path, arg, named):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["uvce", f"images={tmp_path}/i", f"inversions={tmp_path}/v", f"out={out}", "model_path=tiny",
              "num_ddim_steps=4", arg])
    msg = str(e.value)
    assert msg.startswith("digin: ") and named in msg and "\n" not in msg
    assert not out.exists()


def test_optional_keys_may_be_none_and_relations_are_checked():
    from digin.tasks import neurons, uvce

    cfg = build_config(uvce.Config, ["images=i", "inversions=v", "out=o", "model_path=tiny"])
    assert cfg.num_images is None and cfg.optim_params.gradient_clipping is None
    with pytest.raises(SystemExit, match=r"rank=2 is not allowed \(allowed: an integer in \[0, world-1=1\]\)"):
        build_config(neurons.Config, ["out=o", "images=i", "rank=2", "world=2"])
    with pytest.raises(SystemExit, match="segmentation.xa_start_t=0.9"):
        build_config(uvce.Config, ["images=i", "inversions=v", "out=o", "model_path=tiny",
                                   "segmentation.xa_start_t=0.9", "segmentation.xa_end_t=0.5"])


def test_validate_is_usable_from_python():
    from digin.tasks import diff

    cfg = diff.Config(out="o", model_path="tiny")
    C.validate(cfg)
    cfg.optim_params = dataclasses.replace(cfg.optim_params, sgd_steps=-1)
    with pytest.raises(ConfigError, match=r"optim_params.sgd_steps=-1 .*an integer ≥ 0"):
        C.validate(cfg)
    assert math.isnan(_outside(F.ANY))


def test_regularizer_names_and_the_lpips_file_are_checked_before_writing_anything(tmp_path, monkeypatch):
    from tests.engine.lpips_trunk import torch_home_with_alexnet

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    out = tmp_path / "out"
    args = ["diff", f"out={out}", "model_path=tiny", "classifier1=tiny", "regularizers_ws=[1.0]"]
    for reg, named in [("px_lpips", "regularizers=['px_lpips']: LPIPS needs the AlexNet trunk weights"),
                       ("px_foo", "regularizers: unknown regulariser 'px_foo'")]:
        with pytest.raises(SystemExit) as e:
            main(args + [f"regularizers=[{reg}]"])
        assert str(e.value).startswith("digin: ") and named in str(e.value) and "\n" not in str(e.value)
        assert not out.exists()
    from digin.tasks import diff

    with torch_home_with_alexnet(tmp_path / "hub-home"):  # with the file in the hub cache the key passes
        build_config(diff.Config, [f"out={out}", "model_path=tiny", "regularizers=[px_lpips]", "regularizers_ws=[1.0]"])


@pytest.mark.parametrize("arg, start", [("batch_size=abc", "digin: batch_size=abc is not allowed (Value 'abc'"),
                                        ("center_crop=maybe", "digin: center_crop=maybe is not allowed"),
                                        ("seed=${nowhere}", "digin: bad value for 'seed': ")])
def test_a_value_of_the_wrong_type_is_one_line(arg, start):
    """Issue 32: OmegaConf's type errors (three lines: message, full_key, object_type) come out as one line."""
    from digin.config_check import build_config
    from digin.tasks.invert import Config

    with pytest.raises(SystemExit) as e:
        build_config(Config, ["inputs=a", "out=b", "model_path=tiny", arg])
    msg = str(e.value.code)
    assert msg.startswith(start) and "\n" not in msg and "full_key" not in msg
