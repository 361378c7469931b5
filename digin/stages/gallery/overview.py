"""A task's overview page: run summary, histograms, per-category table, and a grid of every result (thumbnails,
before → after, status) that sorts and filters in the browser.

The grid's data is `rows.js` beside the page (`window.DIGIN_ROWS = {...}`, loaded by a plain <script> tag, so it
works from a file:// URL); `assets/gallery.js` renders it in pages of 100 rows with DOM text nodes only (no
innerHTML: labels from results stay text). The summary, histograms and the list of group pages are static HTML,
readable without JavaScript.
"""
from __future__ import annotations

import json

from digin.stages.gallery.detail import pair_title
from digin.stages.gallery.html import esc, page
from digin.stages.gallery.labels import DIST_UNIT, PROB
from digin.stages.gallery.neurons import is_dead, neuron_status
from digin.stages.gallery.summary import DISTANCES, FLIPS, STATUSES, finite, mean
from digin.stages.gallery.svg import histogram_svg

DISTANCE_NAMES = {"l1_ours": "L1", "l2_ours": "L2", "lpips_ours": "LPIPS"}
FLIP_NAMES = {"guided/flip": "guided classifier", "eval/flip": "evaluation classifier"}


def _v(x) -> str:
    return "" if x is None else repr(float(x))


def _num(cell_id: str, x, text: str | None = None) -> str:
    """A number cell; data-v holds the exact value (what the page tests read)."""
    shown = text if text is not None else ("—" if x is None else f"{x:.4g}")
    return f'<td id="{esc(cell_id)}" data-v="{_v(x)}">{esc(shown)}</td>'


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def success_rule(kind: str) -> str:
    return {"target": "p(target) > 0.5 (the label flipped)", "difference": "p1(y) > 0.5 > p2(y)",
            "activation": "activation moved the loss's way"}.get(kind, "—")


def summary_html(s: dict) -> str:
    inp = s["inputs"]
    label = s["score_label"]
    region = " (background)" if s["masked"] == ["background"] else ""
    rows = [
        f"<tr><th>results</th>{_num('sum-results', s['results'], str(s['results']))}</tr>",
        "<tr><th>input samples: written / rejected / skipped</th>"
        + "".join(_num(f"sum-{k}", inp.get(k), "—" if inp.get(k) is None else str(inp[k]))
                  for k in ("written", "rejected", "skipped")) + "</tr>",
        "<tr><th>status: ok / non-finite / no improvement</th>"
        + "".join(_num(f"sum-{k}", s["status"].get(k, 0), str(s["status"].get(k, 0))) for k in STATUSES) + "</tr>",
        f"<tr><th>success: {esc(success_rule(s['kind']))}</th>"
        f"{_num('sum-success', s['success'], str(s['success']))}"
        f"{_num('sum-success_rate', s['success_rate'], _pct(s['success_rate']))}</tr>",
        f"<tr><th>gain in {esc(label)} (ours − sd): mean / median</th>{_num('sum-gain_mean', s['gain_mean'])}"
        f"{_num('sum-gain_median', s['gain_median'])}</tr>",
        f"<tr><th>{esc(label)}: sd → ours (means)</th>{_num('sum-before_mean', s['before_mean'])}"
        f"{_num('sum-after_mean', s['after_mean'])}</tr>"]
    for name in FLIPS:
        if name in s:
            rows.append(f"<tr><th>label flipped ({esc(FLIP_NAMES[name])}, digin eval)</th>"
                        f"{_num('sum-' + name.replace('/', '_'), s[name]['rate'], _pct(s[name]['rate']))}"
                        f"<td>{s[name]['n']} evaluated</td></tr>")
    for name in DISTANCES:
        if name in s:
            rows.append(f"<tr><th>{DISTANCE_NAMES[name]} ours ↔ original{region}: mean / median</th>"
                        f"{_num('sum-' + name + '_mean', s[name]['mean'])}"
                        f"{_num('sum-' + name + '_median', s[name]['median'])}</tr>")
    reasons = "".join(f"<li>{esc(r)}: {c}</li>" for r, c in sorted((inp.get("reasons") or {}).items()))
    note = "" if any(n in s for n in DISTANCES) else (
        "<p class='note'>Distances to the original and label flips come from <code>digin eval</code>: "
        "run it over these results and pass its folder with <code>evals=[...]</code>.</p>")
    return (f'<table class="sum" id="summary">{"".join(rows)}</table>'
            + (f"<details><summary>reject / skip reasons</summary><ul>{reasons}</ul></details>" if reasons else "")
            + note)


