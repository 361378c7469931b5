"""What the pages call things: readable labels, units and definitions for metrics.json fields and `digin eval`
columns (never raw keys), class and group names from labels (with the index), and page file names.

Definitions come from the output reference (digin/stages/outputs.py), which the gallery task hands in as
`reference`: {task: {field: meaning}} (the gallery sits below the stages and does not import it). A field the
reference does not know still gets a row, labelled by its key.
"""
from __future__ import annotations

from dataclasses import dataclass

from digin.stages.gallery.summary import finite

PROB = "probability 0..1"
DIST_UNIT = {"l1": "Σ|Δ| over channels × pixels, pixels in 0..1", "l2": "√Σ Δ² over channels × pixels, pixels in "
             "0..1", "lpips": "LPIPS-alex, 0..~1"}
DIST_NAME = {"l1": "L1", "l2": "L2", "lpips": "LPIPS"}
CLASSIFIER_NAME = {"guided": "guided classifier", "eval": "evaluation classifier"}
# fields shown in the header, the curves or their own rows: not repeated as plain rows
SHOWN_ELSEWHERE = {"confidences", "parts", "loss", "aug_loss", "nonfinite", "task", "group", "index"}


@dataclass
class Row:
    label: str
    values: list  # one value (spans the columns) or one per column
    unit: str = ""
    definition: str = ""
    key: str = ""  # the field / column it shows (data-key on the page)


def class_name(index, label) -> str:
    """'goldfish (1)'; the index alone when there is no label, the label alone when there is no index."""
    if label not in (None, ""):
        return f"{label} ({index})" if index is not None else str(label)
    return f"class {index}" if index is not None else "—"


def score_label(name: str, m: dict) -> tuple[str, str]:
    """(label, unit) of a tracked score (`confidences` key, also `<name>_sd` / `<name>_ours`)."""
    if name == "activation":
        return f"activation of neuron {m.get('neuron', '?')}", "the layer's units"
    if name.startswith("conf_"):
        k = name[5:]
        target = class_name(m.get("target", m.get("class")), m.get("target_label", m.get("label")))
        classifiers = m.get("classifiers") or []
        if len(classifiers) > 1 and k.isdigit() and int(k) < len(classifiers):
            return f"p({target}) by classifier {int(k) + 1} ({short(classifiers[int(k)])})", PROB
        return f"p(target = {target})", PROB
    if name == "start_conf":
        return f"p(start = {class_name(m.get('start'), m.get('start_label'))})", PROB
    if name == "eval_conf":
        return f"p({class_name(m.get('class'), m.get('label'))}) by the evaluation classifier", PROB
    return name.replace("_", " "), ""


def short(spec) -> str:
    """A classifier spec as a short name: its last path part without the extension."""
    s = str(spec).rstrip("/").rsplit("/", 1)[-1]
    return s.split(":", 1)[-1] if "/" not in str(spec) else s.rsplit(".", 1)[0]


def _definition(reference: dict, field: str) -> str:
    if field in reference:
        return reference[field]
    for pattern in ("<score>_sd", "<score>_ours"):
        if field.endswith(pattern.split(">", 1)[1]) and pattern in reference:
            return reference[pattern]
    return ""


def _schedule_rows(value, reference) -> list[Row]:
    parts = list(value) + [None] * (3 - len(value)) if isinstance(value, (list, tuple)) else [value, None, None]
    names = ("cross-attention interpolation", "self-attention interpolation", "mask blend")
    d = reference.get("schedule", "")
    return [Row(f"schedule: {n}", ["none configured" if v is None else v], "", d if i == 0 else "", "schedule")
            for i, (n, v) in enumerate(zip(names, parts))]


def _at(values, i):
    return values[i] if isinstance(values, list) and i is not None and 0 <= i < len(values) else None


