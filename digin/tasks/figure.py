"""`digin figure results=[...] keys=[...] out=<folder>`: paper-ready figures of chosen results, as PNG, PDF and SVG.

  digin figure results=[/runs/uvce-imagenet] keys=[imagenet/val/00042,imagenet/val/00107/t3] out=/runs/fig
  digin figure results=[/runs/diff/results] keys=[diff/c00001,diff/c00002] sort=gain name=diff_top out=/runs/fig
  digin figure results=[/runs/neurons-se152/visualise] keys=[neurons/n319,neurons/n373] out=/runs/fig

A key names one result or every result under it (an image key: all its targets). Rows follow the reference's
figures (see digin.stages.gallery.figure): UVCE rows (the original, then each target's counterfactual with its label and
confidences), classifier differences sd | ours with both classifiers' confidences, neuron visualisation grids, or
one row per result with the chosen `columns`. Results are read by key (one seek each). Prints the files written.
"""
from __future__ import annotations

from dataclasses import dataclass

from digin.fields import Int, key, section
from digin.stages.gallery.figure import (FORMATS, LAYOUTS, SORTS, UnknownKeys, build_rows, select, sort_records,
                                         write_figure)
from digin.stages.gallery.records import ShardFields
from digin.stages.gallery.summary import load_eval_rows
from digin.tasks.gallery import Config as GalleryConfig, open_results


@dataclass
class Config:
    results: list[str] = key(help="result shard set folders", factory=list)
    keys: list[str] = key(help="results (or image / neuron keys: everything under them)", factory=list)
    out: str = key("figures", "output folder of the figure files", results=False)
    name: str = key("figure", "files <out>/<name>.png|pdf|svg")
    layout: str = key("auto", "auto | uvce | pairs | diff | neurons", choices=LAYOUTS)
    sort: str = key("given", "given (as listed) | key | gain | -gain | score | -score ('-': ascending)",
                    choices=SORTS)
    columns: list[str] = key(help="layout=pairs: orig, recon, sd, ours, diff (|ours − orig| heat map), overlay (mask "
                                  "over the original), mask", factory=lambda: ["orig", "recon", "sd", "ours", "diff"])
    formats: list[str] = key(help="files written: png | pdf | svg", factory=lambda: ["png", "pdf", "svg"])
    resolution: int = key(256, "each image is drawn this many pixels wide (the PDF at 96 px per inch)",
                               rule=Int(8, 8192, multiple_of=8))
    evals: list[str] = key(help="`digin eval` out folders: the original's confidences", factory=list)
    fields: ShardFields = section(ShardFields, "member names of the result shards")


def check(cfg: Config):
    """Refuse bad keys before anything is read or written: one line each."""
    if not cfg.results:
        raise SystemExit("digin figure: give results=[<result shard folder>, ...]")
    if not cfg.keys:
        raise SystemExit("digin figure: give keys=[<result key>, ...] (an image key selects all its targets)")
    bad = [f for f in cfg.formats if f not in FORMATS]
    if bad or not cfg.formats:
        raise SystemExit(f"digin figure: formats {bad or '[]'} not allowed (allowed: {', '.join(FORMATS)})")
    cols = ("orig", "recon", "sd", "ours", "diff", "overlay", "mask")
    bad = [c for c in cfg.columns if c not in cols]
    if bad:
        raise SystemExit(f"digin figure: columns {', '.join(bad)} not allowed (allowed: {', '.join(cols)})")


def run(cfg: Config):
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
