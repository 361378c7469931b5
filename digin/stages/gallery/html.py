"""Page shell, names of files and anchors, and the top index of a gallery (the pages of every result in full are
detail.py's).

Every text that comes from results (keys, labels, prompts, metric names) goes through `html.escape`; pages link
only relative files (images under `img/` and `thumb/` at the gallery root, `assets/` for the shared CSS/JS).
"""
from __future__ import annotations

import html
import re

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


def anchor(key: str) -> str:
    return "s-" + slug(key)


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.3g}"


def best_strip(e: dict) -> str:
    """The largest gains of a task: original (or sd) and ours side by side, with the title and the score."""
    label = e["summary"]["score_label"]
    out = []
    for b in e["best"]:
        pics = "".join(f'<img src="{esc(img.thumb)}" width="{img.thumb_width}" height="{img.thumb_height}" '
                       f'loading="lazy" alt="{esc(name)}" title="{esc(name)}">' for name, img in b["images"])
        out.append(f'<figure class="best" data-key="{esc(b["key"])}"><a href="{esc(e["folder"])}/{esc(b["href"])}">'
                   f'{pics}</a><figcaption>{esc(b["title"])}<br>{esc(label)} <span data-v="{b["before"]!r}">'
                   f'{_fmt(b["before"])}</span> → <span data-v="{b["after"]!r}">{_fmt(b["after"])}</span>'
                   "</figcaption></figure>")
    return "".join(out)


def index_page(title: str, entries: list[dict], comparisons: list[dict] = ()) -> str:
    """The top page: a table of the tasks (results, success, mean gain, problems) with their largest gains
    (original → ours, labels and scores), then the comparisons of two result sets, if any."""
    head = ("<tr><th>task</th><th>results</th><th>success</th><th>mean gain</th><th>non-finite</th>"
            "<th>rejected / skipped inputs</th><th>largest gains</th></tr>")
    rows = []
    for e in entries:
        s = e["summary"]
        rate = "—" if s["success_rate"] is None else f"{100 * s['success_rate']:.1f} %"
        gain = "—" if s["gain_mean"] is None else f"{s['gain_mean']:+.3g} ({s['score_label']})"
        inp = s["inputs"]
        bad = f"{inp['rejected']} / {inp['skipped']}" if inp else "—"
        rows.append(f'<tr><td><a href="{esc(e["folder"])}/index.html">{esc(e["task"])}</a></td>'
                    f'<td>{s["results"]}</td><td>{rate}</td><td>{esc(gain)}</td><td>{s["status"].get("nonfinite", 0)}'
                    f'</td><td>{bad}</td><td class="strip">{best_strip(e)}</td></tr>')
    body = f"<table class='tasks'>{head}{''.join(rows)}</table>"
    if comparisons:
        items = "".join(f'<li><a href="{esc(c["href"])}">{esc(c["title"])}</a>: {esc(c["line"])}</li>'
                        for c in comparisons)
        body += f"<h2>Comparisons</h2><ul class='cmp'>{items}</ul>"
    return page(title, body, depth=0)
