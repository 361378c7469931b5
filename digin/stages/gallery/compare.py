"""Two result sets on one page: two runs, two classifiers, the reference vs the fast preset. Results are joined by
key; the page has the summary of both with the deltas (B − A), and a grid of every joined result (the original,
A's ours, B's ours; both scores and the difference) that sorts by the difference and filters to the results whose
success differs or whose score moved by at least DIFF (highlighted).

Written into the gallery as `compare-<task>/index.html` + `rows.js` (the grid of assets/gallery.js); each row links
the result's page in both runs' task folders.
"""
from __future__ import annotations

from digin.stages.gallery.detail import pair_title
from digin.stages.gallery.html import anchor, esc, page, unique_slug
from digin.stages.gallery.overview import _thumb, controls_html, rows_js
from digin.stages.gallery.summary import DISTANCES, FLIPS, summarise

DIFF = 0.1  # |score B − score A| at which a joined result counts as changed
SEP = " · "  # task names of compared runs: "<task> · <run label>"
SORTS = [("g", "difference in score (B − A)"), ("a", "score of B"), ("b", "score of A"), ("c", "category"),
         ("k", "key")]


def split_task(task: str) -> tuple[str, str]:
    base, _, label = task.rpartition(SEP)
    return (base, label) if base else (task, "")


def _delta(a, b):
    return b - a if a is not None and b is not None else None


def _fmt(x, pct=False, signed=False) -> str:
    if x is None:
        return "—"
    return f"{100 * x:+.1f} pp" if pct and signed else f"{100 * x:.1f} %" if pct else f"{x:+.4g}" if signed \
        else f"{x:.4g}"


def summary_table(sa: dict, sb: dict, la: str, lb: str, joined: int, only_a: int, only_b: int) -> str:
    """The numbers of both runs over the joined results and B − A."""
    rows = [("results joined by key", joined, joined, None, False), (f"only in {la}", only_a, None, None, False),
            (f"only in {lb}", only_b, None, None, False)]
    for k in ("ok", "nonfinite", "no_improvement"):
        rows.append((f"status {k.replace('_', ' ')}", sa["status"].get(k, 0), sb["status"].get(k, 0), "n", False))
    rows += [("success rate", sa["success_rate"], sb["success_rate"], "x", True),
             (f"mean gain in {sa['score_label']} (ours − sd)", sa["gain_mean"], sb["gain_mean"], "x", False),
             (f"median gain in {sa['score_label']}", sa["gain_median"], sb["gain_median"], "x", False),
             (f"mean {sa['score_label']} of ours", sa["after_mean"], sb["after_mean"], "x", False),
             (f"mean {sa['score_label']} of sd", sa["before_mean"], sb["before_mean"], "x", False)]
    for n in FLIPS:
        if n in sa or n in sb:
            rows.append((f"label flip rate ({n.split('/')[0]} classifier)", sa.get(n, {}).get("rate"),
                         sb.get(n, {}).get("rate"), "x", True))
    for n in DISTANCES:
        if n in sa or n in sb:
            rows.append((f"mean {n.split('_')[0].upper()} ours ↔ original", sa.get(n, {}).get("mean"),
                         sb.get(n, {}).get("mean"), "x", False))
    body = []
    for i, (label, a, b, kind, pct) in enumerate(rows):
        d = _delta(a, b) if kind else None
        cls = "" if d is None or d == 0 else (" class='delta-pos'" if d > 0 else " class='delta-neg'")
        cells = "".join(f'<td id="cmp{i}-{w}" data-v="{"" if v is None else repr(float(v))}">'
                        f'{esc(_fmt(v, pct) if isinstance(v, float) or v is None else str(v))}</td>'
                        for w, v in (("a", a), ("b", b)))
        body.append(f'<tr data-label="{esc(label)}"><th>{esc(label)}</th>{cells}<td id="cmp{i}-d"{cls} '
                    f'data-v="{"" if d is None else repr(float(d))}">{esc(_fmt(d, pct, True)) if kind else ""}'
                    "</td></tr>")
    return (f"<table class='cmp' id='cmp-summary'><thead><tr><th></th><th>{esc(la)} (A)</th><th>{esc(lb)} (B)</th>"
            f"<th>B − A</th></tr></thead><tbody>{''.join(body)}</tbody></table>")


