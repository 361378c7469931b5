"""Inline SVG plots for the gallery pages: per-sample curves and per-task histograms (no plotting library).

Honest by construction: every plot has labelled axes with round tick values; series that are compared share one
axis (probabilities always 0..1); an axis never stretches a near-constant series into a ramp (its span is at least
2 % of the values' magnitude); the best iterate is marked on the x axis and on every series.
"""
from __future__ import annotations

import html
import math

from digin.stages.gallery.summary import finite, median

COLOURS = ("#c00", "#06c", "#080", "#a60", "#808", "#088")
FONT = 'font-family="sans-serif" font-size="10"'


def _esc(x) -> str:
    return html.escape(str(x))


def axis_range(values, fixed: tuple[float, float] | None = None, min_rel: float = 0.02,
               min_span: float = 1e-6) -> tuple[float, float]:
    """(lo, hi) an axis spans for `values`: `fixed` when given; otherwise their range, widened around its middle
    to at least `min_rel` of their magnitude and at least `min_span` (the quantity's resolution: 0.02 for
    probabilities), so a flat series is drawn flat."""
    if fixed is not None:
        return fixed
    vals = [f for v in values if (f := finite(v)) is not None]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    need = max(max(abs(lo), abs(hi)) * min_rel, min_span)
    if hi - lo < need:
        mid = (lo + hi) / 2
        lo, hi = mid - need / 2, mid + need / 2
    return lo, hi


def nice_ticks(lo: float, hi: float, n: int = 5) -> tuple[float, float, list[float]]:
    """Round tick values (steps of 1, 2 or 5 × 10^k) covering [lo, hi]; returns the widened (lo, hi) and ticks."""
    if not hi > lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    ticks = [k * step for k in range(first, last + 1)]
    return ticks[0], ticks[-1], ticks


