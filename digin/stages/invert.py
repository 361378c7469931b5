"""The inversion stage's pieces: the prompt of each image (its caption, else the dataset's fallback template) and
the process that inverts a batch and builds its records (rejecting non-finite inversions)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from digin.engine import inversion
from digin.fields import COUNT0, NONNEG, Int, key


@dataclass
class InversionArgs:
    SECTION = "inversion"
    num_ddim_steps: int = key(20, "DDIM steps (the UVCE stage expects the same)", rule=Int(1, 1000))
    guidance_scale: float = key(3.0, "classifier-free guidance of the inversion (3.0: what the UVCE stage expects)",
                                rule=NONNEG)
    method: str = key("null_text", "null_text | negative_prompt (fast: no inner optimisation)",
                      choices=("null_text", "negative_prompt"))
    num_inner_steps: int = key(10, "null-text optimisation steps per timestep (null_text)", rule=COUNT0)
    epsilon: float = key(1e-5, "stop a timestep's inner steps once its loss is below epsilon + 1e-5·i", rule=NONNEG)
    save_reconstruction: bool = key(True, "write reconstruction.png (the inversion's reconstruction)")


# Fallback prompts when no caption is given (the reference's imagenet_inversion.py / inversion_cub_cars_food.py):
# ImageNet-style vs fine-grained datasets.
TEMPLATES = {
    "imagenet": "an image of a {label} on background",
    "imagefolder": "an image of a {label} on background",
    "cub": "an image of a {label} macro shot close-up",
    "cars": "an image of a {label} macro shot close-up",
    "food101": "an image of a {label} macro shot close-up",
    "flowers102": "an image of a {label} macro shot close-up",
    "flowers": "an image of a {label} macro shot close-up",
}


def fallback_template(dataset: str | None, override: str | None = None) -> str:
    if override:
        return override
    return TEMPLATES.get((dataset or "imagenet").lower(), TEMPLATES["imagenet"])


def sample_prompt(sample: dict, template: str) -> str:
    caption = sample.get("caption")
    if isinstance(caption, str) and caption.strip():
        return caption.strip()
    meta = sample.get("meta") or {}
    label = meta.get("label_name", meta.get("label", "object"))
    return template.format(label=label)


def make_process(sd, cfg: InversionArgs, template: str):
    """The inversion process of an InversionArgs section (its fallback prompt `template`)."""

    def process(batch):
        prompts = [sample_prompt(s, template) for s in batch.samples]
        images = batch.images.to(batch.device).float() / 255.0
        res = inversion.invert(sd, images, prompts, num_steps=cfg.num_ddim_steps,
                               guidance_scale=cfg.guidance_scale, method=cfg.method,
                               num_inner_steps=cfg.num_inner_steps, epsilon=cfg.epsilon, compute_metrics=True)
        rec = None
        if cfg.save_reconstruction:
            rec = (res.reconstruction * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        outs = []
        for b in range(batch.n_real):
            z_T, null = res.z_T[b].cpu(), res.null_texts[b].cpu()
            m = dict(res.metrics[b])
            if m.get("status") != "ok" or not (bool(z_T.isfinite().all()) and bool(null.isfinite().all())):
                outs.append({"__reject__": "nonfinite_inversion"})
                continue
            m.update(prompt=prompts[b], num_ddim_steps=cfg.num_ddim_steps, guidance_scale=cfg.guidance_scale)
            o = {"inversion": {"z_T": z_T.contiguous(), "null_texts": null.contiguous()},
                 "metrics": m, "prompt": prompts[b]}
            if rec is not None:
                o["reconstruction"] = np.ascontiguousarray(rec[b])
            outs.append(o)
        return outs

    return process
