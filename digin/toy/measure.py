"""Measurements on toy-world images with the scene specs as ground truth: classifier probabilities, the background
outside the object, the object's colour. Shared by the science checks (digin/science/) and the contact sheets."""
from __future__ import annotations

import numpy as np
import torch

from digin.toy import world


def to_tensor(images) -> torch.Tensor:
    """uint8 HWC arrays (a list or (N,H,W,3)) or a float (N,3,H,W) tensor → float (N,3,H,W) in [0, 1]."""
    if isinstance(images, torch.Tensor):
        return images.float()
    return torch.from_numpy(np.stack(list(images))).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def predict(clf, img_B3HW: torch.Tensor) -> torch.Tensor:
    """(B, classes) softmax of the non-augmented classifier."""
    return clf(img_B3HW.to(clf_device(clf)))[:, 0].softmax(-1).cpu()


def clf_device(clf):
    return next(clf.parameters()).device


def background_frame(img_B3HW: torch.Tensor, width: int = 2) -> torch.Tensor:
    """(B, 3) mean colour of the outer `width`-pixel frame: objects keep ≥ 2 px from the border, so it is all
    background in every scene (also in generated ones, which place the object anywhere)."""
    m = torch.ones(img_B3HW.shape[-2:], dtype=torch.bool)
    m[width:-width, width:-width] = False
    return img_B3HW[:, :, m].mean(-1)


def distance_to(rgb_B3: torch.Tensor, colour: str) -> torch.Tensor:
    return (rgb_B3 - torch.tensor(world.PALETTE[colour]) / 255.0).norm(dim=-1)


def outside_object(specs, scale: float = 1.35, pad: float = 3.0) -> torch.Tensor:
    """(B, 1, 64, 64) mask of pixels farther than scale·radius + pad from the object centre — background that a
    shape edit (any shape of that radius fits inside 1.1·radius) has no reason to touch."""
    yy, xx = np.mgrid[0:world.RES, 0:world.RES] + 0.5
    out = [np.hypot(xx - s["cx"], yy - s["cy"]) > scale * s["radius"] + pad for s in specs]
    return torch.from_numpy(np.stack(out)[:, None].astype(np.float32))


def masked_rms(a_B3HW: torch.Tensor, b_B3HW: torch.Tensor, mask_B1HW: torch.Tensor) -> torch.Tensor:
    """(B,) RMS colour difference over the mask."""
    d = (a_B3HW - b_B3HW).pow(2).mean(1, keepdim=True) * mask_B1HW
    return (d.sum((1, 2, 3)) / mask_B1HW.sum((1, 2, 3)).clamp_min(1)).sqrt()


def nearest_palette(rgb_N3: torch.Tensor) -> list[str]:
    names = list(world.PALETTE)
    pal = torch.tensor([world.PALETTE[n] for n in names]).float() / 255.0
    return [names[i] for i in torch.cdist(rgb_N3.float(), pal).argmin(-1).tolist()]


def object_colour(img_3HW: torch.Tensor, spec: dict, target_shape: str | None = None) -> str | None:
    """The palette colour most pixels of the object region show: pixels covered both by the scene's object and by
    the target shape at the same place and size (what an edit to that shape keeps as object), ignoring pixels of
    the background's colour. None when no such pixel shows an object colour (the object is gone)."""
    core = world.object_mask(spec) > 0.5
    if target_shape is not None:
        core &= world.object_mask(dict(spec, shape=target_shape)) > 0.5
    if core.sum() < 6:  # thin overlaps (ring ↔ star): the target shape's own region
        core = world.object_mask(dict(spec, shape=target_shape or spec["shape"])) > 0.5
    names = nearest_palette(img_3HW[:, torch.from_numpy(core)].T)
    names = [n for n in names if n != spec["background"]]
    if len(names) < 3:
        return None
    values, counts = np.unique(names, return_counts=True)
    return str(values[counts.argmax()])
