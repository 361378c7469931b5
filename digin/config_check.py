"""Checks of a task's config before anything is written, and how a config is built.

`validate(cfg)` checks every key against its field's own rule, choices or check (digin.fields: the metadata lives on
the field), then each section's own `check_relations()` (relations between its keys, regulariser and loss names, the compute
preset); it raises ConfigError with one line naming the key, the value and what is allowed. `build_config` (the task's
dataclass defaults ← a model-family YAML ← key=value overrides, how the CLI and the demo build configs) calls it,
so every CLI run is checked before its task starts; Python callers can call it themselves. A task whose keys
depend on a mode (`digin neurons mode=...`) names its Config per mode with a `variant(overrides)` classmethod.
"""
from __future__ import annotations

from pathlib import Path

from digin.errors import ConfigError
from digin.fields import validate as validate_fields


def task_of(config_cls) -> str:
    """`digin.tasks.caption` → `caption` (a Config defined in a stage module names its task in TASK)."""
    return getattr(config_cls, "TASK", None) or config_cls.__module__.rsplit(".", 1)[-1]


def config_label(config_cls) -> str:
    """How errors name a config: `uvce`, or `neurons mode=visualise` for a task with modes."""
    mode = getattr(config_cls, "__dataclass_fields__", {}).get("mode")
    mode = mode.default if mode is not None and isinstance(mode.default, str) and hasattr(config_cls, "variant") \
        else None
    return task_of(config_cls) + (f" mode={mode}" if mode else "")


def validate(cfg):
    """Raise ConfigError naming the first key whose value is not allowed (None passes): the fields' own rules,
    choices and checks, then each section's relations (digin.fields.validate)."""
    validate_fields(cfg)


# ------------------------------------------------------------------------------------------- building

PRESET_DIR = Path(__file__).parent / "configs"  # the bundled model-family configs (config=<name>)


def _first_line(e: Exception) -> str:
    """OmegaConf's message without the `full_key:` / `object_type=` lines it appends."""
    msg = str(getattr(e, "msg", None) or e)
    return " ".join(msg.strip().splitlines()[0].split()) if msg.strip() else type(e).__name__


def variant(config_cls, overrides: list[str]):
    """The Config a task's overrides select (its `variant` classmethod, e.g. neurons per mode), else config_cls."""
    pick = getattr(config_cls, "variant", None)
    return pick(overrides) if callable(pick) else config_cls


def build_config(config_cls, overrides: list[str]):
    """Dataclass defaults ← preset YAML ← key=value overrides; returns an instance of `config_cls` (or of the
    variant the overrides select). Every problem is a SystemExit with one line naming the key."""
    config_cls = variant(config_cls, overrides)
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

    base = OmegaConf.structured(config_cls)
    family = [o for o in overrides if o.startswith("config=")]
    rest = [o for o in overrides if not o.startswith("config=")]
    for o in rest:
        value = o.split("=", 1)[1] if o.startswith("preset=") else None
        if value and (value.endswith((".yaml", ".yml")) or (PRESET_DIR / f"{value}.yaml").exists()):
            raise SystemExit(f"digin: preset={value} names a model-family config file; use config={value} "
                             f"(preset= is the compute preset: fast, reference, eager or auto)")
    layers = [base]
    if family:
        name = family[-1].split("=", 1)[1]
        path = Path(name) if name.endswith((".yaml", ".yml")) else PRESET_DIR / f"{name}.yaml"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
            raise SystemExit(f"digin: config {name!r} not found ({path}); bundled: {known}")
        try:
            layers.append(OmegaConf.load(path))
        except (OmegaConfBaseException, ValueError) as e:  # (yaml errors are ValueErrors too)
            raise SystemExit(f"digin: config {path} does not parse: {_first_line(e)}") from None
    for o in rest:
        if "=" not in o:
            raise SystemExit(f"digin: argument {o!r} is not key=value")
    try:
        layers.append(OmegaConf.from_dotlist(rest))
        merged = OmegaConf.merge(*layers)
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise SystemExit(f"digin {config_label(config_cls)}: missing required key(s) {', '.join(missing)} "
                             f"(give them as key=value)")
        cfg = OmegaConf.to_object(merged)
    except (ConfigAttributeError, ConfigKeyError) as e:
        key = getattr(e, "full_key", None) or _first_line(e)
        elsewhere = getattr(config_cls, "key_elsewhere", None)
        hint = elsewhere(str(key).split(".")[0]) if callable(elsewhere) else None
        raise SystemExit(f"digin: {hint}" if hint else
                         f"digin: unknown config key {key!r} for {config_label(config_cls)}") from None
    except ValidationError as e:  # a value of the wrong type: `batch_size=abc`
        key, value = getattr(e, "full_key", None) or "?", getattr(e, "value", None)
        shown = f"{key}={value}" if value is not None else repr(key)
        raise SystemExit(f"digin: {shown} is not allowed ({_first_line(e)})") from None
    except OmegaConfBaseException as e:  # a bad interpolation (`seed=${x}`) or override syntax
        key = getattr(e, "full_key", None)
        raise SystemExit(f"digin: bad value{f' for {key!r}' if key else ''}: {_first_line(e)}") from None
    try:  # numeric ranges, dtype, device: before the task writes anything
        validate(cfg)
    except ConfigError as e:
        raise SystemExit(f"digin: {e}") from None
    return cfg
