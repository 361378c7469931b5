"""Classifier differences: text-to-image guided so that one classifier is sure of a class and another is not
(REFERENCE §1.3, §7).

  digin diff out=runs/diff model_path=/models/sd-1.4 classifier1=madry:/ckpt/madry_l2.pt \
      classifier2=vit_base_patch16_224 classifier2_checkpoint=/ckpt/vit.safetensors target_classes=[1,2,3] num_images=10

Work items are (class, i) pairs written as a work-list shard set (`<out>/worklist`), so the run is split over
ranks, resumable and exactly-once like every stage; results go to `<out>/results`. Prompt "{prompt_template}
{label}", or with `prompts=[...]` every target class starts from each of those prompts (e.g. scenes of other
classes: which change makes classifier1 see the target where classifier2 does not?); start noise per (class, i)
from `seed` (no giant pre-allocated table); with classifier2 the loss is
the two-classifier `conf` (−p1(y) + p2(y)) unless `loss` names another two-classifier loss (log_conf, logits).
Unlike the reference, `regularizers` are applied when given (the reference parses and ignores them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from digin.tasks.common import (CommonArgs, guidance_config, latent_shape, load_classifier_for, load_sd_for,
                                noise_scale_fn, pick_device, regularizer_models, result_fields, stage_compute, stage_config_of,
                                start_noise, tracking_for, write_worklist)


@dataclass
class Config(CommonArgs):
    out: str = "???"
    classifier1: str = "vit_large_patch16_224"
    classifier1_checkpoint: Optional[str] = None
    classifier2: Optional[str] = None
    classifier2_checkpoint: Optional[str] = None
    eval_classifier: Optional[str] = None  # independent classifier, evaluated only
    eval_classifier_checkpoint: Optional[str] = None
    dataset: str = "imagenet"  # class-name table: imagenet | cub | cars | food101 | flowers102
    class_names: list = field(default_factory=list)  # overrides the table (e.g. a toy world's labels)
    prompt_template: str = "a photograph of a"
    # explicit start prompts instead of "<prompt_template> <label>": each target class gets num_images images per
    # prompt (keys diff/c<class>/p<prompt>/i<image>)
    prompts: list = field(default_factory=list)
    target_classes: Optional[list] = None  # None → all classes
    num_images: int = 10
    loss: str = "CE"  # with classifier2: conf unless log_conf / logits
    loss_weight: float = 1.0
    regularizers: list = field(default_factory=list)
    regularizers_ws: list = field(default_factory=list)
    early_stopping_confidence: Optional[float] = None  # stop once classifier1's p(y) exceeds it (one classifier)


def class_names_for(cfg: Config) -> list[str]:
    if cfg.class_names:
        return list(cfg.class_names)
    from digin.tasks.pairs import class_names

    return class_names(cfg.dataset)


def work_items(cfg: Config, classes: list[str]) -> list[tuple[str, dict]]:
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


def make_process(sd, classifiers: list, eval_clf, cfg: Config):
    from digin.engine.guidance import optimise
    from digin.engine.objectives import Objective

    gcfg = guidance_config(cfg)
    regularizer_models(cfg, sd.device)  # fail before the stage starts (e.g. no CLIP weights file), then cached
    if cfg.early_stopping_confidence is not None:
        # p(y) > c  ⇔  CE < −log c (the loop's early stopping acts on the augmented loss)
        import math

        gcfg.optim_params.early_stopping_loss = -math.log(cfg.early_stopping_confidence)
    loss = cfg.loss
    if len(classifiers) == 2 and loss not in ("conf", "log_conf", "logits"):
        loss = "conf"
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


def stage_config(cfg: Config) -> dict:
    return stage_config_of(cfg, "diff")


def run(cfg: Config):
    from digin.shards.runner import run_stage

    dev = pick_device(cfg)
    settings = stage_compute(cfg, dev)
    classes = class_names_for(cfg)
    out = Path(cfg.out)
    wl = write_worklist(out / "worklist", "diff", work_items(cfg, classes), per_shard=max(cfg.batch_size * 4, 1),
                        meta={"classes": classes})
    clfs = [load_classifier_for(cfg.classifier1, cfg, dev, checkpoint=cfg.classifier1_checkpoint, settings=settings)]
    if cfg.classifier2:
        clfs.append(load_classifier_for(cfg.classifier2, cfg, dev, checkpoint=cfg.classifier2_checkpoint,
                                        settings=settings))
    eval_clf = (load_classifier_for(cfg.eval_classifier, cfg, dev, checkpoint=cfg.eval_classifier_checkpoint,
                                    cutouts=False, settings=settings) if cfg.eval_classifier else None)
    sd = load_sd_for(cfg, dev, settings)
    summary = run_stage(wl, out / "results", make_process(sd, clfs, eval_clf, cfg), cfg.batch_size,
                        stage_config(cfg), name="diff", required=("item",), num_workers=cfg.num_workers,
                        force=cfg.force, device=dev, progress=cfg.progress, tracking=tracking_for(cfg))
    return summary.exit_code
