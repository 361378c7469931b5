"""`digin figure results=[...] keys=[...] out=<folder>`: paper-ready figures of chosen results, as PNG, PDF and SVG.

  digin figure results=[/runs/uvce-imagenet] keys=[imagenet/val/00042,imagenet/val/00107/t3] out=/runs/fig
  digin figure results=[/runs/diff/results] keys=[diff/c00001,diff/c00002] sort=gain name=diff_top out=/runs/fig
  digin figure results=[/runs/neurons-se152/visualise] keys=[neurons/n319,neurons/n373] out=/runs/fig

A key names one result or every result under it (an image key: all its targets). Rows follow the reference's
figures (see digin.gallery.figure): UVCE rows (the original, then each target's counterfactual with its label and
confidences), classifier differences sd | ours with both classifiers' confidences, neuron visualisation grids, or
one row per result with the chosen `columns`. Results are read by key (one seek each). Prints the files written.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from digin.gallery.records import ShardFields


@dataclass
class Config:
    results: list[str] = field(default_factory=list)  # result shard set folders
    keys: list[str] = field(default_factory=list)  # results (or image / neuron keys: everything under them)
    out: str = "figures"
    name: str = "figure"  # files <out>/<name>.png|pdf|svg
    layout: str = "auto"  # auto | uvce | pairs | diff | neurons
    sort: str = "given"  # given (as listed) | key | gain | -gain | score | -score ('-': ascending)
    columns: list[str] = field(default_factory=lambda: ["orig", "recon", "sd", "ours", "diff"])  # layout=pairs:
    # orig, recon, sd, ours, diff (|ours − orig| heat map), overlay (mask over the original), mask
    formats: list[str] = field(default_factory=lambda: ["png", "pdf", "svg"])
    resolution: int = 256  # each image is drawn this many pixels wide (the PDF at 96 px per inch)
    evals: list[str] = field(default_factory=list)  # `digin eval` out folders: the original's confidences
    fields: ShardFields = field(default_factory=ShardFields)


def check(cfg: Config):
    """Refuse bad keys before anything is read or written: one line each."""
    from digin.gallery.figure import FORMATS, LAYOUTS, SORTS

    if not cfg.results:
        raise SystemExit("digin figure: give results=[<result shard folder>, ...]")
    if not cfg.keys:
        raise SystemExit("digin figure: give keys=[<result key>, ...] (an image key selects all its targets)")
    for key, value, allowed in (("layout", cfg.layout, LAYOUTS), ("sort", cfg.sort, SORTS)):
        if value not in allowed:
            raise SystemExit(f"digin figure: {key}={value} is not one of {', '.join(allowed)}")
    bad = [f for f in cfg.formats if f not in FORMATS]
    if bad or not cfg.formats:
        raise SystemExit(f"digin figure: formats {bad or '[]'} not allowed (allowed: {', '.join(FORMATS)})")
    cols = ("orig", "recon", "sd", "ours", "diff", "overlay", "mask")
    bad = [c for c in cfg.columns if c not in cols]
    if bad:
        raise SystemExit(f"digin figure: columns {', '.join(bad)} not allowed (allowed: {', '.join(cols)})")


def run(cfg: Config):
    from digin.gallery.figure import UnknownKeys, build_rows, select, sort_records, write_figure
    from digin.gallery.summary import load_eval_rows
    from digin.tasks.gallery import Config as GalleryConfig
    from digin.tasks.gallery import open_results

    check(cfg)
    sets = open_results(GalleryConfig(results=list(cfg.results)))
    evals = load_eval_rows(cfg.evals)
    try:
        records = select(sets, list(cfg.keys), cfg.fields)
    except UnknownKeys as e:
        raise SystemExit(f"digin figure: unknown keys (in none of {', '.join(cfg.results)}): {e}") from None
    layout, rows = build_rows(sort_records(records, cfg.sort), cfg.layout, tuple(cfg.columns), evals)
    if not any(r.panels for r in rows):
        raise SystemExit(f"digin figure: the {len(records)} selected results have no images to show "
                         f"(layout {layout})")
    paths = write_figure(rows, cfg.out, cfg.name, tuple(cfg.formats), cfg.resolution)
    print(f"figure: {len(rows)} rows ({layout}), {len(records)} results -> " + ", ".join(map(str, paths)))
    return paths