def categories_html(s: dict) -> str:
    """Per-category (class / cluster / neuron) table; a category name filters the grid."""
    extra = [n for n in FLIPS + DISTANCES if any(n in c for c in s["categories"].values())]
    head = ("<tr><th>category</th><th>n</th><th>success</th><th>gain mean</th><th>gain median</th>"
            + "".join(f"<th>{esc(FLIP_NAMES.get(n, DISTANCE_NAMES.get(n, n)))}"
                      f"{' flip' if n in FLIPS else ' mean'}</th>" for n in extra) + "</tr>")
    body = []
    for i, (cat, c) in enumerate(s["categories"].items()):
        cells = [f'<td><button type="button" class="cat" data-cat="{esc(cat)}">{esc(cat)}</button></td>',
                 _num(f"cat{i}-n", c["n"], str(c["n"])), _num(f"cat{i}-success_rate", c["success_rate"],
                                                              _pct(c["success_rate"])),
                 _num(f"cat{i}-gain_mean", c["gain_mean"]), _num(f"cat{i}-gain_median", c["gain_median"])]
        for n in extra:
            v = c.get(n, {}).get("rate" if n in FLIPS else "mean")
            cells.append(_num(f"cat{i}-{n.replace('/', '_')}", v, _pct(v) if n in FLIPS else None))
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<table class="cats sortable" id="categories"><thead>{head}</thead><tbody>{"".join(body)}</tbody>'
            "</table>")


def histograms_html(rows: list[dict], label: str, region: str, kind: str = "target") -> str:
    unit = "the layer's units" if kind == "activation" else PROB if kind == "target" else "difference of probabilities"
    span = 1e-6 if kind == "activation" else 0.02
    plots = [histogram_svg([r["gain"] for r in rows], f"gain in {label} (ours − sd)", unit, min_span=span),
             histogram_svg([r["after"] for r in rows], f"{label} of ours", unit, min_span=span)]
    for name in DISTANCES:
        vals = [r[name] for r in rows if name in r]
        if vals:
            plots.append(histogram_svg(vals, f"{DISTANCE_NAMES[name]} ours ↔ original{region}",
                                       DIST_UNIT[name.split("_")[0]]))
    return f'<div class="hists">{"".join(plots)}</div>'


def _short(name) -> str:
    return str(name).rstrip("/").rsplit("/", 1)[-1]


def _score_lines(m: dict, r: dict) -> list[str]:
    def f(x):
        return "—" if x is None else f"{x:.3g}"

    gain = "" if r["gain"] is None else f" ({r['gain']:+.3g})"
    if r["kind"] == "difference":
        names = [_short(c) for c in (m.get("classifiers") or ["C1", "C2"])] + ["C1", "C2"]
        lines = [f"{names[i]} p(y): {f(finite(m.get(f'conf_{i}_sd')))} → {f(finite(m.get(f'conf_{i}_ours')))}"
                 for i in (0, 1)]
        return lines + [f"p1 − p2: {f(r['before'])} → {f(r['after'])}{gain}"]
    label = {"activation": "activation", "target": "p(target)"}.get(r["kind"], "score")
    lines = [f"{label}: {f(r['before'])} → {f(r['after'])}{gain}"]
    if finite(m.get("start_conf_sd")) is not None:
        lines.append(f"p(start): {f(finite(m['start_conf_sd']))} → {f(finite(m.get('start_conf_ours')))}")
    if finite(m.get("eval_conf_ours")) is not None:
        lines.append(f"eval p(y): {f(finite(m.get('eval_conf_sd')))} → {f(finite(m['eval_conf_ours']))}")
    return lines


