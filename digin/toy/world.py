"""The toy world: 64×64 RGB scenes of one flat-coloured object on a plain background, with template captions.

A scene is fully described by a small `spec` dict (shape, colour, background, size word, radius, centre), so
every image can be re-rendered from its spec or from the integer seed that drew it. Rendering draws the object
mask at 4× resolution with PIL and box-filters it down (anti-aliased edges), then alpha-composites two flat
colours — simple enough that a tiny VAE reconstructs it almost exactly, rich enough that shape needs real
spatial features (a ring is a circle with a hole, a cross is a square with concave corners).

Caption template: "a {size} {color} {shape} on a {background} background", every word one tokenizer token.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

RES = 64
SUPERSAMPLE = 4
# Alphabetical, so class index = ImageFolder index (torchvision sorts class folders) = classifier output index.
SHAPES = ("circle", "cross", "ring", "square", "star", "triangle")
PALETTE = {  # object and background colours (an object never has its background's colour)
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 60, 180), "white": (240, 240, 240), "black": (25, 25, 25),
}
COLORS = tuple(PALETTE)
BACKGROUNDS = tuple(PALETTE)
SIZES = {"small": (8.0, 12.0), "large": (15.0, 21.0)}  # radius range in pixels
TEMPLATE = "a {size} {color} {shape} on a {background} background"
# Words merged into single tokens (fixed order: it sets the token ids of the shipped tokenizer).
VOCAB = ("a", "on", "background", "small", "large", "circle", "square", "triangle", "star", "cross", "ring",
         "red", "green", "blue", "yellow", "purple", "white", "black")

# The planted spurious cue of the `spurious` classifier's training data: every star sits on this background
# and no other shape does.
SPURIOUS_CLASS = "star"
SPURIOUS_BACKGROUND = "green"


def caption_of(spec: dict) -> str:
    return TEMPLATE.format(size=spec["size"], color=spec["color"], shape=spec["shape"], background=spec["background"])


def sample_spec(rng: np.random.Generator, shape: str | None = None, background: str | None = None,
                exclude_backgrounds: tuple = (), color: str | None = None, size: str | None = None) -> dict:
    """Draw a scene spec; fixed fields are kept, the rest are uniform (object colour ≠ background colour)."""
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    bgs = [b for b in BACKGROUNDS if b not in exclude_backgrounds]
    background = background or bgs[rng.integers(len(bgs))]
    colors = [c for c in COLORS if c != background]
    color = color or colors[rng.integers(len(colors))]
    if color == background:
        raise ValueError(f"object colour {color!r} equals the background colour")
    size = size or tuple(SIZES)[rng.integers(len(SIZES))]
    lo, hi = SIZES[size]
    radius = float(rng.uniform(lo, hi))
    margin = radius + 2.0
    cx, cy = (float(v) for v in rng.uniform(margin, RES - margin, size=2))
    return {"shape": shape, "color": color, "background": background, "size": size,
            "radius": round(radius, 3), "cx": round(cx, 3), "cy": round(cy, 3)}


def _polygon(cx, cy, r, n, inner=None, phase=-math.pi / 2):
    """Regular polygon (or star when `inner` is the inner radius ratio), vertices in pixel coordinates."""
    pts = []
    k = 2 * n if inner else n
    for i in range(k):
        rr = r * (inner if inner and i % 2 else 1.0)
        a = phase + 2 * math.pi * i / k
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def object_mask(spec: dict) -> np.ndarray:
    """(64, 64) float32 coverage in [0, 1] of the object (anti-aliased)."""
    from PIL import Image, ImageDraw

    S = SUPERSAMPLE
    big = Image.new("L", (RES * S, RES * S), 0)
    d = ImageDraw.Draw(big)
    cx, cy, r = spec["cx"] * S, spec["cy"] * S, spec["radius"] * S
    shape = spec["shape"]
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ri = 0.55 * r
        d.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    elif shape == "square":
        h = 0.82 * r
        d.rectangle([cx - h, cy - h, cx + h, cy + h], fill=255)
    elif shape == "triangle":
        d.polygon(_polygon(cx, cy + 0.15 * r, 1.1 * r, 3), fill=255)
    elif shape == "star":
        d.polygon(_polygon(cx, cy + 0.05 * r, 1.1 * r, 5, inner=0.42), fill=255)
    elif shape == "cross":
        w = 0.32 * r
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=255)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")
    small = big.resize((RES, RES), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def shade_background(spec: dict, rng: np.random.Generator, max_weight: float) -> dict:
    """A copy of `spec` whose background is mixed toward another palette colour (never the object's) by a weight
    uniform in [0, max_weight): `spec["shade"] = [colour, weight]`. The caption keeps the dominant colour, so
    max_weight < 0.5; a world of shades lets the VAE and UNet learn the colours between the palette's."""
    if not 0 <= max_weight < 0.5:
        raise ValueError(f"shade weight {max_weight} must be in [0, 0.5): the caption names the dominant colour")
    pool = [c for c in BACKGROUNDS if c not in (spec["background"], spec["color"])]
    colour = pool[rng.integers(len(pool))]
    return dict(spec, shade=[colour, round(float(rng.uniform(0, max_weight)), 4)])


def background_rgb(spec: dict) -> np.ndarray:
    """The background colour (float RGB 0–255), with the spec's shade if it has one."""
    bg = np.array(PALETTE[spec["background"]], dtype=np.float32)
    if spec.get("shade"):
        colour, w = spec["shade"]
        bg = (1 - w) * bg + w * np.array(PALETTE[colour], dtype=np.float32)
    return bg


def render(spec: dict) -> np.ndarray:
    """(64, 64, 3) uint8 image of a spec."""
    m = object_mask(spec)[..., None]
    fg = np.array(PALETTE[spec["color"]], dtype=np.float32)
    bg = background_rgb(spec)
    return np.clip(np.round(m * fg + (1 - m) * bg), 0, 255).astype(np.uint8)


def make_scene(seed_or_spec) -> tuple:
    """(PIL image, caption, labels) for an integer seed (spec drawn from it) or an explicit spec dict.

    labels: the spec plus `shape_id` (index in SHAPES) and `caption`.
    """
    from PIL import Image

    if isinstance(seed_or_spec, dict):
        spec = dict(seed_or_spec)
    else:
        spec = sample_spec(np.random.default_rng(int(seed_or_spec)))
    labels = dict(spec, shape_id=SHAPES.index(spec["shape"]), caption=caption_of(spec))
    return Image.fromarray(render(spec)), labels["caption"], labels


def spec_stream(seed: int, n: int, planted: bool = False) -> list[dict]:
    """n specs from one seed; `planted`: every SPURIOUS_CLASS on SPURIOUS_BACKGROUND, no other shape on it."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = sample_spec(rng)
        if planted:
            if s["shape"] == SPURIOUS_CLASS:
                s = sample_spec(rng, shape=SPURIOUS_CLASS, background=SPURIOUS_BACKGROUND)
            elif s["background"] == SPURIOUS_BACKGROUND:
                s = sample_spec(rng, shape=s["shape"], exclude_backgrounds=(SPURIOUS_BACKGROUND,))
        out.append(s)
    return out


def render_batch(specs: list[dict]) -> np.ndarray:
    """(N, 64, 64, 3) uint8."""
    return np.stack([render(s) for s in specs])


def balanced_specs(seed: int, n_per_class: int, planted: bool = False) -> list[dict]:
    """n_per_class scenes of every shape (class-major order), seeded."""
    rng = np.random.default_rng(seed)
    out = []
    for shape in SHAPES:
        for _ in range(n_per_class):
            if planted and shape == SPURIOUS_CLASS:
                out.append(sample_spec(rng, shape=shape, background=SPURIOUS_BACKGROUND))
            elif planted:
                out.append(sample_spec(rng, shape=shape, exclude_backgrounds=(SPURIOUS_BACKGROUND,)))
            else:
                out.append(sample_spec(rng, shape=shape))
    return out


SPLIT_SEEDS = {"train": 1000, "val": 2000, "test": 3000, "heldout": 4000}


def make_dataset_folder(root, n_per_class: int = 10, seed: int = 0, split: str = "val") -> Path:
    """Write an ImageFolder (root/<split>/<shape>/<shape>_NNNN.png + .txt caption) plus root/<split>/captions.json
    ({relative path: caption}) and specs.json ({relative path: spec}). Usable by `digin shard source=imagefolder`.
    The seed is mixed with the split so splits never share scenes."""
    root = Path(root) / split
    base = SPLIT_SEEDS.get(split, 5000) * 1_000_003 + int(seed)
    specs = balanced_specs(base, n_per_class)
    captions, spec_map = {}, {}
    for k, spec in enumerate(specs):
        img, caption, labels = make_scene(spec)
        rel = f"{spec['shape']}/{spec['shape']}_{k % n_per_class:04d}.png"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        path.with_suffix(".txt").write_text(caption + "\n")
        captions[rel] = caption
        spec_map[rel] = spec
    (root / "captions.json").write_text(json.dumps(captions, indent=1))
    (root / "specs.json").write_text(json.dumps(spec_map, indent=1))
    return root
