"""What a result shows at a glance, and what a task's results add up to.

Per result (`result_row`): the quantity the optimisation pushed, at iterate 0 (`sd`, plain SD / P2P) and at the
best iterate (`ours`), its gain, success, status, the best iterate and the category the per-class table uses;
`digin eval` rows (same keys) add flips and distances to the original. Per task (`summarise`): counts, success
rate, mean / median gain, distances and a per-category table. Plain Python over numbers, so tests can recompute
everything from the shards.
"""
from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

STATUSES = ("ok", "nonfinite", "no_improvement")
DISTANCES = ("l1_ours", "l2_ours", "lpips_ours")  # digin eval: ours vs orig (background only when masked)
FLIPS = ("guided/flip", "eval/flip")  # digin eval: argmax of ours == target, per classifier


def finite(v) -> float | None:
    """v as a float when it is a finite number, else None (JSON nulls, NaN, inf, bools, strings)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def mean(values) -> float | None:
    vals = [f for v in values if (f := finite(v)) is not None]
    return sum(vals) / len(vals) if vals else None


def median(values) -> float | None:
    vals = sorted(f for v in values if (f := finite(v)) is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def natural_key(text: str):
    """Sort key that orders numbers inside names by value ('class 2' before 'class 10')."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", str(text)) if t]


def status_of(metrics: dict) -> str:
    """ok | nonfinite | no_improvement (the `status` the tasks write); results written before that field
    existed count as ok unless they say `nonfinite: true`."""
    if metrics.get("status"):
        return str(metrics["status"])
    return "nonfinite" if metrics.get("nonfinite") else "ok"


def score_of(metrics: dict) -> dict:
    """The pushed quantity before (sd) → after (ours), its gain and whether the result reached its goal.

    activation (neurons, counterfactuals): gain in the loss's direction (`neg_*` losses lower it), success = gain > 0;
    two classifiers (diff): p1(y) − p2(y), success = p1(y) > 0.5 > p2(y);
    one classifier (uvce, diff): the target confidence p(y), success = p(y) > 0.5 (the label flipped to y).
    """
    m = metrics
    if "activation_ours" in m or "activation_sd" in m:
        kind, before, after = "activation", finite(m.get("activation_sd")), finite(m.get("activation_ours"))
        sign = -1.0 if str(m.get("loss_name", "")).startswith("neg_") else 1.0
        gain = sign * (after - before) if before is not None and after is not None else None
        success = gain is not None and gain > 0
    elif "conf_1_ours" in m or "conf_1_sd" in m:
        kind = "difference"
        p1b, p1a, p2b, p2a = (finite(m.get(k)) for k in ("conf_0_sd", "conf_0_ours", "conf_1_sd", "conf_1_ours"))
        before = p1b - p2b if p1b is not None and p2b is not None else None
        after = p1a - p2a if p1a is not None and p2a is not None else None
        gain = after - before if before is not None and after is not None else None
        success = p1a is not None and p2a is not None and p1a > 0.5 > p2a
    elif "conf_0_ours" in m or "conf_0_sd" in m:
        kind, before, after = "target", finite(m.get("conf_0_sd")), finite(m.get("conf_0_ours"))
        gain = after - before if before is not None and after is not None else None
        success = after is not None and after > 0.5
    else:
        kind, before, after, gain, success = "none", None, None, None, False
    return {"kind": kind, "before": before, "after": after, "gain": gain, "success": bool(success)}


SCORE_LABELS = {"activation": "activation", "difference": "p1(y) − p2(y)", "target": "p(target)", "none": "score"}


@lru_cache(maxsize=1)
def _imagenet_clusters() -> dict[int, str]:
    """ImageNet class → name of the first hierarchy cluster holding it (the UVCE pairs' clusters)."""
    table = json.loads(resources.files("digin.data").joinpath("imagenet_hierarchy.json").read_text())
    out: dict[int, str] = {}
    for name, members in table.items():
        for c in members:
            out.setdefault(int(c), name.split(",")[0].strip())
    return out


