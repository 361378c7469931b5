"""The classifier-difference stage's pieces: class names, the work items (class, start prompt, i) and the
process that optimises each batch from per-item start noise."""
from __future__ import annotations

import torch

from digin.engine.guidance import optimise
from digin.engine.objectives import Objective, check_loss, losses_for
from digin.errors import ConfigError
from digin.stages.pairs import class_names
from digin.stages.batching import latent_shape, start_noise
from digin.stages.models import guidance_config, noise_scale_fn, regularizer_models
from digin.stages.results import result_fields


def class_names_for(cfg) -> list[str]:
    if cfg.class_names:
        return list(cfg.class_names)
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
    if cfg.classifier2 and cfg.loss not in losses_for(classifiers=2):
        return "conf"
    return cfg.loss


def early_stopping_loss(cfg) -> float | None:
    """`early_stopping_confidence=c` as the threshold on the (augmented) loss the loop stops a sample at, read from
    the loss table (`objectives.LOSSES`): p(y) > c ⇔ −log p(y) < −log c (CE / log_conf / NLL, one classifier),
    −p(y) < −c (conf), and with two classifiers −p1(y) + p2(y) < −c (classifier1 surer than classifier2 by more
    than c). A loss without a confidence scale (two-classifier log_conf / logits, neuron and text losses), an unknown
    loss or a classifier count the loss does not take: ConfigError (the early-stopping one names the key)."""
    try:  # the loss and classifier count are checked even without early stopping (None then)
        return check_loss(effective_loss(cfg), 2 if cfg.classifier2 else 1, cfg.early_stopping_confidence)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def make_process(sd, classifiers: list, eval_clf, objective, guidance, settings, *, loss: str,
                 early_stopping_loss: float | None, resolution: int):
    """The diff process from its sections (ObjectiveArgs with `loss` the effective loss, GuidanceArgs) and the
    resolved compute settings."""
    gcfg = guidance_config(guidance, settings)
    regularizer_models(objective, sd.device)  # fail before the stage starts (e.g. no CLIP weights file), then cached
    if early_stopping_loss is not None:
        gcfg.optim_params.early_stopping_loss = early_stopping_loss
    noise_fn = noise_scale_fn(guidance)
    shape = latent_shape(sd, resolution)

    def process(batch):
        dev = batch.device
        items = [s["item"] for s in batch.samples]
        keys = list(batch.keys)
        z = start_noise(keys, guidance.seed, shape, dev)
        cond = sd.encode_text([it["prompt"] for it in items])
        uncond = sd.encode_text([""] * len(items))
        y = torch.tensor([it["class"] for it in items])
        obj = Objective(loss, classifiers, y, keys, loss_weight=objective.loss_weight,
                        regularizers=list(objective.regularizers), regularizers_ws=list(objective.regularizers_ws),
                        noise_scale_fn=noise_fn, **regularizer_models(objective, dev))
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
