"""An independent judge of toy-world images: what the pixels show, read with the world's own geometry — not with
the classifier under test.

  from digin.toy import judge
  j = judge.judge(img)   # img: (3, 64, 64) float in [0, 1] or (64, 64, 3) uint8
  j["shape"]             # a shape of world.SHAPES, "none" (no object) or "unclear" (no shape template fits)
  j["color"], j["background"], j["background_terms"]   # object / background colour in palette terms
                         # (color: a palette colour, "mixed" for a texture, None without an object)

How: the background colour is the whole image's median (the background covers ≥ 65 % of every world scene);
pixels far enough from it are candidate object pixels (fewer than `OBJECT_MIN_PIXELS`: "none"), the median of
their more distinct half is the object's colour, and each pixel's coverage is its colour's way from the background
toward the object's (exact for rendered scenes, which alpha-composite two flat colours), above the background's own
texture. Each shape's anti-aliased mask from `world.object_mask` is fitted to that coverage by least squares — a
pattern search over centre and radius from the coverage's moments, then the template's edge softened as much as
the image's (`BLURS`) — and the shape with the smallest error is the judged shape if its soft IoU passes `IOU_MIN`
(else "unclear": a blob, smear or texture no shape explains). The object colour is the palette colour most of the
fitted object's pixels are nearest to; the background is described as a mix of two palette colours, the world's own
shade model. Validated on rendered scenes (tests/toy/test_judge.py) and on the toy model's own decodes
(reconstructions and txt2img samples: MODEL_CARD.md).
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from digin.toy import world

NOISE_FLOOR = 0.04  # colour distance (RGB in [0, 1]) below which a pixel is background
OBJECT_MIN_DIST = 0.15  # a pixel this far from the background colour is a candidate object pixel
OBJECT_MIN_PIXELS = 16  # fewer candidates: no object ("none"); the smallest world object covers ≈ 90 px
IOU_MIN = 0.7  # best template's soft IoU below this: "unclear" (a blob, smear or texture no shape explains)
# A world object is one flat colour: when no palette colour holds this share of its pixels (a texture, a colour
# between the palette's) its colour is "mixed". Reconstructions of world scenes hold ≥ 0.83.
PURITY_MIN = 0.5
# Pixels this close to the image edge are not read: world objects keep ≥ 2 px off it, and the toy decoder draws a
# darker or lighter band up to 4 px wide along the edge of edited images (a plain field would read as a square).
EDGE = 4

_PAL = np.array([world.PALETTE[c] for c in world.PALETTE], dtype=np.float32) / 255.0
_NAMES = list(world.PALETTE)


def as_hw3(img) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from a (3, H, W) float tensor/array or an (H, W, 3) uint8 array."""
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu().float().numpy()
    a = np.asarray(img)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    if a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    return a.astype(np.float32)


def background_estimate(a_HW3: np.ndarray) -> np.ndarray:
    """Per-channel median of the whole image: the background covers ≥ 65 % of every world scene, and unlike the
    frame it is not where a decoder darkens or tints the edges."""
    return np.median(a_HW3.reshape(-1, 3), axis=0)


def background_colour(a_HW3: np.ndarray, obj_HW: np.ndarray) -> np.ndarray:
    """Median colour of the pixels away from the fitted object (its mask grown by 2 px)."""
    from scipy.ndimage import binary_dilation

    away = ~binary_dilation(obj_HW > 0.05, iterations=2)
    return np.median(a_HW3[away], axis=0) if away.sum() >= 64 else background_estimate(a_HW3)


def nearest_palette(rgb_N3: np.ndarray) -> np.ndarray:
    """Index into world.PALETTE of the nearest palette colour of each row."""
    d = ((np.asarray(rgb_N3, dtype=np.float32)[:, None, :] - _PAL[None]) ** 2).sum(-1)
    return d.argmin(-1)


