"""Universal visual counterfactual explanations (UVCEs) of real images (REFERENCE §8).

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

import numpy as np
import torch

from digin.engine.edit import MaskBlendParams, P2PParams
from digin.engine.segment import SegmentationConfig
from digin.tasks.common import (CommonArgs, guidance_config, load_classifier_for, load_sd_for, noise_scale_fn,
                                pick_device, stage_compute, stage_config_of, tracking_for)


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


def predict_labels(clf, images, resolution: int, device, batch_size: int = 32, center_crop: bool = True) -> dict:
    """key → the classifier's (non-augmented) prediction for every readable image of a shard set."""
    from digin.shards.reader import iter_samples

    preds, keys, xs = {}, [], []

    def flush():
        if xs:
            x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).to(device).float() / 255.0
            with torch.no_grad():
                p = clf(x)[:, 0].argmax(-1).tolist()
            preds.update(zip(keys, p))
            keys.clear()
            xs.clear()

    for s in iter_samples(images, resolution=resolution, required=("image",), center_crop=center_crop):
        keys.append(s["__key__"])
        xs.append(s["image"])
        if len(xs) == batch_size:
            flush()
    flush()
    return preds


def targets_for_images(cfg: Config, keys_labels: dict, num_classes: int, predictions: dict | None = None) -> dict:
    """key → list of target classes, as the reference selects pairs. With `predictions` (error_visualisation):
    the misclassified images, each pushed to its true class."""
    from digin.tasks import pairs as P

    idx = {P.key_index(k): k for k in keys_labels}
    dataset = (cfg.dataset or "imagenet").lower()
    if predictions is not None:
        ks = [k for k in keys_labels if k in predictions]
        chosen = P.failure_mode_pairs([predictions[k] for k in ks], [keys_labels[k] for k in ks], ks)
    elif cfg.pairs == "explicit":
        rows = [(i, keys_labels[idx[i]], t) for i, t in cfg.explicit_pairs if i in idx]
        chosen = P.explicit_pairs(rows)
    elif cfg.pairs == "reference" and dataset == "imagenet":
        chosen = P.imagenet_uvce_pairs(available_keys=list(idx))
    elif cfg.pairs == "reference" and dataset in ("cub", "cars"):
        chosen = P.fine_grained_pairs(dataset, available_keys=list(idx))
    elif cfg.pairs in ("random", "reference"):  # food / flowers / any ImageFolder: random targets
        n = cfg.num_images or len(idx)
        chosen = P.random_pairs([(i, keys_labels[k]) for i, k in idx.items()], num_classes, n, cfg.seed)
    elif cfg.pairs == "all_classes":  # every other class (small label sets, demos)
        chosen = [P.Pair(i, keys_labels[k], t) for i, k in idx.items() for t in range(num_classes)
                  if t != keys_labels[k]]
    else:
        raise SystemExit(f"digin uvce: pairs must be reference, random, explicit or all_classes, got {cfg.pairs!r}")
    if cfg.num_images is not None and (cfg.pairs != "random" or predictions is not None):
        keep = set(P.subsample(sorted({p.index for p in chosen}), cfg.num_images, cfg.seed))
        chosen = [p for p in chosen if p.index in keep]
    out: dict = {}
    for p in chosen:
        out.setdefault(idx[p.index], []).append(int(p.target))
    return out


def label_words(label: str, cfg: Config) -> list[str]:
    words = cfg.foreground_words.get(label, label)
    return words.split() if isinstance(words, str) else list(words)


def make_process(sd, clf, cfg: Config, classes: list[str], targets_of: dict):
    from digin.tasks.edits import EditKind, make_edit_process

    def start_confidence(res, starts, targets):
        """Confidence in the start class for sd and ours: does the edit move away from it?"""
        with torch.no_grad():
            s_idx = torch.tensor(starts, device=res.sd_images.device)[:, None]
            return {name: clf(imgs)[:, 0].softmax(-1).gather(1, s_idx)[:, 0]
                    for name, imgs in (("start_conf_sd", res.sd_images), ("start_conf_ours", res.ours_images))}

    kind = EditKind(
        objective_target=lambda start, target: target,
        replacement=lambda start_words, start, target: (start_words, classes[target]),
        extra_metrics=lambda sample, start, target: {"start": start, "target": target, "start_label": classes[start],
                                                     "target_label": classes[target]},
        evaluate=start_confidence)
    return make_edit_process(sd, clf, cfg, classes, targets_of, lambda label: label_words(label, cfg), kind,
                             guidance_config(cfg), noise_scale_fn(cfg))


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
