"""The pages that show results in full, laid out like the paper's figures.

An image edit (UVCE, neuron counterfactual) page holds one start class; per image a row with the original, its
reconstruction and the counterfactual of every target, then one block per (image, target): orig | reconstruction |
sd | ours with the start and target confidences under each image, the |ours − orig| heat map and the mask over the
original, a labelled metrics table (units and definitions from the output reference) and the curves. Other results
(classifier differences, neuron visualisations) get the same blocks without an original (the heat map is then
|ours − sd|).

The heat map and the overlay are drawn by the browser from the stored images (CSS blending: `difference`, then an
SVG filter that maps the mean over RGB through a colour scale; `multiply` for the mask), so they cost the build
nothing and are exact at full resolution; figure.py computes the same maps with numpy for exported figures.
Every image opens in the lightbox (assets/gallery.js: zoom, arrows step through the row).
"""
from __future__ import annotations

import re

from digin.stages.gallery.html import anchor, esc, page, unique_slug
from digin.stages.gallery.labels import Row, class_name, eval_rows, metric_rows, number_attr, short
from digin.stages.gallery.svg import curves_svg, fmt_value

HEAT_GAIN = 4  # the colour scale's top is a mean |Δ| of 1 / HEAT_GAIN (pixels in 0..1)
HEAT_STOPS = ((0, 0, 0), (1, 0, 0), (1, 1, 0), (1, 1, 1))  # black → red → yellow → white
HEAT_FILTER = (
    '<svg width="0" height="0" style="position:absolute" aria-hidden="true"><filter id="heat" '
    'color-interpolation-filters="sRGB"><feColorMatrix type="matrix" values="'
    + " ".join(" ".join([f"{HEAT_GAIN / 3:.6f}"] * 3) + " 0 0" for _ in range(3)) + ' 0 0 0 1 0"/>'
    '<feComponentTransfer>'
    + "".join(f'<feFunc{c} type="table" tableValues="{" ".join(str(s[i]) for s in HEAT_STOPS)}"/>'
              for i, c in enumerate("RGB"))
    + '</feComponentTransfer></filter></svg>')
TARGET_KEY = re.compile(r"^(?P<image>.+)/(?P<kind>[tn])(?P<n>\d+)$")


def image_key(key: str) -> str | None:
    """The image a per-pair result edits (`<image key>/t<target>`, `/n<neuron>`), else None."""
    m = TARGET_KEY.match(key)
    return m.group("image") if m else None


def is_edit(m: dict, key: str) -> bool:
    return image_key(key) is not None and m.get("start") is not None


def scores_of(m: dict, which: str) -> list[tuple[str, float | None, str]]:
    """(short label, value, field) of the scores shown under image `which` (sd | ours)."""
    out = []
    classifiers = m.get("classifiers") or []
    for name in list(m.get("confidences") or {}) + [n for n in ("start_conf", "eval_conf")
                                                    if f"{n}_{which}" in m]:
        v = m.get(f"{name}_{which}")
        if name == "activation":
            out.append(("activation", v, f"{name}_{which}"))
        elif name.startswith("conf_") and len(classifiers) > 1 and name[5:].isdigit():
            out.append((f"C{int(name[5:]) + 1} p(y)", v, f"{name}_{which}"))
        elif name.startswith("conf_"):
            out.append(("p(target)", v, f"{name}_{which}"))
        elif name == "start_conf":
            out.append(("p(start)", v, f"{name}_{which}"))
        elif name == "eval_conf":
            out.append(("eval p(y)", v, f"{name}_{which}"))
    order = {"p(start)": 0, "p(target)": 1}
    return sorted(out, key=lambda s: order.get(s[0], 2))


def orig_scores(evaluation: dict | None) -> list[tuple[str, float | None, str]]:
    """The original's confidences, from a `digin eval` row (the guided classifier first)."""
    if not evaluation:
        return []
    c = "guided" if any(k.startswith("guided/") for k in evaluation) else next(
        (k.split("/")[0] for k in evaluation if "/conf_" in k), None)
    if c is None:
        return []
    return [(f"p({role})", evaluation.get(f"{c}/conf_{role}_orig"), f"{c}/conf_{role}_orig")
            for role in ("start", "target") if evaluation.get(f"{c}/conf_{role}_orig") is not None]


