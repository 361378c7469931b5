"""The evaluation stage's pieces: per-record metrics (confidences, flip, L1/L2/LPIPS to the original, in the
background when the record has a mask), their per-task / per-group means with FID, the summaries written, and
the classifiers loaded for it."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from digin.engine.classifiers import load_classifier
from digin.engine.prepare import prepare_classifier
from digin.shards.manifest import ShardSet
from digin.stages import metrics as M
from digin.stages.gallery.records import ResultRecord
from digin.stages.metrics import fid
from digin.stages.models import stage_compute


def to_tensor(arr: np.ndarray, size=None) -> torch.Tensor:
    """uint8 HWC -> (1,3,H,W) float in [0,1], bilinear-resized to `size` (H, W) when given."""
    x = torch.from_numpy(np.ascontiguousarray(arr)).float().div(255.0)
    x = x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x


def sample_metrics(rec: ResultRecord, classifiers: dict, lpips_model=None, device="cpu") -> dict:
    """One record -> flat dict of numbers (missing images/classes simply produce no columns)."""
    row = {"key": rec.key, "task": rec.task, "group": rec.group}
    m = rec.metrics
    start, target = m.get("start"), m.get("target", m.get("start"))
    ref = rec.images.get("orig")
    size = rec.image_array("orig").shape[:2] if ref is not None else None
    imgs = {n: to_tensor(rec.image_array(n), size).to(device) for n in ("orig", "sd", "ours") if n in rec.images}
    for cname, clf in classifiers.items():
        for iname, x in imgs.items():
            for role, cls in (("start", start), ("target", target)):
                if cls is None:
                    continue
                conf, pred = M.confidences(clf, x, torch.tensor([int(cls)], device=device))
                row[f"{cname}/conf_{role}_{iname}"] = conf.item()
            row[f"{cname}/pred_{iname}"] = int(pred.item())
        if "ours" in imgs and target is not None:
            row[f"{cname}/flip"] = float(row[f"{cname}/pred_ours"] == int(target))
    if "orig" in imgs:
        mask = rec.aux_images.get("mask")
        region = None
        if mask is not None:
            mask = to_tensor(rec.image_array("mask"), size).to(device).mean(1)  # (1,H,W) foreground in [0,1]
            region = "background"
        for iname in ("sd", "ours"):
            if iname not in imgs:
                continue
            x, y = imgs[iname], imgs["orig"]
            row[f"l1_{iname}"] = M.l1_distance(x, y, mask, region).item()
            row[f"l2_{iname}"] = M.l2_distance(x, y, mask, region).item()
            if lpips_model is not None:
                row[f"lpips_{iname}"] = M.lpips_distance(x, y, mask, region, lpips_model=lpips_model).item()
        row["masked"] = region or "none"
    return row


def _means(rows: list[dict]) -> dict:
    cols = defaultdict(list)
    for r in rows:
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and "/pred_" not in k:
                cols[k].append(float(v))
    return {"n": len(rows), **{k: float(np.mean(v)) for k, v in sorted(cols.items())}}


def evaluate_records(records, classifiers: dict | None = None, lpips_model=None, inception=None,
                     device="cpu") -> dict:
    """Per-sample rows + per-task and per-(task, group) means; FID per task when `inception` is given."""
    classifiers = classifiers or {}
    rows = [sample_metrics(r, classifiers, lpips_model, device) for r in records]
    by_task, by_group = defaultdict(list), defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
        by_group[(r["task"], r["group"])].append(r)
    tasks = {t: _means(rs) for t, rs in sorted(by_task.items())}
    notes = []
    for t in tasks:
        recs = [r for r in records if r.task == t and "orig" in r.images and "ours" in r.images]
        if inception is None:
            continue
        if len(recs) < 2:
            notes.append(f"{t}: FID needs at least 2 samples with orig and ours")
            continue
        ours = [to_tensor(r.image_array("ours"))[0] for r in recs]
        orig = [to_tensor(r.image_array("orig"))[0] for r in recs]
        tasks[t]["fid_ours_orig"] = fid(ours, orig, inception, device=device)
    if inception is None:
        notes.append("FID skipped: no inception_weights given")
    groups = {f"{t}/{g}": _means(rs) for (t, g), rs in sorted(by_group.items())}
    return {"rows": rows, "tasks": tasks, "groups": groups, "notes": notes}


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def summary_markdown(result: dict) -> str:
    """Two tables (per task, per task/group) over the mean columns; FID in the task table."""
    def table(title, entries):
        cols = sorted({k for e in entries.values() for k in e if k != "n"})
        lines = [f"## {title}", "", "| name | n | " + " | ".join(cols) + " |",
                 "|---|---|" + "---|" * len(cols)]
        for name, e in entries.items():
            cells = [f"{e[c]:.4g}" if isinstance(e.get(c), float) else "" for c in cols]
            lines.append(f"| {name} | {e['n']} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    notes = "".join(f"- {n}\n" for n in result["notes"])
    return f"# digin eval\n\n{notes}\n{table('per task', result['tasks'])}\n\n{table('per group', result['groups'])}\n"


def write_summary(result: dict, out) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "per_sample.jsonl", "w") as f:
        for r in result["rows"]:
            f.write(json.dumps(_clean(r), allow_nan=False, sort_keys=True) + "\n")
    summary = {k: result[k] for k in ("tasks", "groups", "notes", "compute") if k in result}
    (out / "summary.json").write_text(json.dumps(_clean(summary), allow_nan=False, indent=1, sort_keys=True))
    (out / "summary.md").write_text(summary_markdown(result))
    return out / "summary.json"


def load_classifiers(cfg, settings=None) -> dict:
    specs = {"guided": cfg.classifier, "eval": cfg.eval_classifier}
    checkpoints = {"guided": ("classifier_checkpoint", cfg.classifier_checkpoint),
                   "eval": ("eval_classifier_checkpoint", cfg.eval_classifier_checkpoint)}
    if not any(specs.values()):
        return {}

    settings = settings or stage_compute(cfg, cfg.device)

    classes = None
    if cfg.dataset_classes:
        classes = ShardSet.load(cfg.dataset_classes).classes
    out = {}
    for name, spec in specs.items():
        if spec:  # frozen, eval mode, [0,1] images -> logits (in the dataset's class order)
            key, ckpt = checkpoints[name]  # the same loader and keys as every stage: weights real or refused
            out[name] = prepare_classifier(load_classifier(spec, checkpoint=ckpt, device=cfg.device,
                                                           dtype=settings.dtype, dataset_classes=classes,
                                                           label_order=cfg.classifier_label_order,
                                                           allow_random=cfg.random_weights, weights_key=key),
                                           settings)
    return out
