"""Each stage's work plan from its config and its inputs' manifests (digin.shards.plan), the selections of the
image stages, and `plan=true`: the plan printed (items, units, estimated PFLOP, per-rank work) instead of run.

Every model stage runs `run_or_show(cfg, spec, load)`: with plan=true it prints the plan and returns before any
model is loaded or anything is written; otherwise `load()` builds the process and the spec runs.
"""
from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path

from digin.engine.compile import since, snapshot, summarise
from digin.errors import ConfigError
from digin.shards.dist import rank_world
from digin.shards.keyed import KeyIndex
from digin.shards.lineage import join_lineage
from digin.shards.manifest import ShardSet
from digin.shards.plan import Item, Plan, balance, join_items, missing_joins
from digin.shards.runner import RunOptions, check_inputs_complete, run_stage
from digin.stages import pairs as P
from digin.stages.args import tracking_for
from digin.stages.costs import cost_rows
from digin.stages.pairs import default_pairs, neurons_per_key

SELECTIONS = ("all", "uvce", "random", "counterfactuals")


# ---------------------------------------------------------------------------------------------- inputs
def load_inputs(roles: dict, allow_incomplete: bool) -> tuple[list, dict]:
    """[(role, ShardSet)] for {role: folder} (None folders left out), and what incomplete inputs lack (refused
    unless allow_incomplete: IncompleteInput names the uncommitted shards)."""
    pairs = []
    for role, folder in roles.items():
        if folder is None:
            continue
        try:
            pairs.append((role, ShardSet.load(folder)))
        except FileNotFoundError as e:
            raise ConfigError(f"{role}={folder}: {e}") from None
    missing = check_inputs_complete([ss for _, ss in pairs], allow_incomplete)

    join_lineage(pairs)  # inputs made from different image sets: ForeignJoin (plan=true refuses them too)
    return pairs, missing


def dataset_of(cfg, ss: ShardSet) -> str:
    return (getattr(cfg, "dataset", None) or ss.meta.get("source") or ss.name or "imagenet").lower()


# ---------------------------------------------------------------------------------------------- selections
def _missing_keys_error(what: str, missing: list, total: int) -> ConfigError:
    first = ", ".join(map(str, missing[:5]))
    return ConfigError(f"{what}: {len(missing)} of {total} selected keys are not in the input ({first}"
                       f"{', ...' if len(missing) > 5 else ''}); nothing was written")


def _keys_file(path: str, index: KeyIndex, by_index: dict) -> list[str]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"select={path}: cannot read the keys file ({e})") from None
    if p.suffix == ".json":
        try:
            entries = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"select={path}: not a JSON list ({e})") from None
        if not isinstance(entries, list):
            raise ConfigError(f"select={path}: want a JSON list of keys or dataset indices")
    else:
        entries = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    keys, missing = [], []
    for e in entries:
        k = by_index.get(int(e)) if isinstance(e, int) or (isinstance(e, str) and e.isdigit()) else e
        (keys if k in index else missing).append(k if k is not None else e)
    if missing:
        raise _missing_keys_error(f"select={path}", missing, len(entries))
    return list(dict.fromkeys(keys))


