"""The README stays true: its Python example runs, and every task it names exists."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    text = README.read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "torch.Size([2, 3, 32, 32])" in out


def test_readme_tasks_exist():
    from digin.cli import available_tasks

    tasks = available_tasks()
    named = set(re.findall(r"^(?:\.venv/bin/)?digin (\w[\w-]*)", README.read_text(), re.M))
    assert named, "README names no tasks"
    missing = named - set(tasks)
    assert not missing, f"README shows tasks that do not exist: {missing}"


def _commands(text: str) -> list[list[str]]:
    """`digin <task> key=value ...` commands of the README's shell blocks (continuations joined, comments cut)."""
    import shlex

    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            m = re.search(r"(?:^|\s)(?:\S*/)?(?:digin|-m digin\.cli) (\w[\w-]*)(.*)$", line)
            if m and not line.startswith("#"):
                try:
                    cmds.append([m.group(1)] + shlex.split(m.group(2)))
                except ValueError:
                    continue
    return cmds


def test_readme_commands_use_keys_their_tasks_have():
    import dataclasses
    import importlib

    from digin.cli import available_tasks
    from digin.config_check import variant

    tasks = available_tasks()
    checked = 0
    for task, *args in _commands(README.read_text()):
        if task not in tasks:
            continue
        config = variant(importlib.import_module(tasks[task]).Config, list(args))  # a neuron mode's own keys
        for arg in args:
            if "=" not in arg or arg.startswith(("config=", "verbose=")):
                continue
            node = config
            for part in arg.split("=", 1)[0].split("."):
                fields = {f.name: f for f in dataclasses.fields(node)}
                assert part in fields, f"README: `digin {task} ... {arg}`: {part!r} is not a key of {config.__name__}"
                f = fields[part]
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                node = type(default) if dataclasses.is_dataclass(default) else None
                if node is None:
                    break
            checked += 1
    assert checked > 100
