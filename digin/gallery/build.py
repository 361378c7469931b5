"""Write a static gallery over result records.

Layout under `out/`:
  index.html                  the tasks, one summary line each
  <task>/index.html           run summary, histograms, per-category table, sortable / filterable result grid
  <task>/rows.js              the grid's data (thumbnails, numbers, texts) for assets/gallery.js
  <task>/pages.html           the list of the group pages
  <task>/<group>.html         every result of a group in full: images, metrics, loss / confidence curves, masks
  img/<hash>.png|jpg          each distinct image once;  thumb/<hash>.jpg  its thumbnail (made once)
  assets/gallery.css, gallery.js

Records stream in: each one's images are stored (and thumbnailed) as it arrives and only its metrics stay in
memory, so a run of 10,000 results does not hold 10,000 images.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from digin.gallery.html import group_page, group_title, index_page, unique_slug
from digin.gallery.overview import neuron_entries, pages_page, result_entries, rows_js, task_page
from digin.gallery.store import ImageStore, StoredImage, write_once
from digin.gallery.summary import result_row, summarise

ASSETS = ("gallery.css", "gallery.js")


@dataclass
class Item:
    """A result once its images are stored: what the pages need, no pixels."""

    key: str
    task: str
    group: str
    metrics: dict
    loss_curve: list | None
    images: dict[str, StoredImage] = field(default_factory=dict)
    aux: dict[str, StoredImage] = field(default_factory=dict)
    row: dict = field(default_factory=dict)


def _copy_assets(out: Path):
    (out / "assets").mkdir(parents=True, exist_ok=True)
    for name in ASSETS:
        write_once(out / "assets" / name, resources.files("digin.gallery").joinpath("static", name).read_bytes())


def is_neuron_visualisation(items: list[Item]) -> bool:
    """Neuron visualisations (a neuron, no start image): one grid row per neuron instead of per result."""
    return bool(items) and all(it.metrics.get("neuron") is not None and it.metrics.get("start") is None
                               and "orig" not in it.images for it in items)


def best_thumbs(grid: list[dict], n: int = 4) -> list[tuple]:
    """(page link, thumbnail relative to the root, width, height, alt) of the rows with the largest gains."""
    ranked = sorted((e for e in grid if e["im"] and e["g"] is not None), key=lambda e: -e["g"])[:n]
    return [(e["p"], e["im"][-1][1].removeprefix("../"), e["im"][-1][2], e["im"][-1][3], e["k"]) for e in ranked]


def task_inputs(sources: dict, names) -> dict | None:
    """Input counts (written / rejected / skipped, reasons) summed over the result shard sets of a task."""
    counts = [sources[n]["inputs"] for n in names if n in sources and sources[n].get("inputs")]
    if not counts:
        return None
    total = {"written": 0, "rejected": 0, "skipped": 0, "reasons": {}}
    for c in counts:
        for k in ("written", "rejected", "skipped"):
            total[k] += c[k]
        for r, n in c["reasons"].items():
            total["reasons"][r] = total["reasons"].get(r, 0) + n
    return total


def _write_task(folder: Path, task: str, items: list[Item], columns: list[str], evals: dict, inputs: dict | None,
                neuron_dir, store: ImageStore, max_top_images: int) -> dict:
    """A task's group pages, list of pages, grid data and overview page; returns its top-index entry."""
    from digin.gallery.neurons import load_neuron_info

    folder.mkdir(parents=True, exist_ok=True)
    cols = [c for c in columns if any(c in it.images for it in items)]
    groups: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        groups[it.group].append(it)
    page_of, links, gslugs = {}, [], set()
    for group in sorted(groups):
        page_of[group] = f"{unique_slug(group, gslugs, reserved=('index', 'pages'))}.html"
        gtitle = group_title(group, groups[group][0].metrics)
        (folder / page_of[group]).write_text(group_page(task, gtitle, groups[group], cols, evals), encoding="utf-8")
        links.append((page_of[group], gtitle, len(groups[group])))
    rows = [it.row for it in items]
    summary = summarise(rows, inputs)
    notes = []
    if is_neuron_visualisation(items):
        info = {}
        if neuron_dir:
            info, notes = load_neuron_info(Path(neuron_dir), {it.metrics["neuron"] for it in items}, store,
                                           max_top_images)
        else:
            notes.append("top-activating images and names: no neuron folder found beside these results")
        grid = neuron_entries(items, page_of, info)
    else:
        grid = result_entries(items, cols, page_of)
    (folder / "rows.js").write_text(rows_js(grid, cols), encoding="utf-8")
    (folder / "pages.html").write_text(pages_page(task, links), encoding="utf-8")
    (folder / "index.html").write_text(task_page(task, summary, rows, grid, len(links), notes), encoding="utf-8")
    return {"folder": folder.name, "task": task, "summary": summary, "thumbs": best_thumbs(grid)}


def write_gallery(records, out, columns=("orig", "recon", "sd", "ours"), title: str = "digin results", *,
                  sources: dict | None = None, evals: dict | None = None, thumb_px: int = 128,
                  max_top_images: int = 10, prune: bool = True) -> Path:
    """Write the gallery for `records` (any iterable of ResultRecord) under `out`; returns the top index.html.

    sources: record.source (a result shard set folder) → {"task": its task name, "inputs":
    records.input_counts(...), "neuron_dir": the neuron pipeline folder around it or None}, for the run summary
    (also of a run without results) and the neuron rows;
    evals: key → `digin eval` row; prune: delete images an earlier build into `out` left that this one does not show.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    evals, sources = evals or {}, sources or {}
    _copy_assets(out)
    store = ImageStore(out, thumb_px)
    by_task: dict[str, list[Item]] = defaultdict(list)
    task_sources: dict[str, set] = defaultdict(set)
    for rec in records:  # images stored as they stream in; only metrics stay in memory
        task_sources[rec.task].add(rec.source)
        by_task[rec.task].append(Item(
            rec.key, rec.task, rec.group, rec.metrics, rec.loss_curve,
            images={n: store.put(v, f"{rec.key}/{n}", thumb=n in columns) for n, v in rec.images.items()},
            aux={n: store.put(v, f"{rec.key}/{n}", thumb=False) for n, v in rec.aux_images.items()},
            row=result_row(rec.key, rec.task, rec.group, rec.metrics, evals.get(rec.key))))
    seen = set().union(*task_sources.values())
    for name, src in sources.items():  # a run whose samples were all rejected still gets its summary
        if src.get("task") and name not in seen:
            by_task.setdefault(src["task"], [])
            task_sources[src["task"]].add(name)
    entries, task_slugs = [], set()
    for task in sorted(by_task):
        names = sorted((n for n in task_sources[task] if n in sources), key=str)
        neuron_dirs = [sources[n]["neuron_dir"] for n in names if sources[n].get("neuron_dir")]
        folder = out / unique_slug(task, task_slugs, reserved=("img", "thumb", "assets"))
        entries.append(_write_task(folder, task, sorted(by_task[task], key=lambda it: it.key), list(columns), evals,
                                   task_inputs(sources, names), neuron_dirs[0] if neuron_dirs else None, store,
                                   max_top_images))
    index = out / "index.html"
    index.write_text(index_page(title, entries), encoding="utf-8")
    if prune:
        store.prune()
    return index
