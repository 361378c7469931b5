"""Paper-ready figures for a chosen set of results: the same grid as PNG (pixels), SVG and PDF (vector text,
images at full resolution), in the reference's figure layouts.

Layouts (`auto` picks by the results):
  uvce     one row per image: the original with its class, then the counterfactual of every chosen target with the
           target's label and its confidences (the paper's UVCE figures)
  pairs    one row per result: the `columns` (orig, recon, sd, ours, diff = |ours − orig| heat map, overlay = mask
           over the original, mask) with the start and target confidences under each image
  diff     one row per class: sd | ours of each chosen result, with both classifiers' confidences
  neurons  one row per neuron: its visualisations with the activation before → after

Selection: a key names one result, or every result under it (`<image key>` = all its targets, `neurons/n7` = the
neuron's visualisations). Results are read by key (one seek each, digin.shards.keyed), never the whole set.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digin.shards.keyed import read_keys
from digin.stages.gallery.detail import HEAT_GAIN, HEAT_STOPS, image_key, orig_scores, scores_of
from digin.stages.gallery.labels import class_name, short
from digin.stages.gallery.pdf import PdfPage
from digin.stages.gallery.records import expand_targets, keep_encoded, record_from_sample, task_of
from digin.stages.gallery.store import write_once
from digin.stages.gallery.summary import natural_key, score_of
from digin.stages.gallery.svg import fmt_value

LAYOUTS = ("auto", "uvce", "pairs", "diff", "neurons")
FORMATS = ("png", "pdf", "svg")
SORTS = ("given", "key", "gain", "-gain", "score", "-score")
PT_PER_PX = 0.75  # PDF points per figure pixel (96 px per inch)
FONT_FILES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf")
BOLD_FILES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", "/usr/share/fonts/TTF/DejaVuSans-Bold.ttf")


@dataclass
class Panel:
    image: np.ndarray  # uint8 HWC
    lines: list[str]  # caption: the first line is the panel's name (bold), then its numbers


@dataclass
class FigRow:
    title: str
    panels: list[Panel] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- selection
class UnknownKeys(ValueError):
    """Keys of a figure selection that name no result."""


def select(sets, keys: list[str], fields=None) -> list:
    """ResultRecords for `keys` over the result shard sets, in the order asked (a key that names an image or a
    neuron brings every result under it, in key order); UnknownKeys lists those that name nothing."""
    where: dict[str, tuple] = {}  # tar key -> (set, shard, position)
    for ss in sets:
        for index, rec in sorted(ss.records.items()):
            for pos, k in enumerate(rec.get("keys") or []):
                where.setdefault(k, (ss, index, pos))
    wanted, missing = [], []
    tar_keys = sorted(where)
    for k in keys:
        k = str(k).strip("/")
        if k in where:
            wanted.append((k, where[k], None))
        elif image_key(k) in where:  # a target of an older per-image set
            wanted.append((k, where[image_key(k)], k))
        else:
            under = [t for t in tar_keys if t.startswith(k + "/")]
            if under:
                wanted += [(t, where[t], None) for t in under]
            else:
                missing.append(k)
    if missing:
        raise UnknownKeys(", ".join(missing))
    samples: dict[tuple, dict] = {}
    for ss in {id(w[1][0]): w[1][0] for w in wanted}.values():
        got = read_keys(ss, [(i, p) for _, (s, i, p), _ in wanted if s is ss], decode=keep_encoded)
        for (i, p), sample in got.items():
            samples[(id(ss), i, p)] = sample
    out, seen = [], set()
    for _, (ss, i, p), target_key in wanted:
        sample = samples[(id(ss), i, p)]
        if "__reject__" in sample:
            continue
        for s in expand_targets(sample):
            if (target_key is None or s["__key__"] == target_key) and s["__key__"] not in seen:
                seen.add(s["__key__"])
                out.append(record_from_sample(s, fields, task_of(ss), str(ss.dir), ss.records[i].get("sha256")))
    unknown = [k for k, _, t in wanted if t is not None and k not in seen]  # an image without that target
    if unknown:
        raise UnknownKeys(", ".join(unknown))
    return out


def sort_records(records: list, how: str) -> list:
    """given (as selected) | key | gain / -gain | score / -score (ours' score; '-' = ascending), missing last."""
    if how == "given":
        return list(records)
    if how == "key":
        return sorted(records, key=lambda r: natural_key(r.key))
    name = how.lstrip("-")
    field_ = {"gain": "gain", "score": "after"}[name]
    sign = 1 if how.startswith("-") else -1

    def k(r):
        v = score_of(r.metrics)[field_]
        return (v is None, 0.0 if v is None else sign * v, natural_key(r.key))

    return sorted(records, key=k)


# ---------------------------------------------------------------------------------------------- rows
def heat_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a − b| averaged over RGB (pixels in 0..1), times HEAT_GAIN, through the colour scale the pages use."""
    d = np.abs(a[..., :3].astype(np.float32) - b[..., :3].astype(np.float32)).mean(-1) / 255 * HEAT_GAIN
    d = np.clip(d, 0, 1)
    stops = np.asarray(HEAT_STOPS, np.float32)
    pos = np.linspace(0, 1, len(stops))
    rgb = np.stack([np.interp(d, pos, stops[:, c]) for c in range(3)], -1)
    return (rgb * 255).round().astype(np.uint8)


def overlay(orig: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The original dimmed outside the mask, as the pages draw it: orig × (0.4 + 0.6 · mask)."""
    m = mask.astype(np.float32) / 255
    m = m.mean(-1) if m.ndim == 3 else m
    return (orig[..., :3].astype(np.float32) * (0.4 + 0.6 * m[..., None])).round().clip(0, 255).astype(np.uint8)


def _rgb(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a[..., :3]


def _score_lines(scores) -> list[str]:
    return [f"{label} {fmt_value(v)}" for label, v, _ in scores]


def _panel(rec, name: str, evaluation=None) -> Panel | None:
    m = rec.metrics
    arr = (lambda n: _rgb(rec.image_array(n)))
    best = m.get("best_iter")
    if name == "orig" and "orig" in rec.images:
        return Panel(arr("orig"), ["original", class_name(m.get("start"), m.get("start_label"))]
                     + _score_lines(orig_scores(evaluation)))
    if name == "recon" and "recon" in rec.images:
        return Panel(arr("recon"), ["reconstruction"])
    if name in ("sd", "ours") and name in rec.images:
        it = "iterate 0" if name == "sd" else f"iterate {best}"
        return Panel(arr(name), [f"{name} ({it})"] + _score_lines(scores_of(m, name)))
    if name == "diff" and "ours" in rec.images and ("orig" in rec.images or "sd" in rec.images):
        base = "orig" if "orig" in rec.images else "sd"
        a, b = arr("ours"), arr(base)
        if a.shape == b.shape:
            return Panel(heat_map(a, b), [f"|ours − {base}|", f"0 … ≥ {1 / HEAT_GAIN:g} mean over RGB"])
    if name == "overlay" and "orig" in rec.images and "mask" in rec.aux_images:
        o, k = arr("orig"), rec.image_array("mask")
        if o.shape[:2] == k.shape[:2]:
            return Panel(overlay(o, k), ["mask over original"])
    if name == "mask" and "mask" in rec.aux_images:
        return Panel(_rgb(rec.image_array("mask")), ["mask"])
    return None


def layout_of(records: list) -> str:
    ms = [r.metrics for r in records]
    if ms and all(image_key(r.key) and m.get("start") is not None for r, m in zip(records, ms)):
        return "uvce"
    if ms and all(m.get("neuron") is not None and m.get("start") is None for m in ms):
        return "neurons"
    if ms and all("conf_1_ours" in m or "conf_1_sd" in m for m in ms):
        return "diff"
    return "pairs"


def build_rows(records: list, layout: str = "auto", columns=("orig", "recon", "sd", "ours", "diff"),
               evals: dict | None = None) -> tuple[str, list[FigRow]]:
    """(layout used, rows) for the records, in their order (a row per image / class / neuron at its first
    result)."""
    evals = evals or {}
    layout = layout_of(records) if layout == "auto" else layout
    rows: dict[str, FigRow] = {}
    for r in records:
        m = r.metrics
        if layout == "uvce":
            img = image_key(r.key) or r.key
            row = rows.get(img)
            if row is None:
                row = rows[img] = FigRow(f"{img} · {class_name(m.get('start'), m.get('start_label'))}")
                first = _panel(r, "orig", evals.get(r.key))
                if first:  # p(target) of the original belongs to one target: the row shows several
                    first.lines = [x for x in first.lines if not x.startswith("p(target)")]
                    row.panels.append(first)
            if "ours" in r.images:
                target = m.get("target", m.get("neuron"))
                name = ("→ " + class_name(target, m.get("target_label")) if m.get("target") is not None
                        else f"neuron {m.get('neuron')}")
                row.panels.append(Panel(_rgb(r.image_array("ours")), [name] + _score_lines(scores_of(m, "ours"))))
        elif layout == "diff":
            cls = str(m.get("class", m.get("start", r.group)))
            names = " vs ".join(short(c) for c in (m.get("classifiers") or []))
            row = rows.setdefault(cls, FigRow(class_name(m.get("class"), m.get("label"))
                                              + (f" · {names}" if names else "")))
            for n in ("sd", "ours"):
                p = _panel(r, n)
                if p:
                    p.lines[0] = f"{n} · image {m.get('i', '?')}"
                    row.panels.append(p)
        elif layout == "neurons":
            n = str(m.get("neuron"))
            row = rows.setdefault(n, FigRow(f"neuron {n}" + (f": {m['word']}" if m.get("word") else "")))
            if "ours" in r.images:
                row.panels.append(Panel(_rgb(r.image_array("ours")), [
                    f"image {m.get('i', '?')}", f"activation {fmt_value(m.get('activation_sd'))} → "
                                                f"{fmt_value(m.get('activation_ours'))}"]))
        else:
            title = r.key
            if m.get("start") is not None and m.get("target") is not None:
                title = (f"{r.key} · {class_name(m['start'], m.get('start_label'))} → "
                         f"{class_name(m['target'], m.get('target_label'))}")
            row = rows.setdefault(r.key, FigRow(title))
            row.panels += [p for c in columns if (p := _panel(r, c, evals.get(r.key)))]
        row.keys.append(r.key)
    return layout, list(rows.values())


# ---------------------------------------------------------------------------------------------- rendering
@dataclass
class Geometry:
    cell: int
    font: int
    gap: int
    line: int
    title: int
    width: int = 0
    height: int = 0
    places: list = field(default_factory=list)  # per row: (title y, [(x, y, w, h, caption lines)])


def wrap(lines: list[str], width_chars: int) -> list[str]:
    """Caption lines broken at spaces (long words cut) to fit under an image: the same in every format."""
    import textwrap

    return [part for line in lines for part in (textwrap.wrap(line, width_chars, break_long_words=True) or [""])]


def geometry(rows: list[FigRow], cell: int) -> Geometry:
    font = max(9, round(cell / 20))
    g = Geometry(cell, font, gap=max(4, cell // 32), line=round(font * 1.3), title=round(font * 1.6))
    cols = max((len(r.panels) for r in rows), default=1)
    g.width = g.gap + cols * (cell + g.gap)
    chars = max(8, int(cell / (font * 0.62)))  # DejaVu / Helvetica average advance ≈ 0.55–0.6 em
    y = g.gap
    for r in rows:
        ty = y + g.font
        y += g.title
        lines = [wrap(p.lines, chars) for p in r.panels]
        caption = max((len(x) for x in lines), default=0) * g.line
        heights = [round(cell * p.image.shape[0] / p.image.shape[1]) for p in r.panels]
        tallest = max(heights, default=cell)
        boxes = [(g.gap + j * (cell + g.gap), y, cell, h, ls) for j, (h, ls) in enumerate(zip(heights, lines))]
        g.places.append((ty, boxes))
        y += tallest + caption + g.gap
    g.height = y
    return g


def _font(size: int, bold: bool = False):
    from PIL import ImageFont

    for path in BOLD_FILES if bold else FONT_FILES:
        if Path(path).is_file():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def render_png(rows: list[FigRow], g: Geometry) -> bytes:
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (g.width, g.height), "white")
    draw = ImageDraw.Draw(canvas)
    font, bold = _font(g.font), _font(g.font, True)
    for r, (ty, boxes) in zip(rows, g.places):
        draw.text((g.gap, ty), r.title, fill="black", font=bold, anchor="ls")
        for p, (x, y, w, h, lines) in zip(r.panels, boxes):
            im = Image.fromarray(p.image)
            canvas.paste(im.resize((w, h), Image.LANCZOS if im.width > w else Image.NEAREST), (x, y))
            for k, line in enumerate(lines):
                draw.text((x + w / 2, y + h + (k + 1) * g.line - 3), line, fill="black",
                          font=bold if k == 0 else font, anchor="ms")
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def _png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def render_svg(rows: list[FigRow], g: Geometry) -> str:
    """Images embedded at full resolution (PNG data), text as text."""
    esc = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{g.width}" height="{g.height}" '
           f'viewBox="0 0 {g.width} {g.height}" font-family="Helvetica, Arial, DejaVu Sans, sans-serif">'
           f'<rect width="100%" height="100%" fill="white"/>']
    for i, (r, (ty, boxes)) in enumerate(zip(rows, g.places)):
        out.append(f'<g class="row" data-row="{i}"><text x="{g.gap}" y="{ty}" font-size="{g.font}" '
                   f'font-weight="bold">{esc(r.title)}</text>')
        for p, (x, y, w, h, lines) in zip(r.panels, boxes):
            data = base64.b64encode(_png_bytes(p.image)).decode()
            out.append(f'<image x="{x}" y="{y}" width="{w}" height="{h}" preserveAspectRatio="none" '
                       f'href="data:image/png;base64,{data}"/>')
            for k, line in enumerate(lines):
                weight = ' font-weight="bold"' if k == 0 else ""
                out.append(f'<text x="{x + w / 2}" y="{y + h + (k + 1) * g.line - 3}" font-size="{g.font}" '
                           f'text-anchor="middle"{weight}>{esc(line)}</text>')
        out.append("</g>")
    return "".join(out) + "</svg>\n"


def render_pdf(rows: list[FigRow], g: Geometry) -> bytes:
    s = PT_PER_PX
    pdf = PdfPage(g.width * s, g.height * s)
    for r, (ty, boxes) in zip(rows, g.places):
        pdf.text(r.title, g.gap * s, ty * s, g.font * s, bold=True)
        for p, (x, y, w, h, lines) in zip(r.panels, boxes):
            pdf.image(p.image, x * s, y * s, w * s, h * s)
            for k, line in enumerate(lines):
                pdf.text(line, (x + w / 2) * s, (y + h + (k + 1) * g.line - 3) * s, g.font * s, "middle", k == 0)
    return pdf.bytes()


def write_figure(rows: list[FigRow], out, name: str = "figure", formats=FORMATS, cell: int = 256) -> list[Path]:
    """Write the figure as <out>/<name>.<png|svg|pdf>; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    g = geometry(rows, cell)
    paths = []
    for fmt in formats:
        data = {"png": lambda: render_png(rows, g), "svg": lambda: render_svg(rows, g).encode("utf-8"),
                "pdf": lambda: render_pdf(rows, g)}[fmt]()
        write_once(out / f"{name}.{fmt}", data)
        paths.append(out / f"{name}.{fmt}")
    return paths
