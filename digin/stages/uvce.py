"""The UVCE stage's process: the edit of each (image, target) item with the start-class confidences, and in
failure mode (error_visualisation) the classifier's prediction of each image on the rank's own items (correctly
classified images are passed over)."""
from __future__ import annotations

import torch

from digin.stages.edits import EditArgs, EditKind, make_edit_process


def label_words(label: str, foreground_words: dict) -> list[str]:
    words = foreground_words.get(label, label)
    return words.split() if isinstance(words, str) else list(words)


def correctly_classified(clf):
    """skip hook: items whose image the classifier already gets right (non-augmented view), as the reference's
    failure mode keeps only the misclassified images."""

    def skip(samples, images_BCHW) -> dict:
        with torch.no_grad():
            pred = clf(images_BCHW)[:, 0].argmax(-1).tolist()
        return {j: "correctly_classified" for j, (s, p) in enumerate(zip(samples, pred))
                if int(p) == int(s["item"]["start"])}

    return skip


def make_process(sd, clf, edit: EditArgs, objective, guidance, settings, classes: list[str],
                 foreground_words: dict, error_visualisation: bool):
    """The UVCE edit process from its sections (stages.args) and the resolved compute settings."""
    def start_confidence(res, starts, targets):
        """Confidence in the start class for sd and ours: does the edit move away from it?"""
        with torch.no_grad():
            s_idx = torch.tensor(starts, device=res.sd_images.device)[:, None]
            return {name: clf(imgs)[:, 0].softmax(-1).gather(1, s_idx)[:, 0]
                    for name, imgs in (("start_conf_sd", res.sd_images), ("start_conf_ours", res.ours_images))}

    kind = EditKind(
        target_of=lambda item: item["target"],
        objective_target=lambda start, target: target,
        replacement=lambda start_words, start, target: (start_words, classes[target]),
        extra_metrics=lambda sample, start, target: {"start": start, "target": target, "start_label": classes[start],
                                                     "target_label": classes[target]},
        evaluate=start_confidence,
        skip=correctly_classified(clf) if error_visualisation else None)
    return make_edit_process(sd, clf, edit, objective, guidance, settings, classes,
                             lambda label: label_words(label, foreground_words), kind)
