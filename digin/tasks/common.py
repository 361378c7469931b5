"""Pieces every guidance task shares: the reference's CommonArguments, model/classifier loading, per-sample
start noise, fixed-shape sub-batches, work-list shard sets and the result fields written per sample."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from digin.engine.guidance import GuidanceConfig, OptimParams


@dataclass
class ComputeArgs:
    """How a stage runs its models: a compute preset (engine/presets.py) and single-key overrides. None = the
    preset's value on this device; the resolved values are written back and recorded in the stage manifest."""

    preset: str = "auto"  # auto (fast on CUDA, eager on CPU) | fast | reference | eager
    dtype: Optional[str] = None  # weights: fp32 | bf16 | fp16 (optimised variables and latents stay fp32)
    compile: Optional[bool] = None  # torch.compile the UNet call, VAE decode and classifier
    compile_backend: Optional[str] = None  # inductor | aot_eager | eager
    batch_size: Optional[int] = None  # samples run together (fast 8, reference 1, eager 4)
    checkpoint: Optional[str] = None  # step (per-step recompute) | none (keep activations) | block (the reference's)
    attention: Optional[str] = None  # sdpa | xformers
    cudagraphs: Optional[bool] = None  # CUDA graph trees for the compiled no-grad calls (inductor on CUDA)
    kernels: Optional[bool] = None  # fused Triton kernels (CFG+DDIM step, cutouts) on CUDA


@dataclass
class CommonArgs(ComputeArgs):
    """The reference's CommonArguments (same key names), plus engine settings."""

    model_path: str = "???"  # local SD folder, single file (+ model_config), or tiny | tiny-sd2 | tiny-sdxl
    model_config: Optional[str] = None
    resolution: int = 512
    center_crop: bool = True  # the reference's Resize(1.25·res)+CenterCrop(res); false: plain resize (no crop)
    guidance_scale: float = 3.0
    num_ddim_steps: int = 20
    optim_params: OptimParams = field(default_factory=OptimParams)
    augmentation_num_cutouts: int = 16
    augmentation_noise_sd: float = 0.005
    augmentation_noise_schedule: str = "const"  # const | descending
    solver: str = "ddim"  # ddim | euler (SDXL-Turbo / Playground presets)
    guidance_rescale: float = 0.0  # SDXL guidance rescale (rescale_noise_cfg); 0 = plain CFG
    seed: int = 42
    # class k of the image shard set = which classifier logit: auto (reorder when the model's label names are the
    # dataset's classes in another order, e.g. HF Flowers-102 ViT) | model (never) | dataset (always, else error)
    classifier_label_order: str = "auto"
    # px_{foreground,background}_clip regularisers: open_clip tower (name or folder) + its local weights file
    clip_regularizer_model: str = "ViT-L-14-CLIPA-336"
    clip_regularizer_weights: Optional[str] = None
    # optional wandb tracking (the reference's key; wandb imported only when set): one run per rank, grouped
    wandb_project: Optional[str] = None
    wandb_entity: Optional[str] = None
    wandb_mode: Optional[str] = None  # online | offline (clusters without internet; `wandb sync` later) | disabled
    device: Optional[str] = None  # default: cuda:<local rank> if available, else cpu
    num_workers: int = 0
    force: bool = False  # resume into an output folder made with another config
    allow_incomplete: bool = False  # process only the committed shards of an input whose other shards are missing
    progress: bool = True


def pick_device(cfg) -> torch.device:
    if cfg.device:
        return torch.device(cfg.device)
    from digin.shards.dist import device_for_local_rank

    return device_for_local_rank()


# Keys that do not change a stage's outputs: left out of the config recorded (and hashed) in its manifest.
OPERATIONAL_KEYS = ("out", "device", "num_workers", "force", "allow_incomplete", "progress", "wandb_project",
                    "wandb_entity", "wandb_mode")


