"""`digin <task> key=value ...` — one entry point for every stage.

Each task is a module `digin.tasks.<name>` exposing `Config` (a dataclass) and `run(cfg)`. The config is
built from the dataclass defaults, optionally a YAML preset (`preset=<name or path>`), then the key=value
overrides (OmegaConf dotlist: nested `optim_params.sgd_steps=30`, lists `regularizers=[a,b]`). Unknown keys
are an error that names the key.
"""
from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path

TASKS = {
    "demo": "digin.tasks.demo",
    "shard": "digin.tasks.shard",
    "caption": "digin.tasks.caption",
    "invert": "digin.tasks.invert",
    "segment": "digin.tasks.segment",
    "uvce": "digin.tasks.uvce",
    "diff": "digin.tasks.diff",
    "neurons": "digin.tasks.neurons",
    "eval": "digin.tasks.eval",
    "export": "digin.tasks.export",
    "gallery": "digin.tasks.gallery",
    "bench": "digin.tasks.bench",
    "toy-train": "digin.tasks.toy_train",
    "verify": "digin.tasks.verify",
}

PRESET_DIR = Path(__file__).parent / "configs"


def available_tasks() -> dict[str, str]:
    return {k: v for k, v in TASKS.items() if importlib.util.find_spec(v) is not None}


def build_config(config_cls, overrides: list[str]):
    """Dataclass defaults ← preset YAML ← key=value overrides; returns an instance of `config_cls`."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    base = OmegaConf.structured(config_cls)
    preset = [o for o in overrides if o.startswith("preset=")]
    rest = [o for o in overrides if not o.startswith("preset=")]
    layers = [base]
    if preset:
        name = preset[-1].split("=", 1)[1]
        path = Path(name) if name.endswith((".yaml", ".yml")) else PRESET_DIR / f"{name}.yaml"
        if not path.exists():
            raise SystemExit(f"digin: preset {name!r} not found ({path})")
        layers.append(OmegaConf.load(path))
    for o in rest:
        if "=" not in o:
            raise SystemExit(f"digin: argument {o!r} is not key=value")
    try:
        layers.append(OmegaConf.from_dotlist(rest))
        merged = OmegaConf.merge(*layers)
    except (ConfigAttributeError, ConfigKeyError) as e:
        key = getattr(e, "full_key", None) or str(e)
        raise SystemExit(f"digin: unknown config key {key!r} for {config_cls.__name__}") from None
    except ValidationError as e:
        raise SystemExit(f"digin: bad value for {getattr(e, 'full_key', '?')!r}: {e.msg}") from None
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise SystemExit(f"digin: missing required key(s) {', '.join(missing)} for {config_cls.__name__} "
                         f"(give them as key=value)")
    cfg = OmegaConf.to_object(merged)
    from digin.config_check import validate
    from digin.errors import ConfigError

    try:  # numeric ranges, dtype, device: before the task writes anything
        validate(cfg)
    except ConfigError as e:
        raise SystemExit(f"digin: {e}") from None
    return cfg


def config_help(config_cls, prefix: str = "") -> list[str]:
    lines = []
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "???")
        if dataclasses.is_dataclass(default):
            lines += config_help(type(default), prefix + f.name + ".")
        else:
            lines.append(f"  {prefix}{f.name}={default!r}")
    return lines


def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    tasks = available_tasks()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: digin <task> key=value ...\n\ntasks: " + ", ".join(tasks))
        return 0
    task = argv.pop(0)
    if task not in tasks:
        raise SystemExit(f"digin: unknown task {task!r}; tasks: {', '.join(tasks)}")
    mod = importlib.import_module(tasks[task])
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: digin {task} key=value ...\n\n{(mod.__doc__ or '').strip()}\n\nkeys (defaults):")
        print("\n".join(config_help(mod.Config)))
        return 0
    cfg = build_config(mod.Config, argv)
    import os

    from digin.errors import is_expected, one_line

    try:
        return mod.run(cfg)
    except Exception as e:  # bad input, refused runs, a full disk: one line (traceback in the rank's log); bugs raise
        if not is_expected(e) or os.environ.get("DIGIN_TRACEBACK") == "1":
            raise
        print(one_line(task, e), file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
