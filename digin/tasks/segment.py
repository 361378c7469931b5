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

from dataclasses import dataclass

from digin.engine.segment import SegmentationConfig
from digin.fields import MISSING, key, section, section_of
from digin.shards.keyed import KeyIndex
from digin.shards.runner import StageSpec
from digin.stages.args import ComputeArgs, ModelArgs, SamplingArgs, StageIO, WorkArgs, record
from digin.stages.models import load_sd_for, pick_device, stage_compute
from digin.stages.plans import load_inputs, pair_plan, run_or_show
from digin.stages.segment import make_process


def _seg_default():
    return SegmentationConfig(sam_segmentation=False)


@dataclass
class Config(WorkArgs, ComputeArgs, StageIO, SamplingArgs, ModelArgs):
    images: str = key(MISSING, "image shard set (digin shard)", results=False)
    inversions: str = key(MISSING, "inversion shard set (digin invert)", results=False)
    foreground_words: dict = key({}, "label → words to look for in the caption")
    segmentation: SegmentationConfig = section(_seg_default, "attention masks only (no SAM) unless asked")


def build_spec(cfg: Config, settings):
    """The stage from the config and the input manifests alone: every inverted image, joined with its image."""
    inputs, incomplete = load_inputs({"images": cfg.images, "inversions": cfg.inversions}, cfg.allow_incomplete)
    keys = sorted(KeyIndex(inputs[1][1]).keys())
    plan = pair_plan("segment", cfg, inputs, [(k, k, None) for k in keys], {"images": len(keys)})
    return StageSpec("segment", plan, record(cfg, "segment", settings), inputs,
                     resolution=cfg.resolution, center_crop=cfg.center_crop,
                     required=("image", "meta", "inversion", "prompt"), incomplete=incomplete)


def run(cfg: Config):
    dev = pick_device(cfg.device)
    settings = stage_compute(cfg, dev)
    spec = build_spec(cfg, settings)
    return run_or_show(cfg, spec, lambda: make_process(load_sd_for(section_of(cfg, ModelArgs), dev, settings),
                                                       section_of(cfg, SamplingArgs), cfg.segmentation,
                                                       cfg.foreground_words,
                                                       spec.classes or spec.inputs[0][1].classes),
                       settings, device=dev)
