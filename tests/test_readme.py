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
