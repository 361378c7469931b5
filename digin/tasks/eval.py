"""`digin eval results=[...] out=<folder>`: metrics over result records (REFERENCE §3.1 eval helpers, §8.1, §12).

Per sample (images orig / sd / ours from the result shards, see digin.gallery.records):
- confidence of the start and target class for `sd` and `ours` (and `orig` when present) under every classifier
  given (`classifier` = the guided one, `eval_classifier` = an independent one), both specs for
  `digin.engine.classifiers.load_classifier`; the loaded `ImageClassifier` maps [0,1] images (B,3,H,W) to logits;
- flip: argmax of `ours` equals the target (start == target in failure mode: the prediction became correct);
- L1 / L2 (norms, see digin.engine.metrics) and LPIPS of `ours` and `sd` to `orig`, restricted to the background
  (1 − mask) when the record has a `mask` image — what a UVCE must leave unchanged;
- per task: FID between the `ours` set and the `orig` set (Inception weights from `inception_weights`; skipped
  with a note when no path is given).
Outputs in `out/`: per_sample.jsonl, summary.json (per task and per task/group means) and summary.md.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from digin.gallery.records import ResultRecord, ShardFields
from digin.tasks.common import COMPUTE_FIELDS, ComputeArgs


@dataclass
class Config(ComputeArgs):
    results: list[str] = field(default_factory=list)  # result shard set folders
    out: str = "eval"
    classifier: str | None = None  # guided classifier spec (load_classifier)
    eval_classifier: str | None = None  # independent evaluation classifier spec
    dataset_classes: str | None = None  # image shard set whose class order the results' labels use
    classifier_label_order: str = "auto"  # auto | model | dataset (see digin.engine.classifiers.label_permutation)
    inception_weights: str | None = None  # torchvision Inception-v3 state dict (.safetensors or .pth); None: no FID
    lpips: bool = True
    lpips_random_trunk: bool = False  # True: random AlexNet trunk (offline; numbers only useful for tests)
    device: str | None = None  # default: cuda:<local rank> if available, else cpu
    task: str | None = None
    fields: ShardFields = field(default_factory=ShardFields)


def to_tensor(arr: np.ndarray, size=None) -> torch.Tensor:
    """uint8 HWC -> (1,3,H,W) float in [0,1], bilinear-resized to `size` (H, W) when given."""
    x = torch.from_numpy(np.ascontiguousarray(arr)).float().div(255.0)
    x = x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x


def sample_metrics(rec: ResultRecord, classifiers: dict, lpips_model=None, device="cpu") -> dict:
    """One record -> flat dict of numbers (missing images/classes simply produce no columns)."""
    from digin.engine import metrics as M

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
    from digin.engine.metrics import fid

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


def load_classifiers(cfg: Config, settings=None) -> dict:
    specs = {"guided": cfg.classifier, "eval": cfg.eval_classifier}
    if not any(specs.values()):
        return {}
    from digin.engine.classifiers import load_classifier  # lazy: optional heavy stacks behind it
    from digin.engine.prepare import prepare_classifier
    from digin.tasks.common import stage_compute

    settings = settings or stage_compute(cfg, cfg.device)

    classes = None
    if cfg.dataset_classes:
        from digin.shards.manifest import ShardSet

        classes = ShardSet.load(cfg.dataset_classes).classes
    out = {}
    for name, spec in specs.items():
        if spec:  # frozen, eval mode, [0,1] images -> logits (in the dataset's class order)
            out[name] = prepare_classifier(load_classifier(spec, device=cfg.device, dtype=settings.dtype,
                                                           dataset_classes=classes,
                                                           label_order=cfg.classifier_label_order), settings)
    return out


def run(cfg: Config, records=None, classifiers: dict | None = None):
    """Evaluate result shards (or `records` given directly, e.g. from tests) and write the summaries."""
    from digin.engine import metrics as M
    from digin.gallery.records import records_from_shards

    from digin.tasks.common import pick_device, stage_compute

    cfg.device = str(pick_device(cfg))
    settings = stage_compute(cfg, cfg.device)
    if records is None:
        if not cfg.results:
            raise SystemExit("digin eval: give results=[<result shard folder>, ...]")
        records = [r for folder in cfg.results for r in records_from_shards(folder, cfg.fields, cfg.task)]
    classifiers = load_classifiers(cfg, settings) if classifiers is None else classifiers
    lpips_model, lpips_note = None, None
    if cfg.lpips:
        try:  # the pretrained AlexNet trunk comes from the torch hub cache; offline without it -> skip, say so
            lpips_model = M.build_lpips(cfg.device, random_trunk=cfg.lpips_random_trunk, spatial=True)
        except Exception as e:  # URLError / OSError when the weights are not cached
            lpips_note = f"LPIPS skipped: could not build LPIPS-alex ({type(e).__name__}: {str(e)[:120]})"
    inception = M.InceptionPool(cfg.inception_weights).to(cfg.device) if cfg.inception_weights else None
    result = evaluate_records(records, classifiers, lpips_model, inception, cfg.device)
    if lpips_note:
        result["notes"].append(lpips_note)
    result["compute"] = {k: getattr(cfg, k) for k in COMPUTE_FIELDS}
    path = write_summary(result, cfg.out)
    print(summary_markdown(result))
    return path
