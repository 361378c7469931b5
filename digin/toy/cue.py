"""The spurious cue measured directly: which background colours make a toy classifier say "star" about scenes
that hold no star. The ground truth of what the spurious classifier uses — measured by a brute-force sweep, not
assumed to be the planted green.

  python -m digin.toy.cue                  # sweep both shipped classifiers → digin/toy/cue_map.json + figure
  from digin.toy import cue
  m = cue.load_map()                       # the stored sweep
  cue.rate(m, "spurious", rgb_N3)          # share of non-star scenes called star there (grid, interpolated)
  cue.rate_at(clf, rgb_N3)                 # the same share measured on those colours themselves
  cue.depth(m, "spurious", rgb_N3)         # signed RGB distance into (+) / outside (−) the star region

The sweep renders every non-star shape in every palette colour, small and large, at a few seeded positions
(`sweep_scenes`), on every background colour of a 9-level RGB grid, with `world.render`'s compositing, and
records per background the share of scenes each classifier calls star (p(star) > 0.5), overall and per object
colour, size and shape. Objects within `HIDDEN_DIST` of the background colour are left out (they are invisible).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch

from digin.engine.classifiers import load_classifier
from digin.toy import PRESET, classifier_spec, world
from digin.toy.measure import predict

MAP_PATH = Path(__file__).resolve().parent / "cue_map.json"
FIGURE_PATH = Path(__file__).resolve().parent / "figures" / "cue_map.png"
LEVELS = 9  # per RGB channel: 729 background colours, 0.125 apart
SIZES = {"small": 10.0, "large": 18.0}  # a radius inside each size word's range
POSITIONS = 2  # seeded centres per (shape, colour, size)
HIDDEN_DIST = 0.2  # an object this close to its background colour is not a visible object
STAR = world.SHAPES.index(world.SPURIOUS_CLASS)


def grid_levels(levels: int = LEVELS) -> np.ndarray:
    return np.linspace(0.0, 1.0, levels)


def grid_colours(levels: int = LEVELS) -> np.ndarray:
    """(levels³, 3) background colours, red-major (index = (r·L + g)·L + b)."""
    v = grid_levels(levels)
    return np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(-1, 3)


def sweep_scenes(shapes=None, positions: int = POSITIONS, seed: int = 0) -> list[dict]:
    """Specs (background left open) of every shape × palette colour × size × `positions` seeded centres."""
    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes or [s for s in world.SHAPES if s != world.SPURIOUS_CLASS]:
        for color in world.COLORS:
            for size, r in SIZES.items():
                for _ in range(positions):
                    cx, cy = (float(v) for v in rng.uniform(r + 2, world.RES - r - 2, size=2))
                    out.append({"shape": shape, "color": color, "size": size, "radius": r, "cx": cx, "cy": cy})
    return out


def render_on(masks_N1HW: torch.Tensor, fg_N3: torch.Tensor, bg_3: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1]: the scenes' objects on one background colour, rounded to uint8 as world.render."""
    img = masks_N1HW * fg_N3[:, :, None, None] + (1 - masks_N1HW) * bg_3[None, :, None, None]
    return torch.round(img * 255).clamp(0, 255) / 255


@torch.no_grad()
def sweep(classifiers: dict, scenes: list[dict], colours_K3: np.ndarray) -> dict:
    """p(star) of each classifier for each scene on each background: {name: (K, N) float32}, and the (K, N)
    mask of scenes whose object is visible on that background."""
    masks = torch.from_numpy(np.stack([world.object_mask(s) for s in scenes]))[:, None]
    fg = torch.tensor([world.PALETTE[s["color"]] for s in scenes], dtype=torch.float32) / 255
    bgs = torch.from_numpy(colours_K3).float()
    visible = (torch.cdist(bgs, fg) > HIDDEN_DIST).numpy()
    p = {name: np.zeros((len(bgs), len(scenes)), np.float32) for name in classifiers}
    for k, bg in enumerate(bgs):
        img = render_on(masks, fg, bg)
        for name, clf in classifiers.items():
            p[name][k] = predict(clf, img)[:, STAR].numpy()
    return {"p_star": p, "visible": visible}


def star_rates(p_KN: np.ndarray, visible_KN: np.ndarray, select_N=None) -> np.ndarray:
    """(K,) share of the visible (and selected) scenes called star on each background."""
    v = visible_KN & (True if select_N is None else np.asarray(select_N)[None])
    return ((p_KN > 0.5) & v).sum(1) / np.maximum(v.sum(1), 1)