def score_html(scores) -> str:
    return " · ".join(f'<span class="sc" data-k="{esc(k)}" data-v="{number_attr(v)}">{esc(label)} '
                      f'{esc(fmt_value(v))}</span>' for label, v, k in scores)


def picture(img, prefix: str, alt: str, thumb: bool = False) -> str:
    src, w, h = (img.thumb, img.thumb_width, img.thumb_height) if thumb else (img.src, img.width, img.height)
    return (f'<a class="pic" href="{esc(prefix + img.src)}"><img src="{esc(prefix + src)}" width="{w}" '
            f'height="{h}" loading="lazy" alt="{esc(alt)}"></a>')


def cell(name: str, img, prefix: str, sub: str = "", scores=(), href: str | None = None, thumb: bool = False) -> str:
    """One image with its name, a sub-caption and its scores under it."""
    pic = picture(img, prefix, name, thumb)
    if href:  # the image row links each counterfactual to its block
        pic = pic.replace(f'href="{esc(prefix + img.src)}"', f'href="{esc(href)}" data-full="{esc(prefix + img.src)}"',
                          1)
    lines = [f"<b>{esc(name)}</b>" + (f" {esc(sub)}" if sub else "")]
    if scores:
        lines.append(score_html(scores))
    return f'<figure data-name="{esc(name)}">{pic}<figcaption>{"<br>".join(lines)}</figcaption></figure>'


def composite(kind: str, base, top, prefix: str, name: str, sub: str) -> str:
    """The heat map (`heat`: |top − base| through the colour scale) or the mask overlay (`overlay`: base dimmed
    outside the mask), drawn by the browser from the two stored images."""
    w, h = base.width, base.height
    legend = (f'<span class="scale" title="mean |Δ| over R, G, B; pixels in 0..1">0<i></i>≥ {1 / HEAT_GAIN:g}</span>'
              if kind == "heat" else "")
    return (f'<figure data-name="{esc(name)}"><a class="pic {kind}" href="{esc(prefix + top.src)}" '
            f'style="aspect-ratio:{w}/{h}"><img src="{esc(prefix + base.src)}" width="{w}" height="{h}" '
            f'loading="lazy" alt="{esc(name)}"><img class="top" src="{esc(prefix + top.src)}" width="{w}" '
            f'height="{h}" loading="lazy" alt=""></a><figcaption><b>{esc(name)}</b> {esc(sub)}<br>{legend}'
            "</figcaption></figure>")


def _table(paired: list[Row], single: list[Row], heads: list[str], cls: str) -> str:
    if not paired and not single:
        return ""
    n = len(heads)
    head = "<tr><th>quantity</th>" + "".join(f"<th>{esc(h)}</th>" for h in heads) + "<th>unit</th></tr>"
    body, said = [], set()
    for r in paired + single:
        title = f' title="{esc(r.definition)}"' if r.definition else ""
        shown = r.definition and r.definition not in said  # a definition shared by rows is written once
        said.add(r.definition)
        note = f'<div class="def">{esc(r.definition)}</div>' if shown else ""
        label = f"<th{title}>{esc(r.label)}{note}</th>"
        if len(r.values) == 1 and n > 1:
            v = r.values[0]
            cells = f'<td colspan="{n}" class="tx" data-v="{number_attr(v)}">{esc(_text(v))}</td>'
        else:
            cells = "".join(f'<td data-v="{number_attr(v)}">{esc(_text(v))}</td>' for v in r.values)
        body.append(f'<tr data-key="{esc(r.key)}">{label}{cells}<td class="u">{esc(r.unit)}</td></tr>')
    return f'<table class="mt {cls}"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _text(v) -> str:
    if isinstance(v, float):
        return fmt_value(v, 4)
    if v is None:
        return "—"
    if isinstance(v, (list, tuple)):
        return ", ".join("—" if x is None else fmt_value(x) if isinstance(x, float) else str(x) for x in v)
    return str(v)