def _eval_line(r: dict) -> str | None:
    parts = [f"{'flip' if n == 'guided/flip' else 'eval flip'} {'yes' if r[n] else 'no'}" for n in FLIPS if n in r]
    parts += [f"{DISTANCE_NAMES[n]} {r[n]:.3g}" for n in DISTANCES if n in r]
    if "guided/conf_target_orig" in r:
        parts.append(f"p(target | orig) {r['guided/conf_target_orig']:.3g}")
    return "eval: " + ", ".join(parts) if parts else None


def _entry(r: dict, href: str, title: str, images: list, lines: list[str]) -> dict:
    d = {n: r[n] for n in DISTANCES if n in r}
    return {"k": r["key"], "p": href, "c": r["category"], "t": title, "st": r["status"], "s": int(r["success"]),
            "g": r["gain"], "b": r["before"], "a": r["after"], "bi": finite(r.get("best_iter")),
            "im": images, "x": [x for x in lines if x], "d": d}


def _thumb(caption: str, img) -> list:
    """[caption, thumbnail relative to a task folder, width, height] (the row links the full page)."""
    return [caption, "../" + img.thumb, img.thumb_width, img.thumb_height]


def result_entries(items: list, columns: list[str], href_of) -> list[dict]:
    """One grid row per result: its images (thumbnails), title, numbers; href_of(item) = its block's link."""
    out = []
    for it in items:
        m, r = it.metrics, it.row
        title = pair_title(m, it.key)
        if m.get("prompt_index") is not None:  # diff prompts=[...]: which start prompt
            title += f" · from “{m.get('prompt', '')}”"
        images = [_thumb(c, it.images[c]) for c in columns if c in it.images]
        out.append(_entry(r, href_of(it), title, images,
                          _score_lines(m, r) + [_eval_line(r), f"best iterate {r['best_iter']}"]))
    return out


def neuron_entries(items: list, href_of, info: dict) -> list[dict]:
    """One grid row per neuron: top-activating dataset images, then the visualisations, with its words; one
    status tag and a success flag that agree (see neurons.neuron_status), dead units flagged."""
    by_neuron: dict[int, list] = {}
    for it in items:
        by_neuron.setdefault(int(it.metrics["neuron"]), []).append(it)
    out = []
    for n, its in sorted(by_neuron.items()):
        its.sort(key=lambda it: (finite(it.metrics.get("i")) or 0, it.key))
        nfo = info.get(n, {})
        images = [_thumb(f"top {j + 1} · {act:.3g}", img) for j, (_, act, img) in enumerate(nfo.get("top", []))]
        for it in its:
            if "ours" in it.images:
                values = " → ".join(f"{v:.3g}" for v in (it.row["before"], it.row["after"]) if v is not None)
                images.append(_thumb(f"i{it.metrics.get('i', '?')} · {values or '—'}", it.images["ours"]))
        rows = [it.row for it in its]
        afters = [r["after"] for r in rows if r["after"] is not None]
        dead = is_dead(rows, nfo.get("top", []))
        status, success, counts = neuron_status(rows, dead)
        row = {"key": f"neuron {n}", "category": rows[0]["category"], "status": status, "success": success,
               "gain": mean(r["gain"] for r in rows), "after": max(afters) if afters else None,
               "before": mean(r["before"] for r in rows), "best_iter": None}
        words = ", ".join(f"{w} ({c})" for w, c in nfo.get("words", [])[:8])
        ranked = ", ".join(f"{w} {s:.3g}" for w, s in nfo.get("ranked", [])[:5])
        prompt_words = sorted({str(it.metrics.get("word")) for it in its if it.metrics.get("word")})
        lines = ["dead unit? activation 0 throughout" if dead else "", counts,
                 f"prompt word: {', '.join(prompt_words)}" if prompt_words else "",
                 f"named: {words}" if words else "", f"word search: {ranked}" if ranked else "",
                 f"{len(its)} visualisations, mean gain in activation "
                 + ("—" if row["gain"] is None else f"{row['gain']:+.3g}")]
        out.append(_entry(row, href_of(its[0]).split("#")[0],
                          f"neuron {n}" + (f": {prompt_words[0]}" if prompt_words else ""), images, lines))
    return out


