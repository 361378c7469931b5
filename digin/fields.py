"""Config fields that carry their own metadata: a one-line help, a range rule (numbers) or choices (names), and
whether the value changes a stage's results. Every check, `--help` line and recorded (resume-checked) config is
derived from it:

    batch_size: Optional[int] = key(None, "samples run together", rule=COUNT, results=False)
    optim_params: OptimParams = section(OptimParams, "the gradient steps")

- `validate(cfg)` refuses, in one line naming the key, a number outside its rule, a name outside its choices or a
  list element outside its `each` rule (None passes: an Optional key left unset);
- `help_lines(cfg)` are the `--help` lines (`key=default  help`), grouped by the section class a key comes from;
- `record_of(cfg)` is the part of a config that changes results, as the stage manifest records it.

Sections are plain dataclasses: a task's Config inherits the flat sections it shares with other tasks (the keys
stay the reference's flat names, `guidance_scale=`), nests the dotted ones (`optim_params.sgd_steps=`), and hands a
stage only the sections it needs (`section_of(cfg, ModelKeys)`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass

from digin.errors import ConfigError

MISSING = "???"  # a required key (OmegaConf's missing value): the config system names it when it is not given


@dataclass(frozen=True)
class Num:
    """Allowed values of a numeric key: integer or real, inclusive bounds, open bounds, a step."""

    integer: bool = False
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    multiple_of: int | None = None

    def problem(self, v) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return True
        if self.integer and (not isinstance(v, int)):
            return True
        if not math.isfinite(v):
            return True
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return True
        if self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
            return True
        return self.multiple_of is not None and v % self.multiple_of != 0

    def describe(self) -> str:
        what = "an integer" if self.integer else "a finite number"
        if self.multiple_of:
            what = f"a multiple of {self.multiple_of}"
        if self.lo is not None and self.hi is not None:
            lo, hi = ("(" if self.lo_open else "["), (")" if self.hi_open else "]")
            return f"{what} in {lo}{_fmt(self.lo)}, {_fmt(self.hi)}{hi}"
        if self.lo is not None:
            return f"{what} {'>' if self.lo_open else '≥'} {_fmt(self.lo)}"
        if self.hi is not None:
            return f"{what} {'<' if self.hi_open else '≤'} {_fmt(self.hi)}"
        return what


def _fmt(x) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def Int(lo=None, hi=None, multiple_of=None) -> Num:  # noqa: N802 (reads as a type at the field)
    return Num(integer=True, lo=lo, hi=hi, multiple_of=multiple_of)


def Real(lo=None, hi=None, lo_open=False, hi_open=False) -> Num:  # noqa: N802
    return Num(lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)


COUNT, COUNT0 = Int(1), Int(0)  # at least one / none allowed
RATE = Real(0, lo_open=True)  # learning rates, step sizes: > 0
NONNEG = Real(0)
UNIT = Real(0, 1)
SEED = Int(0, 2 ** 63 - 1)
ANY = Real()  # any finite number (signed weights, loss thresholds)


@dataclass(frozen=True)
class Meta:
    help: str = ""
    rule: Num | None = None  # int / float keys (and Optional ones): the allowed values
    choices: tuple | None = None  # str keys with a fixed set of names
    each: Num | None = None  # list keys of numbers: every element's rule
    results: bool = True  # False: operational (where, how fast, how shared): left out of the recorded config
    only_if: tuple | None = None  # (key, values): recorded only while that key has one of these values
    check: typing.Callable | None = None  # value → why it is not allowed (None: allowed), e.g. a device here


def key(default=dataclasses.MISSING, help: str = "", *, rule: Num | None = None, choices=None, each: Num | None = None,
        results: bool = True, only_if: tuple | None = None, check=None, factory=None):
    """A config field with its metadata. Lists and dicts are copied per instance (or give `factory`). `only_if=(key,
    values)`: the field changes results only while `key` has one of `values` (e.g. a backend's own settings).
    `check(value)`: why a value is not allowed (a str) or None."""
    md = {"digin": Meta(help, rule, tuple(choices) if choices else None, each, results,
                        (only_if[0], tuple(only_if[1])) if only_if else None, check)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=md)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d), metadata=md)
    return dataclasses.field(default=default, metadata=md)


def section(factory, help: str = "", *, results: bool = True, only_if: tuple | None = None):
    """A nested section (dotted keys, `optim_params.sgd_steps=`): `factory` makes its default instance."""
    return dataclasses.field(default_factory=factory, metadata={"digin": Meta(
        help, results=results, only_if=(only_if[0], tuple(only_if[1])) if only_if else None)})


def recorded(cfg, f: dataclasses.Field) -> bool:
    """Whether field `f` of config instance `cfg` changes results (so its record holds it)."""
    m = meta(f)
    return m.results and (m.only_if is None or getattr(cfg, m.only_if[0]) in m.only_if[1])


def meta(f: dataclasses.Field) -> Meta:
    return f.metadata.get("digin") or Meta()


# ---------------------------------------------------------------------------------------------- walking
def field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else MISSING


@dataclass
class Leaf:
    name: str  # dotted: optim_params.sgd_steps
    field: dataclasses.Field
    value: object  # the instance's value, or the default for a class
    owner: type  # the dataclass that declares the field (its section)

    @property
    def meta(self) -> Meta:
        return meta(self.field)


def _declarer(cls: type, name: str) -> type:
    """The most basic class of `cls`'s MRO that declares field `name` (its section)."""
    for base in reversed(cls.__mro__):
        if name in getattr(base, "__dataclass_fields__", {}) and name in vars(base).get("__annotations__", {}):
            return base
    return cls


def leaves(cfg, prefix: str = "", results_only: bool = False):
    """Every non-section key of a config (class or instance), nested sections flattened with dots."""
    cls = cfg if isinstance(cfg, type) else type(cfg)
    for f in dataclasses.fields(cls):
        value = field_default(f) if isinstance(cfg, type) else getattr(cfg, f.name)
        if results_only and not meta(f).results:
            continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from leaves(value, prefix + f.name + ".", results_only)
        else:
            yield Leaf(prefix + f.name, f, value, _declarer(cls, f.name))


def get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def section_of(cfg, section_cls):
    """The values of `section_cls`'s keys in a (flat) task config, as a `section_cls` instance: what a stage gets."""
    return section_cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(section_cls)})


