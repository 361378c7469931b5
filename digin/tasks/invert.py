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

from digin.fields import MISSING, key, section_of
from digin.shards.runner import StageSpec
from digin.stages.args import ComputeArgs, ModelArgs, SelectArgs, StageIO, WorkArgs, record
from digin.stages.invert import InversionArgs, fallback_template, make_process
from digin.stages.models import load_sd_for, pick_device, stage_compute
from digin.stages.plans import dataset_of, image_stage_plan, load_inputs, run_or_show


@dataclass
class Config(WorkArgs, ComputeArgs, StageIO, SelectArgs, InversionArgs, ModelArgs):
    inputs: str = key(MISSING, "image shard set (digin shard output)", results=False)
    captions: Optional[str] = key(None, "caption shard set (field `caption`), same keys; else fallback prompts",
                                  results=False)
    dataset: Optional[str] = key(None, "picks the fallback template; default: the shard set's source")
    prompt_template: Optional[str] = key(None, 'overrides the template, e.g. "a photo of a {label}"')


def build_spec(cfg: Config, settings):
    """The stage from the config and the input manifests alone (no sample read, no model)."""
    inputs, incomplete = load_inputs({"images": cfg.inputs, "captions": cfg.captions}, cfg.allow_incomplete)
    dataset = dataset_of(cfg, inputs[0][1])
    return StageSpec("invert", image_stage_plan("invert", cfg, inputs, dataset), record(cfg, "invert", settings),
                     inputs, resolution=cfg.resolution, center_crop=cfg.center_crop, required=("image",),
                     incomplete=incomplete)


def run(cfg: Config):
    device = pick_device(cfg.device)
    settings = stage_compute(cfg, device)
    spec = build_spec(cfg, settings)
    template = fallback_template(dataset_of(cfg, spec.inputs[0][1]), cfg.prompt_template)
    return run_or_show(cfg, spec, lambda: make_process(load_sd_for(section_of(cfg, ModelArgs), device, settings),
                                                       section_of(cfg, InversionArgs), template),
                       settings, device=device)
