"""`digin gallery results=[<result shard dir>,...] out=<folder>`: static HTML pages over result shards.

Open `<out>/index.html` in any browser, also from a file:// URL after copying the folder (no server). Per task:
a run summary (counts, success rate, confidence gain, distances and flips from `digin eval` when `evals=[...]`
names its out folders), histograms, a per-class table and a grid of every result that sorts and filters in the
page; each row opens the full page of its group. Member names of the result shards are set by `fields.*`
(defaults: orig/recon/sd/ours images, mask/attention extras, metrics.json with a `loss_curve` list).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from digin.gallery.records import ShardFields


@dataclass
class Config:
    results: list[str] = field(default_factory=list)  # result shard set folders (one per task run)
    out: str = "gallery"
    evals: list[str] = field(default_factory=list)  # `digin eval` out folders (per_sample.jsonl) over these results
    task: str | None = None  # task name for records without one (default: the shard set's name)
    columns: list[str] = field(default_factory=lambda: ["orig", "recon", "sd", "ours"])
    title: str = "digin results"
    thumb_size: int = 128  # thumbnails fit in a square of this many pixels
    max_top_images: int = 10  # top-activating dataset images shown per neuron
    fields: ShardFields = field(default_factory=ShardFields)
    check: bool = True  # crawl the written pages and fail on broken links/images


def open_results(cfg: Config) -> list:
    """Every results folder as a shard set, refused with a message naming the key and folder before anything is
    written."""
    from digin.shards.manifest import ShardError, ShardSet

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


def run(cfg: Config):
    from digin.gallery import check_gallery, iter_records, write_gallery
    from digin.gallery.neurons import neuron_folder
    from digin.gallery.records import input_counts, task_of
    from digin.gallery.summary import load_eval_rows

    sets = open_results(cfg)
    evals = load_eval_rows(cfg.evals)
    sources = {str(ss.dir): {"task": cfg.task or task_of(ss), "inputs": input_counts(ss),
                             "neuron_dir": neuron_folder(ss.dir)} for ss in sets}
    counted = [0]

    def records():
        for ss in sets:
            for rec in iter_records(ss, cfg.fields, cfg.task):
                counted[0] += 1
                yield rec

    index = write_gallery(records(), cfg.out, columns=list(cfg.columns), title=cfg.title, sources=sources,
                          evals=evals, thumb_px=cfg.thumb_size, max_top_images=cfg.max_top_images)
    if cfg.check:  # links and files; every image was decoded once while it was stored
        problems, pages, images = check_gallery(cfg.out, decode=False)
        if problems:
            raise RuntimeError("gallery check failed:\n" + "\n".join(problems[:20]))
        print(f"gallery: {counted[0]} results, {pages} pages, {images} images -> {Path(index)}")
    return index