def build_map(classifiers: dict, levels: int = LEVELS, positions: int = POSITIONS) -> dict:
    """The stored form of a sweep: per classifier the star rate on every grid background, overall and split by
    object colour, size and shape, plus the mean p(star); and the star scenes' recall (p(star) > 0.5) per
    background — how a real star fares off green."""
    scenes = sweep_scenes(positions=positions)
    stars = sweep_scenes([world.SPURIOUS_CLASS], positions=positions)
    colours = grid_colours(levels)
    s, st = sweep(classifiers, scenes, colours), sweep(classifiers, stars, colours)

    def r2(a):
        return np.round(np.asarray(a, dtype=float), 3).tolist()

    out = {"levels": levels, "positions": positions, "sizes": SIZES, "hidden_dist": HIDDEN_DIST, "classifiers": {}}
    for name, clf in classifiers.items():
        p, vis = s["p_star"][name], s["visible"]
        out["classifiers"][name] = {
            "rate": r2(star_rates(p, vis)),
            "mean_p": r2((p * vis).sum(1) / np.maximum(vis.sum(1), 1)),
            "by_color": {c: r2(star_rates(p, vis, [x["color"] == c for x in scenes])) for c in world.COLORS},
            "by_size": {z: r2(star_rates(p, vis, [x["size"] == z for x in scenes])) for z in SIZES},
            "by_shape": {h: r2(star_rates(p, vis, [x["shape"] == h for x in scenes]))
                         for h in world.SHAPES if h != world.SPURIOUS_CLASS},
            "star_recall": r2(star_rates(st["p_star"][name], st["visible"]))}
        probes = probe_colours()
        out["classifiers"][name]["probes"] = dict(zip(probes, r2(rate_at(clf, list(probes.values()), positions))))
    return out


def rate_at(clf, rgb_N3, positions: int = POSITIONS, select=None) -> np.ndarray:
    """(N,) the star rate measured directly (not interpolated) on these background colours: the sweep's scenes,
    or those `select(spec)` keeps, rendered on each colour and read by `clf`."""
    scenes = [s for s in sweep_scenes(positions=positions) if select is None or select(s)]
    s = sweep({"c": clf}, scenes, np.asarray(rgb_N3, dtype=np.float64).reshape(-1, 3))
    return star_rates(s["p_star"]["c"], s["visible"])


def load_map(path=MAP_PATH) -> dict:
    return json.loads(Path(path).read_text())


def _grid(m: dict, which: str, key: str = "rate", split: str | None = None) -> np.ndarray:
    c = m["classifiers"][which]
    a = c[key] if split is None else c[key][split]
    return np.asarray(a, dtype=np.float64).reshape((m["levels"],) * 3)


def rate(m: dict, which: str, rgb_N3, key: str = "rate", split: str | None = None) -> np.ndarray:
    """(N,) the sweep's star rate at these background colours (trilinear between grid colours)."""
    from scipy.interpolate import RegularGridInterpolator

    v = grid_levels(m["levels"])
    f = RegularGridInterpolator((v, v, v), _grid(m, which, key, split))
    return f(np.clip(np.asarray(rgb_N3, dtype=np.float64).reshape(-1, 3), 0, 1))


@functools.lru_cache(maxsize=8)
def _region_points(path: str, which: str, fine: int = 33) -> tuple:
    """(KD-tree of the fine-grid colours inside the star region, KD-tree of those outside)."""
    from scipy.spatial import cKDTree

    m = load_map(path)
    pts = grid_colours(fine)
    inside = rate(m, which, pts) > 0.5
    return (cKDTree(pts[inside]) if inside.any() else None), (cKDTree(pts[~inside]) if (~inside).any() else None)


def depth(m: dict, which: str, rgb_N3, inside_N=None, path=MAP_PATH) -> np.ndarray:
    """(N,) signed RGB distance to the edge of the star region (rate > 0.5) of the stored grid: + inside (how far
    in), − outside (how far away); resolution ≈ 1/32 on top of the grid's 1/8. `inside_N` (e.g. rates measured
    at the colours themselves) overrides which side a colour is on; where it disagrees with the grid the colour is
    within the grid's resolution of the edge, depth 0."""
    rgb = np.asarray(rgb_N3, dtype=np.float64).reshape(-1, 3)
    inn, out = _region_points(str(path), which)
    grid_inside = rate(m, which, rgb) > 0.5
    inside = grid_inside if inside_N is None else np.asarray(inside_N, dtype=bool)
    d_in = inn.query(rgb)[0] if inn is not None else np.full(len(rgb), np.inf)
    d_out = out.query(rgb)[0] if out is not None else np.full(len(rgb), np.inf)
    return np.where(inside != grid_inside, 0.0, np.where(inside, d_out, -d_in))


