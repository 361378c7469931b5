"""Write a static gallery over result records.

Layout under `out/`:
  index.html                  the tasks, one summary line each, with their largest gains (original → ours)
  <task>/index.html           run summary, histograms, per-category table, sortable / filterable result grid
  <task>/rows.js              the grid's data (thumbnails, numbers, texts) for assets/gallery.js
  <task>/pages.html           the list of the detail pages
  <task>/<index>-<label>.html every result of a start class (image edits: a row per image with all its targets,
                              then each pair), class or neuron in full (detail.py); neuron pages start with the
                              neuron's top dataset images and words
  img/<id>.png|jpg            each image once;  thumb/<id>.jpg  its thumbnail (the stage's, or made once)
  assets/gallery.css, gallery.js

Records stream in: each one's images are stored as it arrives and only its metrics stay in memory, so a run of
10,000 results does not hold 10,000 images.
"""
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from digin.stages.gallery.detail import detail_page, page_of, pair_title
from digin.stages.gallery.html import anchor, index_page, unique_slug
from digin.stages.gallery.neurons import load_neuron_info, neuron_header
from digin.stages.gallery.overview import neuron_entries, pages_page, result_entries, rows_js, task_page
from digin.stages.gallery.store import ImageStore, StoredImage, write_once
from digin.stages.gallery.summary import result_row, summarise

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
    evaluation: dict | None = None  # its `digin eval` row


def _copy_assets(out: Path):
    (out / "assets").mkdir(parents=True, exist_ok=True)
    for name in ASSETS:
        write_once(out / "assets" / name, resources.files("digin.stages.gallery").joinpath("static", name).read_bytes())


def is_neuron_visualisation(items: list[Item]) -> bool:
    """Neuron visualisations (a neuron, no start image): one grid row per neuron instead of per result."""
    return bool(items) and all(it.metrics.get("neuron") is not None and it.metrics.get("start") is None
                               and "orig" not in it.images for it in items)


def best_thumbs(items: list, href_of, n: int = 4) -> list[dict]:
    """The results with the largest gains, for the top page: link, thumbnails of the original (or sd) and of
    ours, the title and the score before → after."""
    ranked = sorted((it for it in items if "ours" in it.images and it.row["gain"] is not None),
                    key=lambda it: (-it.row["gain"], it.key))[:n]
    out = []
    for it in ranked:
        base = "orig" if "orig" in it.images else "sd" if "sd" in it.images else None
        out.append({"href": href_of(it), "key": it.key, "title": pair_title(it.metrics, it.key),
                    "before": it.row["before"], "after": it.row["after"], "kind": it.row["kind"],
                    "images": [(name, it.images[name]) for name in (base, "ours") if name]})
    return out


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


def _write_task(folder: Path, task: str, items: list[Item], columns: list[str], inputs: dict | None,
                neuron_dir, store: ImageStore, max_top_images: int, reference: dict) -> dict:
    """A task's detail pages, list of pages, grid data and overview page; returns its top-index entry."""
    folder.mkdir(parents=True, exist_ok=True)
    cols = [c for c in columns if any(c in it.images for it in items)]
    pages: dict[tuple, list[Item]] = defaultdict(list)
    names: dict[tuple, tuple[str, str]] = {}
    for it in items:
        sort, title, stem = page_of(it)
        pages[sort].append(it)
        names[sort] = (title, stem)
    notes, info = [], {}
    neuron_vis = is_neuron_visualisation(items)
    if neuron_vis:
        if neuron_dir:
            info, notes = load_neuron_info(Path(neuron_dir), {it.metrics["neuron"] for it in items}, store,
                                           max_top_images)
        else:
            notes.append("top-activating images and names: no neuron folder found beside these results")
    file_of, links, slugs = {}, [], set()
    for sort in sorted(pages):
        file_of[sort] = f"{unique_slug(names[sort][1], slugs, reserved=('index', 'pages'))}.html"
    page_file = {it.key: file_of[sort] for sort, its in pages.items() for it in its}
    for sort in sorted(pages):
        its, (title, _) = pages[sort], names[sort]
        header = ""
        if neuron_vis:
            n = int(its[0].metrics["neuron"])
            words = [w for w, _ in info.get(n, {}).get("words", [])[:3]]
            title += f": {', '.join(words)}" if words else ""
            header = neuron_header(n, info.get(n, {}), [it.row for it in its])
        base = task.rsplit(" · ", 1)[0]  # compared runs: "<task> · <run label>"
        ref = reference.get(base) or reference.get(base.split("_")[0], {})
        (folder / file_of[sort]).write_text(detail_page(task, title, its, cols, ref, header), encoding="utf-8")
        links.append((file_of[sort], title, len(its)))

    def href_of(it):
        return f"{page_file[it.key]}#{anchor(it.key)}"

    rows = [it.row for it in items]
    summary = summarise(rows, inputs)
    grid = neuron_entries(items, href_of, info) if neuron_vis else result_entries(items, cols, href_of)
    (folder / "rows.js").write_text(rows_js(grid, cols), encoding="utf-8")
    (folder / "pages.html").write_text(pages_page(task, links), encoding="utf-8")
    (folder / "index.html").write_text(task_page(task, summary, rows, grid, len(links), notes), encoding="utf-8")
    return {"folder": folder.name, "task": task, "summary": summary, "best": best_thumbs(items, href_of),
            "href_of": href_of}


