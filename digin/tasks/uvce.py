r"""Universal visual counterfactual explanations (UVCEs) of real images (the reference's uvces_imagenet.py,
uvces_cub_cars_food.py).

  digin uvce images=<image shards> inversions=<digin invert output> out=<folder> model_path=<sd folder> \
      classifier=vit_base_patch16_384.augreg_in21k_ft_in1k classifier_checkpoint=<weights> \
      regularizers=[latent_background_l2,px_background_l2] regularizers_ws=[25.0,250.0]

The work plan is the reference's (image, target) pairs (digin.stages.plans.uvce_plan), made from the manifests
alone; each pair joins its image and its inversion by key. Pairs are batched at a fixed batch size: z_T and the
null texts come from the inversion, the prompt edit start label → target label is applied with Prompt-to-Prompt,
the background is pinned by mask blending, and the (xa × blend) schedule pair is searched per sample before the
gradient steps. Output per pair, key `<image key>/t<target>`: `orig.png`, `mask.png`, `attention.png`,
`recon.png` (null-text reconstruction), `sd.png`, `ours.png`, `metrics.json` (labels, prompts, chosen schedules,
per-iteration losses and confidences), `latents.safetensors`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from digin.engine.edit import MaskBlendParams, P2PParams
from digin.engine.segment import SegmentationConfig
from digin.stages.args import CommonArgs, stage_config_of
from digin.stages.models import load_classifier_for, load_sd_for, pick_device, stage_compute
from digin.stages.uvce import make_process


def _uvce_blend():
    return MaskBlendParams(do_mask_blend=True, foreground_blend=False, initial_mask_blend_schedule=["none", "threshold_0.3"])


def _uvce_segmentation():
    return SegmentationConfig(sam_segmentation=False)


@dataclass
class Config(CommonArgs):
    images: str = "???"  # image shard set (digin shard)
    inversions: str = "???"  # inversion shard set (digin invert), same shard layout
    out: str = "???"
    dataset: Optional[str] = None  # imagenet | cub | cars | food101 | flowers102 (default: from the image shards)
    classifier: str = "vit_base_patch16_384.augreg_in21k_ft_in1k"
    classifier_checkpoint: Optional[str] = None
    loss: str = "CE"
    loss_weight: float = 1.0
    regularizers: list = field(default_factory=lambda: ["latent_background_l2", "px_background_l2"])
    regularizers_ws: list = field(default_factory=lambda: [25.0, 250.0])
    pairs: str = "reference"  # reference (ImageNet clusters / CUB-Cars tables) | random | explicit | all_classes
    explicit_pairs: list = field(default_factory=list)  # [[image_index, target], ...] with pairs=explicit
    num_images: Optional[int] = None  # random subset of images (seeded by `seed`)
    error_visualisation: bool = False  # misclassified images → their true class (P2P identity); all images planned
    foreground_words: dict = field(default_factory=dict)  # label → words to find in the caption (e.g. crab)
    segmentation: SegmentationConfig = field(default_factory=_uvce_segmentation)
    p2p: P2PParams = field(default_factory=P2PParams)
    mask_blend: MaskBlendParams = field(default_factory=_uvce_blend)


def stage_config(cfg: Config) -> dict:
    return stage_config_of(cfg, "uvce", drop=("images", "inversions"))


def build_spec(cfg: Config):
    """The stage from the config and the input manifests alone (no sample read, no model)."""
    from digin.errors import ConfigError
    from digin.shards.runner import StageSpec
    from digin.stages.plans import dataset_of, load_inputs, uvce_plan

    inputs, incomplete = load_inputs({"images": cfg.images, "inversions": cfg.inversions}, cfg.allow_incomplete)
    images = inputs[0][1]
    cfg.dataset = dataset_of(cfg, images)
    classes = images.classes or []
    if not classes:
        raise ConfigError(f"images={cfg.images}: the shard set records no class names")
    return StageSpec("uvce", uvce_plan(cfg, inputs, classes, cfg.dataset), stage_config(cfg), inputs,
                     resolution=cfg.resolution, center_crop=cfg.center_crop,
                     required=("image", "meta", "inversion", "prompt"), classes=classes, incomplete=incomplete)


def run(cfg: Config):
    from digin.stages.plans import run_or_show

    dev = pick_device(cfg)
    settings = stage_compute(cfg, dev)  # resolves the compute keys the recorded config holds
    spec = build_spec(cfg)

    def load():
        clf = load_classifier_for(cfg.classifier, cfg, dev, checkpoint=cfg.classifier_checkpoint,
                                  dataset_classes=spec.classes, label_order=cfg.classifier_label_order,
                                  settings=settings)
        return make_process(load_sd_for(cfg, dev, settings), clf, cfg, spec.classes)

    return run_or_show(cfg, spec, load, device=dev)
