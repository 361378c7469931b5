"""Run preparation of a stage: its device, its resolved compute preset, and the SD model, classifiers and
regulariser models it runs (each loaded once per process), plus the guidance settings taken from its config."""
from __future__ import annotations

import torch

from digin.engine.guidance import GuidanceConfig


def pick_device(cfg) -> torch.device:
    if cfg.device:
        return torch.device(cfg.device)
    from digin.shards.dist import device_for_local_rank

    return device_for_local_rank()


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
                        key: str = "classifier_checkpoint", **kw):
    """A classifier for a task config, prepared for the run's compute settings (dtype, compiled forward, fused
    cutouts on CUDA). Its weights: `checkpoint` (the config's `key`), else the local caches, else refused unless
    the config says random_weights=true (engine/classifiers/pretrained.py)."""
    from digin.engine.classifiers import load_classifier
    from digin.engine.prepare import prepare_classifier

    settings = settings or stage_compute(cfg, device)
    clf = load_classifier(spec, checkpoint=checkpoint, device=device, dtype=settings.dtype,
                          num_cutouts=cfg.augmentation_num_cutouts if cutouts else 0,
                          noise_sd=cfg.augmentation_noise_sd, allow_random=getattr(cfg, "random_weights", False),
                          weights_key=key, **kw)
    return prepare_classifier(clf, settings)


def noise_scale_fn(cfg):
    """The cutout-noise multiplier per augmented call (engine.augment.noise_scale_schedule), or None."""
    from digin.engine.augment import noise_scale_schedule

    return noise_scale_schedule(cfg.augmentation_noise_schedule, cfg.optim_params.sgd_steps)


def guidance_config(cfg) -> GuidanceConfig:
    return GuidanceConfig(guidance_scale=cfg.guidance_scale, num_ddim_steps=cfg.num_ddim_steps,
                          optim_params=cfg.optim_params, checkpoint=cfg.checkpoint, solver=cfg.solver,
                          guidance_rescale=cfg.guidance_rescale)