def select_keys(sel, index: KeyIndex, dataset: str, num_classes: int) -> tuple[list[str], dict]:
    """The image keys an image stage does, in key order, and counts of how they were chosen. `sel` has the
    SelectArgs fields. Labels come from the records (digin.shards.keyed), never from reading the images."""
    keys = index.keys()
    by_index = {P.key_index(k): k for k in keys if k.rsplit("/", 1)[-1].isdigit()}
    how = sel.select
    counts = {"input_keys": len(keys)}
    if how == "all":
        chosen = keys
    elif how == "uvce":
        table = uvce_table_pairs(dataset)
        wanted = list(dict.fromkeys(p.index for p in table))
        chosen = [by_index[i] for i in wanted if i in by_index]
        counts["table_images"] = len(wanted)
        if not chosen:
            raise ConfigError(f"select=uvce: none of the {len(wanted)} images of the {dataset} UVCE table is in the "
                              "input (keys end in the dataset index, e.g. imagenet/val/00042)")
    elif how == "random":
        if sel.num_images is None:
            raise ConfigError("select=random needs num_images=N (the images `digin uvce pairs=random` draws)")
        labels = index.labels()
        pairs = P.random_pairs([(P.key_index(k), y) for k, y in labels.items()], max(num_classes, 2),
                               sel.num_images, sel.seed)
        chosen = [by_index[p.index] for p in pairs]
    elif how == "counterfactuals":
        classes = {c for c, _ in default_pairs()}
        labels = index.labels()
        chosen = [k for k in keys if labels.get(k) in classes]
    elif Path(how).suffix in (".txt", ".json") or Path(how).is_file():
        chosen = _keys_file(how, index, by_index)
    else:
        raise ConfigError(f"select={how!r}: one of {', '.join(SELECTIONS)} or a keys file (.txt / .json)")
    if sel.class_idcs is not None or sel.images_per_class is not None:
        labels = index.labels()
        wanted = None if sel.class_idcs is None else {int(c) for c in sel.class_idcs}
        per: dict[int, int] = {}
        kept = []
        for k in sorted(chosen, key=lambda k: (labels.get(k, -1), k)):
            y = labels.get(k)
            if y is None or (wanted is not None and y not in wanted):
                continue
            if sel.images_per_class is not None and per.get(y, 0) >= sel.images_per_class:
                continue
            per[y] = per.get(y, 0) + 1
            kept.append(k)
        keep = set(kept)
        chosen = [k for k in chosen if k in keep]
    chosen = sorted(chosen)
    if not chosen:
        raise ConfigError(f"select={how} class_idcs={sel.class_idcs} images_per_class={sel.images_per_class}: no "
                          "image of the input is selected")
    counts["selected"] = len(chosen)
    return chosen, counts


def image_stage_plan(stage: str, cfg, inputs: list, dataset: str) -> Plan:
    """invert / caption: one item per selected image key of the primary input, joined by key with the others."""
    (_, images), others = inputs[0], inputs[1:]
    index = KeyIndex(images)
    keys, counts = select_keys(cfg, index, dataset, len(images.classes))
    items = join_items(keys, [r for r, _ in inputs])
    return Plan(stage, items, cfg.items_per_shard, counts=counts,
                missing=missing_joins(items, {r: set(KeyIndex(ss).where) for r, ss in others}))


# ---------------------------------------------------------------------------------------------- pair plans
def uvce_table_pairs(dataset: str) -> list[P.Pair]:
    if dataset == "imagenet":
        return P.imagenet_uvce_pairs()
    if dataset in ("cub", "cars"):
        return P.fine_grained_pairs(dataset)
    raise ConfigError(f"select=uvce: {dataset} has no UVCE pair table (the reference draws random pairs for it): "
                      "use select=random num_images=N (with the seed of `digin uvce pairs=random`)")


