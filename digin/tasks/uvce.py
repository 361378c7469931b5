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

import torch

from digin.engine.edit import MaskBlendParams, P2PParams
from digin.engine.segment import SegmentationConfig
from digin.tasks.common import (CommonArgs, fixed_chunks, guidance_config, load_classifier_for, load_sd_for,
                                mask_uint8, noise_scale_fn, pick_device, result_fields, to_uint8)


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


def targets_for_images(cfg: Config, keys_labels: dict, num_classes: int, classifier=None, images=None) -> dict:
    """key → list of target classes, as the reference selects pairs."""
    from digin.tasks import pairs as P

    idx = {P.key_index(k): k for k in keys_labels}
    dataset = (cfg.dataset or "imagenet").lower()
    if cfg.pairs == "explicit":
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
    if cfg.num_images is not None and cfg.pairs != "random":
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
    from digin.engine.edit import prepare_edit
    from digin.engine.guidance import optimise
    from digin.engine.objectives import Objective

    gcfg = guidance_config(cfg)
    noise_fn = noise_scale_fn(cfg)

    def run_pairs(rows, n_real, dev):
        """rows: (sample, image (3,H,W), target) padded to the batch size → per-row result dicts."""
        B = len(rows)
        z = torch.stack([r[0]["inversion"]["z_T"] for r in rows]).to(dev)
        null = torch.stack([r[0]["inversion"]["null_texts"] for r in rows]).to(dev)
        imgs = torch.stack([r[1] for r in rows]).to(dev)
        starts = [int(r[0]["meta"]["label"]) for r in rows]
        tgts = [r[2] for r in rows]
        prompts = [r[0]["prompt"] for r in rows]
        keys = [f"{r[0]['__key__']}/t{r[2]}" for r in rows]
        fg = [label_words(classes[s], cfg) for s in starts]
        repl = [(" ".join(label_words(classes[s], cfg)), classes[t]) for s, t in zip(starts, tgts)]
        obj = Objective(cfg.loss, [clf], torch.tensor(tgts), keys, loss_weight=cfg.loss_weight,
                        regularizers=list(cfg.regularizers), regularizers_ws=list(cfg.regularizers_ws),
                        noise_scale_fn=noise_fn)
        setup = prepare_edit(sd, obj, z_T=z, uncond=null, prompts=prompts, foreground_words=fg,
                             guidance_scale=cfg.guidance_scale, num_ddim_steps=cfg.num_ddim_steps,
                             replacements=repl if cfg.p2p.do_p2p else None, images=imgs, p2p=cfg.p2p,
                             blend=cfg.mask_blend, segmentation=cfg.segmentation)
        try:
            res = optimise(sd, obj, z_T=z, cond=setup.cond, uncond=null, cfg=gcfg, blend=setup.blend,
                           controller=setup.controller)
        finally:
            setup.close(sd)
        with torch.no_grad():  # confidence in the start class: does the edit move away from it?
            s_idx = torch.tensor(starts, device=dev)[:, None]
            start_conf = {name: clf(imgs)[:, 0].softmax(-1).gather(1, s_idx)[:, 0]
                          for name, imgs in (("start_conf_sd", res.sd_images), ("start_conf_ours", res.ours_images))}
        outs = []
        for b in range(n_real):
            extra = {"start": starts[b], "target": tgts[b], "start_label": classes[starts[b]],
                     "target_label": classes[tgts[b]], "prompt": prompts[b], "edited_prompt": setup.prompts[b],
                     "schedule": list(setup.chosen[b]),
                     **{k: float(v[b]) for k, v in start_conf.items()}}
            outs.append({"fields": result_fields(res, b, prefix=f"t{tgts[b]}_", extra_metrics=extra),
                         "mask": setup.px_mask[b] if setup.px_mask is not None else None,
                         "recon": setup.initial_images[b]})
        return outs

    def process(batch):
        dev = batch.device
        images = batch.images.to(dev).float() / 255.0
        rows = []
        for j in range(batch.n_real):
            s = batch.samples[j]
            if "caption" in s and isinstance(s.get("caption"), str):
                s["prompt"] = s["caption"]
            label = classes[int(s["meta"]["label"])]
            if not all(w.lower() in s["prompt"].lower().split() for w in label_words(label, cfg)):
                rows.append(None)  # the reference skips captions without the label (P2P needs it)
                continue
            for t in targets_of.get(s["__key__"], []):
                rows.append((s, images[j], t))
        results: dict = {}
        real = [r for r in rows if r is not None]
        for chunk, n in fixed_chunks(real, cfg.batch_size) if real else []:
            for r, o in zip(chunk[:n], run_pairs(chunk, n, dev)):
                results.setdefault(r[0]["__key__"], []).append((r[2], o))
        outs = []
        for j in range(batch.n_real):
            s = batch.samples[j]
            key = s["__key__"]
            label = classes[int(s["meta"]["label"])]
            if key not in results:
                why = "label_not_in_caption" if key in targets_of else "no_pairs"
                outs.append({"__reject__": why})
                continue
            fields = {"orig": to_uint8(images[j])}
            info = {"targets": [], "start": int(s["meta"]["label"]), "start_label": label, "prompt": s["prompt"]}
            for t, o in results[key]:
                fields.update(o["fields"])
                info["targets"].append(t)
                if o["mask"] is not None:
                    fields["mask"] = mask_uint8(o["mask"])
                fields["recon"] = to_uint8(o["recon"])
            fields["pairs"] = info
            outs.append(fields)
        return outs

    return process


def stage_config(cfg: Config) -> dict:
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    for k in ("images", "inversions", "out", "device", "num_workers", "force", "progress"):
        d.pop(k, None)
    return {"stage": "uvce", **d}


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
                   if "__reject__" not in s} if cfg.pairs != "failure" else {}
    dev = pick_device(cfg)
    clf = load_classifier_for(cfg.classifier, cfg, dev, checkpoint=cfg.classifier_checkpoint)
    targets_of = targets_for_images(cfg, keys_labels, len(classes))
    sd = load_sd_for(cfg, dev)
    summary = run_stage([images, invs], cfg.out, make_process(sd, clf, cfg, classes, targets_of),
                        cfg.batch_size, stage_config(cfg), name="uvce", resolution=cfg.resolution,
                        required=("image", "meta", "inversion", "prompt"), num_workers=cfg.num_workers,
                        force=cfg.force, device=dev, progress=cfg.progress)
    return summary.exit_code