def palette_terms(rgb) -> dict:
    """A colour as the world's shade model writes it: `main` mixed by `weight` (≤ 0.5) toward `toward`, the
    nearest point on any segment between two palette colours; `residual` is how far the colour is from it."""
    rgb = np.asarray(rgb, dtype=np.float32)
    best = None
    for i in range(len(_NAMES)):
        for j in range(len(_NAMES)):
            if i == j:
                continue
            a, b = _PAL[i], _PAL[j]
            w = float(np.clip(np.dot(rgb - a, b - a) / np.dot(b - a, b - a), 0.0, 0.5))
            r = float(np.linalg.norm(rgb - ((1 - w) * a + w * b)))
            if best is None or r < best[3] - 1e-9:
                best = (_NAMES[i], _NAMES[j], w, r)
    main, toward, w, r = best
    return {"main": main, "toward": toward if w > 0.02 else None, "weight": round(w, 3), "residual": round(r, 4)}


def terms_text(t: dict) -> str:
    """'yellow', 'yellow+30% green' (residual > 0.1: the colour is off the world's mixes, marked '~')."""
    s = t["main"] if not t["toward"] else f"{t['main']}+{round(100 * t['weight'])}% {t['toward']}"
    return s if t["residual"] <= 0.1 else f"~{s}"


@functools.cache
def interior(res: int = world.RES) -> np.ndarray:
    """(H, W) float mask of the pixels the judge reads (all but the EDGE-px band)."""
    m = np.zeros((res, res), dtype=np.float32)
    m[EDGE:-EDGE, EDGE:-EDGE] = 1.0
    return m