def uvce_pairs(cfg, labels_of, keys: list[str], num_classes: int, dataset: str) -> tuple[list[P.Pair], dict]:
    """The reference's (image, start, target) pairs for the images present (by dataset index), and index → key.
    `labels_of()` gives key → label from the records (only called by the selections that need labels)."""
    idx = {P.key_index(k): k for k in keys if k.rsplit("/", 1)[-1].isdigit()}
    if cfg.error_visualisation:  # every image toward its own class; correctly classified ones are skipped then
        if cfg.num_images is not None:
            raise ConfigError("num_images with error_visualisation=true: which images are misclassified is known "
                              "only while the stage runs; run over all images (or give the images of a `digin "
                              "invert select=<keys file>` run as images=)")
        labels = labels_of()
        chosen = [P.Pair(i, labels[k], labels[k]) for i, k in sorted(idx.items()) if k in labels]
    elif cfg.pairs == "explicit":
        labels = labels_of()
        bad = [i for i, _ in cfg.explicit_pairs if int(i) not in idx]
        if bad:
            raise ConfigError(f"explicit_pairs: image index(es) {bad[:5]} are not in the images input")
        chosen = P.explicit_pairs([(int(i), labels[idx[int(i)]], int(t)) for i, t in cfg.explicit_pairs])
    elif cfg.pairs == "reference" and dataset == "imagenet":
        chosen = P.imagenet_uvce_pairs(available_keys=list(idx))
    elif cfg.pairs == "reference" and dataset in ("cub", "cars"):
        chosen = P.fine_grained_pairs(dataset, available_keys=list(idx))
    elif cfg.pairs == "reference":
        raise ConfigError(f"pairs=reference: the reference has pair tables for imagenet, cub and cars, not for "
                          f"{dataset} (dataset= or the image set's source); give pairs=random num_images=N (the "
                          "reference's random_images=True for Food-101 / Flowers), pairs=explicit explicit_pairs=[[image "
                          "index, target], ...] or pairs=all_classes")
    elif cfg.pairs == "random":  # food / flowers / any ImageFolder: random targets
        labels = labels_of()
        n = cfg.num_images or len(idx)
        chosen = P.random_pairs([(i, labels[k]) for i, k in idx.items() if k in labels], num_classes, n, cfg.seed)
    elif cfg.pairs == "all_classes":  # every other class (small label sets, demos)
        labels = labels_of()
        chosen = [P.Pair(i, labels[k], t) for i, k in sorted(idx.items()) if k in labels
                  for t in range(num_classes) if t != labels[k]]
    else:
        raise ConfigError(f"pairs={cfg.pairs!r}: one of reference, random, explicit, all_classes")
    if cfg.num_images is not None and (cfg.pairs != "random" or cfg.error_visualisation):
        keep = set(P.subsample(sorted({p.index for p in chosen}), cfg.num_images, cfg.seed))
        chosen = [p for p in chosen if p.index in keep]
    bad = [p for p in chosen if not (0 <= p.target < num_classes and 0 <= p.start < num_classes)]
    if bad:
        raise ConfigError(f"pair (image {bad[0].index}, {bad[0].start} → {bad[0].target}) names a class outside "
                          f"0..{num_classes - 1}")
    return [P.Pair(p.index, p.start, p.target) for p in chosen], idx


def pair_plan(stage: str, cfg, inputs: list, rows: list[tuple[str, str, dict]], counts: dict) -> Plan:
    """Items of an img2img stage: (output key, image key, payload) rows, each joining the image and its inversion
    by the image key."""
    roles = [r for r, _ in inputs]
    items = [Item(key, tuple((r, image_key) for r in roles), data) for key, image_key, data in rows]
    present = {r: set(KeyIndex(ss).where) for r, ss in inputs}
    return Plan(stage, items, cfg.items_per_shard, counts=counts, missing=missing_joins(items, present))


def uvce_plan(cfg, inputs: list, classes: list[str], dataset: str) -> Plan:
    """One item per (image, target) pair, keyed `<image key>/t<target>`, in image-key order."""
    images = KeyIndex(inputs[0][1])
    pairs, idx = uvce_pairs(cfg, images.labels, images.keys(), len(classes), dataset)
    rows = [(P.result_key(idx[p.index], p.target), idx[p.index], {"start": p.start, "target": p.target})
            for p in sorted(pairs, key=lambda p: (idx[p.index], p.target))]
    counts = {"images": len({p.index for p in pairs}), "pairs": len(pairs), "input_images": len(images)}
    return pair_plan("uvce", cfg, inputs, rows, counts)


def counterfactual_plan(cfg, inputs: list, pairs: list[tuple[int, int]], num_features: int | None = None) -> Plan:
    """One item per (image, neuron) of the (class, neuron) pairs: every image of the class, or a seeded subset."""
    images = KeyIndex(inputs[0][1])
    if num_features is not None:
        bad = [(c, n) for c, n in pairs if not 0 <= n < num_features]
        if bad:
            raise ConfigError(f"pairs: neuron {bad[0][1]} of pair {list(bad[0])} is outside the classifier's "
                              f"{num_features} features (0..{num_features - 1})")
    labels = images.labels()
    neurons_of = neurons_per_key(pairs, labels, cfg.num_images_per_pair, cfg.seed)
    rows = [(f"{k}/n{n}", k, {"start": labels[k], "neuron": n}) for k in sorted(neurons_of) for n in neurons_of[k]]
    counts = {"pairs": len(pairs), "images": len(neurons_of), "items": len(rows)}
    return pair_plan("neuron_cf", cfg, inputs, rows, counts)


