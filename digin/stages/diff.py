"""The classifier-difference stage's pieces: class names, the work items (class, start prompt, i) and the
process that optimises each batch from per-item start noise."""
from __future__ import annotations

import math

import torch

from digin.errors import ConfigError
from digin.stages.batching import latent_shape, start_noise
from digin.stages.models import guidance_config, noise_scale_fn, regularizer_models
from digin.stages.results import result_fields


def class_names_for(cfg) -> list[str]:
    if cfg.class_names:
        return list(cfg.class_names)
    from digin.stages.pairs import class_names

    return class_names(cfg.dataset)


def work_items(cfg, classes: list[str]) -> list[tuple[str, dict]]:
    targets = list(range(len(classes))) if cfg.target_classes is None else [int(c) for c in cfg.target_classes]
    for j, p in enumerate(cfg.prompts):
        if not isinstance(p, str) or not p.strip():
            raise SystemExit(f"digin diff: prompts[{j}] must be a non-empty string, got {p!r}")
    items = []
    for c in targets:
        if not 0 <= c < len(classes):
            raise SystemExit(f"digin diff: target class {c} outside 0..{len(classes) - 1}")
        starts = ([(f"diff/c{c:05d}/p{j:04d}", {"prompt": p, "prompt_index": j}) for j, p in enumerate(cfg.prompts)]
                  or [(f"diff/c{c:05d}", {"prompt": f"{cfg.prompt_template} {classes[c]}"})])
        for stem, start in starts:
            for i in range(cfg.num_images):
                items.append((f"{stem}/i{i:04d}", {"class": c, "i": i, "label": classes[c], **start}))
    return items


def effective_loss(cfg) -> str:
    """The loss the stage optimises: with classifier2, `conf` unless `loss` names another two-classifier loss."""
    from digin.engine.objectives import TWO_CLASSIFIER_LOSSES

    if cfg.classifier2 and cfg.loss not in TWO_CLASSIFIER_LOSSES:
        return "conf"
    return cfg.loss


def early_stopping_loss(cfg) -> float | None:
    """`early_stopping_confidence=c` as the threshold on the (augmented) loss the loop stops a sample at:
    p(y) > c ⇔ −log p(y) < −log c (CE / log_conf / NLL, one classifier), −p(y) < −c (conf), and with two
    classifiers −p1(y) + p2(y) < −c (classifier1 surer than classifier2 by more than c). Two-classifier log_conf /
    logits have no confidence scale: ConfigError naming the key."""
    c = cfg.early_stopping_confidence
    if c is None:
        return None
    loss = effective_loss(cfg)
    if loss == "conf":
        return -float(c)
    if cfg.classifier2:
        raise ConfigError(f"early_stopping_confidence={c!r} needs loss=conf with classifier2 (loss={loss} has no "
                          f"confidence scale; set optim_params.early_stopping_loss instead)")
    return -math.log(c)


def make_process(sd, classifiers: list, eval_clf, cfg):
    from digin.engine.guidance import optimise
    from digin.engine.objectives import Objective

    gcfg = guidance_config(cfg)
    regularizer_models(cfg, sd.device)  # fail before the stage starts (e.g. no CLIP weights file), then cached
    if cfg.early_stopping_confidence is not None:
        gcfg.optim_params.early_stopping_loss = early_stopping_loss(cfg)
    loss = effective_loss(cfg)
    noise_fn = noise_scale_fn(cfg)
    shape = latent_shape(sd, cfg.resolution)

    def process(batch):
        dev = batch.device
        items = [s["item"] for s in batch.samples]
        keys = list(batch.keys)
        z = start_noise(keys, cfg.seed, shape, dev)
        cond = sd.encode_text([it["prompt"] for it in items])
        uncond = sd.encode_text([""] * len(items))
        y = torch.tensor([it["class"] for it in items])
        obj = Objective(loss, classifiers, y, keys, loss_weight=cfg.loss_weight, regularizers=list(cfg.regularizers),
                        regularizers_ws=list(cfg.regularizers_ws), noise_scale_fn=noise_fn,
                        **regularizer_models(cfg, dev))
        res = optimise(sd, obj, z_T=z, cond=cond, uncond=uncond, cfg=gcfg)
        evals = {}
        if eval_clf is not None:
            with torch.no_grad():
                for name, imgs in (("eval_conf_sd", res.sd_images), ("eval_conf_ours", res.ours_images)):
                    evals[name] = eval_clf(imgs)[:, 0].softmax(-1).gather(1, y[:, None].to(dev))[:, 0].cpu()
        outs = []
        for b in range(batch.n_real):
            it = items[b]
            extra = {"class": it["class"], "label": it["label"], "i": it["i"], "prompt": it["prompt"],
                     "start": it["class"], "group": f"{it['class']}_{it['label']}", "loss_name": loss,
                     "classifiers": [c.name for c in classifiers]}
            if it.get("prompt_index") is not None:  # prompts=[...]: which start prompt
                extra["prompt_index"] = it["prompt_index"]
            extra.update({k: float(v[b]) for k, v in evals.items()})
            outs.append(result_fields(res, b, extra_metrics=extra))
        return outs

    return process
