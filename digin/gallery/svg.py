"""Inline SVG plots for the gallery pages: per-sample curves and per-task histograms (no plotting library)."""
from __future__ import annotations

import html

from digin.gallery.summary import finite, median

COLOURS = ("#c00", "#06c", "#080", "#a60", "#808")


def curves_svg(series: dict, width: int = 240, height: int = 120, mark: int | None = None,
               empty: str = "no curve") -> str:
    """Polylines of per-iteration values ({name: [values]}), each series scaled to its own range (labelled in its
    colour); `mark` draws a vertical line at that iteration (the best iterate). Non-finite points are dropped."""
    pad, top, bottom = 30, 4, 16 + 11 * len(series)
    plots, labels, longest = [], [], 1
    for n, (name, values) in enumerate(series.items()):
        pts = [(i, f) for i, v in enumerate(values or []) if (f := finite(v)) is not None]
        if not pts:
            continue
        longest = max(longest, len(values))
        plots.append((name, pts, COLOURS[n % len(COLOURS)]))
    if not plots:
        return f"<em>{html.escape(empty)}</em>"
    span_x = max(longest - 1, 1)
    inner_w, inner_h = width - pad - 4, height - bottom - top

    def x(i):
        return pad + inner_w * i / span_x

    body = [f'<rect x="{pad}" y="{top - 2}" width="{width - pad - 2}" height="{inner_h + 4}" fill="none" '
            f'stroke="#999"/>']
    if mark is not None and 0 <= mark <= span_x:
        body.append(f'<line x1="{x(mark):.1f}" x2="{x(mark):.1f}" y1="{top - 2}" y2="{top + inner_h + 2}" '
                    f'stroke="#999" stroke-dasharray="3,2"><title>best iterate {mark}</title></line>')
    for k, (name, pts, colour) in enumerate(plots):
        lo, hi = min(v for _, v in pts), max(v for _, v in pts)
        span_y = (hi - lo) or 1.0
        coords = " ".join(f"{x(i):.1f},{top + inner_h * (1 - (v - lo) / span_y):.1f}" for i, v in pts)
        body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coords}"/>')
        labels.append(f'<text x="0" y="{height - 2 - 11 * (len(plots) - 1 - k)}" font-size="10" fill="{colour}">'
                      f'{html.escape(name)}: {hi:.3g} … {lo:.3g}</text>')
    body.append(f'<text x="{pad}" y="{top + inner_h + 12}" font-size="10">iteration 0..{span_x}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="curve">'
            + "".join(body + labels) + "</svg>")


def loss_curve_svg(values, width: int = 240, height: int = 120) -> str:
    """The loss of one sample per iteration."""
    return curves_svg({"loss": values}, width, height, empty="no loss curve")


def histogram_svg(values, title: str, bins: int = 20, width: int = 320, height: int = 140) -> str:
    """Bar histogram of the finite values, with the range, the count and the median marked."""
    vals = sorted(f for v in values if (f := finite(v)) is not None)
    head = f'<div class="hist"><div class="ht">{html.escape(title)}</div>'
    if not vals:
        return head + "<em>no values</em></div>"
    lo, hi = vals[0], vals[-1]
    span = (hi - lo) or 1.0
    counts = [0] * bins
    for v in vals:
        counts[min(int((v - lo) / span * bins), bins - 1)] += 1
    pad_l, pad_b, top = 28, 26, 6
    inner_w, inner_h = width - pad_l - 4, height - pad_b - top
    bar_w, peak = inner_w / bins, max(counts)
    bars = []
    for b, c in enumerate(counts):
        if not c:
            continue
        h = inner_h * c / peak
        a, z = lo + span * b / bins, lo + span * (b + 1) / bins
        bars.append(f'<rect x="{pad_l + b * bar_w:.1f}" y="{top + inner_h - h:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                    f'height="{h:.1f}" fill="#69c"><title>{a:.3g} … {z:.3g}: {c}</title></rect>')
    mid = median(vals)
    mx = pad_l + inner_w * (mid - lo) / span
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="histogram">'
           f'<line x1="{pad_l}" x2="{pad_l + inner_w}" y1="{top + inner_h}" y2="{top + inner_h}" stroke="#999"/>'
           + "".join(bars) +
           f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{top}" y2="{top + inner_h}" stroke="#c00" stroke-dasharray="3,2">'
           f'<title>median {mid:.4g}</title></line>'
           f'<text x="0" y="{top + 8}" font-size="10">{peak}</text>'
           f'<text x="{pad_l}" y="{height - 12}" font-size="10">{lo:.3g}</text>'
           f'<text x="{pad_l + inner_w}" y="{height - 12}" font-size="10" text-anchor="end">{hi:.3g}</text>'
           f'<text x="{pad_l + inner_w / 2:.0f}" y="{height - 1}" font-size="10" text-anchor="middle">'
           f'n = {len(vals)}, median {mid:.3g}</text></svg>')
    return head + svg + "</div>"
