"""`digin <task> --help` prints, for every key of every task (and of every neuron mode), the default a run uses
and a description: each `  key=default   help` line's default equals that key's value in the config the CLI
resolves from no overrides (required keys filled in), and a key without a description fails."""
import ast
import importlib

import pytest

from digin.cli import available_tasks, build_config, main
from digin.fields import leaves
from digin.tasks.neurons import MODE_CONFIGS

# compute keys may resolve per device at run time (preset=auto); their help shows this machine's value
DEVICE_RESOLVED = {"preset", "dtype", "compile", "compile_backend", "batch_size", "checkpoint", "attention", "cudagraphs",
                   "kernels", "tf32", "strict_compile", "compile_scope"}
CASES = [(t, []) for t in sorted(available_tasks()) if t != "neurons"] + [("neurons", [f"mode={m}"])
                                                                          for m in MODE_CONFIGS]


def help_keys(task: str, extra: list, capsys) -> dict:
    """key → (default, help) from the --help text (a key line may wrap its help onto the next line)."""
    assert main([task, *extra, "--help"]) == 0
    block = capsys.readouterr().out.split("keys (defaults, help):", 1)[1].split("keys every task takes:", 1)[0]
    lines = block.splitlines()
    out, i = {}, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("  ") and not line.startswith("   ") and "=" in line:
            key, rest = line.strip().split("=", 1)
            value, _, text = rest.partition("  ")
            if not text.strip() and i + 1 < len(lines) and lines[i + 1].startswith("    "):
                i += 1
                text = lines[i]
            out[key] = (ast.literal_eval(value.strip()), text.strip())
        i += 1
    return out


@pytest.mark.parametrize("task, extra", CASES, ids=[f"{t}{'-' + e[0][5:] if e else ''}" for t, e in CASES])
def test_help_describes_every_key_and_shows_the_defaults_a_run_uses(task, extra, capsys):
    cls = importlib.import_module(available_tasks()[task]).Config
    if extra:
        cls = MODE_CONFIGS[extra[0].split("=", 1)[1]]
    shown = help_keys(task, extra, capsys)
    assert set(shown) == {lf.name for lf in leaves(cls)}, f"{task}: --help lists other keys than the config has"
    undescribed = [k for k, (_, text) in shown.items() if not text]
    assert not undescribed, f"{task} {extra}: keys without a description: {undescribed}"
    required = sorted(k for k, (v, _) in shown.items() if v == "???")
    numeric = {lf.name for lf in leaves(cls) if isinstance(lf.value, (int, float)) and not isinstance(lf.value, bool)}
    cfg = build_config(cls, [f"{k}={1 if k in numeric else 'x'}" for k in required] + extra)
    resolved = {lf.name: lf.value for lf in leaves(cfg)}
    for key, (value, _) in shown.items():
        if key in required or key in DEVICE_RESOLVED:
            continue
        assert resolved[key] == value, f"{task} --help says {key}={value!r}, a run uses {resolved[key]!r}"


def test_a_key_of_another_neuron_mode_is_refused_by_name():
    with pytest.raises(SystemExit, match="k is a key of neurons mode=activations, not of mode=visualise"):
        main(["neurons", "mode=visualise", "out=o", "k=3"])
    with pytest.raises(SystemExit, match=r"neurons mode=counterfactuals: missing required key\(s\) images, inversions"):
        main(["neurons", "mode=counterfactuals", "out=o"])