def coverage(a_HW3: np.ndarray, bg_3: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(object coverage (H, W) in [0, 1], 0 in the edge band; object colour (3,) or None when no object is
    there)."""
    d = np.linalg.norm(a_HW3 - bg_3, axis=-1)
    # a decoded background's own texture: the median pixel is background, so its distance is the texture's size
    noise = max(NOISE_FLOOR, 1.5 * float(np.median(d)))
    d = d * interior(d.shape[0])
    cand = d > max(OBJECT_MIN_DIST, 2 * noise)
    if cand.sum() < OBJECT_MIN_PIXELS:
        return np.zeros_like(d), None
    core = cand & (d >= np.median(d[cand]))  # the more distinct half: the object's flat inside, not its edge
    obj = np.median(a_HW3[core], axis=0)
    contrast = max(float(np.linalg.norm(obj - bg_3)), 2 * noise)
    # coverage along the object's own colour: a hole or halo of a third colour is neither object nor background
    d = ((a_HW3 - bg_3) @ ((obj - bg_3) / contrast)) * interior(d.shape[0])
    return np.clip((d - noise) / (contrast - noise), 0.0, 1.0), obj


def _reach(m_HW: np.ndarray) -> float:
    """95th percentile distance of the half-covered pixels from their centroid: how far an object reaches."""
    yy, xx = np.nonzero(m_HW > 0.5)
    if len(yy) == 0:
        return 0.0
    return float(np.percentile(np.hypot(xx - xx.mean(), yy - yy.mean()), 95))


@functools.cache
def _template_stats(shape: str) -> tuple[float, float, float, float]:
    """(area / r², centroid offset x / r, y / r, reach / r) of a shape's mask: to start the fit from the coverage's
    moments."""
    r, c = 20.0, 32.0
    m = world.object_mask({"shape": shape, "cx": c, "cy": c, "radius": r})
    yy, xx = np.mgrid[0:world.RES, 0:world.RES] + 0.5
    return (float(m.sum() / r ** 2), float((m * xx).sum() / m.sum() - c) / r,
            float((m * yy).sum() / m.sum() - c) / r, _reach(m) / r)


def _mask(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    # the search revisits points (every move's way back is a neighbour): cache on a 1/64-px grid
    return _mask_q(shape, round(cx * 64), round(cy * 64), round(r * 64))


@functools.lru_cache(maxsize=4096)
def _mask_q(shape: str, cx64: int, cy64: int, r64: int) -> np.ndarray:
    m = world.object_mask({"shape": shape, "cx": cx64 / 64, "cy": cy64 / 64, "radius": r64 / 64})
    m.flags.writeable = False
    return m


BLURS = (0.0, 0.75, 1.5)  # edge softness (Gaussian σ, px) a template may take: decoders soften edges by ≈ 1 px


def _template(shape: str, p: list[float], blur: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    m = _mask(shape, *p)
    return gaussian_filter(m, blur) if blur else m


def _loss(cov_HW: np.ndarray, shape: str, p: list[float], blur: float = 0.0) -> float:
    return float((((cov_HW - _template(shape, p, blur)) ** 2) * interior(cov_HW.shape[0])).sum())


def soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.minimum(a, b).sum() / max(np.maximum(a, b).sum(), 1e-6))


def _start(cov_HW: np.ndarray, shape: str, weights_HW: np.ndarray, by_reach: bool = False) -> list[float]:
    """[cx, cy, r] of the template whose centroid and area (or reach) match the weighted pixels'."""
    k, ox, oy, reach = _template_stats(shape)
    yy, xx = np.mgrid[0:world.RES, 0:world.RES] + 0.5
    area = max(float(weights_HW.sum()), 1.0)
    r = _reach(weights_HW) / reach if by_reach else np.sqrt(area / k)
    r = float(np.clip(r, 2.0, 40.0))
    return [float((weights_HW * xx).sum() / area) - ox * r, float((weights_HW * yy).sum() / area) - oy * r, r]


def _search(cov_HW: np.ndarray, shape: str, p: list[float], blur: float = 0.0, step: float | None = None):
    """(loss, [cx, cy, r]): pattern search from p — try ± step on each, halve the step when nothing improves."""
    best = _loss(cov_HW, shape, p, blur)
    step = step or max(1.0, p[2] / 4)
    while step >= 0.25:
        moved = False
        for i in range(3):
            for sgn in (1, -1):
                q = list(p)
                q[i] += sgn * step * (0.5 if i == 2 else 1.0)
                if q[2] < 2.0:
                    continue
                lq = _loss(cov_HW, shape, q, blur)
                if lq < best - 1e-6:
                    p, best, moved = q, lq, True
        if not moved:
            step /= 2
    return best, p


def fit_shape(cov_HW: np.ndarray, shape: str) -> dict:
    """Centre and radius of `shape` whose mask best matches the coverage (least squares): a pattern search with the
    sharp template from up to three starts — the coverage's centroid and area, those of its half-covered pixels (a
    faint halo around the object pulls the first), and their reach (a thinner ring than the world's has too
    little area for its size) — then at the edge softness of `BLURS` that fits best.
    {"loss", "iou" (soft IoU against that softened template), "cx", "cy", "radius", "blur"}."""
    half = (cov_HW > 0.5).astype(np.float32)
    starts = []
    for q in (_start(cov_HW, shape, cov_HW), _start(cov_HW, shape, half), _start(cov_HW, shape, half, by_reach=True)):
        if all(np.abs(np.subtract(q, o)).max() >= 1.0 for o in starts):  # a clean object: the starts agree
            starts.append(q)
    _, p = min((_search(cov_HW, shape, q) for q in starts), key=lambda lp: lp[0])
    blur = min(BLURS, key=lambda b: _loss(cov_HW, shape, p, b))
    loss, p = _search(cov_HW, shape, p, blur, step=0.5) if blur else (_loss(cov_HW, shape, p), p)
    iou = soft_iou(cov_HW, _template(shape, p, blur) * interior(cov_HW.shape[0]))
    return {"loss": loss, "iou": iou, "cx": p[0], "cy": p[1], "radius": p[2], "blur": blur}


def describe_background(rgb) -> dict:
    terms = palette_terms(rgb)  # the dominant colour of the mix: a 45 % shade is still its caption's colour
    return {"background": terms["main"], "background_rgb": [round(float(v), 4) for v in rgb],
            "background_terms": terms}


def judge(img) -> dict:
    """What one toy image shows, read from its pixels (see the module doc): {"shape", "color", "purity" (share of
    the object's pixels nearest its colour), "background", "background_rgb", "background_terms", "iou" (of the
    best-fitting shape), "fit_shape" (that shape, also when "unclear"), "cx", "cy", "radius", "fits" (IoU per
    shape)}."""
    a = as_hw3(img)
    cov, obj = coverage(a, background_estimate(a))
    if obj is None:
        return dict(describe_background(background_estimate(a)), shape="none", fit_shape=None, color=None,
                    purity=0.0, iou=0.0, fits={}, cx=None, cy=None, radius=None)
    fits = {s: fit_shape(cov, s) for s in world.SHAPES}
    best = min(fits, key=lambda s: fits[s]["loss"])
    f = fits[best]
    m = _mask(best, f["cx"], f["cy"], f["radius"])
    inside = (m > 0.5) & (cov > 0.5)
    color, purity = None, 0.0
    if inside.sum() >= 3:  # the palette colour most of the object's pixels are nearest to
        counts = np.bincount(nearest_palette(a[inside]), minlength=len(_NAMES))
        purity = float(counts.max() / counts.sum())
        color = _NAMES[int(counts.argmax())] if purity >= PURITY_MIN else "mixed"
    return dict(describe_background(background_colour(a, np.maximum(m, cov > 0.5))),
                shape=best if f["iou"] >= IOU_MIN else "unclear", fit_shape=best, color=color, purity=purity,
                iou=f["iou"], cx=f["cx"], cy=f["cy"], radius=f["radius"],
                fits={s: round(v["iou"], 4) for s, v in fits.items()})


def judge_batch(imgs) -> list[dict]:
    """judge() of every image of a (B, 3, H, W) tensor or a list of images."""
    return [judge(im) for im in imgs]


# ------------------------------------------------------------------------------ verdicts on science results
# Pure functions of classifier probabilities and judgements, so tests can check them on rendered scenes.

def present(judged: list[dict]) -> list[bool]:
    return [j["shape"] != "none" for j in judged]


def clean_reading(p_BK, judged: list[dict]) -> list[str]:
    """The clean classifier's top-1 shape with a 'none' outcome: where the judge finds no object the reading is
    'none', whatever the classifier says — it reads a washed-out or vanished object as a star."""
    top = torch.as_tensor(p_BK).argmax(-1).tolist()
    return [world.SHAPES[k] if j["shape"] != "none" else "none" for k, j in zip(top, judged)]


def uvce_verdicts(p_target_B, judged: list[dict], targets: list[str], colours: list[str], background_rms_B,
                  background_max: float = 0.08) -> dict:
    """Per UVCE result (lists of bools):
      success       clean p(target) > 0.5 and the judge sees an object (classifier-judged, 'none' rule)
      judged_target the judge reads the target shape from the pixels
      confirmed     both: the classifier's success is the target shape, not a blob it calls the target
      colour_kept   the judged object colour is the scene's
      background_kept  background RMS change < background_max (a third of the nearest palette colours' distance)
      clean_edit    confirmed, colour kept and background kept"""
    p = torch.as_tensor(p_target_B).tolist()
    bg = torch.as_tensor(background_rms_B).tolist()
    success = [q > 0.5 and ok for q, ok in zip(p, present(judged))]
    judged_target = [j["shape"] == t for j, t in zip(judged, targets)]
    confirmed = [a and b for a, b in zip(success, judged_target)]
    colour_kept = [j["color"] == c for j, c in zip(judged, colours)]
    background_kept = [r < background_max for r in bg]
    clean = [a and b and c for a, b, c in zip(confirmed, colour_kept, background_kept)]
    return {"success": success, "judged_target": judged_target, "confirmed": confirmed, "colour_kept": colour_kept,
            "background_kept": background_kept, "clean_edit": clean}


def rate(flags: list[bool]) -> float:
    return float(np.mean(flags)) if len(flags) else float("nan")
