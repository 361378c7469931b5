"""The UVCE stage's pieces: the classifier's predictions (failure mode), the target classes of each image (the
reference's pair selection) and the edit process with the start-class confidences."""
from __future__ import annotations

import numpy as np
import torch

from digin.stages.models import guidance_config, noise_scale_fn


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


def targets_for_images(cfg, keys_labels: dict, num_classes: int, predictions: dict | None = None) -> dict:
    """key → list of target classes, as the reference selects pairs. With `predictions` (error_visualisation):
    the misclassified images, each pushed to its true class."""
    from digin.stages import pairs as P

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


def label_words(label: str, cfg) -> list[str]:
    words = cfg.foreground_words.get(label, label)
    return words.split() if isinstance(words, str) else list(words)


def make_process(sd, clf, cfg, classes: list[str], targets_of: dict):
    from digin.stages.edits import EditKind, make_edit_process

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
