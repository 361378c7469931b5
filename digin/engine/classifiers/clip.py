"""`clip:<open_clip model name or folder>`: CLIP as a zero-shot classifier (the reference's load_clip_zero_shot,
src/utils/models/): the image tower + a linear head of class text embeddings (OpenAI's ImageNet prompt ensemble
over the ImageNet class names, or given class_names/templates). `open_clip_model` is also what the masked CLIP
regulariser loads."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from digin.extras import require

from .imagenet import imagenet_class_names
from .weights import load_into, load_weights_file


# OpenAI's ImageNet zero-shot prompt ensemble (80 templates).
IMAGENET_TEMPLATES = [
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
]



class ZeroShotCLIP(nn.Module):
    """CLIP image tower + a linear zero-shot head: logits = logit_scale · cos(image, class text)."""

    def __init__(self, visual: nn.Module, class_emb_KD: torch.Tensor, logit_scale: float = 100.0):
        super().__init__()
        self.visual = visual
        K, D = class_emb_KD.shape
        self.head = nn.Linear(D, K, bias=False)
        with torch.no_grad():  # scale folded into the head so its input is the unit image embedding
            self.head.weight.copy_(logit_scale * F.normalize(class_emb_KD.float(), dim=-1))

    def forward(self, x):
        return self.head(F.normalize(self.visual(x).float(), dim=-1).to(self.head.weight.dtype))


def open_clip_model(arch: str, checkpoint=None, allow_random: bool = False, what: str = "clip:",
                    tokenizer: bool = True):
    """(open_clip model, tokenizer or None, input spec {size, mean, std}) built offline: `arch` is an open_clip
    model name (weights from `checkpoint`, a local file) or a folder with open_clip_config.json (+ *.safetensors)."""
    open_clip = require("clip", f"{what}{arch}")

    local = Path(arch)
    name = f"local-dir:{local}" if local.is_dir() else arch
    if checkpoint is None and local.is_dir():
        found = sorted(local.glob("*.safetensors"))
        checkpoint = found[0] if found else None
    if checkpoint is None and not allow_random:
        raise ValueError(f"{what}{arch} needs a local open_clip weights file (random init refused)")
    try:
        model = open_clip.create_model(name, load_weights=False) if local.is_dir() else open_clip.create_model(name)
    except RuntimeError as e:  # unknown model name
        raise ValueError(f"{what}{arch}: not an open_clip model name nor a folder with open_clip_config.json "
                         f"({str(e).split(' Available')[0]})") from None
    if checkpoint is not None:
        load_into(model, checkpoint)
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = pp.get("size", getattr(model.visual, "image_size", 224))
    size = size[0] if isinstance(size, (list, tuple)) else size
    spec = dict(size=int(size), mean=tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
                std=tuple(pp.get("std", open_clip.OPENAI_DATASET_STD)))
    # (some towers' tokenizers come from the HF hub, e.g. CLIPA's BERT: only made when the text side is used)
    return model.eval(), open_clip.get_tokenizer(name) if tokenizer else None, spec


def build_clip(arch: str, checkpoint, kw: dict, *, device="cpu", **_):
    """The zero-shot classifier; its input spec also carries `encode_text` (unit text embeddings, for prompt-based
    losses) and `text_model` (the whole CLIP model, moved to the run's device and dtype with the classifier)."""
    try:
        model, tokenizer, spec = open_clip_model(arch, checkpoint, kw.get("allow_random", False), what="clip:")
    except ValueError as e:
        raise ValueError(f"{e}; pass checkpoint=<open_clip weights file>" if checkpoint is None else str(e)) from None
    model.to(device)  # the head needs K×templates text encodings: do them on the target device
    class_names = kw.get("class_names") or imagenet_class_names()
    templates = kw.get("templates") or IMAGENET_TEMPLATES
    cache = kw.get("zeroshot_cache")  # optional .safetensors file holding the (K, D) class embeddings
    if cache and Path(cache).is_file():
        class_emb_KD = load_weights_file(cache)["class_embeddings"]
        if class_emb_KD.shape[0] != len(class_names):
            raise ValueError(f"zeroshot_cache {cache} has {class_emb_KD.shape[0]} classes, not {len(class_names)}")
    else:
        class_emb_KD = clip_text_class_embeddings(model, tokenizer, class_names, templates).cpu()
        if cache:
            from safetensors.torch import save_file

            save_file({"class_embeddings": class_emb_KD.contiguous()}, str(cache))
    zs = ZeroShotCLIP(model.visual, class_emb_KD, float(kw.get("logit_scale", 100.0)))

    @torch.no_grad()
    def encode_text(texts: list[str]) -> torch.Tensor:
        dev = next(model.parameters()).device
        return F.normalize(model.encode_text(tokenizer(list(texts)).to(dev)).float(), dim=-1)

    return zs, dict(spec, encode_text=encode_text, text_model=model)


@torch.no_grad()
def clip_text_class_embeddings(model, tokenizer, class_names: list[str], templates: list[str],
                               batch: int = 256) -> torch.Tensor:
    """(K, D) unit class embeddings: mean over templates of unit text embeddings, renormalised."""
    texts = [t.format(c) for c in class_names for t in templates]
    embs = []
    dev = next(model.parameters()).device
    for i in range(0, len(texts), batch):
        embs.append(F.normalize(model.encode_text(tokenizer(texts[i:i + batch]).to(dev)).float(), dim=-1))
    emb = torch.cat(embs).view(len(class_names), len(templates), -1).mean(1)
    return F.normalize(emb, dim=-1)