def joined_entries(pairs: list, href_a, href_b, lb: str) -> list[dict]:
    """One grid row per joined result."""
    out = []
    for a, b in pairs:
        ra, rb = a.row, b.row
        d = _delta(ra["after"], rb["after"])
        changed = ra["success"] != rb["success"]
        moved = d is not None and abs(d) >= DIFF
        st = "success differs" if changed else f"score moved ≥ {DIFF:g}" if moved else "same"
        images = [_thumb(f"{n} (A)", a.images[n]) for n in ("orig",) if n in a.images]
        images += [_thumb(f"{n} (A)", a.images[n]) for n in ("ours",) if n in a.images]
        images += [_thumb(f"{n} (B)", b.images[n]) for n in ("ours",) if n in b.images]

        def line(tag, r):
            gain = "" if r["gain"] is None else f" ({r['gain']:+.3g})"
            return (f"{tag}: {_fmt(r['before'])} → {_fmt(r['after'])}{gain}, "
                    f"{'success' if r['success'] else 'no success'}, {r['status']}")

        out.append({"k": a.key, "p": href_a(a), "p2": href_b(b), "l2": f"in {lb}", "c": ra["category"],
                    "t": pair_title(a.metrics, a.key), "st": st, "s": int(ra["success"] and rb["success"]),
                    "g": d, "a": rb["after"], "b": ra["after"], "bi": None, "im": images, "hl": int(changed or moved),
                    "x": [line("A", ra), line("B", rb), f"B − A: {_fmt(d, signed=True)}"], "d": {}})
    return out


def comparison_page(task: str, la: str, lb: str, items_a: list, items_b: list, href_a, href_b) -> tuple[str, str,
                                                                                                           dict]:
    """(page HTML, rows.js, summary line info) of one task compared between two runs, joined by key."""
    by_key_b = {it.key: it for it in items_b}
    pairs = [(a, by_key_b[a.key]) for a in items_a if a.key in by_key_b]
    keys_a = {it.key for it in items_a}
    only_a, only_b = len(items_a) - len(pairs), sum(1 for k in by_key_b if k not in keys_a)
    sa, sb = summarise([a.row for a, _ in pairs]), summarise([b.row for _, b in pairs])
    entries = joined_entries(pairs, href_a, href_b, lb)
    changed = sum(e["hl"] for e in entries)
    body = (f"<p>{esc(la)} (A) and {esc(lb)} (B), joined by key: {len(pairs)} results in both, "
            f"{changed} changed (success differs, or the score moved by at least {DIFF:g}: highlighted).</p>"
            f"<h2>Summary</h2>{summary_table(sa, sb, la, lb, len(pairs), only_a, only_b)}"
            f"<h2>Results</h2>{controls_html(entries, sorted({e['st'] for e in entries}), SORTS)}"
            '<div id="grid"></div><p><button type="button" id="more" hidden>show more</button></p>')
    html = page(f"{task}: {la} vs {lb}", body, depth=1, up="../index.html", scripts=("rows.js", "../assets/gallery.js"))
    d = _delta(sa["success_rate"], sb["success_rate"])
    line = (f"{len(pairs)} joined results, {changed} changed; success {_fmt(sa['success_rate'], True)} → "
            f"{_fmt(sb['success_rate'], True)}" + (f" ({_fmt(d, True, True)})" if d is not None else ""))
    return html, rows_js(entries, ["orig", "ours"]), {"line": line, "joined": len(pairs)}


def write_comparisons(out, by_task: dict, la: str, lb: str, folder_of: dict, href_of: dict) -> list[dict]:
    """A comparison page per task that both runs have; top-index entries. folder_of: task → its folder;
    href_of: task → item → link inside that folder."""
    from pathlib import Path

    out, entries, taken = Path(out), [], set()
    bases = sorted({split_task(t)[0] for t in by_task})
    for base in bases:
        ta, tb = f"{base}{SEP}{la}", f"{base}{SEP}{lb}"
        if ta not in by_task or tb not in by_task:
            continue
        folder = out / unique_slug(f"compare-{base}", taken)
        folder.mkdir(parents=True, exist_ok=True)

        def link(task):
            return lambda it: f"../{folder_of[task]}/{href_of[task](it)}"

        html, js, info = comparison_page(base, la, lb, by_task[ta], by_task[tb], link(ta), link(tb))
        (folder / "index.html").write_text(html, encoding="utf-8")
        (folder / "rows.js").write_text(js, encoding="utf-8")
        entries.append({"href": f"{folder.name}/index.html", "title": f"{base}: {la} vs {lb}", "line": info["line"],
                        "joined": info["joined"]})
    return entries


__all__ = ["write_comparisons", "split_task", "anchor"]
