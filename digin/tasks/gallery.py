"""`digin gallery results=[<result shard dir>,...] out=<folder>`: static HTML pages over result shards.

Open `<out>/index.html` in any browser, also from a file:// URL after copying the folder (no server). Per task:
a run summary (counts, success rate, confidence gain, distances and flips from `digin eval` when `evals=[...]`
names its out folders), histograms, a per-class table and a grid of every result that sorts and filters in the
page; each row opens the page of its start class / class / neuron, where every result is shown in full like the
paper's figures (digin/stages/gallery/detail.py). `compare=[...]` adds a second run, joined by key on a comparison page.
`checks=[...]` (`digin neurons mode=spurious_check` folders) adds a page of the VLM's yes/no answers by class and puts
each checked result's answer beside its image; groups of similar neurons (`digin neurons mode=similar`, found
beside the visualisations) get a page with one comparison grid per group.
Member names of the result shards are set by `fields.*` (defaults: orig/recon/sd/ours images, mask/attention
extras, metrics.json with a `loss_curve` list).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from digin.fields import COUNT0, Int, key, section
from digin.shards.manifest import ShardError, ShardSet
from digin.stages.gallery import check_gallery, iter_records, write_gallery
from digin.stages.gallery.checks import answers_by_result, check_page, read_answers
from digin.stages.gallery.compare import SEP, write_comparisons
from digin.stages.gallery.neurons import neuron_folder, similar_page, similar_tables
from digin.stages.gallery.records import ShardFields, input_counts, task_of
from digin.stages.gallery.summary import load_eval_rows
from digin.stages.outputs import OUTPUTS


@dataclass
class Config:
    results: list[str] = key(help="result shard set folders (one per task run)", factory=list)
    out: str = key("gallery", "output folder of the HTML pages (open <out>/index.html)", results=False)
    evals: list[str] = key(help="`digin eval` out folders (per_sample.jsonl) over these results", factory=list)
    task: str | None = key(None, "task name for records without one (default: the shard set's name)")
    columns: list[str] = key(help="image members shown (as thumbnails) in each task's grid, in this order",
                             factory=lambda: ["orig", "recon", "sd", "ours"])
    title: str = key("digin results", "title of the index page")
    thumb_size: int = key(128, "thumbnails fit in a square of this many pixels", rule=Int(16, 4096))
    max_top_images: int = key(10, "top-activating dataset images shown per neuron", rule=COUNT0)
    fields: ShardFields = section(ShardFields, "member names of the result shards")
    check: bool = key(True, "crawl the written pages and fail on broken links/images")
    compare: list[str] = key(help="result shard sets to compare with `results` (B vs A), joined by key: a comparison "
                                  "page per task", factory=list)
    # (another run, another classifier, preset=reference vs fast)
    compare_evals: list[str] = key(help="`digin eval` out folders over the `compare` sets", factory=list)
    labels: list[str] = key(help="names of the two runs (default: their folder names)", factory=list)
    checks: list[str] = key(help="`digin neurons mode=spurious_check` out folders: a page of the VLM's answers by "
                                 "class, and each checked result's answer beside its image", factory=list)


def open_results(cfg: Config) -> list:
    """Every results folder as a shard set, refused with a message naming the key and folder before anything is
    written."""
    if not cfg.results:
        raise SystemExit("digin gallery: give results=[<result shard folder>, ...]")
    if cfg.thumb_size < 16:
        raise SystemExit(f"digin gallery: thumb_size must be at least 16, got {cfg.thumb_size}")
    sets = []
    for folder in cfg.results:
        try:
            sets.append(ShardSet.load(folder))
        except (FileNotFoundError, ShardError, ValueError) as e:
            raise SystemExit(f"digin gallery: results: {folder} is not a result shard set ({e})") from None
    return sets


def run_labels(cfg: Config) -> tuple[str, str]:
    if cfg.labels and len(cfg.labels) != 2:
        raise SystemExit(f"digin gallery: labels needs two names (results, compare), got {len(cfg.labels)}")
    if cfg.labels:
        la, lb = map(str, cfg.labels)
    else:
        la, lb = (" + ".join(Path(f).resolve().name for f in folders) for folders in (cfg.results, cfg.compare))
        if la == lb:
            la, lb = f"A: {la}", f"B: {lb}"
    if la == lb:
        raise SystemExit(f"digin gallery: labels must differ, got {la!r} twice")
    return la, lb


def check_common_keys(a_sets, b_sets, cfg: Config):
    """Two sets to compare must share result keys (from the commit records: nothing read yet)."""
    keys_a = {k for ss in a_sets for rec in ss.records.values() for k in rec.get("keys") or []}
    keys_b = {k for ss in b_sets for rec in ss.records.values() for k in rec.get("keys") or []}
    if not keys_a & keys_b:
        ex_a, ex_b = (min(k) if k else "none" for k in (keys_a, keys_b))
        raise SystemExit(f"digin gallery: compare: {', '.join(cfg.results)} and {', '.join(cfg.compare)} have no "
                         f"result keys in common ({len(keys_a)} vs {len(keys_b)} keys, e.g. {ex_a} / {ex_b})")


def output_reference() -> dict:
    """task → {metrics.json field or pattern: meaning}: the output reference, for the metric tables' definitions."""
    return {task: {**o.fields.get("metrics", {}), **o.patterns.get("metrics", {})} for task, o in OUTPUTS.items()}


