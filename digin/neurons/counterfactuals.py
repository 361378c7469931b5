"""Neuron counterfactuals of real images (the reference's imagenet_neuron_counterfactuals.py).

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



def neurons_table() -> dict:
    from digin.stages.pairs import load_table

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
    from digin.stages.edits import EditKind, make_edit_process
    from digin.stages.pairs import key_index

    kind = EditKind(
        objective_target=lambda start, neuron: [start, neuron],
        replacement=lambda start_words, start, neuron: (start_words, start_words),  # identity: keep the layout
        extra_metrics=lambda sample, start, neuron: {
            "task": "neuron_cf", "neuron": neuron, "start": start, "start_label": short_label(classes[start]),
            "i": key_index(sample["__key__"]), "loss_name": cfg.loss})
    return make_edit_process(sd, clf, cfg, classes, neurons_of, lambda label: label_words(label, cfg.foreground_words),
                             kind, gcfg, noise_fn)
