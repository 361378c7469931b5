"""Invert real images: z_T + per-step null-text embeddings for every image of a shard set (the reference's
imagenet_inversion.py, inversion_cub_cars_food.py).

  digin invert inputs=/data/shards/imagenet-val out=/data/inv/imagenet-val model_path=/models/sd-1.4
  digin invert inputs=... captions=/data/captions/imagenet-val out=... method=negative_prompt

Reads shard i of the image set (joined by key with the caption set when `captions` is given, field `caption`)
and writes shard i of `out`, one sample per image, same key:
  inversion.safetensors  z_T (C,h,w) fp32, null_texts (T,L,D) fp32 (step 0 = noisiest)
  metrics.json           reconstruction PSNR/L2 (inversion and plain DDIM vs VAE reconstruction and original),
                         Adam steps per timestep, final loss, UNet call counts, settings
  prompt.txt             the prompt used (caption, else the dataset's fallback template with the label)
  reconstruction.png     the inversion's reconstruction (optional)
Defaults: 20 DDIM steps, guidance 3.0 — the value the UVCE stage expects (the reference's ImageNet script
defaults to 1.0, with which the null-text gradient is identically zero; its README and UVCE folders use 3.0).
Killed jobs resume: committed shards are skipped (see digin/shards/runner.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from digin.stages.args import COMPUTE_FIELDS, ComputeArgs
from digin.stages.invert import fallback_template, make_process
from digin.stages.models import load_sd_for, pick_device, stage_compute

@dataclass
class Config(ComputeArgs):
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
    allow_incomplete: bool = False      # process only the committed shards of an incomplete input
    device: Optional[str] = None        # default: cuda:<local rank> if available, else cpu


def stage_config(cfg: Config) -> dict:
    """The settings that change the outputs (recorded in the manifest; resuming with others is refused)."""
    keep = ("model_path", "model_config", "resolution", "center_crop", "num_ddim_steps", "guidance_scale", "method",
            "num_inner_steps", "epsilon", "dataset", "prompt_template", "save_reconstruction", "captions",
            *COMPUTE_FIELDS)
    return {"stage": "invert", **{k: getattr(cfg, k) for k in keep}}


def run(cfg: Config):
    from digin.shards.manifest import ShardSet
    from digin.shards.runner import run_stage

    if cfg.method not in ("null_text", "negative_prompt"):
        raise SystemExit(f"digin invert: method must be null_text or negative_prompt, got {cfg.method!r}")
    device = pick_device(cfg)
    settings = stage_compute(cfg, device)
    images = ShardSet.load(cfg.inputs)
    dataset = cfg.dataset or images.meta.get("source") or images.name
    template = fallback_template(dataset, cfg.prompt_template)
    inputs = [images] + ([ShardSet.load(cfg.captions)] if cfg.captions else [])
    sd = load_sd_for(cfg, device, settings)
    summary = run_stage(inputs, cfg.out, make_process(sd, cfg, template), cfg.batch_size, stage_config(cfg),
                        name="invert", resolution=cfg.resolution, center_crop=cfg.center_crop, required=("image",),
                        num_workers=cfg.num_workers, force=cfg.force, device=device,
                        allow_incomplete=cfg.allow_incomplete)
    return summary.exit_code
