"""Spurious-feature visualisation of (class, neuron) pairs (the reference's imagenet_neuron_activation.py).

txt2img: start noise per (class, i), prompt "<prompt_template> <label>", loss `neuron_activation` on the pair's
neuron, and a foreground mask blend ('threshold_0.3', foreground_blend) that keeps the object the prompt names and
lets only the rest change — so what the neuron adds lands outside the object: its spurious feature. No
Prompt-to-Prompt (the reference passes none). One work item per (class, neuron, i), key
`spurious/c<class>_n<neuron>/i<i>`; output like the other guided stages plus the foreground `mask` and the
per-word `attention` maps of the initial pass.

The start noise is keyed by (class, i), not by the neuron: like the reference's latent table indexed
[class, i], the pairs of one class start from the same images, so their results differ only by the neuron.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from digin.engine.classifiers.imagenet import imagenet_class_names
from digin.engine.edit import check_learnable, prepare_edit
from digin.engine.guidance import optimise
from digin.engine.objectives import Objective
from digin.fields import section_of
from digin.shards.runner import StageSpec
from digin.stages.args import ModelArgs, record
from digin.stages.batching import latent_shape, start_noise
from digin.stages.models import guidance_config, load_sd_for, noise_scale_fn, pick_device, regularizer_models
from digin.stages.neurons.counterfactuals import default_pairs, label_words, short_label
from digin.stages.neurons.modes import _classifier, check_neurons
from digin.stages.neurons.search import word_prompt
from digin.stages.plans import listed_plan, run_or_show
from digin.stages.results import mask_uint8, result_fields, word_tiles


def item_key(c: int, n: int, i: int) -> str:
    return f"spurious/c{c}_n{n}/i{i}"


def noise_key(c: int, i: int) -> str:
    """Seed key of the start noise: shared by every neuron of a class (the reference's latents[class, i])."""
    return f"spurious/c{c}/i{i}"


def read_pairs(spec) -> list[tuple[int, int]]:
    """`pairs=[[class, neuron], ...]` or a JSON file of the same list (the reference's spurious_class_neuron_pairs.pth
    is not in its repository; a pickle is never read). [] → the reference's 14 Madry-L2 pairs."""
    if isinstance(spec, str):
        try:
            spec = json.loads(Path(spec).read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"digin neurons: pairs={spec}: cannot read a JSON list of [class, neuron] ({e})") from None
    if not spec:
        return default_pairs()
    try:
        pairs = [(int(c), int(n)) for c, n in spec]
    except (TypeError, ValueError):
        raise SystemExit(f"digin neurons: pairs must be [[class, neuron], ...], got {spec!r}") from None
    return list(dict.fromkeys(pairs))


def class_names(cfg) -> list[str]:
    """`class_names=[...]`, else the ImageNet names (first synonym), as the reference's IDX2NAME."""
    if cfg.class_names:
        return [str(c) for c in cfg.class_names]

    return imagenet_class_names()


def spurious_items(pairs, names: list[str], template: str, num_images: int) -> list[tuple[str, dict]]:
    bad = [(c, n) for c, n in pairs if not 0 <= c < len(names)]
    if bad:
        raise SystemExit(f"digin neurons mode=spurious: pairs: class {bad[0][0]} of pair {list(bad[0])} is outside "
                         f"the {len(names)} class names (0..{len(names) - 1}); give class_names=[...]")

    return [(item_key(c, n, i), {"class": c, "neuron": n, "i": i, "label": short_label(names[c]),
                                 "prompt": word_prompt(template, short_label(names[c]))})
            for c, n in pairs for i in range(num_images)]


def make_process(sd, clf, cfg, settings):
    """runner.run_stage process over the (class, neuron, i) items → sd / ours / mask / attention / metrics. `cfg`:
    the SpuriousConfig; `settings`: the resolved compute."""
    gcfg, noise_fn = guidance_config(cfg, settings), noise_scale_fn(cfg)

    def process(batch):
        dev = batch.device
        items = [s["item"] for s in batch.samples]  # padded to the batch size by the runner
        keys = list(batch.keys)  # item keys: per-item cutout / noise streams
        z = start_noise([noise_key(it["class"], it["i"]) for it in items], cfg.seed,
                        latent_shape(sd, cfg.resolution), dev)
        uncond = sd.encode_text([""] * len(items))
        targets = torch.tensor([[it["class"], it["neuron"]] for it in items])
        obj = Objective(cfg.loss, [clf], targets, keys, loss_weight=cfg.loss_weight,
                        regularizers=list(cfg.regularizers), regularizers_ws=list(cfg.regularizers_ws),
                        noise_scale_fn=noise_fn, **regularizer_models(cfg, dev))
        fg = [label_words(it["label"], cfg.foreground_words) for it in items]
        setup = prepare_edit(sd, obj, z_T=z, uncond=uncond, prompts=[it["prompt"] for it in items],
                             foreground_words=fg, guidance_scale=cfg.guidance_scale,
                             num_ddim_steps=cfg.num_ddim_steps, replacements=None, images=None, p2p=None,
                             blend=cfg.mask_blend, segmentation=cfg.segmentation, solver=cfg.solver,
                             guidance_rescale=cfg.guidance_rescale)
        try:
            res = optimise(sd, setup.objective, z_T=z, cond=setup.cond, uncond=uncond, cfg=gcfg, blend=setup.blend,
                           controller=setup.controller)
        finally:
            setup.close(sd)
        outs = []
        for b in range(batch.n_real):
            it = items[b]
            extra = {"task": "neuron_spurious", "neuron": it["neuron"], "class": it["class"], "label": it["label"],
                     "i": it["i"], "prompt": it["prompt"], "group": f"{it['class']}_neuron_{it['neuron']}",
                     "loss_name": cfg.loss, "foreground_words": fg[b], "schedule": list(setup.chosen[b])}
            words = setup.word_maps[b] if setup.word_maps else None
            if words:
                extra["attention_words"] = list(words)
            if res.schedules:
                extra["learned_schedules"] = {k: v[b].detach().float().cpu().tolist() for k, v in res.schedules.items()}
            fields = result_fields(res, b, extra_metrics=extra)
            if setup.px_mask is not None:
                fields["mask"] = mask_uint8(setup.px_mask[b])
            if words:
                fields["attention"] = word_tiles(words, cfg.resolution)
            outs.append(fields)
        return outs

    return process


def spurious_spec(cfg, settings):
    """The work plan and the record of what changes the results; every input check (pairs, classes, loss, learnable
    schedule keys) happens here, before anything is loaded or written."""
    check_learnable(cfg.p2p, cfg.mask_blend, use_p2p=False)  # no Prompt-to-Prompt here: no attention schedule
    pairs = read_pairs(cfg.pairs_file or list(cfg.pairs))
    items = spurious_items(pairs, class_names(cfg), cfg.prompt_template, cfg.num_images)
    stage = record(cfg, "neurons_spurious", settings, pairs=[list(p) for p in pairs])
    plan = listed_plan("neurons", cfg, items, {"pairs": len(pairs), "items": len(items)})
    return StageSpec("neuron_spurious", plan, stage, required=("item",)), pairs


def run_spurious(cfg, settings) -> int:
    dev = pick_device(cfg.device)
    spec, pairs = spurious_spec(cfg, settings)

    def load():
        clf = _classifier(cfg, dev, settings, cutouts=True)
        check_neurons(pairs, clf, dev)  # unknown neurons: one line, before the stage writes anything
        sd = load_sd_for(section_of(cfg, ModelArgs), dev, settings)
        return make_process(sd, clf, cfg, settings)

    return run_or_show(cfg, spec, load, settings, out=str(Path(cfg.out) / "spurious"), device=dev)