def stage_config_of(cfg, stage: str, drop=()) -> dict:
    """The resolved config of a task as recorded in its stage manifest, without operational keys and `drop`."""
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    for k in (*OPERATIONAL_KEYS, *drop):
        d.pop(k, None)
    return {"stage": stage, **d}


def tracking_for(cfg) -> dict | None:
    """run_stage's `tracking` argument from wandb_* keys (None: no tracking)."""
    project = getattr(cfg, "wandb_project", None)
    return {"project": project, "entity": cfg.wandb_entity, "mode": cfg.wandb_mode} if project else None


# The compute keys a stage records (they move results through float rounding).
COMPUTE_FIELDS = ("preset", "dtype", "compile", "compile_backend", "batch_size", "checkpoint", "attention",
                  "cudagraphs", "kernels")


def stage_compute(cfg, device):
    """Resolve the task config's compute preset for `device`, write the values back into `cfg` (the manifest
    records them) and return the ComputeSettings. A bad name → SystemExit naming the key and allowed values."""
    from digin.engine.presets import apply_compute, compute_of

    try:
        settings = compute_of(cfg, device)
    except ValueError as e:
        raise SystemExit(f"digin: {e}") from None
    apply_compute(cfg, settings)
    return settings


_SD_CACHE: dict = {}


def load_sd_for(cfg, device, settings=None) -> object:
    """The SD model for a task config, loaded once per process (the demo's stages share it) and prepared for the
    run's compute settings (engine/prepare.py: dtype, attention, compiled UNet call and VAE decode)."""
    from digin.engine.families import load_model
    from digin.engine.prepare import prepare_sd

    settings = settings or stage_compute(cfg, device)
    key = (cfg.model_path, cfg.model_config, settings.dtype, str(device))
    if key not in _SD_CACHE:  # SD-1.x / SD-2.x → SDModel, SDXL → SDXLModel (detected from the folder)
        _SD_CACHE[key] = load_model(cfg.model_path, dtype=settings.dtype, device=device,
                                    model_config=cfg.model_config)
    sd = _SD_CACHE[key]
    runtime = getattr(sd, "runtime", None)
    if runtime is None or runtime.settings != settings:
        prepare_sd(sd, settings)
    return sd


_REG_MODEL_CACHE: dict = {}


def uses_clip_regularizer(cfg) -> bool:
    """Whether a px_*_clip regulariser is configured (then the CLIP tower keys matter)."""
    return any(str(r).endswith("_clip") for r in (getattr(cfg, "regularizers", None) or ()))


def regularizer_models(cfg, device) -> dict:
    """Extra models the configured regularisers need, as Objective keyword arguments; built once per process."""
    if not uses_clip_regularizer(cfg):
        return {}
    key = (cfg.clip_regularizer_model, cfg.clip_regularizer_weights, str(device))
    if key not in _REG_MODEL_CACHE:
        from digin.engine.masked_clip import build_masked_clip

        _REG_MODEL_CACHE[key] = build_masked_clip(cfg.clip_regularizer_model, cfg.clip_regularizer_weights, device)
    return {"clip_model": _REG_MODEL_CACHE[key]}


def load_classifier_for(spec: str, cfg, device, checkpoint: str | None = None, cutouts: bool = True, settings=None,
                        **kw):
    """A classifier for a task config, prepared for the run's compute settings (dtype, compiled forward, fused
    cutouts on CUDA)."""
    from digin.engine.classifiers import load_classifier
    from digin.engine.prepare import prepare_classifier

    settings = settings or stage_compute(cfg, device)
    clf = load_classifier(spec, checkpoint=checkpoint, device=device, dtype=settings.dtype,
                          num_cutouts=cfg.augmentation_num_cutouts if cutouts else 0,
                          noise_sd=cfg.augmentation_noise_sd, **kw)
    return prepare_classifier(clf, settings)


def noise_scale_fn(cfg):
    """The cutout-noise multiplier per augmented call (engine.augment.noise_scale_schedule), or None."""
    from digin.engine.augment import noise_scale_schedule

    return noise_scale_schedule(cfg.augmentation_noise_schedule, cfg.optim_params.sgd_steps)


