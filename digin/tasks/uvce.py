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

from dataclasses import dataclass
from typing import Optional

from digin.engine.edit import MaskBlendParams, P2PParams
from digin.engine.objectives import ONE_CLASSIFIER_LOSSES
from digin.engine.segment import SegmentationConfig
from digin.errors import ConfigError
from digin.fields import COUNT, MISSING, key, section, section_of
from digin.shards.runner import StageSpec
from digin.stages.args import ClassifierArgs, CommonArgs, GuidanceArgs, ModelArgs, ObjectiveArgs, record
from digin.stages.models import load_classifier_for, load_sd_for, pick_device, stage_compute
from digin.stages.plans import dataset_of, load_inputs, run_or_show, uvce_plan
from digin.stages.edits import EditArgs
from digin.stages.uvce import make_process


def _uvce_blend():
    return MaskBlendParams(do_mask_blend=True, foreground_blend=False, initial_mask_blend_schedule=["none", "threshold_0.3"])


def _uvce_segmentation():
    return SegmentationConfig(sam_segmentation=False)


@dataclass
class Config(EditArgs, CommonArgs, ClassifierArgs):
    images: str = key(MISSING, "image shard set (digin shard)", results=False)
    inversions: str = key(MISSING, "inversion shard set (digin invert), same shard layout", results=False)
    dataset: Optional[str] = key(None, "imagenet | cub | cars | food101 | flowers102 (default: from the image "
                                       "shards)")
    loss: str = key("CE", "a one-classifier class loss (digin.engine.objectives.LOSSES)",
                    choices=ONE_CLASSIFIER_LOSSES)
    classifier: str = key("vit_base_patch16_384.augreg_in21k_ft_in1k", "the classifier to explain (timm name, "
                                                                       "hf:, madry:, tiny:, ...)")
    regularizers: list = key(["latent_background_l2", "px_background_l2"], "regulariser names (keep the background)")
    regularizers_ws: list = key([25.0, 250.0], "one weight per regulariser")
    pairs: str = key("reference", "reference (ImageNet clusters / CUB-Cars tables) | random | explicit | all_classes",
                     choices=("reference", "random", "explicit", "all_classes"))
    explicit_pairs: list = key([], "[[image_index, target], ...] with pairs=explicit")
    num_images: Optional[int] = key(None, "random subset of images (seeded by `seed`)", rule=COUNT)
    error_visualisation: bool = key(False, "misclassified images → their true class (P2P identity); all images "
                                           "planned")
    foreground_words: dict = key({}, "label → words to find in the caption (e.g. crab)")
    segmentation: SegmentationConfig = section(_uvce_segmentation, "UVCE: attention masks only (no SAM)")
    p2p: P2PParams = section(P2PParams, "UVCE: the reference's three cross-attention schedules")
    mask_blend: MaskBlendParams = section(_uvce_blend, "UVCE: pin the background")


def build_spec(cfg: Config, settings):
    """The stage from the config and the input manifests alone (no sample read, no model)."""
    inputs, incomplete = load_inputs({"images": cfg.images, "inversions": cfg.inversions}, cfg.allow_incomplete)
    images = inputs[0][1]
    dataset = dataset_of(cfg, images)
    classes = images.classes or []
    if not classes:
        raise ConfigError(f"images={cfg.images}: the shard set records no class names")
    return StageSpec("uvce", uvce_plan(cfg, inputs, classes, dataset), record(cfg, "uvce", settings, dataset=dataset),
                     inputs, resolution=cfg.resolution, center_crop=cfg.center_crop,
                     required=("image", "meta", "inversion", "prompt"), classes=classes, incomplete=incomplete)


def run(cfg: Config):
    dev = pick_device(cfg.device)
    settings = stage_compute(cfg, dev)
    spec = build_spec(cfg, settings)
    guidance = section_of(cfg, GuidanceArgs)

    def load():
        clf = load_classifier_for(cfg.classifier, dev, settings, guidance, checkpoint=cfg.classifier_checkpoint,
                                  random_weights=cfg.random_weights, dataset_classes=spec.classes,
                                  label_order=cfg.classifier_label_order)
        sd = load_sd_for(section_of(cfg, ModelArgs), dev, settings)
        return make_process(sd, clf, section_of(cfg, EditArgs), section_of(cfg, ObjectiveArgs), guidance, settings,
                            spec.classes, cfg.foreground_words, cfg.error_visualisation)

    return run_or_show(cfg, spec, load, settings, device=dev)