def metric_rows(m: dict, reference: dict | None = None) -> tuple[list[Row], list[Row]]:
    """(rows with sd | ours columns, single-value rows) for a result's metrics.json, labelled and defined."""
    ref = reference or {}
    best = m.get("best_iter") if isinstance(m.get("best_iter"), int) else None
    paired, single = [], []
    scores = list(m.get("confidences") or {}) + [k[:-len("_ours")] for k in m if k.endswith("_ours")]
    for name in dict.fromkeys(scores):
        label, unit = score_label(name, m)
        paired.append(Row(label, [m.get(f"{name}_sd"), m.get(f"{name}_ours")], unit,
                          _definition(ref, f"{name}_sd") if name.startswith(("conf_", "activation"))
                          else ref.get(f"{name}_sd", ""), name))
    loss = m.get("loss") if isinstance(m.get("loss"), list) else None
    if loss:
        paired.append(Row("total loss", [_at(loss, 0), _at(loss, best)], "", ref.get("loss", ""), "loss"))
    for term, values in (m.get("parts") or {}).items():
        if isinstance(values, list):
            paired.append(Row(f"term {term} (unweighted)", [_at(values, 0), _at(values, best)], "",
                              ref.get("parts", "") if not paired or paired[-1].key != "parts" else "", "parts"))
    if isinstance(m.get("aug_loss"), list) and m["aug_loss"]:
        aug = m["aug_loss"]
        paired.append(Row("augmented loss (first / last step)", [aug[0], aug[-1]], "", ref.get("aug_loss", ""),
                          "aug_loss"))
    n = m.get("num_logged")
    for key, value in m.items():
        if key in SHOWN_ELSEWHERE or key.endswith(("_sd", "_ours")) or isinstance(value, dict):
            continue
        if key in ("start_label", "target_label") and isinstance(m.get(key[:-len("_label")]), int):
            continue  # the class row shows the name with the index
        if key == "start" and "target" not in m and m.get("class") == value:
            continue  # class-guided results: start = class
        if key == "schedule":
            single += _schedule_rows(value, ref)
        elif key == "best_iter":
            of = f" of 0..{n - 1}" if isinstance(n, int) and n > 0 else ""
            single.append(Row("best iterate (ours)", [f"{value}{of}"], "", ref.get(key, ""), key))
        elif key in LABELS:
            single.append(Row(LABELS[key], [_shown(key, value, m)], "", ref.get(key, ""), key))
        else:
            single.append(Row(key.replace("_", " "), [value], "", ref.get(key, ""), key))
    return paired, single


LABELS = {"status": "status", "num_logged": "iterates logged", "stopped_early": "stopped early",
          "prompt": "prompt", "edited_prompt": "edited prompt", "start": "start class", "target": "target class",
          "start_label": "start class name", "target_label": "target class name", "class": "class",
          "label": "class name",
          "i": "image number", "neuron": "neuron", "word": "searched word", "loss_name": "loss",
          "classifiers": "classifiers (1, 2)", "attention_words": "attention words", "prompt_index": "start prompt",
          "learned_schedules": "learned schedules"}


def _shown(key: str, value, m: dict):
    if key in ("start", "target", "class") and isinstance(value, int):
        return class_name(value, m.get({"start": "start_label", "target": "target_label"}.get(key, "label")))
    if key == "classifiers" and isinstance(value, list):
        return ", ".join(f"{i + 1}: {v}" for i, v in enumerate(value))
    if key == "attention_words" and isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, bool):
        return "yes" if value else "no"
    return value


def eval_rows(row: dict | None, m: dict) -> tuple[list[Row], list[Row]]:
    """(rows with orig | sd | ours columns, single-value rows) for a `digin eval` row: per classifier its
    p(start), p(target) and predicted class; the distances of sd and ours to the original."""
    if not row:
        return [], []
    three, single = [], []
    names = sorted({k.split("/", 1)[0] for k in row if "/" in k})
    for c in names:
        who = CLASSIFIER_NAME.get(c, f"classifier {c}")
        for role, label in (("start", class_name(m.get("start"), m.get("start_label"))),
                            ("target", class_name(m.get("target", m.get("start")), m.get("target_label")))):
            vals = [row.get(f"{c}/conf_{role}_{i}") for i in ("orig", "sd", "ours")]
            if any(v is not None for v in vals):
                three.append(Row(f"p({role} = {label}) by the {who}", vals, PROB, "", f"{c}/conf_{role}"))
        preds = [row.get(f"{c}/pred_{i}") for i in ("orig", "sd", "ours")]
        if any(v is not None for v in preds):
            three.append(Row(f"predicted class by the {who}", preds, "class index", "", f"{c}/pred"))
        if f"{c}/flip" in row:
            single.append(Row(f"label flipped to the target ({who})", ["yes" if row[f"{c}/flip"] else "no"], "",
                              "the predicted class of ours is the target", f"{c}/flip"))
    region = "background" if row.get("masked") == "background" else "whole image"
    for d in ("l1", "l2", "lpips"):
        vals = [None, row.get(f"{d}_sd"), row.get(f"{d}_ours")]
        if any(v is not None for v in vals):
            three.append(Row(f"{DIST_NAME[d]} distance to the original ({region})", vals, DIST_UNIT[d],
                             "digin eval: the difference of sd / ours to orig", f"{d}"))
    return three, single


def number_attr(v) -> str:
    f = finite(v)
    return "" if f is None else repr(f)
