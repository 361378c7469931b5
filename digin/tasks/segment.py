"""Foreground masks for inspection: cross-attention maps of the label words (+ optional SAM-HQ refinement and
post-processing) from the initial pass of each inverted image (the reference's
`calculate_segmentation`, src/utils/foreground_segmentation.py).

  digin segment images=<image shards> inversions=<digin invert output> out=<folder> model_path=<sd folder>
  digin segment ... segmentation.sam_segmentation=true segmentation.sam_checkpoint=/ckpt/sam_hq_vit_h.pth

The work plan is every image key of the inversion set, joined by key with its image; output per image (same key): `orig.png`, `mask.png` (the foreground mask the UVCE and
neuron-counterfactual stages use), `attention.png` (one tile per prompt word: its cross-attention map), and
`metrics.json` (words, foreground words, prompt, mask area). Open them with `digin gallery`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from digin.engine.segment import SegmentationConfig
from digin.stages.args import ComputeArgs, WorkArgs, stage_config_of
from digin.stages.models import load_sd_for, pick_device, stage_compute
from digin.stages.segment import make_process


def _seg_default():
    return SegmentationConfig(sam_segmentation=False)


@dataclass
class Config(ComputeArgs, WorkArgs):
    images: str = "???"
    inversions: str = "???"
    out: str = "???"
    model_path: str = "???"
    model_config: str | None = None
    resolution: int = 512
    center_crop: bool = True  # the reference's Resize(1.25·res)+CenterCrop(res); false: plain resize (no crop)
    guidance_scale: float = 3.0
    num_ddim_steps: int = 20
    solver: str = "ddim"  # ddim | euler
    guidance_rescale: float = 0.0
    foreground_words: dict = field(default_factory=dict)  # label → words to look for in the caption
    segmentation: SegmentationConfig = field(default_factory=_seg_default)
    device: str | None = None
    num_workers: int = 0
    force: bool = False
    allow_incomplete: bool = False  # plan over the committed shards of an incomplete input only
    progress: bool = True


def build_spec(cfg: Config):
    """The stage from the config and the input manifests alone: every inverted image, joined with its image."""
    from digin.shards.keyed import KeyIndex
    from digin.shards.runner import StageSpec
    from digin.stages.plans import load_inputs, pair_plan

    inputs, incomplete = load_inputs({"images": cfg.images, "inversions": cfg.inversions}, cfg.allow_incomplete)
    keys = sorted(KeyIndex(inputs[1][1]).keys())
    plan = pair_plan("segment", cfg, inputs, [(k, k, None) for k in keys], {"images": len(keys)})
    return StageSpec("segment", plan, stage_config_of(cfg, "segment", drop=("images", "inversions")), inputs,
                     resolution=cfg.resolution, center_crop=cfg.center_crop,
                     required=("image", "meta", "inversion", "prompt"), incomplete=incomplete)


def run(cfg: Config):
    from digin.stages.plans import run_or_show

    dev = pick_device(cfg)
    settings = stage_compute(cfg, dev)  # resolves the compute keys the recorded config holds
    spec = build_spec(cfg)
    return run_or_show(cfg, spec, lambda: make_process(load_sd_for(cfg, dev, settings), cfg, spec.classes or
                                                        spec.inputs[0][1].classes), device=dev)
