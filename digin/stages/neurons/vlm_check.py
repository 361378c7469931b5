"""VLM yes/no check (the reference's cog_spurious_imagenet.py): "Does this image contain a {label}? Please only answer
with yes or no." for every image of an image shard set (Spurious ImageNet: images of spurious features without the
class object) or for the generated images of result shards (does the spurious-feature visualisation still show the
class?). An answer counts as yes when it contains "yes" (the reference's rule).

Work items: an image key, or `<result key>/<member>` for each checked member of a result (`check_members`). The
class asked about: an image's label (with `class_id_field`, the id parsed from its class folder name as the
reference does for Spurious ImageNet: int(name.split('_')[field])); a result's `class`, else `target`, else `start`.
Output shard set out/spurious_check: `answer.json` + `image.jpg` (the checked image, ≤ 256 px, for the gallery);
once every unit is committed, out/spurious_check.json holds the per-class and total yes-fractions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from digin.caption.backends import get_captioner, to_images_BCHW
from digin.caption.templates import label_of
from digin.engine.presets import resolve_compute
from digin.shards.keyed import KeyIndex
from digin.shards.manifest import ShardSet, write_json
from digin.shards.reader import iter_samples
from digin.shards.runner import StageSpec
from digin.stages.args import record
from digin.stages.gallery.thumbs import thumbnail_jpeg
from digin.stages.models import pick_device
from digin.stages.neurons.spurious import class_names
from digin.stages.plans import load_inputs, pair_plan, run_or_show

QUESTION = "Does this image contain a {label}? Please only answer with yes or no."
FOLDER = "spurious_check"
SUMMARY = "spurious_check.json"
THUMB_PX = 256


def is_yes(answer: str) -> bool:
    return "yes" in str(answer).lower()


def image_class(meta: dict, classes: list, field: int | None, names: list | None) -> tuple[int | None, str | None]:
    """(class id, label) of an input image: meta.label / label_name, or the id inside its class folder name."""
    y = meta.get("label")
    if field is None:
        return (int(y) if y is not None else None), label_of(meta)
    folder = classes[y] if y is not None and 0 <= y < len(classes) else str(meta.get("label_name", ""))
    try:
        c = int(str(folder).split("_")[field])
    except (IndexError, ValueError):
        return None, None
    return c, (names[c] if names and 0 <= c < len(names) else None)


def result_class(m: dict, names: list | None) -> tuple[int | None, str | None]:
    """(class id, label) a result is about: its class (txt2img), else its target (UVCE), else its start."""
    for key, lab in (("class", "label"), ("target", "target_label"), ("start", "start_label")):
        if m.get(key) is not None:
            c = int(m[key])
            label = m.get(lab) or (names[c] if names and 0 <= c < len(names) else None)
            return c, (str(label).split(",")[0].strip() if label else None)
    return None, None


def result_items(ss, members: list[str]):
    """Plan rows (output key, result key, payload): every result × checked member, from the commit records."""
    return [(f"{k}/{m}", k, {"member": m}) for k in KeyIndex(ss).keys() for m in members]


def make_process(cfg, captioner, names: list | None, classes: list):
    """process(batch): one question per (image, label), asked in groups of equal question."""
    question = cfg.question

    def process(batch):
        outs: list = [None] * batch.n_real
        todo = []
        for j, s in enumerate(batch.samples[:batch.n_real]):
            member = (s.get("item") or {}).get("member")
            img = s.get(member or "image")
            c, label = (result_class(s.get("metrics") or {}, names) if member else
                        image_class(s.get("meta") or {}, classes, cfg.class_id_field, names))
            if not isinstance(img, np.ndarray):
                outs[j] = {"__skip__": "no_image"}
            elif label is None:
                outs[j] = {"__skip__": "no_class"}
            else:
                todo.append((j, img, c, label, question.format(label=label), s["__key__"] if not member else
                             s["__key__"].rsplit("/", 1)[0]))
        for q in dict.fromkeys(t[4] for t in todo):
            rows = [t for t in todo if t[4] == q]
            answers = captioner.ask(to_images_BCHW([t[1] for t in rows], cfg.vlm_resolution), q)
            for (j, img, c, label, _, source), a in zip(rows, answers):
                outs[j] = {"answer": {"question": q, "answer": a, "yes": is_yes(a), "class": c, "label": label,
                                      "member": (batch.samples[j].get("item") or {}).get("member") or "image",
                                      "source_key": source, "backend": cfg.vlm_backend},
                           "image": ("jpg", thumbnail_jpeg(img, THUMB_PX))}
        return outs

    return process


def summarise(folder) -> dict:
    """Per class and in total: yes answers, images, yes-fraction (the reference's printout), from answer.json."""
    per: dict = {}
    for s in iter_samples(folder):
        a = s.get("answer")
        if not isinstance(a, dict):
            continue
        row = per.setdefault(str(a["class"]), {"label": a["label"], "yes": 0, "images": 0})
        row["yes"] += int(bool(a["yes"]))
        row["images"] += 1
    for row in per.values():
        row["fraction"] = row["yes"] / row["images"]
    yes, n = sum(r["yes"] for r in per.values()), sum(r["images"] for r in per.values())
    return {"classes": dict(sorted(per.items(), key=lambda kv: int(kv[0]))),
            "total": {"yes": yes, "images": n, "fraction": yes / n if n else None}}


def summary_lines(table: dict) -> list[str]:
    lines = [f"{r['label']}: {r['yes']} out of {r['images']} ({r['fraction']:.3f})" for r in table["classes"].values()]
    t = table["total"]
    if t["images"]:
        lines.append(f"Total: {t['yes']} out of {t['images']} ({t['fraction']:.3f})")
    return lines


def write_summary_if_done(out_dir, extra: dict) -> dict | None:
    """Once every unit of the check is committed (any rank may finish last): the summary file; else None."""
    ss = ShardSet.load(out_dir)
    if len(ss.records) < int(ss.meta.get("num_shards") or 0):
        return None
    table = {**summarise(out_dir), **extra}
    write_json(Path(out_dir).parent / SUMMARY, table)
    return table


def check_spec(cfg):
    """The plan (one item per image, or per result × member) from the commit records; input checks first."""
    if bool(cfg.images) == bool(cfg.results):
        raise SystemExit("digin neurons mode=spurious_check: give images=<image shard set> or results=<result shard "
                         "set> (one of them)")
    if "{label}" not in cfg.question:
        raise SystemExit(f"digin neurons mode=spurious_check: question={cfg.question!r} has no {{label}} placeholder")
    bad = [m for m in cfg.check_members if m not in ("sd", "ours")]
    if cfg.results and (bad or not cfg.check_members):
        raise SystemExit(f"digin neurons mode=spurious_check: check_members: {bad or []} — each one of sd, ours")
    role = "results" if cfg.results else "images"
    inputs, incomplete = load_inputs({role: cfg.results or cfg.images}, cfg.allow_incomplete)
    ss = inputs[0][1]
    if cfg.results:
        plan = pair_plan("spurious_check", cfg, inputs, result_items(ss, list(cfg.check_members)),
                         {"results": len(KeyIndex(ss)), "members": len(cfg.check_members)})
        wanted = ("item", "metrics", *cfg.check_members)
    else:
        keys = KeyIndex(ss).keys()
        plan = pair_plan("spurious_check", cfg, inputs, [(k, k, {}) for k in keys], {"images": len(keys)})
        wanted = ("item", "image", "meta")
    stage = {**record(cfg, "neurons_spurious_check"), "input": role}
    return StageSpec("spurious_check", plan, stage, inputs, required=wanted[1:2], classes=ss.classes or [],
                     incomplete=incomplete, fields=wanted[1:])


def run_spurious_check(cfg) -> int:
    spec = check_spec(cfg)
    dev = pick_device(cfg.device)
    names = class_names(cfg) if (cfg.class_names or cfg.class_id_field is not None) else None

    def load():
        opts = {"device": dev, **dict(cfg.vlm_options)}
        return make_process(cfg, get_captioner(cfg.vlm_backend, **opts), names, spec.classes)

    out = Path(cfg.out) / FOLDER
    settings = resolve_compute("auto", dev, batch_size=cfg.batch_size)  # the batch; the VLM's options set its dtype
    code = run_or_show(cfg, spec, load, settings, out=str(out), device=dev)
    if code == 0 and not cfg.plan:
        table = write_summary_if_done(out, {"question": cfg.question, "input": str(cfg.results or cfg.images)})
        if table is None:
            print("[neurons] spurious_check: other ranks are still answering; the last one writes "
                  f"{Path(cfg.out) / SUMMARY}", flush=True)
        else:
            print("\n".join(summary_lines(table)), flush=True)
    return code
