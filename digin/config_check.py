"""Checks of a task's config before anything is written: every numeric key against its allowed range.

`validate(cfg)` walks the task's dataclass config (nested sections such as `optim_params.*` included) and raises
ConfigError with one line naming the key, the value and the allowed range. `build_config` (below: the
task's dataclass defaults ← a model-family YAML ← key=value overrides, how the CLI and the demo build configs)
calls it, so every CLI run is checked before its task starts; Python callers can call it themselves. Every int /
float key of every task has a rule in RULES (a test enforces it); an Optional key may be None. A task's own meaning of a key
overrides the shared rule under `<task>:<key>` (e.g. `caption:resolution`, the VLM's input size).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from digin.errors import ConfigError


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


def Int(lo=None, hi=None, multiple_of=None) -> Num:  # noqa: N802 (reads as a type in the table)
    return Num(integer=True, lo=lo, hi=hi, multiple_of=multiple_of)


def Real(lo=None, hi=None, lo_open=False, hi_open=False) -> Num:  # noqa: N802
    return Num(lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)


COUNT, COUNT0 = Int(1), Int(0)  # at least one / none allowed
RATE = Real(0, lo_open=True)  # learning rates, step sizes: > 0
NONNEG = Real(0)
UNIT = Real(0, 1)
SEED = Int(0, 2 ** 63 - 1)

RULES: dict[str, Num] = {
    # shapes, steps and batches of the guidance / inversion / caption stages
    "batch_size": COUNT, "num_workers": COUNT0, "seed": SEED,
    "resolution": Int(8, 8192, multiple_of=8),  # whole latents for every VAE digin loads (factor 2, 4 or 8)
    "caption:resolution": Int(1, 8192),  # the captioner's input size, no latent involved
    "num_ddim_steps": Int(1, 1000),
    "guidance_scale": NONNEG, "guidance_rescale": UNIT, "search_guidance_scale": NONNEG,
    "augmentation_num_cutouts": COUNT0, "augmentation_noise_sd": NONNEG,
    "loss_weight": Real(),
    "early_stopping_confidence": Real(0, 1, lo_open=True, hi_open=True),
    "optim_params.sgd_steps": COUNT0, "optim_params.sgd_stepsize": RATE,
    "optim_params.latent_lr_factor": NONNEG, "optim_params.conditioning_lr_factor": NONNEG,
    "optim_params.uncond_lr_factor": NONNEG, "optim_params.early_stopping_loss": Real(),
    "optim_params.loss_steps": COUNT, "optim_params.solver_order": Int(1, 1),
    "optim_params.gradient_clipping": Real(0, lo_open=True),
    "segmentation.sam_foreground_threshold": UNIT, "segmentation.sam_num_points": COUNT,
    "p2p.schedule_stepsize": RATE, "mask_blend.mask_blend_stepsize": RATE,  # learnable edit schedules
    "segmentation.xa_start_t": UNIT, "segmentation.xa_end_t": UNIT, "segmentation.xa_map_resolution": COUNT,
    # invert
    "num_inner_steps": COUNT0, "epsilon": NONNEG,
    # caption
    "num_beams": COUNT, "max_new_tokens": COUNT, "flamingo.cross_attn_every_n_layers": COUNT,
    "flamingo.num_demos": COUNT0,
    # uvce / diff / neurons
    "num_images": COUNT, "num_images_per_pair": COUNT, "target_class": COUNT0,
    "k": COUNT, "activation_batch_size": COUNT, "rank": COUNT0, "world": COUNT, "num_images_to_label": COUNT,
    "min_word_count": COUNT0, "max_words": COUNT, "images_per_word": COUNT, "sd_batch_size": COUNT,
    "wait_s": NONNEG, "stall_s": Real(0, lo_open=True),
    "class_id_field": COUNT0, "vlm_resolution": Int(8, 8192),  # neurons mode=spurious_check
    # work plans (digin.shards.plan): units, dynamic-schedule leases
    "items_per_shard": Int(1, 100_000), "lease_s": Real(1, lo_open=False),
    # shard
    "samples_per_shard": COUNT, "workers": COUNT, "limit": COUNT,
    # demo
    "images_per_class": COUNT, "sgd_steps": COUNT0,
    # gallery
    "thumb_size": Int(16, 4096), "max_top_images": COUNT0,
    # bench (None: the preset's value)
    "batch": COUNT, "warmup": COUNT0, "iters": COUNT, "ddim_steps": Int(1, 1000), "loss_steps": COUNT,
    "num_cutouts": COUNT0, "inner_steps": COUNT0, "capacity_gib": Real(0, lo_open=True), "top": COUNT,
    "steady": COUNT, "timeout_s": COUNT, "reps": COUNT, "search_candidates": COUNT, "budget_s": NONNEG,
    # toy-train
    "threads": COUNT, "vae_steps": COUNT0, "vae_batch": COUNT, "vae_lr": RATE, "vae_kl_weight": NONNEG,
    "num_latents": COUNT, "unet_minutes": NONNEG, "unet_steps": COUNT0, "unet_batch": COUNT, "unet_lr": RATE,
    "unet_warmup": COUNT0, "unet_lr_decay_minutes": NONNEG, "ema_decay": UNIT, "caption_dropout": UNIT,
    "min_snr_gamma": Real(0, lo_open=True), "checkpoint_minutes": Real(0, lo_open=True), "decoder_minutes": NONNEG,
    "decoder_lr": RATE, "clf_steps": COUNT0, "clf_batch": COUNT, "clf_lr": RATE, "eval_images": COUNT,
    "clf_vae_fraction": UNIT, "clf_adv_eps": NONNEG, "clf_adv_steps": COUNT0, "clf_adv_fraction": UNIT,
    "clf_blur": NONNEG, "clf_spurious_blur": NONNEG, "clf_planted_tint": UNIT,
    "world_shades": Real(0, 0.5, hi_open=True),
}

# Lists of numbers: every element must satisfy the rule.
LIST_RULES: dict[str, Num] = {
    "regularizers_ws": Real(), "target_classes": COUNT0, "neurons": COUNT0,
}


# ---------------------------------------------------------------------------------------------- walking
def _numeric_kind(annotation) -> bool:
    """Whether a field annotation is int / float, possibly Optional (bool is not numeric)."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (
        annotation,)
    return any(a in (int, float) for a in args)