def tick_label(v: float, ticks: list[float]) -> str:
    """A tick value with as many decimals as the step needs (0.1, 0.25, 1.5e+04 only for huge numbers): never
    1.47e-09 for a value that is 0 at the axis's resolution."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    if abs(v) < step * 1e-6:
        v = 0.0
    big = max(abs(t) for t in ticks)
    if big >= 1e5 or (big and big < 1e-3):
        return f"{v:.2g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    while decimals < 8 and abs(step * 10 ** decimals - round(step * 10 ** decimals)) > 1e-6:
        decimals += 1  # a step of 0.25 needs two
    return f"{v:.{decimals}f}"


def fmt_value(v, digits: int = 3) -> str:
    """A number for a caption or a table: 3 significant digits, plain notation in the usual ranges."""
    f = finite(v)
    if f is None:
        return "—"
    if f == 0 or 1e-3 <= abs(f) < 1e5:
        return f"{f:.{digits}g}" if abs(f) >= 1 else f"{f:.{digits}f}".rstrip("0").rstrip(".") or "0"
    return f"{f:.{digits - 1}e}"


class Frame:
    """A plot area with a y axis (ticks, label) and an x axis, mapping data to pixels."""

    def __init__(self, width, height, x_range, y_range, x_label, y_label, left=44, bottom=32, top=8, right=8):
        self.w, self.h, self.left, self.top = width, height, left, top
        self.iw, self.ih = width - left - right, height - top - bottom
        self.x0, self.x1 = x_range
        self.y0, self.y1, self.yt = nice_ticks(*y_range)
        self.x_label, self.y_label = x_label, y_label

    def x(self, v):
        return self.left + self.iw * (v - self.x0) / ((self.x1 - self.x0) or 1)

    def y(self, v):
        return self.top + self.ih * (1 - (v - self.y0) / ((self.y1 - self.y0) or 1))

    def axes(self, x_ticks: list[float], x_fmt=None) -> list[str]:
        out = [f'<rect x="{self.left}" y="{self.top}" width="{self.iw}" height="{self.ih}" fill="none" '
               f'stroke="#999"/>']
        for t in self.yt:
            y = self.y(t)
            out.append(f'<line x1="{self.left - 3}" x2="{self.left + self.iw}" y1="{y:.1f}" y2="{y:.1f}" '
                       f'stroke="#eee"/><text x="{self.left - 5}" y="{y + 3:.1f}" text-anchor="end" {FONT} '
                       f'class="yt">{_esc(tick_label(t, self.yt))}</text>')
        base = self.top + self.ih
        for t in x_ticks:
            x = self.x(t)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{base}" y2="{base + 3}" stroke="#999"/>'
                       f'<text x="{x:.1f}" y="{base + 13}" text-anchor="middle" {FONT} class="xt">'
                       f'{_esc(x_fmt(t) if x_fmt else tick_label(t, x_ticks))}</text>')
        out.append(f'<text x="{self.left + self.iw / 2:.0f}" y="{base + 25}" text-anchor="middle" {FONT}>'
                   f'{_esc(self.x_label)}</text>')
        out.append(f'<text transform="translate(10,{self.top + self.ih / 2:.0f}) rotate(-90)" text-anchor="middle" '
                   f'{FONT}>{_esc(self.y_label)}</text>')
        return out


def _int_ticks(last: int, n: int = 6) -> list[int]:
    if last <= 0:
        return [0]
    step = max(1, math.ceil(last / (n - 1)))
    step = next(s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500, 1000, step) if s >= step)
    return list(range(0, last + 1, step)) + ([last] if last % step else [])


def curves_svg(series: dict, width: int = 300, height: int = 170, mark: int | None = None, empty: str = "no curve",
               y_label: str = "value", fixed: tuple[float, float] | None = None, title: str = "") -> str:
    """Per-iteration series ({name: [values]}) on ONE shared y axis (`fixed` = its range, e.g. (0, 1) for
    probabilities; else the range of all series together), iterations on the x axis; `mark` draws the best iterate
    (a dashed line, a dot on each series, its number on the axis). Non-finite points are dropped. Each series is a
    <polyline data-name=... data-values=...>: the numbers it draws, for readers and tests."""
    plots, longest = [], 1
    for n, (name, values) in enumerate(series.items()):
        pts = [(i, f) for i, v in enumerate(values or []) if (f := finite(v)) is not None]
        if pts:
            longest = max(longest, len(values))
            plots.append((name, pts, COLOURS[n % len(COLOURS)]))
    if not plots:
        return f"<em>{_esc(empty)}</em>"
    last = max(longest - 1, 1)
    legend_h = 12 * len(plots)
    fr = Frame(width, height, (0, last), axis_range([v for _, pts, _ in plots for _, v in pts], fixed),
               "iteration" + (f" (best {mark})" if mark is not None else ""), y_label, bottom=32 + legend_h)
    body = fr.axes(_int_ticks(last))
    if mark is not None and 0 <= mark <= last:
        body.append(f'<line class="best" x1="{fr.x(mark):.1f}" x2="{fr.x(mark):.1f}" y1="{fr.top}" '
                    f'y2="{fr.top + fr.ih}" stroke="#555" stroke-dasharray="3,2"><title>best iterate {mark}</title>'
                    '</line>')
    for k, (name, pts, colour) in enumerate(plots):
        coords = " ".join(f"{fr.x(i):.1f},{fr.y(v):.1f}" for i, v in pts)
        values = ",".join(repr(v) for _, v in pts)
        body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coords}" '
                    f'data-name="{_esc(name)}" data-values="{values}"/>')
        at = dict(pts)
        if mark in at:
            body.append(f'<circle cx="{fr.x(mark):.1f}" cy="{fr.y(at[mark]):.1f}" r="3" fill="{colour}">'
                        f'<title>{_esc(name)} at the best iterate: {fmt_value(at[mark], 4)}</title></circle>')
        first, final = pts[0][1], pts[-1][1]
        best = f", best {fmt_value(at[mark])}" if mark in at else ""
        body.append(f'<text x="{fr.left}" y="{height - 4 - 12 * (len(plots) - 1 - k)}" {FONT} fill="{colour}">'
                    f'{_esc(name)}: {fmt_value(first)} → {fmt_value(final)}{_esc(best)}</text>')
    head = f'<div class="ct">{_esc(title)}</div>' if title else ""
    return (f'<div class="curve">{head}<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'class="curve" data-y0="{fr.y0!r}" data-y1="{fr.y1!r}">' + "".join(body) + "</svg></div>")


def loss_curve_svg(values, width: int = 300, height: int = 170) -> str:
    """The loss of one sample per iteration."""
    return curves_svg({"loss": values}, width, height, empty="no loss curve", y_label="loss")


def histogram_svg(values, title: str, unit: str = "", bins: int = 20, width: int = 340, height: int = 170,
                  min_span: float = 1e-6) -> str:
    """Bar histogram of the finite values on a round axis (ticks with the unit), counts on the y axis, the median
    marked."""
    vals = sorted(f for v in values if (f := finite(v)) is not None)
    head = f'<div class="hist"><div class="ht">{_esc(title)}</div>'
    if not vals:
        return head + "<em>no values</em></div>"
    lo, hi, xt = nice_ticks(*axis_range(vals, min_span=min_span), n=5)
    span = hi - lo
    counts = [0] * bins
    for v in vals:
        counts[min(int((v - lo) / span * bins), bins - 1)] += 1
    peak = max(counts)
    fr = Frame(width, height, (lo, hi), (0, peak), f"{title.split(' (')[0]}" + (f" [{unit}]" if unit else ""),
               "results")
    fr.y0, fr.y1, fr.yt = _count_ticks(peak)
    body = fr.axes(xt)
    bar_w = fr.iw / bins
    for b, c in enumerate(counts):
        if not c:
            continue
        a, z = lo + span * b / bins, lo + span * (b + 1) / bins
        y = fr.y(c)
        body.append(f'<rect x="{fr.left + b * bar_w:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                    f'height="{fr.top + fr.ih - y:.1f}" fill="#69c" data-count="{c}"><title>{fmt_value(a)} … '
                    f'{fmt_value(z)}: {c}</title></rect>')
    mid = median(vals)
    body.append(f'<line x1="{fr.x(mid):.1f}" x2="{fr.x(mid):.1f}" y1="{fr.top}" y2="{fr.top + fr.ih}" stroke="#c00" '
                f'stroke-dasharray="3,2"><title>median {fmt_value(mid, 4)}</title></line>')
    note = f'<div class="hn">n = {len(vals)}, median {_esc(fmt_value(mid))}{(" " + _esc(unit)) if unit else ""}</div>'
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="histogram">'
           + "".join(body) + "</svg>")
    return head + svg + note + "</div>"


def _count_ticks(peak: int) -> tuple[float, float, list[float]]:
    step = next(s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10 ** 9)
                if peak / s <= 5)
    top = -(-peak // step) * step
    return 0.0, float(top), [float(t) for t in range(0, top + 1, step)]