def listed_plan(stage: str, cfg, items: list[tuple[str, dict]], counts: dict | None = None) -> Plan:
    """txt2img stages (diff, neuron visualisation): items with no input, their payload from the config."""
    return Plan(stage, [Item(k, (), d) for k, d in items], cfg.items_per_shard, counts=counts or {"items": len(items)})


# ---------------------------------------------------------------------------------------------- plan=true
WORKLOAD_OF = {"invert": "inversion", "uvce": "guidance", "neuron_cf": "guidance", "diff": "guidance",
               "neurons": "guidance"}


def cost_models_for(cfg) -> str:
    """The model set of the cost rows: the tiny set for the tiny / toy models, SDXL-512 for SDXL configs, else
    SD-1.5 shapes (SD-1.x and 2.x differ little in FLOPs)."""
    path = str(getattr(cfg, "model_path", "") or "")
    if path.startswith("tiny") or "toy" in Path(path).parts or path.endswith("toy/models/sd"):
        return "tiny"
    try:
        unet = json.loads((Path(path) / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        return "sd15"
    if unet.get("addition_embed_type") == "text_time":
        return "sdxl512"
    return "tiny" if int(unet.get("sample_size") or 64) < 32 else "sd15"


@lru_cache(maxsize=8)
def _cost_row(models: str, workload: str, ddim_steps: int, sgd_steps: int, num_cutouts: int, inner_steps: int):
    rows = cost_rows(models, ddim_steps=ddim_steps, sgd_steps=sgd_steps, num_cutouts=num_cutouts,
                     inner_steps=inner_steps)
    wl = "guidance_sdxl" if models in ("sdxl512", "tiny-sdxl") and workload == "guidance" else workload
    row = next((r for r in rows if r["workload"] == wl and r["mode"] == "fast"), None)
    return None if row is None else row["flop_per_image"]


def item_flops(stage: str, cfg) -> tuple[float | None, str]:
    """FLOPs of one work item from the cost rows (stages/costs.py) at the stage's settings, and which rows."""
    workload = WORKLOAD_OF.get(stage)
    if workload is None:
        return None, "no cost row for this stage"
    models = cost_models_for(cfg)
    op = getattr(cfg, "optim_params", None)
    flops = _cost_row(models, workload, int(getattr(cfg, "num_ddim_steps", 20)), int(op.sgd_steps if op else 20),
                      int(getattr(cfg, "augmentation_num_cutouts", 16) or 0) or 1,
                      int(getattr(cfg, "num_inner_steps", 10)))
    return flops, f"{models} {workload} cost row (fast preset)"


def plan_report(spec, cfg, world: int) -> dict:
    plan = spec.plan
    flops, source = item_flops(spec.plan.stage, cfg)
    unit_costs = plan.unit_costs()
    bal = balance(unit_costs, [it.cost for it in plan.items], world)
    out = {"stage": plan.stage, "items": len(plan.items), "units": plan.num_units,
           "items_per_shard": plan.resolved_items_per_shard, "cost": plan.total_cost, "counts": plan.counts,
           "missing": plan.missing, "plan_hash": plan.hash(), "world": world,
           "busiest_over_mean": round(bal["busiest_over_mean"], 4), "best_possible": round(bal["best_possible"], 4),
           "idle_ranks": bal["idle_ranks"], "busiest_rank_items": bal["busiest"], "mean_rank_items": bal["mean"],
           "schedule": getattr(cfg, "schedule", "static"), "inputs": [str(ss.dir) for _, ss in spec.inputs],
           "out": str(getattr(cfg, "out", ""))}
    if flops is not None:
        out.update(pflop_per_item=flops / 1e15, pflop=plan.total_cost * flops / 1e15,
                   pflop_busiest_rank=bal["busiest"] * flops / 1e15, cost_rows=source)
    return out


def plan_text(r: dict) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in r["counts"].items())
    lines = [f"[{r['stage']}] work plan {r['plan_hash']}: {r['items']} items ({counts}) in {r['units']} units of "
             f"≤ {r['items_per_shard']} items → {r['out']}"]
    if r["missing"]:
        lines.append("  items whose input lacks their key (they will be rejected, naming it): " +
                     ", ".join(f"{role} {n}" for role, n in r["missing"].items()))
    if "pflop" in r:
        lines.append(f"  estimated {r['pflop']:.3f} PFLOP ({r['pflop_per_item'] * 1e3:.2f} TFLOP per item, "
                     f"{r['cost_rows']})")
    lines.append(f"  on {r['world']} rank(s), schedule=static: busiest rank {r['busiest_rank_items']:g} items, mean "
                 f"{r['mean_rank_items']:.2f}, busiest ÷ mean {r['busiest_over_mean']:.3f} (best possible with "
                 f"these items {r['best_possible']:.3f})" + (f", {r['idle_ranks']} rank(s) idle" if r["idle_ranks"]
                                                             else ""))
    if r["schedule"] == "dynamic":
        lines.append("  schedule=dynamic: ranks claim units as they finish (faster GPUs take more)")
    lines.append("  plan=true: nothing was loaded or written")
    return "\n".join(lines)


def show_plan(spec, cfg) -> int:
    world = cfg.world if getattr(cfg, "world", None) else rank_world()[1]
    r = plan_report(spec, cfg, world)
    print(json.dumps(r, sort_keys=True) if getattr(cfg, "json", False) else plan_text(r), file=sys.stdout, flush=True)
    return 0


def run_options(cfg, settings, **kw):
    """RunOptions from the StageIO / WorkArgs keys of a task config (those it has) and the resolved batch size."""
    return RunOptions(out=kw.pop("out", cfg.out), batch_size=settings.batch_size,
                      workers=getattr(cfg, "num_workers", 0), force=getattr(cfg, "force", False),
                      progress=getattr(cfg, "progress", True), schedule=getattr(cfg, "schedule", "static"),
                      lease_s=getattr(cfg, "lease_s", 300.0), heartbeat_s=min(30.0, getattr(cfg, "lease_s", 300.0) / 4),
                      tracking=tracking_for(cfg), **kw)


def run_or_show(cfg, spec, load, settings, **run_kw) -> int:
    """plan=true: print the plan, load nothing, write nothing. Else `load()` → the process, and run the spec with
    the resolved compute `settings`; then say how the run's model call sites ran (`say_compile`; the runner logs
    and records them)."""
    if getattr(cfg, "plan", False):
        return show_plan(spec, cfg)
    spec.process = load()
    before = snapshot()
    summary = run_stage(spec, run_options(cfg, settings, call_sites=lambda: call_site_record(before), **run_kw))
    say_compile(spec.name, summary.call_sites, settings.compile)
    return summary.exit_code


def call_site_record(before: dict) -> dict:
    """How the call sites ran since `before` (an engine.compile.snapshot()): per site name its calls compiled /
    eager, graphs, compile seconds, CUDA graphs, fallback and reasons, plus `eager_unet_calls` — JSON-able, for the
    rank's log (and, once the runner takes it, its summary and commit records)."""
    sites = summarise([r for r in since(before) if r["calls_compiled"] or r["calls_eager"] or r["fell_back"]])
    unet = sites.get("unet")
    return {"sites": sites, "eager_unet_calls": unet["calls_eager"] if unet else 0}


def say_compile(stage: str, rec: dict, compiled: bool) -> None:
    """After a run (the runner logged `rec` as a `compile` event and put it in every commit record): one line on
    stderr when compiling was asked for or a site fell back."""
    import sys

    sites = (rec or {}).get("sites") or {}
    if sites and (compiled or any(v["fell_back"] for v in sites.values())):
        parts = [f"{name}: {v['calls_compiled']} compiled / {v['calls_eager']} eager calls, {v['graphs']} graphs "
                 f"({v['compile_s']:.0f} s)" + (" FELL BACK: " + "; ".join(v["reasons"]) if v["fell_back"] else "")
                 for name, v in sites.items()]
        print(f"[{stage}] call sites: " + "; ".join(parts), file=sys.stderr, flush=True)
