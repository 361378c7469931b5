"""Foreground masks for inspection: cross-attention maps of the label words (+ optional SAM-HQ refinement and
post-processing) from the initial pass of each inverted image (REFERENCE §5.2).

  digin segment images=<image shards> inversions=<digin invert output> out=<folder> model_path=<sd folder>
  digin segment ... segmentation.sam_segmentation=true segmentation.sam_checkpoint=/ckpt/sam_hq_vit_h.pth

Output per image (same keys/shards as the input): `orig.png`, `mask.png` (the foreground mask the UVCE and
neuron-counterfactual stages use), `attention.png` (one tile per prompt word: its cross-attention map), and
`metrics.json` (words, foreground words, prompt, mask area). Open them with `digin gallery`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from digin.engine.edit import MaskBlendParams
from digin.engine.segment import SegmentationConfig
from digin.tasks.common import (ComputeArgs, load_sd_for, mask_uint8, pick_device, stage_compute, stage_config_of,
                                to_uint8, word_tiles)


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


class _MaskOnly:
    """The edit set-up asks an objective for masks; here nothing is optimised."""

    needs_masks = True

    def set_reference(self, *a):
        pass

    def set_masks(self, *a):
        pass


def make_process(sd, cfg: Config, classes: list[str]):
    from digin.engine.edit import prepare_edit

    def process(batch):
        dev = batch.device
        images = batch.images.to(dev).float() / 255.0
        prompts = [s["prompt"] for s in batch.samples]
        labels = [classes[int(s["meta"]["label"])] for s in batch.samples]
        fg = [cfg.foreground_words.get(lab, lab).split() for lab in labels]
        z = torch.stack([s["inversion"]["z_T"] for s in batch.samples]).to(dev)
        null = torch.stack([s["inversion"]["null_texts"] for s in batch.samples]).to(dev)
        setup = prepare_edit(sd, _MaskOnly(), z_T=z, uncond=null, prompts=prompts, foreground_words=fg,
                             guidance_scale=cfg.guidance_scale, num_ddim_steps=cfg.num_ddim_steps, images=images,
                             blend=MaskBlendParams(do_mask_blend=True, initial_mask_blend_schedule=["none"]),
                             segmentation=cfg.segmentation, solver=cfg.solver,
                             guidance_rescale=cfg.guidance_rescale)
        setup.close(sd)
        outs = []
        for b in range(batch.n_real):
            words = setup.word_maps[b]
            outs.append({"orig": to_uint8(images[b]), "mask": mask_uint8(setup.px_mask[b]),
                         "attention": word_tiles(words, images.shape[-1]),
                         "metrics": {"prompt": prompts[b], "words": list(words), "foreground_words": fg[b],
                                     "label": labels[b], "start": int(batch.samples[b]["meta"]["label"]),
                                     "mask_area": float(setup.px_mask[b].mean())}})
        return outs

    return process


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
