"""Neuron counterfactuals of real images (REFERENCE §6, imagenet_neuron_counterfactuals.py).

For each (class c, neuron n) pair, every inverted image of class c (or a seeded subset) is edited to raise
(`neuron_activation`) or lower (`neg_neuron_activation`) neuron n: z_T and the null texts come from the
inversion, the prompt is the stored caption, Prompt-to-Prompt replaces the label words by themselves (identity:
keeps the layout through the injected cross-attention, xa schedule 'threshold_0.0_0.3') and a foreground mask
blend ('threshold_0.3') keeps the object, so the change lands where the neuron looks beyond the object.
Output per image like uvce: `orig`, `mask`, `recon`, and per neuron n `t<n>_sd`, `t<n>_ours`, `t<n>_metrics`
(with `neuron`, `start`, `i`), `t<n>_latents`, plus `pairs.json` {targets: [neurons], ...} — the gallery's
`expand_targets` turns each into a record keyed `<image key>/t<n>`, grouped `<class>_neuron_<n>`.
"""
from __future__ import annotations

import random

import torch

from digin.tasks.common import fixed_chunks, mask_uint8, result_fields, to_uint8


def neurons_table() -> dict:
    from digin.tasks.pairs import load_table

    return load_table("neurons")


def short_label(label: str) -> str:
    """ImageNet synonym lists → the first name ('great white shark, white shark, …' → 'great white shark')."""
    return str(label).split(",")[0].strip()


def label_words(label: str, overrides: dict) -> list[str]:
    """Foreground words of a class: config override, else the reference's replacement table, else the label."""
    name = short_label(label)
    words = overrides.get(name) or overrides.get(label) or neurons_table()["foreground_word_replacements"].get(name,
                                                                                                             name)
    return words.split() if isinstance(words, str) else list(words)


def default_pairs() -> list[tuple[int, int]]:
    return [(int(c), int(n)) for c, n in neurons_table()["madry_l2_class_neuron_pairs"]]


def neurons_per_key(pairs, keys_labels: dict, num_images: int | None, seed: int) -> dict[str, list[int]]:
    """key → neurons to edit it for: all images of the pair's class, or `num_images` of them (seeded, per pair)."""
    by_class: dict[int, list[str]] = {}
    for k, y in sorted(keys_labels.items()):
        by_class.setdefault(int(y), []).append(k)
    out: dict[str, list[int]] = {}
    for c, n in pairs:
        keys = by_class.get(int(c), [])
        if num_images is not None and len(keys) > num_images:
            keys = sorted(random.Random(f"{seed}|{c}|{n}").sample(keys, num_images))
        for k in keys:
            if int(n) not in out.setdefault(k, []):
                out[k].append(int(n))
    return out


def make_process(sd, clf, cfg, classes: list[str], neurons_of: dict, gcfg, noise_fn):
    from digin.engine.edit import prepare_edit
    from digin.engine.guidance import optimise
    from digin.engine.objectives import Objective
    from digin.tasks.pairs import key_index

    def run_rows(rows, n_real, dev):
        """rows: (sample, image (3,H,W), neuron), padded to the batch size → per-row outputs."""
        z = torch.stack([r[0]["inversion"]["z_T"] for r in rows]).to(dev)
        null = torch.stack([r[0]["inversion"]["null_texts"] for r in rows]).to(dev)
        imgs = torch.stack([r[1] for r in rows]).to(dev)
        starts = [int(r[0]["meta"]["label"]) for r in rows]
        neurons = [r[2] for r in rows]
        prompts = [r[0]["prompt"] for r in rows]
        keys = [f"{r[0]['__key__']}/t{r[2]}" for r in rows]
        fg = [label_words(classes[s], cfg.foreground_words) for s in starts]
        identity = [(" ".join(w), " ".join(w)) for w in fg]
        obj = Objective(cfg.loss, [clf], torch.tensor([[s, n] for s, n in zip(starts, neurons)]), keys,
                        loss_weight=cfg.loss_weight, regularizers=list(cfg.regularizers),
                        regularizers_ws=list(cfg.regularizers_ws), noise_scale_fn=noise_fn)
        setup = prepare_edit(sd, obj, z_T=z, uncond=null, prompts=prompts, foreground_words=fg,
                             guidance_scale=cfg.guidance_scale, num_ddim_steps=cfg.num_ddim_steps,
                             replacements=identity if cfg.p2p.do_p2p else None, images=imgs, p2p=cfg.p2p,
                             blend=cfg.mask_blend, segmentation=cfg.segmentation)
        try:
            res = optimise(sd, obj, z_T=z, cond=setup.cond, uncond=null, cfg=gcfg, blend=setup.blend,
                           controller=setup.controller)
        finally:
            setup.close(sd)
        outs = []
        for b in range(n_real):
            key = rows[b][0]["__key__"]
            extra = {"task": "neuron_cf", "neuron": neurons[b], "start": starts[b],
                     "start_label": short_label(classes[starts[b]]), "i": key_index(key), "prompt": prompts[b],
                     "loss_name": cfg.loss, "schedule": list(setup.chosen[b])}
            outs.append({"fields": result_fields(res, b, prefix=f"t{neurons[b]}_", extra_metrics=extra),
                         "mask": setup.px_mask[b] if setup.px_mask is not None else None,
                         "recon": setup.initial_images[b]})
        return outs

    def process(batch):
        dev = batch.device
        images = batch.images.to(dev).float() / 255.0
        rows, skipped = [], set()
        for j in range(batch.n_real):
            s = batch.samples[j]
            if isinstance(s.get("caption"), str):
                s["prompt"] = s["caption"]
            words = label_words(classes[int(s["meta"]["label"])], cfg.foreground_words)
            if s["__key__"] in neurons_of and not all(w.lower() in s["prompt"].lower().split() for w in words):
                skipped.add(s["__key__"])  # P2P and the mask need the label words in the prompt
                continue
            rows += [(s, images[j], n) for n in neurons_of.get(s["__key__"], [])]
        results: dict = {}
        for chunk, n in fixed_chunks(rows, cfg.batch_size) if rows else []:
            for r, o in zip(chunk[:n], run_rows(chunk, n, dev)):
                results.setdefault(r[0]["__key__"], []).append((r[2], o))
        outs = []
        for j in range(batch.n_real):
            s = batch.samples[j]
            key = s["__key__"]
            if key not in results:
                outs.append({"__reject__": "label_not_in_caption" if key in skipped else "no_pairs"})
                continue
            start = int(s["meta"]["label"])
            fields = {"orig": to_uint8(images[j])}
            info = {"targets": [], "neurons": [], "start": start, "start_label": short_label(classes[start]),
                    "prompt": s["prompt"]}
            for n, o in results[key]:
                fields.update(o["fields"])
                info["targets"].append(n)
                info["neurons"].append(n)
                if o["mask"] is not None:
                    fields["mask"] = mask_uint8(o["mask"])
                fields["recon"] = to_uint8(o["recon"])
            fields["pairs"] = info
            outs.append(fields)
        return outs

    return process
