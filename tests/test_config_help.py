"""`digin <task> --help` prints the defaults a run uses: for every registered task, each `key=default` line of the
help equals that key's value in the config the CLI resolves from no overrides (required keys filled in) and in the
dict its stage manifest records (`stage_config_of`)."""
import ast
import dataclasses
import importlib

import pytest

from digin.cli import available_tasks, build_config, main
from digin.stages.args import stage_config_of

# #14's compute keys may resolve per device at run time (preset=auto); their help may say so.
DEVICE_RESOLVED = {"preset", "dtype", "compile", "compile_backend", "batch_size", "checkpoint", "attention", "cudagraphs",
                   "kernels", "tf32", "strict_compile", "compile_scope"}
ABSENT = object()


def help_defaults(task: str, capsys) -> dict:
    assert main([task, "--help"]) == 0
    block = capsys.readouterr().out.split("keys (defaults):", 1)[1].strip("\n").split("\n\n", 1)[0]
    keys = block.splitlines()  # the key list ends at the first blank line (notes and global keys follow)
    return {k: ast.literal_eval(v) for k, v in (line.strip().split("=", 1) for line in keys)}


def flatten(cfg, prefix: str = "") -> dict:
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = value
    return out


def lookup(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return ABSENT
        d = d[part]
    return d


@pytest.mark.parametrize("task", sorted(available_tasks()))
def test_help_shows_the_defaults_a_run_uses(task, capsys):
    cls = importlib.import_module(available_tasks()[task]).Config
    shown = help_defaults(task, capsys)
    required = sorted(k for k, v in shown.items() if v == "???")
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    cfg = build_config(cls, [f"{k}={1 if types.get(k) in ('int', 'float') else 'x'}" for k in required])
    resolved, recorded = flatten(cfg), stage_config_of(cfg, task)
    assert set(shown) == set(resolved), f"{task}: --help lists other keys than the config has"
    for key, value in shown.items():
        if key in required or key in DEVICE_RESOLVED:
            continue
        assert resolved[key] == value, f"{task} --help says {key}={value!r}, a run uses {resolved[key]!r}"
        in_manifest = lookup(recorded, key)
        assert in_manifest is ABSENT or in_manifest == value, \
            f"{task} --help says {key}={value!r}, the manifest records {in_manifest!r}"
