r"""Universal visual counterfactual explanations (UVCEs) of real images (the reference's uvces_imagenet.py,
uvces_cub_cars_food.py).

  digin uvce images=<image shards> inversions=<digin invert output> out=<folder> model_path=<sd folder> \
      classifier=vit_base_patch16_384.augreg_in21k_ft_in1k classifier_checkpoint=<weights> \
      regularizers=[latent_background_l2,px_background_l2] regularizers_ws=[25.0,250.0]

Per image (joined by key: image shard i + inversion shard i) every target class of its pairs is optimised,
pairs batched across images at a fixed batch size: z_T and the null texts come from the inversion, the prompt
edit start label → target label is applied with Prompt-to-Prompt, the background is pinned by mask blending,
and the (xa × blend) schedule pair is searched per sample before the gradient steps. Output shard i holds the
same keys as input shard i; per image: `orig.png`, `mask.png`, `recon.png` (null-text reconstruction) and for
each target t: `t<t>_sd.png`, `t<t>_ours.png`, `t<t>_metrics.json`, `t<t>_latents.safetensors`, plus
`pairs.json` (targets, labels, prompts, chosen schedules).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from digin.engine.edit import MaskBlendParams, P2PParams
from digin.engine.segment import SegmentationConfig
from digin.stages.args import CommonArgs, stage_config_of, tracking_for
from digin.stages.models import load_classifier_for, load_sd_for, pick_device, stage_compute
from digin.stages.uvce import make_process, predict_labels, targets_for_images


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
    error_visualisation: bool = False  # misclassified images → their true class (P2P identity)
    foreground_words: dict = field(default_factory=dict)  # label → words to find in the caption (e.g. crab)
    segmentation: SegmentationConfig = field(default_factory=_uvce_segmentation)
    p2p: P2PParams = field(default_factory=P2PParams)
    mask_blend: MaskBlendParams = field(default_factory=_uvce_blend)


def stage_config(cfg: Config) -> dict:
    return stage_config_of(cfg, "uvce", drop=("images", "inversions"))


def run(cfg: Config):
    from digin.shards.manifest import ShardSet
    from digin.shards.reader import iter_samples
    from digin.shards.runner import run_stage

    images = ShardSet.load(cfg.images)
    invs = ShardSet.load(cfg.inversions)
    cfg.dataset = cfg.dataset or images.meta.get("source") or images.name
    classes = images.classes or []
    if not classes:
        raise SystemExit(f"digin uvce: {cfg.images} records no class names")
    keys_labels = {s["__key__"]: int(s["meta"]["label"]) for s in iter_samples(images, required=("meta",))
                   if "__reject__" not in s}
    dev = pick_device(cfg)
    settings = stage_compute(cfg, dev)
    clf = load_classifier_for(cfg.classifier, cfg, dev, checkpoint=cfg.classifier_checkpoint,
                              dataset_classes=classes, label_order=cfg.classifier_label_order, settings=settings)
    preds = predict_labels(clf, images, cfg.resolution, dev, center_crop=cfg.center_crop) if cfg.error_visualisation else None
    targets_of = targets_for_images(cfg, keys_labels, len(classes), preds)
    sd = load_sd_for(cfg, dev, settings)
    summary = run_stage([images, invs], cfg.out, make_process(sd, clf, cfg, classes, targets_of),
                        cfg.batch_size, stage_config(cfg), name="uvce", resolution=cfg.resolution,
                        center_crop=cfg.center_crop,
                        required=("image", "meta", "inversion", "prompt"), num_workers=cfg.num_workers,
                        force=cfg.force, device=dev, progress=cfg.progress, tracking=tracking_for(cfg),
                        allow_incomplete=cfg.allow_incomplete)
    return summary.exit_code
