"""The fields a stage writes per sample: uint8 images and masks, and a GuidanceResult's images, per-iteration
metrics JSON (with a status; non-finite numbers become null), latents, and small thumbnails of the images the
gallery's grid shows (made here, where the pixels are, so the gallery never decodes a full image)."""
from __future__ import annotations

import numpy as np
import torch

from digin.stages.gallery.thumbs import thumbnail_members


def to_uint8(img_3HW: torch.Tensor) -> np.ndarray:
    return (img_3HW.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def mask_uint8(mask_1HW: torch.Tensor) -> np.ndarray:
    return (mask_1HW[0].detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def word_tiles(maps: dict, size: int) -> np.ndarray:
    """Per-word maps side by side (grey, uint8); one black tile when there are none."""
    tiles = [mask_uint8(m / m.max().clamp_min(1e-8)) for m in maps.values()] or [np.zeros((size, size), np.uint8)]
    return np.concatenate(tiles, axis=1)


def thumbnail_fields(fields: dict) -> dict:
    """`orig_thumb`, `recon_thumb`, `sd_thumb`, `ours_thumb` (128-px JPEG members) for those of orig / recon / sd /
    ours that `fields` holds as uint8 arrays and that have no thumbnail yet: `fields.update(thumbnail_fields(fields))`
    once every image field is set (result_fields already adds sd's and ours')."""
    return thumbnail_members(fields)


def _finite_list(t: torch.Tensor, n: int) -> list:
    vals = t[:n].detach().float().cpu().tolist()
    return [v if np.isfinite(v) else None for v in vals]


def json_safe(value):
    """(value with every non-finite float replaced by None, whether one was replaced): metrics JSON refuses NaN."""
    if isinstance(value, dict):
        pairs = [(k, json_safe(v)) for k, v in value.items()]
        return {k: v for k, (v, _) in pairs}, any(bad for _, (_, bad) in pairs)
    if isinstance(value, (list, tuple)):
        pairs = [json_safe(v) for v in value]
        return [v for v, _ in pairs], any(bad for _, bad in pairs)
    if isinstance(value, float) and not np.isfinite(value):
        return None, True
    return value, False


def result_status(nonfinite: bool, num_logged: int, best_iter: int) -> str:
    """ok | nonfinite (a loss or metric turned NaN/inf) | no_improvement (later iterates were logged, none had a
    lower loss than iterate 0: the loss only rose, e.g. a far too large step size)."""
    if nonfinite or num_logged == 0:
        return "nonfinite"
    return "no_improvement" if num_logged > 1 and best_iter == 0 else "ok"


def result_fields(res, b: int, prefix: str = "", extra_metrics: dict | None = None,
                  save_latents: bool = True) -> dict:
    """Per-sample output fields of a GuidanceResult: sd/ours PNGs, per-iteration metrics JSON (with `status`, see
    result_status; non-finite numbers are null), latents. A sample with no finite iterate gets its metrics only
    (no images, no latents); one that turned non-finite later keeps iterate 0 and its best finite iterate."""
    n = int(res.num_logged[b])
    best = int(res.best_iter[b])
    metrics = {
        "best_iter": best, "num_logged": n, "stopped_early": bool(res.stopped_early[b]),
        "nonfinite": bool(res.nonfinite[b]), "loss": _finite_list(res.losses[:, b], n),
        "parts": {k: _finite_list(v[:, b], n) for k, v in res.parts.items()},
        "confidences": {k: _finite_list(v[:, b], n) for k, v in res.confidences.items()},
        "aug_loss": _finite_list(res.aug_losses[:, b], max(n - 1, 0)),
    }
    for name, v in res.confidences.items():  # scalar summaries for tables / the gallery: iterate 0 vs best
        logged = _finite_list(v[:, b], n)
        metrics[f"{name}_sd"], metrics[f"{name}_ours"] = (logged[0], logged[best]) if n else (None, None)
    metrics, replaced = json_safe({**metrics, **(extra_metrics or {})})
    metrics["status"] = result_status(bool(res.nonfinite[b]) or replaced, n, best)
    metrics["nonfinite"] = metrics["status"] == "nonfinite"
    out = {f"{prefix}metrics": metrics}
    if n == 0:  # not one finite iterate: nothing to show
        return out
    out[f"{prefix}sd"], out[f"{prefix}ours"] = to_uint8(res.sd_images[b]), to_uint8(res.ours_images[b])
    if not prefix:
        out.update(thumbnail_fields(out))
    if save_latents:
        t = {"z_T": res.z_T[b].float().cpu().contiguous()}
        if res.cond_delta is not None:
            t["cond_delta"] = res.cond_delta[b].float().cpu().contiguous()
        if res.uncond_delta is not None:
            t["uncond_delta"] = res.uncond_delta[b].float().cpu().contiguous()
        if all(bool(x.isfinite().all()) for x in t.values()):  # the writer refuses NaN tensors
            out[f"{prefix}latents"] = t
    return out
