"""`digin <task> key=value ...` — one entry point for every stage.

Each task is a module `digin.tasks.<name>` exposing `Config` (a dataclass) and `run(cfg)`. The config is
built from the dataclass defaults, optionally a YAML model-family config (`config=<name or path>`, e.g.
`config=sdxl_turbo`), then the key=value overrides (OmegaConf dotlist: nested `optim_params.sgd_steps=30`, lists
`regularizers=[a,b]`). Unknown keys are an error that names the key. `preset=fast|reference|eager|auto` is an
ordinary key of the model-running tasks (the compute preset, see digin/engine/presets.py).
`verbose=true` (any task) lets third-party warnings reach the terminal; by default they go to the rank's log
(digin.quiet).
"""
from __future__ import annotations

import dataclasses
import importlib
import sys

from digin.config_check import PRESET_DIR, build_config, config_label, variant  # noqa: F401  (PRESET_DIR: CLI API)
from digin.errors import is_expected, one_line
from digin.fields import field_default, help_lines
from digin.quiet import third_party_to_log
from digin.shards.environment import version_line
from digin.shards.interrupt import urgent
from digin.stages.outputs import task_text
from digin.tasks import TASKS

# `digin --help`: every task with one line, grouped in the order a run goes.
TASK_GROUPS = {
    "prepare inputs": {
        "shard": "convert a dataset on disk (ImageNet, CUB, Cars, Food-101, Flowers, a folder) into shards",
        "caption": "one caption per image, always naming its label (template, OpenFlamingo, a local VLM, files)",
        "invert": "null-text (or negative-prompt) inversion of real images: z_T + per-step null texts",
        "segment": "foreground masks from cross-attention (+ SAM-HQ) of inverted images, to inspect",
    },
    "explain classifiers": {
        "uvce": "universal visual counterfactuals: edit real images until the classifier says the target class",
        "diff": "classifier differences: images one classifier is sure of and another is not",
        "neurons": "top activating images, names, visualisations and counterfactuals of neurons (mode=...)",
    },
    "look at results": {
        "eval": "confidences and image metrics of result shards under the guided and an independent classifier",
        "gallery": "static HTML pages over result shards",
        "figure": "paper-ready figures (PNG, PDF, SVG) of chosen results, in the reference's layouts",
        "export": "result shards as the reference's folder layout",
    },
    "tools": {
        "doctor": "check this machine before a job: GPU, versions, optional stacks, model folder, settings",
        "bench": "throughput benchmark: reference mode vs fast mode, one JSON row per measurement",
        "verify": "check committed shard sets on disk: records, sizes, sha256, duplicate keys, stray files",
        "status": "where a running or finished stage stands: units, items, per-rank state and rate, ETA",
        "index": "add per-sample spans and labels to a shard set made by an earlier digin (keyed reads)",
        "demo": "the whole chain (shard → invert → uvce → diff → neurons → gallery) on the toy world, on CPU",
        "toy-train": "retrain the toy world's bundled models",
    },
}
GLOBAL_KEYS = ("  verbose=false   true: third-party warnings and hints on the terminal too (default: only in the "
               "rank's log)")

def available_tasks() -> dict[str, str]:
    return {k: v for k, v in TASKS.items() if importlib.util.find_spec(v) is not None}


def task_summaries() -> dict[str, str]:
    return {name: line for group in TASK_GROUPS.values() for name, line in group.items()}


def main_help(tasks: dict[str, str]) -> str:
    width = max(map(len, tasks)) + 2
    lines = ["usage: digin <task> key=value ...     run a task (resolved config in its output's manifest.json)",
             "       digin <task> --help            the task's keys with their defaults",
             "       digin <task> --outputs         what the task writes: members and JSON fields with their meaning",
             "       digin --version", ""]
    listed = set()
    for group, entries in TASK_GROUPS.items():
        lines.append(f"{group}:")
        for name, line in entries.items():
            if name in tasks:
                lines.append(f"  {name:<{width}}{line}")
                listed.add(name)
    others = [t for t in tasks if t not in listed]
    if others:
        lines += ["other:"] + [f"  {name}" for name in others]
    lines += ["", "keys every task takes:", GLOBAL_KEYS, "",
              "First time: `digin demo` (whole chain on CPU), `digin doctor` (before a cluster job)."]
    return "\n".join(lines)


def pop_verbose(argv: list[str]) -> tuple[bool, list[str]]:
    """(verbose, the other arguments): `verbose=true|false` is a key of every task, handled here."""
    flags = [a for a in argv if a.split("=", 1)[0] == "verbose"]
    rest = [a for a in argv if a.split("=", 1)[0] != "verbose"]
    if not flags:
        return False, rest
    value = flags[-1].partition("=")[2].strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise SystemExit(f"digin: verbose must be true or false, got {flags[-1]!r}")
    return value in ("true", "1", "yes"), rest


def config_help(config) -> list[str]:
    """The `--help` lines of a config: `  key=default   its help` per key, grouped by section, nested sections
    flattened with dots (their defaults are those of the instance the field's factory returns — UVCE's
    background-pinning mask blend —, which is what a run gets); compute keys left None show what the preset
    resolves to on this machine."""
    return help_lines(config, resolved=_compute_here(config))


def preset_note(config) -> str | None:
    """One help line on the compute preset of a model stage (None for other tasks)."""
    here = _compute_here(config)
    if here is None:
        return None
    return (f"compute preset: auto → {here['preset']} here (the dtype … kernels values above); fast on CUDA: bf16, "
            f"compiled, batch 8; reference: fp32, eager, batch 1, block checkpointing. Any single key overrides it.")