def _nested_type(annotation, default):
    if dataclasses.is_dataclass(default):
        return type(default)
    return annotation if isinstance(annotation, type) and dataclasses.is_dataclass(annotation) else None


def numeric_fields(config_cls, prefix: str = "") -> list[str]:
    """Dotted names of every int / float field of a config dataclass, nested sections included."""
    hints = typing.get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        nested = _nested_type(hints[f.name], default)
        if nested is not None:
            out += numeric_fields(nested, prefix + f.name + ".")
        elif _numeric_kind(hints[f.name]):
            out.append(prefix + f.name)
    return out


def task_of(config_cls) -> str:
    """`digin.tasks.caption` → `caption` (the prefix of task-specific rules)."""
    return config_cls.__module__.rsplit(".", 1)[-1]


def rule_for(key: str, task: str | None = None) -> Num | None:
    return RULES.get(f"{task}:{key}") or RULES.get(key)


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _refuse(key: str, value, allowed: str):
    raise ConfigError(f"{key}={value!r} is not allowed (allowed: {allowed})")


def validate(cfg, task: str | None = None):
    """Raise ConfigError naming the first key whose value is outside its allowed range (None passes)."""
    task = task or task_of(type(cfg))
    for key in numeric_fields(type(cfg)):
        value = _get(cfg, key)
        if value is None:
            continue
        rule = rule_for(key, task)
        if rule is None:
            raise ConfigError(f"{key} has no range rule in digin.config_check.RULES (a digin bug: add one)")
        if rule.problem(value):
            _refuse(key, value, rule.describe())
    for key, rule in LIST_RULES.items():
        value = getattr(cfg, key, None)
        for v in value or ():
            if rule.problem(v):
                _refuse(key, value, f"a list of {rule.describe().replace('a ', '', 1)} values")
    _check_relations(cfg)
    _check_regularizers(cfg)
    _check_strings(cfg, report_only=task == "doctor")