def run(cfg: Config):
    sets = open_results(cfg)
    b_sets = open_results(Config(results=list(cfg.compare), thumb_size=cfg.thumb_size)) if cfg.compare else []
    if cfg.compare:
        check_common_keys(sets, b_sets, cfg)
    la, lb = run_labels(cfg) if cfg.compare else ("", "")
    evals = load_eval_rows(cfg.evals)
    if cfg.compare:  # rows keyed by (their run's source, key): the two runs share keys
        b_rows = load_eval_rows(cfg.compare_evals)
        evals = {(str(ss.dir), k): row for group, rows in ((sets, evals), (b_sets, b_rows)) for ss in group
                 for k, row in rows.items()}

    def name(ss, label):
        task = cfg.task or task_of(ss)
        return f"{task}{SEP}{label}" if label else task

    sources = {str(ss.dir): {"task": name(ss, label), "inputs": input_counts(ss), "neuron_dir": neuron_folder(ss.dir)}
               for group, label in ((sets, la), (b_sets, lb)) for ss in group}
    counted = [0]
    checked = read_answers(cfg.checks) if cfg.checks else []
    answers = answers_by_result(checked)

    def records():
        for group, label in ((sets, la), (b_sets, lb)):
            for ss in group:
                for rec in iter_records(ss, cfg.fields, cfg.task):
                    counted[0] += 1
                    if label:
                        rec.task = f"{rec.task}{SEP}{label}"
                    for member, said in answers.get(rec.key, {}).items():  # shown beside the image (detail.py)
                        rec.metrics[f"vlm_answer_{member}"] = said
                    yield rec

    def extras(out, by_task, folders, hrefs):
        entries = write_comparisons(out, by_task, la, lb, folders, hrefs) if cfg.compare else []
        link = {it.key: f"../{folders[t]}/{hrefs[t](it)}" for t, its in by_task.items() for it in its}
        groups = [t for d in dict.fromkeys(s["neuron_dir"] for s in sources.values() if s["neuron_dir"])
                  for t in similar_tables(d)]
        if groups:
            entries.append(similar_page(out, groups, link.get))
        if cfg.checks:
            entries.append(check_page(out, checked, link.get))
        return entries

    index = write_gallery(records(), cfg.out, columns=list(cfg.columns), title=cfg.title, sources=sources,
                          evals=evals, thumb_px=cfg.thumb_size, max_top_images=cfg.max_top_images,
                          reference=output_reference(), extra_pages=extras)
    if cfg.check:  # links and files; every image was decoded once while it was stored
        problems, pages, images = check_gallery(cfg.out, decode=False)
        if problems:
            raise RuntimeError("gallery check failed:\n" + "\n".join(problems[:20]))
        print(f"gallery: {counted[0]} results, {pages} pages, {images} images -> {Path(index)}")
    return index
