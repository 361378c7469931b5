"""Backend registry: build a captioner from a backend name + settings, cache it per process, normalise images.

A captioner has `name`, `caption(images_BCHW uint8, labels) -> list[str]` and `ask(images, question) -> list[str]`.
"""
from __future__ import annotations

import json

import numpy as np
import torch

from digin.caption.demos import load_demo_images, load_demo_list
from digin.caption.flamingo import load_flamingo_captioner
from digin.caption.hf import HFCaptioner, load_hf_model
from digin.caption.templates import template_for
from digin.shards.decode import _to_rgb, center_crop_resize

BACKENDS = ("template", "open_flamingo", "hf")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_CACHE: dict = {}


class TemplateCaptioner:
    """The reference's per-dataset fallback prompt; no model, cannot answer questions."""

    name = "template"

    def __init__(self, template: str):
        self.template = template

    def caption(self, images_BCHW, labels):
        return [self.template.format(label=lab) for lab in labels]

    def ask(self, images_BCHW, question):
        raise ValueError("the template backend does not look at images; use backend=hf or open_flamingo")


def _demos(cfg: dict, resolution: int):
    if not cfg.get("demos"):
        return []
    items = load_demo_list(cfg["demos"])
    if cfg.get("num_demos") is not None:
        items = items[:int(cfg["num_demos"])]
    if not cfg.get("demo_images"):
        raise ValueError("few-shot demos need demo_images: the train-split shard set or a folder of <index>.png")
    ims = load_demo_images(cfg["demo_images"], [i for i, _ in items], resolution)
    return [(ims[i], c) for i, c in items]


def load_captioner(backend: str, device=None, dtype: str = "fp32", dataset: str | None = None,
                   template: str | None = None, num_beams: int = 3, max_new_tokens: int = 20,
                   resolution: int = 224, **cfg):
    """backend: template | open_flamingo | hf. Backend keys:
    open_flamingo: lm_path, vision (open_clip name or JSON config), vision_pretrained, checkpoint, tokenizer_path,
      cross_attn_every_n_layers, decoder_layers_attr_name, trust_remote_code, prompt, demos, demo_images, num_demos;
    hf: model_path, trust_remote_code, mode (auto|prefix|instruct), prompt, instruction, question_format."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if backend == "template":
        return TemplateCaptioner(template_for(dataset, template))
    if backend == "open_flamingo":
        if not cfg.get("lm_path"):
            raise ValueError("open_flamingo needs lm_path (local LM folder, e.g. mpt-7b)")
        keys = ("vision", "vision_pretrained", "checkpoint", "tokenizer_path", "cross_attn_every_n_layers",
                "decoder_layers_attr_name", "trust_remote_code", "prompt")
        kw = {k: cfg[k] for k in keys if cfg.get(k) is not None}
        return load_flamingo_captioner(cfg["lm_path"], device=device, dtype=DTYPES[dtype],
                                       demos=_demos(cfg, resolution), num_beams=num_beams,
                                       max_new_tokens=max_new_tokens, **kw)
    if backend == "hf":
        if not cfg.get("model_path"):
            raise ValueError("hf needs model_path (local transformers model folder)")
        model, proc = load_hf_model(cfg["model_path"], bool(cfg.get("trust_remote_code", False)), device,
                                    DTYPES[dtype])
        kw = {k: cfg[k] for k in ("mode", "prompt", "instruction", "question_format") if cfg.get(k) is not None}
        return HFCaptioner(model, proc, device, num_beams=num_beams, max_new_tokens=max_new_tokens, **kw)
    raise ValueError(f"unknown caption backend {backend!r}; one of {BACKENDS}")


def get_captioner(backend: str, **cfg):
    """load_captioner, loaded once per process per settings (the neuron stage asks once per neuron)."""
    key = (backend, json.dumps(cfg, sort_keys=True, default=str))
    if key not in _CACHE:
        _CACHE[key] = load_captioner(backend, **cfg)
    return _CACHE[key]


def to_images_BCHW(images, resolution: int | None = None) -> torch.Tensor:
    """uint8 (B,3,H,W) from a uint8 tensor, or a list of PIL images / uint8 HWC arrays / file paths. Mixed sizes
    (or `resolution`) go through Resize(1.25·res)+CenterCrop(res) like shard reads (res default 224)."""
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"image tensors must be uint8 (B,3,H,W), got {images.dtype} {tuple(images.shape)}")
        return images
    from PIL import Image

    pils = []
    for im in images:
        if isinstance(im, (str, bytes)) or hasattr(im, "__fspath__"):
            im = Image.open(im)
            im.load()
        pils.append(_to_rgb(im) if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, np.uint8)))
    if resolution is None and len({p.size for p in pils}) > 1:
        resolution = 224
    if resolution is not None:
        pils = [center_crop_resize(p, resolution) for p in pils]
    arr = np.stack([np.asarray(p, dtype=np.uint8) for p in pils])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