# ------------------------------------------------------------------------------------------- deriving
def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def record_of(cfg, stage: str | None = None, **resolved) -> dict:
    """The config a stage records in its manifest (and resumes against): every key that changes results, nested
    sections as dicts, with `resolved` values (the compute preset's, the dataset read from the inputs) in place
    of what the user left to be resolved."""
    out = {}
    for f in dataclasses.fields(cfg):
        if not recorded(cfg, f):
            continue
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out[f.name] = {lf.name: _plain(lf.value) for lf in leaves(value, results_only=True)}
        else:
            out[f.name] = _plain(resolved[f.name] if f.name in resolved else value)
    unknown = set(resolved) - set(out)
    if unknown:
        raise ValueError(f"resolved values for keys the record lacks: {sorted(unknown)}")
    return {"stage": stage, **out} if stage else out


def _numeric(annotation) -> bool:
    """Whether a field annotation is int / float, possibly Optional (bool is not numeric)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation) if origin in (typing.Union, types.UnionType) else (annotation,)
    return any(a in (int, float) for a in args)


def numeric_leaves(cfg) -> list[Leaf]:
    """The int / float keys of a config (by annotation), nested sections included."""
    out = []
    for lf in leaves(cfg):
        hints = typing.get_type_hints(lf.owner) if lf.owner is not None else {}
        if _numeric(hints.get(lf.field.name)):
            out.append(lf)
    return out


def refuse(key: str, value, allowed: str):
    raise ConfigError(f"{key}={value!r} is not allowed (allowed: {allowed})")


def validate(cfg):
    """Raise ConfigError naming the first key whose value is outside its rule, choices, element rule or check,
    then run the sections' own `check_relations()` methods (relations between keys: each section checks its own)."""
    numeric = {lf.name for lf in numeric_leaves(type(cfg))}
    for lf in leaves(cfg):
        m, value = lf.meta, lf.value
        if lf.name in numeric and m.rule is None:
            raise ConfigError(f"{lf.name} has no range rule (a digin bug: give its field rule=...)")
        if value is None or value == MISSING:
            continue
        if m.rule is not None and m.rule.problem(value):
            refuse(lf.name, value, m.rule.describe())
        if m.choices is not None and value not in m.choices:
            refuse(lf.name, value, "one of " + ", ".join(map(str, m.choices)))
        if m.each is not None:
            for v in value or ():
                if m.each.problem(v):
                    refuse(lf.name, value, f"a list of {m.each.describe().replace('a ', '', 1)} values")
        problem = m.check(value) if m.check is not None else None
        if problem:
            refuse(lf.name, value, problem)
    run_checks(cfg)


def run_checks(cfg, prefix: str = ""):
    """Every `check_relations(self, prefix)` a config's classes define (each section its own, most basic first; `prefix`
    names a nested section's keys, `segmentation.`), then those of its nested sections."""
    for klass in reversed(type(cfg).__mro__):
        fn = vars(klass).get("check_relations")
        if fn is not None:
            fn(cfg, prefix)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            run_checks(value, prefix + f.name + ".")


def help_lines(cfg, resolved: dict | None = None, width: int = 34) -> list[str]:
    """`  key=default   help` per key, with a heading per section (the class that declares the keys). `resolved`:
    values to show for keys left None (what the compute preset picks here)."""
    groups: dict[str, list[str]] = {}
    for lf in leaves(cfg):
        owner = lf.owner
        heading = vars(owner).get("SECTION") or f"{owner.__module__.rsplit('.', 1)[-1]} keys"
        value = lf.value
        if value is None and resolved and lf.name in resolved:
            value = resolved[lf.name]
        left = f"  {lf.name}={value!r}"
        helptext = lf.meta.help
        groups.setdefault(heading, []).append(f"{left:<{width}} {helptext}" if len(left) < width
                                              else f"{left}\n{'':<{width}} {helptext}")
    cls = cfg if isinstance(cfg, type) else type(cfg)
    own = vars(cls).get("SECTION") or f"{cls.__module__.rsplit('.', 1)[-1]} keys"
    order = sorted(groups, key=lambda h: h != own)  # the task's own keys first, then its sections as declared
    lines = []
    for heading in order:
        entries = groups[heading]
        lines += ([""] if lines else []) + [f"{heading}:"] + entries
    return lines
