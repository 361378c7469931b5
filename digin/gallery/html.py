"""Static HTML gallery: plain files, relative links, no JavaScript, no server.

Layout written under `out/`:
  index.html                         tasks
  <task>/index.html                  groups of the task (class pair / class / neuron) with counts
  <task>/<group>.html                one row per sample: original | sd | ours, metrics, loss curve (inline SVG)
  <task>/img/<sample>_<name>.png     images copied next to the pages
"""
from __future__ import annotations

import html
import math
import re
from collections import defaultdict
from pathlib import Path

from digin.gallery.records import ResultRecord

CSS = """body{font-family:sans-serif;margin:1em}img{max-width:256px;image-rendering:pixelated;min-width:96px}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px;vertical-align:top;font-size:13px}
.m td{border:none;padding:0 6px}"""


def slug(text: str) -> str:
    """A file-name-safe version of any string (stable, readable, never empty)."""
    s = re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_")
    return s[:100] or "_"


def _page(title: str, body: str, up: str | None = None) -> str:
    nav = f'<p><a href="{html.escape(up)}">up</a></p>' if up else ""
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{nav}<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def loss_curve_svg(values, width: int = 240, height: int = 120) -> str:
    """Inline SVG polyline of a loss curve, y axis labelled with min/max (non-finite points dropped)."""
    pts = [(i, float(v)) for i, v in enumerate(values or []) if v is not None and math.isfinite(float(v))]
    if not pts:
        return "<em>no loss curve</em>"
    pad = 30
    lo, hi = min(v for _, v in pts), max(v for _, v in pts)
    span_y = (hi - lo) or 1.0
    span_x = max(len(values) - 1, 1)
    coords = " ".join(
        f"{pad + (width - pad - 4) * i / span_x:.1f},{4 + (height - 20) * (1 - (v - lo) / span_y):.1f}" for i, v in pts)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="loss">'
            f'<rect x="{pad}" y="2" width="{width - pad - 2}" height="{height - 16}" fill="none" stroke="#999"/>'
            f'<polyline fill="none" stroke="#c00" stroke-width="1.5" points="{coords}"/>'
            f'<text x="0" y="12" font-size="10">{hi:.3g}</text>'
            f'<text x="0" y="{height - 16}" font-size="10">{lo:.3g}</text>'
            f'<text x="{pad}" y="{height - 2}" font-size="10">step 0..{len(values) - 1}</text></svg>')


def _format(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and len(v) > 8:
        return f"[{len(v)} values]"
    return str(v)


def _metrics_table(metrics: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_format(v))}</td></tr>"
                   for k, v in sorted(metrics.items()) if not isinstance(v, dict))
    return f'<table class="m">{rows}</table>'


def _write_image(folder: Path, stem: str, rec: ResultRecord, name: str) -> str:
    path = folder / "img" / f"{stem}_{slug(name)}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rec.image_png(name))
    return f"img/{path.name}"


def _sample_rows(folder: Path, rec: ResultRecord, columns: list[str], used: set) -> str:
    stem = slug(rec.key)
    while stem in used:  # two keys that slug alike must not overwrite each other's images
        stem += "_"
    used.add(stem)
    cells = []
    for name in columns:
        if name in rec.images:
            src = _write_image(folder, stem, rec, name)
            cells.append(f'<td>{html.escape(name)}<br><img src="{src}" alt="{html.escape(name)}"></td>')
        else:
            cells.append(f"<td>{html.escape(name)}<br><em>missing</em></td>")
    aux = "".join(f'<div>{html.escape(n)}<br><img src="{_write_image(folder, stem, rec, n)}" '
                  f'alt="{html.escape(n)}"></div>' for n in rec.aux_images)
    return (f"<tr><th colspan=\"{len(columns) + 2}\">{html.escape(rec.key)}</th></tr><tr>{''.join(cells)}"
            f"<td>{_metrics_table(rec.metrics)}</td><td>{loss_curve_svg(rec.loss_curve)}{aux}</td></tr>")


def _group_title(group: str, recs: list[ResultRecord]) -> str:
    m = recs[0].metrics
    if m.get("start_label") and m.get("target_label"):
        return f"{group}: {m['start_label']} → {m['target_label']}"
    if m.get("label"):
        return f"{group}: {m['label']}"
    return group


def write_gallery(records, out, columns=("orig", "sd", "ours"), title: str = "digin results") -> Path:
    """Write the gallery for `records` under `out`; returns the path of the top index.html."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_task: dict[str, dict[str, list[ResultRecord]]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        by_task[rec.task][rec.group].append(rec)
    task_items = []
    task_slugs: set = set()
    for task in sorted(by_task):
        tslug = slug(task)
        while tslug in task_slugs:
            tslug += "_"
        task_slugs.add(tslug)
        folder = out / tslug
        folder.mkdir(parents=True, exist_ok=True)
        group_items, group_slugs, used = [], set(), set()
        for group in sorted(by_task[task]):
            recs = sorted(by_task[task][group], key=lambda r: r.key)
            gslug = slug(group)
            while gslug in group_slugs or gslug == "index":
                gslug += "_"
            group_slugs.add(gslug)
            rows = "".join(_sample_rows(folder, r, list(columns), used) for r in recs)
            heading = "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "<th>metrics</th><th>loss</th>"
            gtitle = _group_title(group, recs)
            (folder / f"{gslug}.html").write_text(
                _page(f"{task} / {gtitle}", f"<table><tr>{heading}</tr>{rows}</table>", up="index.html"),
                encoding="utf-8")
            group_items.append(f'<li><a href="{gslug}.html">{html.escape(gtitle)}</a> ({len(recs)})</li>')
        (folder / "index.html").write_text(
            _page(task, f"<ul>{''.join(group_items)}</ul>", up="../index.html"), encoding="utf-8")
        n = sum(len(v) for v in by_task[task].values())
        task_items.append(f'<li><a href="{tslug}/index.html">{html.escape(task)}</a> '
                          f'({len(by_task[task])} groups, {n} samples)</li>')
    index = out / "index.html"
    index.write_text(_page(title, f"<ul>{''.join(task_items)}</ul>"), encoding="utf-8")
    return index