def curves_html(it) -> str:
    """Confidences on one 0..1 axis, other scores, the total loss and each loss term on their own axes; the best
    iterate marked in each."""
    m = it.metrics
    best = m.get("best_iter") if isinstance(m.get("best_iter"), int) else None
    conf = {k: v for k, v in (m.get("confidences") or {}).items() if isinstance(v, list)}
    probs = {short_score(k, m): v for k, v in conf.items() if k.startswith("conf_")}
    other = {k: v for k, v in conf.items() if not k.startswith("conf_")}
    plots = []
    if probs:
        plots.append(curves_svg(probs, mark=best, fixed=(0.0, 1.0), y_label="probability", title="confidences"))
    for k, v in other.items():
        plots.append(curves_svg({k: v}, mark=best, y_label=k, title=k))
    plots.append(curves_svg({"total loss": it.loss_curve or []}, mark=best, empty="no loss curve",
                            y_label="loss", title="total loss (loss + weighted regularisers)"))
    for term, values in (m.get("parts") or {}).items():
        if isinstance(values, list) and len(m.get("parts")) > 1:
            plots.append(curves_svg({term: values}, mark=best, y_label=term, title=f"term {term} (unweighted)"))
    return '<div class="curves">' + "".join(plots) + "</div>"


def short_score(name: str, m: dict) -> str:
    classifiers = m.get("classifiers") or []
    if len(classifiers) > 1 and name[5:].isdigit() and int(name[5:]) < len(classifiers):
        return f"C{int(name[5:]) + 1} p(y) ({short(classifiers[int(name[5:])])})"
    return "p(target)" if name.startswith("conf_") else name


def pair_title(m: dict, key: str) -> str:
    if m.get("start") is not None and m.get("target") is not None:
        return f"{class_name(m['start'], m.get('start_label'))} → {class_name(m['target'], m.get('target_label'))}"
    if m.get("neuron") is not None and m.get("start") is not None:
        return f"{class_name(m['start'], m.get('start_label'))} · neuron {m['neuron']}"
    if m.get("neuron") is not None:
        return f"neuron {m['neuron']}" + (f" · “{m['word']}”" if m.get("word") else "") + \
            (f" · image {m['i']}" if m.get("i") is not None else "")
    if m.get("class") is not None or m.get("label"):
        return class_name(m.get("class"), m.get("label")) + (f" · image {m['i']}" if m.get("i") is not None else "")
    return key


def result_block(it, columns: list[str], evaluation: dict | None, reference: dict, anchors: set) -> str:
    """One result in full: the figure row with confidences, the difference map and overlay, metrics, curves."""
    m, prefix = it.metrics, "../"
    best = m.get("best_iter") if isinstance(m.get("best_iter"), int) else None
    subs = {"orig": "", "recon": "(null-text reconstruction)", "sd": "(iterate 0)",
            "ours": f"(iterate {best})" if best is not None else ""}
    names = {"orig": "original", "recon": "reconstruction"}
    cells = []
    for c in columns:
        img = it.images.get(c)
        if img is None:
            cells.append(f'<figure class="missing" data-name="{esc(c)}"><em>missing</em>'
                         f'<figcaption>{esc(c)}</figcaption></figure>')
            continue
        scores = orig_scores(evaluation) if c == "orig" else scores_of(m, c) if c in ("sd", "ours") else []
        said = m.get(f"vlm_answer_{c}")  # `digin gallery checks=`: the VLM's yes/no answer about this image
        cells.append(cell(names.get(c, c), img, prefix, subs.get(c, "") + (f" · VLM: {said}" if said else ""), scores))
    base = it.images.get("orig") or it.images.get("sd")
    ours = it.images.get("ours")
    if base is not None and ours is not None and (base.width, base.height) == (ours.width, ours.height):
        which = "orig" if "orig" in it.images else "sd"
        cells.append(composite("heat", base, ours, prefix, f"|ours − {which}|", "heat map"))
    mask = it.aux.get("mask")
    if mask is not None and "orig" in it.images and (mask.width, mask.height) == (base.width, base.height):
        cells.append(composite("overlay", it.images["orig"], mask, prefix, "mask over original",
                               "(background dimmed)"))
    aux = "".join(cell({"attention": "attention per word"}.get(n, n), img, prefix) for n, img in it.aux.items())
    paired, single = metric_rows(m, reference)
    three, esingle = eval_rows(evaluation, m)
    tables = (_table(paired, single, ["sd (iterate 0)", f"ours (iterate {best})" if best is not None else "ours"],
                     "metrics")
              + _table(three, esingle, ["original", "sd", "ours"], "eval"))
    status, success = it.row["status"], it.row["success"]
    tags = (f'<span class="st st-{esc(status)}">{esc(status.replace("_", " "))}</span> '
            f'<span class="fl ok{int(success)}">{"success" if success else "no success"}</span>')
    return (f'<div class="result" id="{unique_slug(anchor(it.key), anchors)}" data-key="{esc(it.key)}">'
            f'<h3>{esc(pair_title(m, it.key))} {tags} <code>{esc(it.key)}</code></h3>'
            f'<div class="cells lb">{"".join(cells)}</div><div class="detail"><div>{tables}</div>'
            f'<div>{curves_html(it)}<div class="cells lb">{aux}</div></div></div></div>')


