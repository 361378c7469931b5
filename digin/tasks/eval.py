"""`digin eval results=[...] out=<folder>`: metrics over result records (the reference's
loss_functions.py confidences, uvces_imagenet.py wandb distances, src/utils/fid.py).

Per sample (images orig / sd / ours from the result shards, see digin.stages.gallery.records):
- confidence of the start and target class for `sd` and `ours` (and `orig` when present) under every classifier
  given (`classifier` = the guided one, `eval_classifier` = an independent one), both specs for
  `digin.engine.classifiers.load_classifier`; the loaded `ImageClassifier` maps [0,1] images (B,3,H,W) to logits;
- flip: argmax of `ours` equals the target (start == target in failure mode: the prediction became correct);
- L1 / L2 (norms, see digin.stages.metrics) and LPIPS of `ours` and `sd` to `orig`, restricted to the background
  (1 − mask) when the record has a `mask` image — what a UVCE must leave unchanged;
- per task: FID between the `ours` set and the `orig` set (Inception weights from `inception_weights`; skipped
  with a note when no path is given).
Outputs in `out/`: per_sample.jsonl, summary.json (per task and per task/group means) and summary.md.
"""
from __future__ import annotations

from dataclasses import dataclass

from digin.fields import key, section
from digin.shards.dist import device_problem
from digin.stages import metrics as M
from digin.stages.args import ClassifierOptions, ComputeArgs, compute_values
from digin.stages.eval import evaluate_records, load_classifiers, summary_markdown, write_summary
from digin.stages.gallery.records import ShardFields, records_from_shards
from digin.stages.models import pick_device, stage_compute


@dataclass
class Config(ComputeArgs, ClassifierOptions):
    results: list[str] = key(help="result shard set folders", factory=list)
    out: str = key("eval", "folder of the summaries (eval.json, eval.md)", results=False)
    classifier: str | None = key(None, "guided classifier spec (load_classifier)")
    classifier_checkpoint: str | None = key(None, "its weights file (else the local caches: see random_weights)")
    eval_classifier: str | None = key(None, "independent evaluation classifier spec")
    eval_classifier_checkpoint: str | None = key(None, "its weights file")
    dataset_classes: str | None = key(None, "image shard set whose class order the results' labels use")
    inception_weights: str | None = key(None, "torchvision Inception-v3 state dict (.safetensors or .pth); None: no "
                                              "FID")
    lpips: bool | None = key(None, "LPIPS-alex ours vs orig: true = required (a missing AlexNet file / lpips package"
                                   " is an error), false = off, None = computed when the AlexNet file is in the "
                                   "torch hub cache, else skipped with a note in the summary")
    lpips_random_trunk: bool = key(False, "True: random AlexNet trunk (offline; numbers only useful for tests)")
    device: str | None = key(None, "default: cuda:<local rank> if available, else cpu", results=False, check=device_problem)
    task: str | None = key(None, "uvce | diff | neurons | ... (default: from the result manifests)")
    fields: ShardFields = section(ShardFields, "which record members are images / metrics")


def lpips_for(cfg: Config):
    """(LPIPS model or None, note or None) for `cfg.lpips` (see Config); lpips=true without its weights stops here,
    before anything is computed or written."""
    if cfg.lpips is False:
        return None, None
    try:
        return M.build_lpips(cfg.device, random_trunk=cfg.lpips_random_trunk, spatial=True), None
    except (FileNotFoundError, ImportError) as e:  # no AlexNet file / no lpips package
        if cfg.lpips:
            raise SystemExit(f"digin eval: lpips=true: {e}") from None
        return None, f"LPIPS skipped: {e} (lpips=true makes this an error, lpips=false turns LPIPS off)"


def run(cfg: Config, records=None, classifiers: dict | None = None):
    """Evaluate result shards (or `records` given directly, e.g. from tests) and write the summaries."""
    cfg.device = str(pick_device(cfg.device))
    settings = stage_compute(cfg, cfg.device)
    lpips_model, lpips_note = lpips_for(cfg)
    if records is None:
        if not cfg.results:
            raise SystemExit("digin eval: give results=[<result shard folder>, ...]")
        records = [r for folder in cfg.results for r in records_from_shards(folder, cfg.fields, cfg.task)]
    classifiers = load_classifiers(cfg, settings) if classifiers is None else classifiers
    inception = M.InceptionPool(cfg.inception_weights).to(cfg.device) if cfg.inception_weights else None
    result = evaluate_records(records, classifiers, lpips_model, inception, cfg.device)
    if lpips_note:
        result["notes"].append(lpips_note)
    result["compute"] = {"preset": cfg.preset, **compute_values(cfg, settings)}
    path = write_summary(result, cfg.out)
    print(summary_markdown(result))
    return path
