"""Neuron counterfactuals of real images (the reference's imagenet_neuron_counterfactuals.py).

For each (class c, neuron n) pair, every inverted image of class c (or a seeded subset) is edited to raise
(`neuron_activation`) or lower (`neg_neuron_activation`) neuron n: z_T and the null texts come from the
inversion, the prompt is the stored caption, Prompt-to-Prompt replaces the label words by themselves (identity:
keeps the layout through the injected cross-attention, xa schedule 'threshold_0.0_0.3') and a foreground mask
blend ('threshold_0.3') keeps the object, so the change lands where the neuron looks beyond the object.
A work item is one (image, neuron) of the pairs (digin.stages.plans.counterfactual_plan); output per item like
uvce, key `<image key>/n<neuron>`: `orig`, `mask`, `recon`, `attention`, `sd`, `ours`, `metrics` (with `neuron`,
`start`, `i`), `latents` — the gallery groups them `<class>_neuron_<n>`.
"""
from __future__ import annotations

from digin.fields import section_of
from digin.stages.args import GuidanceArgs, ObjectiveArgs
from digin.stages.edits import EditArgs, EditKind, make_edit_process
from digin.stages.pairs import default_pairs, neurons_per_key  # noqa: F401  (part of this module's API)
from digin.stages.pairs import key_index, load_table


def neurons_table() -> dict:
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


def make_process(sd, clf, cfg, classes: list[str], settings):
    """The counterfactual edit process of a CounterfactualsConfig (its edit, objective and guidance sections)."""
    kind = EditKind(
        target_of=lambda item: item["neuron"],
        objective_target=lambda start, neuron: [start, neuron],
        replacement=lambda start_words, start, neuron: (start_words, start_words),  # identity: keep the layout
        extra_metrics=lambda sample, start, neuron: {
            "task": "neuron_cf", "neuron": neuron, "start": start, "start_label": short_label(classes[start]),
            "i": key_index(sample["__input_key__"]), "loss_name": cfg.loss})
    return make_edit_process(sd, clf, section_of(cfg, EditArgs), section_of(cfg, ObjectiveArgs),
                             section_of(cfg, GuidanceArgs), settings, classes,
                             lambda label: label_words(label, cfg.foreground_words), kind)