def _check_relations(cfg):
    steps, op = getattr(cfg, "num_ddim_steps", None), getattr(cfg, "optim_params", None)
    if steps is not None and op is not None and op.loss_steps > steps:
        _refuse("optim_params.loss_steps", op.loss_steps, f"an integer in [1, num_ddim_steps={steps}]")
    regs, ws = getattr(cfg, "regularizers", None), getattr(cfg, "regularizers_ws", None)
    if regs is not None and ws is not None and len(regs) != len(ws):
        _refuse("regularizers_ws", ws, f"one weight per regulariser ({len(regs)} for regularizers={list(regs)})")
    rank, world = getattr(cfg, "rank", None), getattr(cfg, "world", None)
    if isinstance(rank, int) and isinstance(world, int) and rank >= world:
        _refuse("rank", rank, f"an integer in [0, world-1={world - 1}]")
    if getattr(cfg, "early_stopping_confidence", None) is not None and hasattr(cfg, "classifier2"):
        from digin.stages.diff import early_stopping_loss

        early_stopping_loss(cfg)  # a loss without a confidence scale is refused here
    seg = getattr(cfg, "segmentation", None)
    if seg is not None and seg.xa_start_t > seg.xa_end_t:  # an empty window: no step would give a mask
        _refuse("segmentation.xa_start_t", seg.xa_start_t, f"a number ≤ segmentation.xa_end_t={seg.xa_end_t}")


def _check_regularizers(cfg):
    """Regulariser names, and the AlexNet file px_lpips needs: refused before a stage writes its first file."""
    regs = getattr(cfg, "regularizers", None)
    if not regs:
        return
    from digin.engine.objectives import parse_regularizer
    from digin.engine.perceptual import require_trunk_file

    for name in regs:
        try:
            parse_regularizer(str(name))
        except ValueError as e:
            raise ConfigError(f"regularizers: {e}") from None
    if any(str(name).endswith("_lpips") for name in regs):
        try:
            require_trunk_file()
        except FileNotFoundError as e:
            raise ConfigError(f"regularizers={list(regs)}: {e}") from None


def _check_strings(cfg, report_only: bool = False):
    """dtype, device and the compute preset: refused here in one line rather than deep inside model loading
    (`digin doctor` reports a bad compute choice on its screen instead)."""
    device = getattr(cfg, "device", None)
    if isinstance(device, str) and device != "auto":
        import torch

        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError):
            _refuse("device", device, "a torch device such as cpu, cuda or cuda:1 (or unset: the rank's GPU)")
        if dev.type == "cuda":
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if n == 0 or (dev.index or 0) >= n:
                _refuse("device", device, f"a device this machine has (CUDA devices visible: {n})")
    schedule = getattr(cfg, "schedule", None)
    if isinstance(schedule, str) and schedule not in ("static", "dynamic"):
        _refuse("schedule", schedule, "static (unit j → rank j % world) or dynamic (ranks claim units)")
    dtype = getattr(cfg, "dtype", None)
    if hasattr(cfg, "preset") and not report_only:  # a model stage: the compute preset resolves here already
        from digin.engine.presets import compute_of

        try:
            compute_of(cfg, device if device not in (None, "auto") else None)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    elif isinstance(dtype, str):
        from digin.engine.models import DTYPES

        if dtype not in DTYPES:
            _refuse("dtype", dtype, "one of " + ", ".join(sorted(DTYPES)))


# ------------------------------------------------------------------------------------------- building

PRESET_DIR = Path(__file__).parent / "configs"  # the bundled model-family configs (config=<name>)


def _first_line(e: Exception) -> str:
    """OmegaConf's message without the `full_key:` / `object_type=` lines it appends."""
    msg = str(getattr(e, "msg", None) or e)
    return " ".join(msg.strip().splitlines()[0].split()) if msg.strip() else type(e).__name__


def build_config(config_cls, overrides: list[str]):
    """Dataclass defaults ← preset YAML ← key=value overrides; returns an instance of `config_cls`. Every problem is
    a SystemExit with one line naming the key."""
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
            raise SystemExit(f"digin: missing required key(s) {', '.join(missing)} for {config_cls.__name__} "
                             f"(give them as key=value)")
        cfg = OmegaConf.to_object(merged)
    except (ConfigAttributeError, ConfigKeyError) as e:
        key = getattr(e, "full_key", None) or _first_line(e)
        raise SystemExit(f"digin: unknown config key {key!r} for {config_cls.__name__}") from None
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