def image_row(items: list) -> str:
    """Every target of one image in one row: original, reconstruction, then each target's counterfactual with its
    label and confidences (each links to its block)."""
    first = items[0]
    cells = []
    if "orig" in first.images:
        cells.append(cell("original", first.images["orig"], "../",
                          class_name(first.metrics.get("start"), first.metrics.get("start_label")),
                          [sc for sc in orig_scores(first.evaluation) if sc[0] == "p(start)"]))
    if "recon" in first.images:
        cells.append(cell("reconstruction", first.images["recon"], "../"))
    for it in items:
        m = it.metrics
        if "ours" not in it.images:
            cells.append(f'<figure class="missing" data-name="{esc(it.key)}"><em>no image</em><figcaption>'
                         f'{esc(_variant(m))}</figcaption></figure>')
            continue
        cells.append(cell(_variant(m), it.images["ours"], "../", "", scores_of(m, "ours"),
                          href=f"#{anchor(it.key)}"))
    return f'<div class="cells row-all lb">{"".join(cells)}</div>'


def _variant(m: dict) -> str:
    if m.get("target") is not None:
        return "→ " + class_name(m["target"], m.get("target_label"))
    if m.get("neuron") is not None:
        return f"neuron {m['neuron']}"
    return "ours"


def page_of(it) -> tuple[tuple, str, str]:
    """(sort key, title, file stem) of the page a result goes on: its start class for image edits, its neuron for
    neuron visualisations, its class for class-guided results, else its group; names from labels with the index."""
    m = it.metrics
    if is_edit(m, it.key):
        start = m["start"]
        stem = f"{start}-{m.get('start_label', '')}"
        return (0, _num(start), str(start)), class_name(start, m.get("start_label")), stem
    if m.get("neuron") is not None:
        return (1, _num(m["neuron"]), ""), f"neuron {m['neuron']}", f"neuron-{m['neuron']}"
    if m.get("class") is not None:
        return (2, _num(m["class"]), ""), class_name(m["class"], m.get("label")), f"{m['class']}-{m.get('label', '')}"
    return (3, 0.0, str(it.group)), str(it.group), str(it.group)


def detail_page(task: str, title: str, items: list, columns: list[str], reference: dict, header: str = "") -> str:
    """The page of one group: image edits by image (a row with every target, then each pair), other results one
    block each; `header` (HTML) goes first (a neuron's top dataset images and words). Each item's `evaluation` is
    its `digin eval` row (or None)."""
    anchors, blocks = set(), []
    edits = [it for it in items if is_edit(it.metrics, it.key)]
    by_image: dict[str, list] = {}
    for it in edits:
        by_image.setdefault(image_key(it.key), []).append(it)
    for img, its in by_image.items():
        its.sort(key=lambda it: (_num(it.metrics.get("target", it.metrics.get("neuron"))), it.key))
        blocks.append(f'<section class="image" id="{unique_slug("img-" + img, anchors)}"><h2>{esc(img)} · '
                      f'{esc(class_name(its[0].metrics.get("start"), its[0].metrics.get("start_label")))} · '
                      f'{len(its)} target{"s" if len(its) != 1 else ""}</h2>{image_row(its)}'
                      + "".join(result_block(it, columns, it.evaluation, reference, anchors) for it in its)
                      + "</section>")
    rest = [it for it in items if not is_edit(it.metrics, it.key)]
    blocks += [result_block(it, [c for c in columns if c in it.images] or ["sd", "ours"], it.evaluation,
                            reference, anchors) for it in rest]
    return page(f"{task} / {title}", HEAT_FILTER + header + "".join(blocks), depth=1, up="index.html",
                scripts=("../assets/gallery.js",))


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("inf")