def _compute_here(config) -> dict | None:
    """The compute keys' values the default preset resolves to on this machine (None: not a model stage)."""
    names = {f.name: f for f in dataclasses.fields(config)}
    if "preset" not in names:
        return None
    from digin.engine.presets import resolve_compute  # lazy: keeps `import digin.cli` (digin --help) free of torch

    preset = field_default(names["preset"]) if isinstance(config, type) else config.preset
    return resolve_compute(preset or "auto").as_dict()


def usable_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota and by SLURM_CPUS_PER_TASK."""
    import math
    import os

    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        n = min(n, int(slurm))
    return max(1, n)


def size_torch_threads() -> None:
    """torch's CPU threads = the CPUs this process may use (unless OMP_NUM_THREADS says otherwise): torch's default
    is every core of the machine, which on a shared node or a cgroup-limited job oversubscribes it many times."""
    import os

    if os.environ.get("OMP_NUM_THREADS") or "torch" not in sys.modules and importlib.util.find_spec("torch") is None:
        return
    import torch

    n = usable_cpus()
    if torch.get_num_threads() > n:
        torch.set_num_threads(n)


def exit_code(value) -> int:
    """A task's return value as the process exit code: an int is one (0 done, 1 failed, 75 interrupted); anything
    else a task returns on success (a path, a list of files) is 0 — never handed to sys.exit, which would print it
    and exit 1."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _fields(config_cls) -> dict:
    return {f.name: f for f in dataclasses.fields(config_cls)}


def _is_list_field(f: dataclasses.Field) -> bool:
    import typing

    t = f.type if not isinstance(f.type, str) else f.type.replace(" ", "")
    if isinstance(t, str):
        return t.startswith(("list", "List", "Optional[list", "Optional[List", "list|None"))
    return typing.get_origin(t) is list or t is list or list in typing.get_args(t)


def normalise_args(config_cls, argv: list[str]) -> list[str]:
    """Before the config is built: an unknown key is refused with the closest known ones ("did you mean"), and a
    single value given to a list key becomes a one-element list (`results=/runs/a` = `results=[/runs/a]`)."""
    import difflib

    out = []
    for a in argv:
        key, eq, value = a.partition("=")
        if not eq or key == "config":
            out.append(a)
            continue
        node, parts = config_cls, key.split(".")
        for i, part in enumerate(parts):
            fields = _fields(node)
            if part not in fields:
                elsewhere = getattr(config_cls, "key_elsewhere", None)
                hint = elsewhere(part) if callable(elsewhere) and i == 0 else None
                if hint:
                    raise SystemExit(f"digin: {hint}")
                close = difflib.get_close_matches(part, list(fields), n=3, cutoff=0.6)
                where = ".".join(parts[:i]) or config_cls.__module__.rsplit(".", 1)[-1]
                hint = f"; did you mean {' or '.join(repr('.'.join(parts[:i] + [c])) for c in close)}?" if close else \
                    f" (`digin {config_cls.__module__.rsplit('.', 1)[-1]} --help` lists them)"
                raise SystemExit(f"digin: unknown config key {key!r} ({part!r} is not a key of {where}){hint}")
            f = fields[part]
            default = field_default(f)
            if i < len(parts) - 1:
                if not dataclasses.is_dataclass(default):
                    break
                node = type(default)
            elif _is_list_field(f) and value and not value.lstrip().startswith("[") and value.strip() != "null":
                a = f"{key}=[{value}]"
        out.append(a)
    return out


def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-V", "--version"):
        print(version_line())
        return 0
    verbose, argv = pop_verbose(argv)
    with third_party_to_log(enabled=not verbose):
        return _main(argv)


def _main(argv: list[str]):
    tasks = available_tasks()
    if not argv or argv[0] in ("-h", "--help"):
        print(main_help(tasks))
        return 0
    task = argv.pop(0)
    if task not in tasks:
        raise SystemExit(f"digin: unknown task {task!r}; tasks: {', '.join(tasks)}")
    mod = importlib.import_module(tasks[task])
    if "--outputs" in argv:  # what the task writes: members, JSON fields, meanings and units
        print(task_text(task))
        return 0
    config_cls = variant(mod.Config, argv)
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: digin {task} key=value ...\n\n{(mod.__doc__ or '').strip()}\n\nkeys (defaults, help):")
        print("\n".join(config_help(config_cls)))
        if config_cls is not mod.Config:  # a task with modes: the keys shown are this mode's
            modes = getattr(mod, "MODES", ())
            print(f"\n(the keys of {config_label(config_cls)}; `digin {task} mode=<mode> --help` for another: "
                  f"{', '.join(modes)})")
        note = preset_note(config_cls)
        if note:
            print(f"\n{note}")
        print("\nkeys every task takes:\n" + GLOBAL_KEYS)
        return 0
    cfg = build_config(config_cls, normalise_args(config_cls, argv))
    import os

    size_torch_threads()

    try:
        with urgent(f"digin {task}"):  # a stop signal while models load (before a stage's own handlers) exits 75
            return exit_code(mod.run(cfg))
    except Exception as e:  # bad input, refused runs, a full disk: one line (traceback in the rank's log); bugs raise
        if not is_expected(e) or os.environ.get("DIGIN_TRACEBACK") == "1":
            raise
        print(one_line(task, e), file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
