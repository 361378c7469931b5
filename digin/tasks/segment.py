"""Foreground masks for inspection: cross-attention maps of the label words (+ optional SAM-HQ refinement and
post-processing) from the initial pass of each inverted image (the reference's
`calculate_segmentation`, src/utils/foreground_segmentation.py).

  digin segment images=<image shards> inversions=<digin invert output> out=<folder> model_path=<sd folder>
  digin segment ... segmentation.sam_segmentation=true segmentation.sam_checkpoint=/ckpt/sam_hq_vit_h.pth

Output per image (same keys/shards as the input): `orig.png`, `mask.png` (the foreground mask the UVCE and
neuron-counterfactual stages use), `attention.png` (one tile per prompt word: its cross-attention map), and
`metrics.json` (words, foreground words, prompt, mask area). Open them with `digin gallery`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from digin.engine.segment import SegmentationConfig
from digin.stages.args import ComputeArgs, stage_config_of
from digin.stages.models import load_sd_for, pick_device, stage_compute
from digin.stages.segment import make_process


def _seg_default():
    return SegmentationConfig(sam_segmentation=False)


@dataclass
class Config(ComputeArgs):
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
    allow_incomplete: bool = False  # process only the committed shards of an incomplete input
    progress: bool = True


def run(cfg: Config):
    from digin.shards.manifest import ShardSet
    from digin.shards.runner import run_stage

    images, invs = ShardSet.load(cfg.images), ShardSet.load(cfg.inversions)
    dev = pick_device(cfg)
    sd = load_sd_for(cfg, dev, stage_compute(cfg, dev))
    summary = run_stage([images, invs], cfg.out, make_process(sd, cfg, images.classes), cfg.batch_size,
                        stage_config_of(cfg, "segment", drop=("images", "inversions")), name="segment",
                        resolution=cfg.resolution,
                        center_crop=cfg.center_crop,
                        required=("image", "meta", "inversion", "prompt"), num_workers=cfg.num_workers,
                        force=cfg.force, device=dev, progress=cfg.progress, allow_incomplete=cfg.allow_incomplete)
    return summary.exit_code
