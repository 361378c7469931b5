"""Page shell, the per-group pages (every result in full) and the top index of a gallery.

Every text that comes from results (keys, labels, prompts, metric names) goes through `html.escape`; pages link
only relative files (images under `img/` and `thumb/` at the gallery root, `assets/` for the shared CSS/JS).
"""
from __future__ import annotations

import html
import re

from digin.gallery.svg import curves_svg

esc = html.escape


def slug(text: str) -> str:
    """A file-name-safe version of any string (stable, readable, never empty)."""
    s = re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_")
    return s[:100] or "_"


def unique_slug(text: str, taken: set, reserved=()) -> str:
    """slug(text), suffixed with '_' until it is new in `taken` (two names that slug alike keep apart); added."""
    s = slug(text)
    while s in taken or s in reserved:
        s += "_"
    taken.add(s)
    return s


def page(title: str, body: str, depth: int, up: str | None = None, scripts=()) -> str:
    """A complete page; `depth` = folders below the gallery root (for the shared assets' relative path)."""
    root = "../" * depth
    nav = f'<p class="nav"><a href="{esc(up)}">up</a></p>' if up else ""
    js = "".join(f'<script src="{esc(s)}"></script>' for s in scripts)
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<link rel="stylesheet" href="{root}assets/gallery.css"></head><body>{nav}<h1>{esc(title)}</h1>\n'
            f"{body}\n{js}</body></html>\n")


def fmt(v) -> str:
    """A metric value for a table cell: floats to 4 digits, per-iteration lists shortened (the curves show them)."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and len(v) > 3 and all(isinstance(x, (int, float)) or x is None for x in v):
        return f"[{len(v)} values]"
    if isinstance(v, (list, tuple)) and len(v) > 8:
        return f"[{len(v)} values]"
    return str(v)


def _metrics_table(metrics: dict, evaluation: dict | None) -> str:
    rows = [(k, v) for k, v in sorted(metrics.items()) if not isinstance(v, dict)]
    rows += [(f"eval: {k}", v) for k, v in sorted((evaluation or {}).items()) if k not in ("key", "task", "group")]
    return '<table class="m">' + "".join(f"<tr><td>{esc(str(k))}</td><td>{esc(fmt(v))}</td></tr>"
                                         for k, v in rows) + "</table>"


def figure(name: str, img, prefix: str, thumb: bool = False, caption: str | None = None) -> str:
    """An image cell linking the full image; `thumb` shows the thumbnail (lazily loaded) instead."""
    src, w, h = (img.thumb, img.thumb_width, img.thumb_height) if thumb else (img.src, img.width, img.height)
    return (f'<figure><a href="{esc(prefix + img.src)}"><img src="{esc(prefix + src)}" width="{w}" height="{h}" '
            f'loading="lazy" alt="{esc(name)}"></a><figcaption>{esc(caption or name)}</figcaption></figure>')


def anchor(key: str) -> str:
    return "s-" + slug(key)


def group_page(task: str, title: str, items: list, columns: list[str], evals: dict) -> str:
    """Every result of one group in full: images, metrics (and `digin eval` numbers), loss / confidence curves
    with the best iterate marked, masks and attention maps."""
    blocks, anchors = [], set()
    for it in items:
        m = it.metrics
        cells = "".join(figure(c, it.images[c], "../") if c in it.images
                        else f'<figure class="missing"><em>missing</em><figcaption>{esc(c)}</figcaption></figure>'
                        for c in columns)
        aux = "".join(figure(n, img, "../") for n, img in it.aux.items())
        conf = {k: v for k, v in (m.get("confidences") or {}).items() if isinstance(v, list)}
        best = m.get("best_iter") if isinstance(m.get("best_iter"), int) else None
        curves = (curves_svg({"loss": it.loss_curve or []}, mark=best, empty="no loss curve")
                  + (curves_svg(conf, mark=best) if conf else ""))
        status = it.row["status"]
        flag = "success" if it.row["success"] else "no success"
        blocks.append(
            f'<div class="result" id="{unique_slug(anchor(it.key), anchors)}"><h3>{esc(it.key)} '
            f'<span class="st st-{esc(slug(status))}">{esc(status)}</span> <span class="fl">{esc(flag)}</span></h3>'
            f'<div class="cells">{cells}</div><div class="detail"><div>{_metrics_table(m, evals.get(it.key))}</div>'
            f'<div>{curves}</div><div class="cells">{aux}</div></div></div>')
    return page(f"{task} / {title}", "".join(blocks), depth=1, up="index.html")


def group_title(group: str, metrics: dict) -> str:
    if metrics.get("start_label") and metrics.get("target_label"):
        return f"{group}: {metrics['start_label']} → {metrics['target_label']}"
    if metrics.get("label"):
        return f"{metrics['label']} (class {metrics['class']})" if metrics.get("class") is not None else \
            f"{group}: {metrics['label']}"
    if metrics.get("neuron") is not None and metrics.get("word"):
        return f"{group}: {metrics['word']}"
    return group


def index_page(title: str, entries: list[dict]) -> str:
    """The top page: a table of the tasks (results, success, mean gain, problems) with the thumbnails of their
    largest gains."""
    head = ("<tr><th>task</th><th>results</th><th>success</th><th>mean gain</th><th>non-finite</th>"
            "<th>rejected / skipped inputs</th><th>largest gains</th></tr>")
    rows = []
    for e in entries:
        s = e["summary"]
        rate = "—" if s["success_rate"] is None else f"{100 * s['success_rate']:.1f} %"
        gain = "—" if s["gain_mean"] is None else f"{s['gain_mean']:+.3g} ({s['score_label']})"
        inp = s["inputs"]
        bad = f"{inp['rejected']} / {inp['skipped']}" if inp else "—"
        thumbs = "".join(f'<a href="{esc(e["folder"])}/{esc(href)}"><img src="{esc(src)}" width="{w}" '
                         f'height="{h}" loading="lazy" alt="{esc(alt)}"></a>' for href, src, w, h, alt in e["thumbs"])
        rows.append(f'<tr><td><a href="{esc(e["folder"])}/index.html">{esc(e["task"])}</a></td>'
                    f'<td>{s["results"]}</td><td>{rate}</td><td>{esc(gain)}</td><td>{s["status"].get("nonfinite", 0)}'
                    f'</td><td>{bad}</td><td class="strip">{thumbs}</td></tr>')
    return page(title, f"<table class='tasks'>{head}{''.join(rows)}</table>", depth=0)
