"""Invert real images: z_T + per-step null-text embeddings for every image of a shard set (the reference's
imagenet_inversion.py, inversion_cub_cars_food.py).

  digin invert inputs=/data/shards/imagenet-val out=/data/inv/imagenet-val model_path=/models/sd-1.4 select=uvce
  digin invert inputs=... captions=/data/captions/imagenet-val out=... method=negative_prompt

The work plan is the selected image keys (`select=`: all, the images of the UVCE table as the reference's
selected=True, a keys file, ...; digin.stages.plans.select_keys), each joined by key with its caption when
`captions` is given (field `caption`); one output sample per image, same key:
  inversion.safetensors  z_T (C,h,w) fp32, null_texts (T,L,D) fp32 (step 0 = noisiest)
  metrics.json           reconstruction PSNR/L2 (inversion and plain DDIM vs VAE reconstruction and original),
                         Adam steps per timestep, final loss, UNet call counts, settings
  prompt.txt             the prompt used (caption, else the dataset's fallback template with the label)
  reconstruction.png     the inversion's reconstruction (optional)
Defaults: 20 DDIM steps, guidance 3.0 — the value the UVCE stage expects (the reference's ImageNet script
defaults to 1.0, with which the null-text gradient is identically zero; its README and UVCE folders use 3.0).
Killed jobs resume: committed units are skipped (see digin/shards/runner.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from digin.stages.args import COMPUTE_FIELDS, ComputeArgs, SelectArgs, WorkArgs
from digin.stages.invert import fallback_template, make_process
from digin.stages.models import load_sd_for, pick_device, stage_compute


@dataclass
class Config(ComputeArgs, SelectArgs, WorkArgs):
    inputs: str = "???"                 # image shard set (digin shard output)
    out: str = "???"                    # output shard set folder
    captions: Optional[str] = None      # caption shard set (field `caption`), same keys; else fallback prompts
    model_path: str = "???"             # local SD folder, single file (+ model_config) or 'tiny'
    model_config: Optional[str] = None
    resolution: int = 512               # Resize(1.25·res) + CenterCrop(res), as the reference
    center_crop: bool = True            # false: plain resize to res×res (images already at the model's size)
    num_ddim_steps: int = 20
    guidance_scale: float = 3.0
    method: str = "null_text"           # null_text | negative_prompt (fast: no inner optimisation)
    num_inner_steps: int = 10
    epsilon: float = 1e-5
    dataset: Optional[str] = None       # picks the fallback template; default: the shard set's source
    prompt_template: Optional[str] = None  # overrides the template, e.g. "a photo of a {label}"
    save_reconstruction: bool = True
    num_workers: int = 0
    force: bool = False                 # resume into an output made with another config
    allow_incomplete: bool = False      # plan over the committed shards of an incomplete input only
    progress: bool = True
    device: Optional[str] = None        # default: cuda:<local rank> if available, else cpu


def stage_config(cfg: Config) -> dict:
    """The settings that change the outputs (recorded in the manifest; resuming with others is refused)."""
    keep = ("model_path", "model_config", "resolution", "center_crop", "num_ddim_steps", "guidance_scale", "method",
            "num_inner_steps", "epsilon", "dataset", "prompt_template", "save_reconstruction", "captions",
            *COMPUTE_FIELDS)
    return {"stage": "invert", **{k: getattr(cfg, k) for k in keep}}


def build_spec(cfg: Config):
    """The stage from the config and the input manifests alone (no sample read, no model)."""
    from digin.errors import ConfigError
    from digin.shards.runner import StageSpec
    from digin.stages.plans import dataset_of, image_stage_plan, load_inputs

    if cfg.method not in ("null_text", "negative_prompt"):
        raise ConfigError(f"method={cfg.method!r}: one of null_text, negative_prompt")
    inputs, incomplete = load_inputs({"images": cfg.inputs, "captions": cfg.captions}, cfg.allow_incomplete)
    dataset = dataset_of(cfg, inputs[0][1])
    return StageSpec("invert", image_stage_plan("invert", cfg, inputs, dataset), stage_config(cfg), inputs,
                     resolution=cfg.resolution, center_crop=cfg.center_crop, required=("image",),
                     incomplete=incomplete)


def run(cfg: Config):
    from digin.stages.plans import dataset_of, run_or_show

    device = pick_device(cfg)
    settings = stage_compute(cfg, device)  # resolves the compute keys the recorded config holds
    spec = build_spec(cfg)
    template = fallback_template(dataset_of(cfg, spec.inputs[0][1]), cfg.prompt_template)
    return run_or_show(cfg, spec, lambda: make_process(load_sd_for(cfg, device, settings), cfg, template),
                       device=device)