def category_of(key: str, metrics: dict, group: str) -> str:
    """What the per-class table groups by: the neuron of a neuron visualisation, the cluster of the start class
    for ImageNet images, the start class elsewhere (its label), else the record's group."""
    start = metrics.get("start", metrics.get("class"))
    if metrics.get("neuron") is not None and metrics.get("start") is None:
        return f"neuron {metrics['neuron']}"
    if start is not None and not isinstance(start, bool):
        if str(key).startswith("imagenet/") and int(start) in _imagenet_clusters():
            return _imagenet_clusters()[int(start)]
        label = metrics.get("start_label") or metrics.get("label")
        return str(label) if label is not None else f"class {start}"
    return str(group)


def result_row(key: str, task: str, group: str, metrics: dict, evaluation: dict | None = None) -> dict:
    """One result as the overview and the summary see it (numbers only where they are finite)."""
    score = score_of(metrics)
    row = {"key": key, "task": task, "group": group, "category": category_of(key, metrics, group),
           "status": status_of(metrics), "best_iter": metrics.get("best_iter"), **score}
    for name in DISTANCES + FLIPS + ("guided/conf_target_orig",):
        if evaluation and finite(evaluation.get(name)) is not None:
            row[name] = float(evaluation[name])
    if evaluation and evaluation.get("masked"):
        row["masked"] = str(evaluation["masked"])
    return row


def _numbers(rows: list[dict]) -> dict:
    """Success, gain and distance numbers over some rows (the task, or one category)."""
    n = len(rows)
    success = sum(1 for r in rows if r["success"])
    out = {"n": n, "success": success, "success_rate": success / n if n else None,
           "gain_mean": mean(r["gain"] for r in rows), "gain_median": median(r["gain"] for r in rows),
           "before_mean": mean(r["before"] for r in rows), "after_mean": mean(r["after"] for r in rows)}
    for name in FLIPS:
        vals = [r[name] for r in rows if name in r]
        if vals:
            out[name] = {"n": len(vals), "rate": sum(vals) / len(vals)}
    for name in DISTANCES:
        vals = [r[name] for r in rows if name in r]
        if vals:
            out[name] = {"n": len(vals), "mean": mean(vals), "median": median(vals)}
    return out


def summarise(rows: list[dict], inputs: dict | None = None) -> dict:
    """Task summary: counts (results, input samples written / rejected / skipped, statuses), the numbers of
    `_numbers` over all results, and the same per category (in natural name order)."""
    kinds = [r["kind"] for r in rows if r["kind"] != "none"]
    kind = max(set(kinds), key=kinds.count) if kinds else "none"
    status = {s: 0 for s in STATUSES}
    for r in rows:
        status[r["status"]] = status.get(r["status"], 0) + 1
    by_cat: dict[str, list] = {}
    for r in rows:
        by_cat.setdefault(r["category"], []).append(r)
    masked = sorted({r["masked"] for r in rows if "masked" in r})
    return {"results": len(rows), "inputs": inputs or {}, "status": status, "kind": kind,
            "score_label": SCORE_LABELS[kind], "masked": masked, **_numbers(rows),
            "categories": {c: _numbers(by_cat[c]) for c in sorted(by_cat, key=natural_key)}}


def load_eval_rows(folders) -> dict[str, dict]:
    """key → row of `digin eval` outputs (per_sample.jsonl in each folder; later folders win)."""
    out = {}
    for folder in folders or ():
        path = Path(folder) / "per_sample.jsonl"
        if not path.is_file():
            raise SystemExit(f"digin gallery: evals: {path} not found (give the out= folder of a digin eval run)")
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise SystemExit(f"digin gallery: evals: {path} line {n} is not JSON ({e})") from None
                if isinstance(row, dict) and "key" in row:
                    out[str(row["key"])] = row
    return out
