"""Synthetic UVCE result shards, laid out as `digin uvce` writes them, for the gallery's tests and benchmark.

layout="pair" (what the stage writes now): one sample per (image, target), key `<image key>/t<t>`, members `orig`,
`recon`, `mask`, `attention` (the same bytes for every target of an image), `sd`, `ours`, `metrics.json`,
`latents` and the thumbnails `orig_thumb`, `recon_thumb`, `sd_thumb`, `ours_thumb` (thumbs=False: none, as in sets
written before thumbnails). layout="image" (older sets): one sample per image with `orig`, `recon`, `mask`,
`attention`, `pairs.json` and per target t `t<t>_sd`, `t<t>_ours`, `t<t>_metrics.json`, `t<t>_latents`.
Numbers are drawn from a seeded generator, with some non-finite and no-improvement results. Images are a few base
pictures made distinct per member by a PNG text chunk (thumbnails by a JPEG comment): every member has its own bytes
(so nothing is deduplicated by accident) and decodes like the base picture, without encoding thousands of PNGs.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np

from digin.shards.manifest import FORMAT, MANIFEST, write_json
from digin.shards.writer import ShardWriter
from digin.stages.gallery.records import image_to_array
from digin.stages.gallery.thumbs import thumbnail_jpeg


def stamp_png(data: bytes, text: str) -> bytes:
    """The PNG with a tEXt chunk added after its header: other bytes, the same pixels."""
    body = b"digin\x00" + text.encode("latin-1")
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    end_of_ihdr = 8 + 4 + 4 + 13 + 4
    return data[:end_of_ihdr] + chunk + data[end_of_ihdr:]


def stamp_jpeg(data: bytes, text: str) -> bytes:
    """The JPEG with a comment segment after its start marker: other bytes, the same pixels."""
    body = text.encode("latin-1")
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(body) + 2) + body + data[2:]


def base_pngs(n: int, size: int, seed: int, grey: bool = False) -> list[bytes]:
    """n smooth random pictures (compress like photos), PNG-encoded."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        low = rng.integers(0, 256, (6, 6) if grey else (6, 6, 3), dtype=np.uint8)
        im = Image.fromarray(low).resize((size, size), Image.BICUBIC)
        arr = np.asarray(im, dtype=np.int64) + rng.integers(-6, 7, (size, size) if grey else (size, size, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def uvce_metrics(rng, start: int, target: int, classes: list[str], steps: int, kind: str) -> dict:
    """Metrics of one result like result_fields + the uvce extras; kind: ok | nonfinite | no_improvement."""
    before = float(rng.uniform(0.0, 0.6))
    after = float(np.clip(before + rng.normal(0.3, 0.3), 0.0, 1.0)) if kind == "ok" else before
    curve = [float(v) for v in np.linspace(-np.log(before + 1e-3), -np.log(after + 1e-3), steps + 1)]
    conf = [float(v) for v in np.linspace(before, after, steps + 1)]
    best = 0 if kind == "no_improvement" else steps
    m = {"best_iter": best, "num_logged": steps + 1, "stopped_early": False, "nonfinite": kind == "nonfinite",
         "status": kind, "loss": curve, "confidences": {"conf_0": conf}, "conf_0_sd": conf[0],
         "conf_0_ours": conf[best],
         "start_conf_sd": float(rng.uniform(0.3, 1.0)), "start_conf_ours": float(rng.uniform(0.0, 0.5)),
         "start": start, "target": target, "start_label": classes[start], "target_label": classes[target],
         "prompt": f"a photo of a {classes[start]}", "edited_prompt": f"a photo of a {classes[target]}",
         "schedule": ["threshold_0.0_0.3", None, "none"]}
    if kind == "nonfinite":
        m["conf_0_ours"] = None
        m["loss"] = curve[:2] + [None] * (steps - 1)
    return m


def _every(j: int, n: int) -> bool:
    return bool(n) and j % n == n - 1


def _thumbs(pngs: list[bytes]) -> list[bytes]:
    return [thumbnail_jpeg(image_to_array(p)) for p in pngs]


def write_uvce_results(folder, n_images: int, targets_per_image: int = 2, classes=None, size: int = 64,
                       per_shard: int = 64, seed: int = 0, steps: int = 5, dataset: str = "synthetic",
                       nonfinite_every: int = 0, no_improvement_every: int = 0, rejects_per_shard=(),
                       latent_bytes: int = 4 * 8 * 8 * 4, layout: str = "image", thumbs: bool = True) -> Path:
    """A committed UVCE result shard set of n_images × targets_per_image results. Result j (in key order) is
    non-finite when j % nonfinite_every == nonfinite_every - 1 (0: never), likewise no-improvement.
    rejects_per_shard: reasons recorded as rejects in every shard's commit record (`skip:<why>` = skipped).
    per_shard counts images (layout="pair": the shard holds their pairs)."""
    if layout not in ("image", "pair"):
        raise ValueError(f"layout must be image or pair, got {layout!r}")

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    classes = list(classes or [f"class {c}" for c in range(10)])
    if targets_per_image >= len(classes):
        raise ValueError("targets_per_image must be below the number of classes")
    rng = np.random.default_rng(seed)
    pictures, masks = base_pngs(16, size, seed), base_pngs(4, size, seed + 1, grey=True)
    attention = base_pngs(2, size, seed + 2, grey=True)
    small = _thumbs(pictures) if layout == "pair" and thumbs else None
    from safetensors.numpy import save

    latents = ("safetensors", save({"z_T": np.zeros(max(latent_bytes // 4, 1), np.float32)}))
    write_json(folder / MANIFEST, {"format": FORMAT, "kind": "results", "name": "uvce",
                                   "config": {"stage": "uvce", "dataset": dataset}})
    j = 0
    for shard, first in enumerate(range(0, n_images, per_shard)):
        w = ShardWriter(folder, shard, f"uvce-{shard:06d}.tar")
        for index in range(first, min(first + per_shard, n_images)):
            key = f"{dataset}/val/{index:05d}"
            start = index % len(classes)
            targets = [(start + 1 + k) % len(classes) for k in range(targets_per_image)]

            def png(pool, name, with_thumb=False, tag=""):
                k, stamp = int(rng.integers(len(pool))), f"{key}/{tag}{name}"
                out = {name: ("png", stamp_png(pool[k], stamp))}
                if with_thumb and small is not None:
                    out[name + "_thumb"] = ("jpg", stamp_jpeg(small[k], stamp))
                return out

            shared = {**png(pictures, "orig", True), **png(pictures, "recon", True), **png(masks, "mask"),
                      **png(attention, "attention")}
            if layout == "image":
                fields = {**shared, "pairs": {"targets": targets, "start": start, "start_label": classes[start],
                                              "prompt": f"a photo of a {classes[start]}"}}
            for t in targets:
                kind = ("nonfinite" if _every(j, nonfinite_every) else
                        "no_improvement" if _every(j, no_improvement_every) else "ok")
                m = uvce_metrics(rng, start, t, classes, steps, kind)
                if layout == "pair":
                    w.add(f"{key}/t{t}", {**shared, **png(pictures, "sd", True, f"t{t}_"),
                                          **png(pictures, "ours", True, f"t{t}_"),
                                          "metrics": m, "latents": latents})
                else:
                    fields[f"t{t}_sd"] = png(pictures, f"t{t}_sd")[f"t{t}_sd"]
                    fields[f"t{t}_ours"] = png(pictures, f"t{t}_ours")[f"t{t}_ours"]
                    fields[f"t{t}_metrics"] = m
                    fields[f"t{t}_latents"] = latents  # read (not decoded) by the gallery, like real latents
                j += 1
            if layout == "image":
                w.add(key, fields)
        w.commit(rejects=[{"key": f"{dataset}/val/r{shard}_{k}", "reason": r, "pos": k}
                          for k, r in enumerate(rejects_per_shard)])
    return folder