SORTS = [("g", "gain (ours − sd)"), ("a", "score of ours"), ("b", "score of sd"), ("bi", "best iterate"),
         ("c", "category"), ("k", "key")]


def controls_html(entries: list[dict], statuses: list[str], sorts=None) -> str:
    cats = sorted({e["c"] for e in entries})
    dists = [n for n in DISTANCES if any(n in e["d"] for e in entries)]
    sorts = (sorts or SORTS) + [(f"d:{n}", f"{DISTANCE_NAMES[n]} to original") for n in dists]
    opt = "".join(f'<option value="{esc(v)}">{esc(t)}</option>' for v, t in sorts)
    cat_opt = "".join(f'<option value="{esc(c)}">{esc(c)}</option>' for c in cats)
    st_opt = "".join(f'<option value="{esc(s)}">{esc(s)}</option>' for s in statuses)
    return (
        '<form id="controls" onsubmit="return false">'
        f'<label>sort <select id="sort">{opt}</select></label> '
        '<label><select id="order"><option value="desc">high → low</option>'
        '<option value="asc">low → high</option></select></label> '
        f'<label>category <select id="f-cat"><option value="">all</option>{cat_opt}</select></label> '
        '<label>success <select id="f-success"><option value="">all</option><option value="1">yes</option>'
        '<option value="0">no</option></select></label> '
        f'<label>status (failure mode) <select id="f-status"><option value="">all</option>{st_opt}</select></label> '
        '<label>search <input id="f-text" type="search" placeholder="key, label, word"></label> '
        '<span id="shown"></span></form>')


def rows_js(entries: list[dict], columns: list[str]) -> str:
    data = json.dumps({"columns": columns, "rows": entries}, allow_nan=False, separators=(",", ":"))
    return f"window.DIGIN_ROWS = {data};\n"


def pages_page(task: str, groups: list[tuple[str, str, int]]) -> str:
    """Every group page of a task (kept off the task page, which should open fast with thousands of groups)."""
    items = "".join(f'<li><a href="{esc(href)}">{esc(title)}</a> ({n})</li>' for href, title, n in groups)
    return page(f"{task}: all pages", f"<ul>{items}</ul>", depth=1, up="index.html")


def task_page(task: str, summary: dict, rows: list[dict], entries: list[dict], n_pages: int,
              notes: list[str]) -> str:
    region = " (background)" if summary["masked"] == ["background"] else ""
    statuses = sorted({e["st"] for e in entries} | set(STATUSES))
    note_html = "".join(f"<p class='note'>{esc(n)}</p>" for n in notes)
    body = (f"<h2>Run summary</h2>{summary_html(summary)}{note_html}"
            f"{histograms_html(rows, summary['score_label'], region, summary['kind'])}"
            f"<details{' open' if len(summary['categories']) <= 20 else ''}><summary>per category "
            f"({len(summary['categories'])}; click a column to sort)</summary>"
            f"{categories_html(summary)}</details>"
            f"<h2>Results</h2>{controls_html(entries, statuses)}"
            "<noscript><p>Sorting and the result grid need JavaScript; every result is on the pages listed under "
            "<a href=\"pages.html\">all pages</a>.</p></noscript><div id=\"grid\"></div><p><button type=\"button\" "
            f"id=\"more\" hidden>show more</button></p><p><a href=\"pages.html\">all {n_pages} pages</a> "
            "(one per group: every result in full)</p>")
    return page(task, body, depth=1, up="../index.html", scripts=("rows.js", "../assets/gallery.js"))
