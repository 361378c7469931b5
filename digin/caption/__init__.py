"""Captioning and VLM naming (the reference's open_flamingo_*.py, cog_caption_imagenet.py and the CogAgent neuron
stage 1): per-image captions that contain the class label, and object lists for neuron word search. Backends:
template, open_flamingo, hf. See README_section.md for the commands."""
from __future__ import annotations

from digin.caption.backends import get_captioner, to_images_BCHW
from digin.caption.labels import clean_caption, contains_label, enforce_label
from digin.caption.objects import OBJECT_QUESTION, count_words, parse_object_list
from digin.caption.templates import TEMPLATES, label_of, template_for
from digin.shards.runner import is_oom

__all__ = ["OBJECT_QUESTION", "TEMPLATES", "ask_objects", "caption_images", "clean_caption", "contains_label",
           "count_words", "enforce_label", "label_of", "parse_object_list", "template_for"]


def ask_objects(images, backend: str = "hf", question: str = OBJECT_QUESTION, captioner=None, batch_size: int = 8,
                resolution: int | None = None, **cfg) -> list[str]:
    """One raw answer per image to the reference's object question (parse with `parse_object_list`).

    images: uint8 (B,3,H,W) tensor or a list of PIL images / uint8 HWC arrays / paths. backend + cfg as in
    `digin.caption.backends.load_captioner` (e.g. backend="hf", model_path=..., device="cuda"); the model is
    loaded once per process. `captioner`: an already loaded one (skips loading)."""
    cap = captioner if captioner is not None else get_captioner(backend, **cfg)
    x = to_images_BCHW(images, resolution)
    out: list[str] = []
    for i in range(0, x.shape[0], batch_size):
        out += cap.ask(x[i:i + batch_size], question)
    return out


def caption_images(images, labels, backend: str = "template", template: str | None = None, dataset: str | None = None,
                   captioner=None, on_error: str = "raise", **cfg) -> list[tuple[str, dict]]:
    """(caption, info) per image with the label rule applied: info = {backend, fallback: reason or None, raw,
    label}. on_error="fallback" turns a failed generation into template captions with reason backend_error:...
    (out-of-memory errors always propagate, so the shard runner can halve the batch)."""
    cap = captioner if captioner is not None else get_captioner(backend, dataset=dataset, template=template, **cfg)
    tpl = template_for(dataset, template)
    x = to_images_BCHW(images, cfg.get("resolution")) if images is not None else None
    try:
        raws, err = cap.caption(x, list(labels)), None
    except Exception as e:
        if on_error != "fallback" or is_oom(e):
            raise
        raws, err = [None] * len(labels), f"backend_error:{type(e).__name__}: {str(e)[:200]}"
    out = []
    for raw, lab in zip(raws, labels):
        final, reason = enforce_label(raw, lab, tpl)
        out.append((final, {"backend": cap.name, "fallback": err or reason, "raw": raw, "label": lab}))
    return out