def write_gallery(records, out, columns=("orig", "recon", "sd", "ours"), title: str = "digin results", *,
                  sources: dict | None = None, evals: dict | None = None, thumb_px: int = 128,
                  max_top_images: int = 10, prune: bool = True, reference: dict | None = None,
                  extra_pages=None) -> Path:
    """Write the gallery for `records` (any iterable of ResultRecord) under `out`; returns the top index.html.

    sources: record.source (a result shard set folder) → {"task": its task name, "inputs":
    records.input_counts(...), "neuron_dir": the neuron pipeline folder around it or None}, for the run summary
    (also of a run without results) and the neuron rows;
    evals: key (or (source, key), which wins) → `digin eval` row; prune: delete images an earlier build into `out`
    left that this one does not show;
    reference: task → {metrics field: meaning} (the output reference: the metric tables' definitions);
    extra_pages: called as extra_pages(out, items by task, task → folder, task → (item → link in its folder)) ->
    [top-index entries], before the index is written (the comparisons).
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
        ev = evals.get((rec.source, rec.key)) or evals.get(rec.key)
        by_task[rec.task].append(Item(
            rec.key, rec.task, rec.group, rec.metrics, rec.loss_curve,
            images={n: store.put(v, f"{rec.key}/{n}", thumb=n in columns, origin=rec.origins.get(n),
                                 small=rec.thumbs.get(n), slot=f"{rec.source}/{n}") for n, v in rec.images.items()},
            aux={n: store.put(v, f"{rec.key}/{n}", thumb=False, origin=rec.origins.get(n), slot=f"{rec.source}/{n}")
                 for n, v in rec.aux_images.items()},
            row=result_row(rec.key, rec.task, rec.group, rec.metrics, ev), evaluation=ev))
    seen = set().union(*task_sources.values())
    for name, src in sources.items():  # a run whose samples were all rejected still gets its summary
        if src.get("task") and name not in seen:
            by_task.setdefault(src["task"], [])
            task_sources[src["task"]].add(name)
    entries, task_slugs = [], set()
    for task in sorted(by_task):
        names = sorted((n for n in task_sources[task] if n in sources), key=str)
        neuron_dirs = [sources[n]["neuron_dir"] for n in names if sources[n].get("neuron_dir")]
        folder = out / unique_slug(task, task_slugs, reserved=("img", "thumb", "assets", "compare"))
        entries.append(_write_task(folder, task, sorted(by_task[task], key=lambda it: it.key), list(columns),
                                   task_inputs(sources, names), neuron_dirs[0] if neuron_dirs else None, store,
                                   max_top_images, reference or {}))
    extra = extra_pages(out, by_task, {e["task"]: e["folder"] for e in entries},
                        {e["task"]: e["href_of"] for e in entries}) if extra_pages else []
    index = out / "index.html"
    index.write_text(index_page(title, entries, extra), encoding="utf-8")
    if prune:
        store.prune()
    return index