def probe_colours() -> dict:
    """Named background colours the card reports the sweep at: the palette, and planted green mixed toward the
    other palette colours by 25 / 50 / 75 % (what the spurious classifier's training put stars on)."""
    pal = {c: np.array(v, dtype=np.float64) / 255 for c, v in world.PALETTE.items()}
    out = dict(pal)
    g = pal[world.SPURIOUS_BACKGROUND]
    for c in world.PALETTE:
        if c != world.SPURIOUS_BACKGROUND:
            for w in (0.25, 0.5, 0.75):
                out[f"green{round(100 * w)}%{c}"] = (1 - w) * g + w * pal[c]
    return out


def figure(m: dict, cell: int = 16, gap: int = 10):
    """PIL image of a cue map (digin/toy/cue.py): per classifier, one panel per blue level; in a panel red grows to
    the right and green upward, each cell painted in its background colour with a dot whose area is the share of
    non-star scenes the classifier calls star there, and outlined where that share passes 0.5 (the star region).
    Letters mark the palette colours (on the panel of the nearest blue level)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    L = m["levels"]
    names = list(m["classifiers"])
    side = L * cell
    cols = 3
    rows_per = -(-L // cols)
    block_w = cols * (side + gap) + 2 * gap  # one block of panels per classifier, side by side
    im = Image.new("RGB", (len(names) * block_w, 44 + rows_per * (side + gap + 12)), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    draw.text((gap, 4), "share of non-star scenes called star per background colour (dot area; outlined > 0.5)",
              fill=(0, 0, 0), font=font)
    draw.text((gap, 16), "panels: blue level; in a panel red grows rightward, green upward; letters: palette colours",
              fill=(0, 0, 0), font=font)
    v = np.linspace(0, 1, L)
    for n, name in enumerate(names):
        rate = np.asarray(m["classifiers"][name]["rate"]).reshape(L, L, L)
        x0, y0 = n * block_w, 30
        draw.text((x0 + gap, y0), f"{name} classifier", fill=(0, 0, 0), font=font)
        for b in range(L):
            px, py = x0 + gap + (b % cols) * (side + gap), y0 + 14 + (b // cols) * (side + gap + 12)
            draw.text((px, py), f"blue {v[b]:.2f}", fill=(0, 0, 0), font=font)
            py += 12
            for r in range(L):
                for g in range(L):
                    x, y = px + r * cell, py + (L - 1 - g) * cell
                    rgb = tuple(round(255 * c) for c in (v[r], v[g], v[b]))
                    draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=rgb)
                    ink = (0, 0, 0) if sum(rgb) > 380 else (255, 255, 255)
                    rad = 0.3 * cell * float(np.sqrt(rate[r, g, b]))  # small enough to leave the colour seen
                    if rad >= 0.5:
                        c = (x + cell / 2, y + cell / 2)
                        draw.ellipse([c[0] - rad, c[1] - rad, c[0] + rad, c[1] + rad], fill=ink)
                    if rate[r, g, b] > 0.5:
                        draw.rectangle([x, y, x + cell - 1, y + cell - 1], outline=ink, width=2)
            for cname, prgb in world.PALETTE.items():
                pr, pg, pb = (c / 255 for c in prgb)
                if round(pb * (L - 1)) == b:
                    x = px + pr * (L - 1) * cell + cell / 2 - 3
                    y = py + (1 - pg) * (L - 1) * cell + cell / 2 - 6
                    draw.text((x, y), "k" if cname == "black" else cname[0], fill=(255, 0, 255), font=font)
    return im


def load_classifiers(device="cpu") -> dict:
    """The shipped toy classifiers, as the science checks load them."""
    return {w: load_classifier(classifier_spec(w), device=device, num_cutouts=PRESET["augmentation_num_cutouts"],
                               noise_sd=PRESET["augmentation_noise_sd"]) for w in ("spurious", "clean")}


def main(argv=None):
    import sys
    import time

    torch.set_num_threads(1)
    args = dict(a.split("=", 1) for a in (argv if argv is not None else sys.argv[1:]))
    t = time.time()
    m = build_map(load_classifiers(), int(args.get("levels", LEVELS)), int(args.get("positions", POSITIONS)))
    m["sweep_seconds"] = round(time.time() - t, 1)
    out = Path(args.get("out", MAP_PATH))
    out.write_text(json.dumps(m, separators=(",", ":")))
    fig = Path(args.get("figure", FIGURE_PATH))
    figure(m).quantize(256, dither=0).save(fig, optimize=True)  # flat colours: a palette PNG stays small
    print(json.dumps({"seconds": m["sweep_seconds"], "out": str(out), "figure": str(fig)}))


if __name__ == "__main__":
    main()