def guidance_config(cfg) -> GuidanceConfig:
    return GuidanceConfig(guidance_scale=cfg.guidance_scale, num_ddim_steps=cfg.num_ddim_steps,
                          optim_params=cfg.optim_params, checkpoint=cfg.checkpoint, solver=cfg.solver,
                          guidance_rescale=cfg.guidance_rescale)


def key_seed(key: str, seed: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}|{key}".encode(), digest_size=8).digest(), "little") >> 1


def start_noise(keys: list[str], seed: int, shape, device) -> torch.Tensor:
    """Per-sample Gaussian z_T from a CPU generator seeded by (seed, key): the same on any device and batch."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(key_seed(k, seed)))
                        for k in keys]).to(device)


def latent_shape(sd, resolution: int) -> tuple:
    f = sd.latent_factor
    return (sd.latent_channels, resolution // f, resolution // f)


def fixed_chunks(items: list, size: int):
    """Yield (chunk padded to `size` by repeating its last item, number of real items)."""
    for s in range(0, len(items), size):
        chunk = items[s:s + size]
        n = len(chunk)
        yield chunk + [chunk[-1]] * (size - n), n


def to_uint8(img_3HW: torch.Tensor) -> np.ndarray:
    return (img_3HW.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def mask_uint8(mask_1HW: torch.Tensor) -> np.ndarray:
    return (mask_1HW[0].detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def word_tiles(maps: dict, size: int) -> np.ndarray:
    """Per-word maps side by side (grey, uint8); one black tile when there are none."""
    tiles = [mask_uint8(m / m.max().clamp_min(1e-8)) for m in maps.values()] or [np.zeros((size, size), np.uint8)]
    return np.concatenate(tiles, axis=1)


def _finite_list(t: torch.Tensor, n: int) -> list:
    vals = t[:n].detach().float().cpu().tolist()
    return [v if np.isfinite(v) else None for v in vals]


def json_safe(value):
    """(value with every non-finite float replaced by None, whether one was replaced): metrics JSON refuses NaN."""
    if isinstance(value, dict):
        pairs = [(k, json_safe(v)) for k, v in value.items()]
        return {k: v for k, (v, _) in pairs}, any(bad for _, (_, bad) in pairs)
    if isinstance(value, (list, tuple)):
        pairs = [json_safe(v) for v in value]
        return [v for v, _ in pairs], any(bad for _, bad in pairs)
    if isinstance(value, float) and not np.isfinite(value):
        return None, True
    return value, False


def result_status(nonfinite: bool, num_logged: int, best_iter: int) -> str:
    """ok | nonfinite (a loss or metric turned NaN/inf) | no_improvement (later iterates were logged, none had a
    lower loss than iterate 0: the loss only rose, e.g. a far too large step size)."""
    if nonfinite or num_logged == 0:
        return "nonfinite"
    return "no_improvement" if num_logged > 1 and best_iter == 0 else "ok"


def result_fields(res, b: int, prefix: str = "", extra_metrics: dict | None = None,
                  save_latents: bool = True) -> dict:
    """Per-sample output fields of a GuidanceResult: sd/ours PNGs, per-iteration metrics JSON (with `status`, see
    result_status; non-finite numbers are null), latents. A sample with no finite iterate gets its metrics only
    (no images, no latents); one that turned non-finite later keeps iterate 0 and its best finite iterate."""
    n = int(res.num_logged[b])
    best = int(res.best_iter[b])
    metrics = {
        "best_iter": best, "num_logged": n, "stopped_early": bool(res.stopped_early[b]),
        "nonfinite": bool(res.nonfinite[b]), "loss": _finite_list(res.losses[:, b], n),
        "parts": {k: _finite_list(v[:, b], n) for k, v in res.parts.items()},
        "confidences": {k: _finite_list(v[:, b], n) for k, v in res.confidences.items()},
        "aug_loss": _finite_list(res.aug_losses[:, b], max(n - 1, 0)),
    }
    for name, v in res.confidences.items():  # scalar summaries for tables / the gallery: iterate 0 vs best
        logged = _finite_list(v[:, b], n)
        metrics[f"{name}_sd"], metrics[f"{name}_ours"] = (logged[0], logged[best]) if n else (None, None)
    metrics, replaced = json_safe({**metrics, **(extra_metrics or {})})
    metrics["status"] = result_status(bool(res.nonfinite[b]) or replaced, n, best)
    metrics["nonfinite"] = metrics["status"] == "nonfinite"
    out = {f"{prefix}metrics": metrics}
    if n == 0:  # not one finite iterate: nothing to show
        return out
    out[f"{prefix}sd"], out[f"{prefix}ours"] = to_uint8(res.sd_images[b]), to_uint8(res.ours_images[b])
    if save_latents:
        t = {"z_T": res.z_T[b].float().cpu().contiguous()}
        if res.cond_delta is not None:
            t["cond_delta"] = res.cond_delta[b].float().cpu().contiguous()
        if res.uncond_delta is not None:
            t["uncond_delta"] = res.uncond_delta[b].float().cpu().contiguous()
        if all(bool(x.isfinite().all()) for x in t.values()):  # the writer refuses NaN tensors
            out[f"{prefix}latents"] = t
    return out


# ------------------------------------------------------------------------------------- work lists

def wait_for_worklist(folder, timeout_s: float = 3600.0, poll_s: float = 2.0):
    """Block until rank 0 has committed every shard of the work list in `folder`."""
    import time

    from digin.shards.manifest import ShardSet

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ss = ShardSet.load(folder)
            if len(ss.records) == ss.meta.get("num_shards", -1):
                return ss
        except (FileNotFoundError, ValueError):  # not written yet / half-written manifest
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"digin: rank 0 did not write the work list {folder} within {timeout_s:.0f} s")
        time.sleep(poll_s)


def write_worklist(out, name: str, items: list[tuple[str, dict]], per_shard: int, meta: dict | None = None,
                   wait_s: float = 3600.0):
    """A committed shard set of JSON-only samples (key, item) — the input of txt2img stages, so they get the
    runner's exactly-once, resume and rank split like every other stage. Deterministic: re-running with the
    same items is a no-op; other items into the same folder are refused. Only rank 0 writes; the other ranks
    wait for its commit (several writers would race on the same files)."""
    from digin.shards.dist import rank_world
    from digin.shards.manifest import FORMAT, MANIFEST, ConfigMismatch, ShardSet, config_hash, write_json
    from digin.shards.writer import ShardWriter, remove_orphan_partial

    if rank_world()[0] != 0:
        return wait_for_worklist(out, wait_s)
    out = Path(out)
    listing = [[k, v] for k, v in items]
    chash = config_hash({"name": name, "items": listing, "per_shard": per_shard})
    chunks = [items[s:s + per_shard] for s in range(0, len(items), per_shard)]
    m = {"format": FORMAT, "kind": "worklist", "name": name, "config": {"name": name, "per_shard": per_shard,
         "num_items": len(items)}, "config_hash": chash, "num_shards": len(chunks), "num_samples": len(items),
         **(meta or {})}
    out.mkdir(parents=True, exist_ok=True)
    mpath = out / MANIFEST
    if mpath.exists() and json.loads(mpath.read_text()).get("config_hash") != chash:
        raise ConfigMismatch(f"{out} holds another work list; use a new folder")
    write_json(mpath, m)
    done = ShardSet.load(out)
    for i, chunk in enumerate(chunks):
        if i in done.records:
            continue
        remove_orphan_partial(out, f"{name}-{i:06d}.tar")  # rank 0 is the work list's only writer
        w = ShardWriter(out, i, f"{name}-{i:06d}.tar", {"config_hash": chash})
        try:
            for key, item in chunk:
                w.add(key, {"item": item})
            w.commit()
        except BaseException:
            w.discard()
            raise
    return ShardSet.load(out)
