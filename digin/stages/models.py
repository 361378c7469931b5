"""Run preparation of a stage: its device, its resolved compute preset, and the SD model, classifiers and
regulariser models it runs (each loaded once per process), plus the guidance settings. Each function takes the
config sections it needs (digin.stages.args), never a whole task config."""
from __future__ import annotations

import torch

from digin.engine.augment import noise_scale_schedule
from digin.engine.classifiers import load_classifier
from digin.engine.families import load_model
from digin.engine.guidance import GuidanceConfig
from digin.engine.masked_clip import build_masked_clip
from digin.engine.prepare import prepare_classifier, prepare_sd
from digin.engine.presets import ComputeSettings, compute_of
from digin.shards.dist import device_for_local_rank


def pick_device(device: str | None) -> torch.device:
    """The `device` key's device, else this rank's GPU (cuda:<local rank>) or the CPU."""
    return torch.device(device) if device else device_for_local_rank()


def stage_compute(compute, device) -> ComputeSettings:
    """The compute preset and single-key overrides of a ComputeArgs section resolved for `device` (nothing is
    written back: a stage records them with stages.args.record). A bad name → SystemExit naming the key."""
    try:
        return compute_of(compute, device)
    except ValueError as e:
        raise SystemExit(f"digin: {e}") from None


_SD_CACHE: dict = {}


def load_sd_for(model, device, settings: ComputeSettings) -> object:
    """The SD model of a ModelArgs section, loaded once per process (the demo's stages share it) and prepared for
    the run's compute settings (engine/prepare.py: dtype, attention, compiled UNet call and VAE decode)."""
    key = (model.model_path, model.model_config, settings.dtype, str(device))
    if key not in _SD_CACHE:  # SD-1.x / SD-2.x → SDModel, SDXL → SDXLModel (detected from the folder)
        _SD_CACHE[key] = load_model(model.model_path, dtype=settings.dtype, device=device,
                                    model_config=model.model_config)
    sd = _SD_CACHE[key]
    runtime = getattr(sd, "runtime", None)
    if runtime is None or runtime.settings != settings:
        prepare_sd(sd, settings)
    return sd


_REG_MODEL_CACHE: dict = {}


def uses_clip_regularizer(objective) -> bool:
    """Whether an ObjectiveArgs section names a px_*_clip regulariser (then the CLIP tower keys matter)."""
    return any(str(r).endswith("_clip") for r in (objective.regularizers or ()))


def regularizer_models(objective, device) -> dict:
    """Extra models an ObjectiveArgs section's regularisers need, as Objective keyword arguments; built once per
    process."""
    if not uses_clip_regularizer(objective):
        return {}
    key = (objective.clip_regularizer_model, objective.clip_regularizer_weights, str(device))
    if key not in _REG_MODEL_CACHE:
        _REG_MODEL_CACHE[key] = build_masked_clip(objective.clip_regularizer_model,
                                                  objective.clip_regularizer_weights, device)
    return {"clip_model": _REG_MODEL_CACHE[key]}


def load_classifier_for(spec: str, device, settings: ComputeSettings, views, *, cutouts: bool = True,
                        checkpoint: str | None = None, key: str = "classifier_checkpoint", random_weights: bool = False,
                        **kw):
    """A classifier prepared for the run's compute settings (dtype, compiled forward, fused cutouts on CUDA). Its
    weights: `checkpoint` (the config's `key`), else the local caches, else refused unless random_weights
    (engine/classifiers/pretrained.py). `views`: a GuidanceArgs section (its cutouts, unless cutouts=False, and
    its view noise)."""
    clf = load_classifier(spec, checkpoint=checkpoint, device=device, dtype=settings.dtype,
                          num_cutouts=views.augmentation_num_cutouts if cutouts else 0,
                          noise_sd=views.augmentation_noise_sd, allow_random=random_weights, weights_key=key, **kw)
    return prepare_classifier(clf, settings)


def noise_scale_fn(guidance):
    """The cutout-noise multiplier per augmented call of a GuidanceArgs section (augment.noise_scale_schedule)."""
    return noise_scale_schedule(guidance.augmentation_noise_schedule, guidance.optim_params.sgd_steps)


def guidance_config(guidance, settings: ComputeSettings) -> GuidanceConfig:
    """The engine's GuidanceConfig from a GuidanceArgs section and the resolved compute settings."""
    return GuidanceConfig(guidance_scale=guidance.guidance_scale, num_ddim_steps=guidance.num_ddim_steps,
                          optim_params=guidance.optim_params, checkpoint=settings.checkpoint,
                          solver=guidance.solver, guidance_rescale=guidance.guidance_rescale)
