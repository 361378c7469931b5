"""Image classifiers behind one registry, and the wrapper that the objectives talk to.

`ImageClassifier` owns what the reference `NormalizationAndCutoutWrapper` did (REFERENCE §3.3): images come in
as floats in [0,1]; without seeds they are resized to the model size as the reference's `TF.resize` does
(antialiased bilinear, engine/resize.py) and normalised (one view), with
per-sample seeds they are cut out + noised (`augment`) into `num_cutouts` views. Logits come back as
(B, N, K) fp32 whatever the model dtype. `features` also returns the penultimate features (the input of the
final linear layer, or the pooled output of a named module) for neuron losses.

`load_classifier(spec, ...)` builds models offline from local files only (REFERENCE §10):
  timm:<name> (bare names too) · torchvision:<name> · hf:<folder> · madry:<file> (Madry L2 / Stylized-ImageNet
  ResNet-50 checkpoints) · clip:<arch or open_clip folder> (zero-shot head) · cal:<car|bird|aircraft> (WS-DAN + CAL
  ResNet-101, the reference's Cars classifier; engine/cal.py) · mae:<cub> (MAE fine-tuned ViT-L/16, global pool) ·
  tiny / tiny:<folder> (test net).
Weights: safetensors preferred; other files go through `torch.load(weights_only=True)`, never plain pickle.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from digin.engine.augment import augment
from digin.engine.resize import tv_resize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DATA_DIR = Path(__file__).resolve().parent.parent / "data"


# ----------------------------------------------------------------------------------------------- wrapper


def _model_output_logits(out) -> torch.Tensor:
    """Logits from a plain tensor, a HF ModelOutput (.logits) or a tuple (first item)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"cannot read logits from a model output of type {type(out).__name__}")


def final_linear_name(model: nn.Module) -> str:
    """Name (in model.named_modules) of the final classification layer, whose input is the penultimate feature."""
    head = None
    if hasattr(model, "get_classifier"):  # timm
        head = model.get_classifier()
    elif isinstance(getattr(model, "fc", None), nn.Linear):  # torchvision ResNets, tiny
        head = model.fc
    elif isinstance(getattr(model, "head", None), nn.Linear):  # zero-shot CLIP
        head = model.head
    elif getattr(model, "classifier", None) is not None:  # HF *ForImageClassification, torchvision VGG/EffNet
        head = model.classifier
    if isinstance(head, nn.Sequential):
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        head = linears[-1] if linears else head
    if not isinstance(head, nn.Module) or isinstance(head, nn.Identity):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("no final linear layer found; pass feature_module explicitly")
        head = linears[-1]
    for name, m in model.named_modules():
        if m is head:
            return name
    raise ValueError("final classifier module is not a sub-module of the model")


class ImageClassifier(nn.Module):
    """Resize/cutout + normalise + model → logits (B, N, K) fp32; optional feature hook for neurons."""

    def __init__(self, model: nn.Module, *, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 num_classes: int | None = None, num_cutouts: int = 0, cut_power: float = 0.3,
                 noise_sd: float = 0.0, feature_module: str | None = None, feature_capture: str | None = None,
                 name: str = ""):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.size = int(size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.num_cutouts = int(num_cutouts)
        self.cut_power = float(cut_power)
        self.noise_sd = float(noise_sd)
        self.name = name
        final = final_linear_name(model) if feature_module is None else None
        self.feature_module = feature_module if feature_module is not None else final
        if self.feature_module not in dict(model.named_modules()):
            raise ValueError(f"feature_module {self.feature_module!r} is not a module of {type(model).__name__}")
        # The final linear layer's INPUT is the penultimate feature; any other named module gives its output.
        is_final = feature_module is None or feature_module == _safe_final_name(model)
        self.feature_capture = feature_capture or ("input" if is_final else "output")
        if self.feature_capture not in ("input", "output"):
            raise ValueError(f"feature_capture must be 'input' or 'output', got {self.feature_capture!r}")
        if num_classes is None:
            head = dict(model.named_modules()).get(_safe_final_name(model))
            num_classes = getattr(head, "out_features", None)
        self.num_classes = num_classes
        self.label_index: torch.Tensor | None = None
        self.model_call = None  # the compiled forward on views, set by engine.prepare.prepare_classifier
        self.fused_cutouts = False  # cutouts through the fused Triton op (CUDA), set by prepare_classifier

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def views(self, img_BCHW: torch.Tensor, seeds: list[int] | None = None,
              noise_scale: float = 1.0) -> torch.Tensor:
        """Normalised model inputs (B, N, C, size, size) in the model dtype."""
        if seeds is not None and self.num_cutouts > 0:
            if self.fused_cutouts and img_BCHW.is_cuda:
                return self._fused_views(img_BCHW, seeds, noise_scale)
            x_BNCss = augment(img_BCHW.float(), seeds, self.size, self.num_cutouts, self.cut_power,
                              self.noise_sd * noise_scale)
        else:
            # The reference's TF.resize (antialiased bilinear). A non-square image is squeezed to size×size
            # (the reference keeps its aspect ratio, shorter side = size, which fixed-size ViTs reject).
            x_BNCss = tv_resize(img_BCHW.float(), self.size)[:, None]
        x_BNCss = (x_BNCss - self.mean.float()) / self.std.float()
        return x_BNCss.to(self.dtype)

    def _fused_views(self, img_BCHW: torch.Tensor, seeds: list[int], noise_scale: float) -> torch.Tensor:
        """The same cutouts and noise as `augment` (per-sample streams; noise drawn on the device) through the fused
        crop + area-resize + noise + normalise op: one kernel each way instead of B·N crops and pools."""
        from digin.kernels import fused_cutouts

        from .augment import cutout_boxes, cutout_noise

        B, C, H, W = img_BCHW.shape
        boxes_BN3 = torch.stack([cutout_boxes(s, (H, W), self.size, self.num_cutouts, self.cut_power) for s in seeds])
        sd = self.noise_sd * noise_scale
        noise = (cutout_noise(seeds, (self.num_cutouts, C, self.size, self.size), sd, img_BCHW.device,
                              on_device=True) if sd else None)
        return fused_cutouts(img_BCHW.float(), boxes_BN3.to(img_BCHW.device, non_blocking=True), self.size,
                             self.mean.flatten(), self.std.flatten(), noise, out_dtype=self.dtype)

    def _run(self, x_BNCss: torch.Tensor, eager: bool = False) -> torch.Tensor:
        B, N = x_BNCss.shape[:2]
        call = self.model if (eager or self.model_call is None) else self.model_call
        logits = _model_output_logits(call(x_BNCss.flatten(0, 1)))
        if self.label_index is not None:  # the dataset's class k is the model's label label_index[k]
            logits = logits.index_select(-1, self.label_index)
        return logits.float().view(B, N, -1)

    def set_label_order(self, index: list[int] | None):
        """Reorder the logits to a dataset's class order (None: the model's own order)."""
        self.label_index = None if index is None else torch.tensor(index, dtype=torch.long, device=self.device)
        if index is not None:
            self.num_classes = len(index)

    def forward(self, img_BCHW: torch.Tensor, seeds: list[int] | None = None,
                noise_scale: float = 1.0) -> torch.Tensor:
        return self._run(self.views(img_BCHW, seeds, noise_scale))

    def features(self, img_BCHW: torch.Tensor, seeds: list[int] | None = None,
                 noise_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B,N,K), features (B,N,F)) fp32, features captured by a forward hook."""
        captured = []
        capture_input = self.feature_capture == "input"

        def hook(module, inputs, output):
            captured.append(inputs[0] if capture_input else _model_output_logits(output))

        module = self.model.get_submodule(self.feature_module)
        handle = module.register_forward_hook(hook)
        try:
            x_BNCss = self.views(img_BCHW, seeds, noise_scale)
            logits_BNK = self._run(x_BNCss, eager=True)  # the hook needs the module's own forward
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"feature module {self.feature_module!r} was not called in the forward pass")
        B, N = x_BNCss.shape[:2]
        return logits_BNK, _pool_features(captured[-1], capture_input).float().reshape(B, N, -1)


def _safe_final_name(model: nn.Module) -> str | None:
    try:
        return final_linear_name(model)
    except ValueError:
        return None


def _pool_features(f: torch.Tensor, is_linear_input: bool) -> torch.Tensor:
    """Layer input of a linear head → flattened; a feature map (B,C,H,W) → spatial mean; tokens (B,T,D) → mean."""
    if is_linear_input or f.dim() == 2:
        return f.flatten(1)
    if f.dim() == 4:
        return f.mean(dim=(2, 3))
    if f.dim() == 3:
        return f.mean(dim=1)
    return f.flatten(1)


# ------------------------------------------------------------------------------------------ weight files


def load_weights_file(path) -> dict:
    """State dict from a .safetensors file, or from torch.load(weights_only=True) — never a full unpickle."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import pickle

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
        raise ValueError(f"refusing to load {path}: it is not a plain tensor checkpoint (weights_only=True "
                         f"rejected it: {str(e).splitlines()[0][:200]}). Convert it to safetensors with a "
                         f"trusted tool.") from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return dict(obj)


def unwrap_state_dict(sd: Mapping) -> dict:
    """Follow `state_dict` / `model` nesting and keep tensors only."""
    for _ in range(3):
        nested = next((sd[k] for k in ("state_dict", "model") if isinstance(sd.get(k), Mapping)), None)
        if nested is None:
            break
        sd = nested
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def clean_robust_state_dict(sd: Mapping) -> dict:
    """Madry robustness-lib / SIN keys → torchvision keys: strip `module.` and `model.`, drop attacker/normalizer."""
    out = {}
    for k, v in unwrap_state_dict(sd).items():
        if k.startswith("module."):
            k = k[len("module."):]
        if k.startswith(("attacker.", "normalizer.")):
            continue
        if k.startswith("model."):
            k = k[len("model."):]
        out[k] = v
    return out


def _load_into(model: nn.Module, checkpoint, clean=unwrap_state_dict) -> None:
    sd = clean(load_weights_file(checkpoint))
    if clean is unwrap_state_dict:
        sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"checkpoint {checkpoint} does not match {type(model).__name__}: {e}") from None
    if missing or unexpected:
        raise ValueError(f"checkpoint {checkpoint} does not match {type(model).__name__}: "
                         f"missing {sorted(missing)[:8]}{'…' if len(missing) > 8 else ''}, "
                         f"unexpected {sorted(unexpected)[:8]}{'…' if len(unexpected) > 8 else ''}")


# ------------------------------------------------------------------------------------------------ kinds


def _build_timm(name: str, checkpoint, kw):
    import timm

    model = timm.create_model(name, pretrained=False, **({"num_classes": kw["num_classes"]}
                                                          if "num_classes" in kw else {}), **kw.get("model_kwargs", {}))
    if checkpoint:
        _load_into(model, checkpoint)
    cfg = timm.data.resolve_model_data_config(model)
    _, h, w = cfg["input_size"]
    if h != w:
        raise ValueError(f"timm model {name} has a non-square input size {(h, w)}")
    return model, dict(size=h, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))


def _build_mae(arg: str, checkpoint, kw):
    """MAE fine-tuned ViT (global average pool + fc_norm, ImageNet normalisation): the reference's CUB MAE ViT-L/16.
    mae:<cub|num_classes> + checkpoint=<checkpoint-49.pth> (MAE's {'model': ...} layout = timm's key names)."""
    key = (arg or "cub").lower()
    if key not in ("cub", "bird") and not key.isdigit():
        raise ValueError(f"mae:{arg}: expected 'cub' or a class count")
    if not checkpoint and not kw.get("allow_random", False):
        raise ValueError(f"mae:{arg} needs checkpoint=<MAE fine-tuned checkpoint> (random init refused)")
    n = int(kw.get("num_classes", 200 if not key.isdigit() else key))
    model, pre = _build_timm(kw.get("arch", "vit_large_patch16_224"), checkpoint,
                             {"num_classes": n, "model_kwargs": {"global_pool": "avg", **kw.get("model_kwargs", {})}})
    return model, dict(pre, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _build_torchvision(name: str, checkpoint, kw):
    import torchvision

    extra = {"num_classes": kw["num_classes"]} if "num_classes" in kw else {}
    model = torchvision.models.get_model(name, weights=None, **extra, **kw.get("model_kwargs", {}))
    if checkpoint:
        _load_into(model, checkpoint)
    return model, dict(size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _build_madry(path, kw):
    """torchvision ResNet-50 (or kw arch) from a Madry L2 / Stylized-ImageNet checkpoint."""
    import torchvision

    if not path:
        raise ValueError("madry classifier needs a checkpoint path: madry:<file> or checkpoint=<file>")
    model = torchvision.models.get_model(kw.get("arch", "resnet50"), weights=None,
                                         **({"num_classes": kw["num_classes"]} if "num_classes" in kw else {}))
    _load_into(model, path, clean=clean_robust_state_dict)
    return model, dict(size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _read_hf_preprocessor(folder: Path, model) -> dict:
    cfg_path = folder / "preprocessor_config.json"
    size = getattr(model.config, "image_size", 224)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if cfg_path.is_file():
        pp = json.loads(cfg_path.read_text())
        s = pp.get("crop_size") if pp.get("do_center_crop") else pp.get("size", size)
        if isinstance(s, Mapping):
            s = s.get("height", s.get("shortest_edge", size))
        size = int(s)
        mean, std = pp.get("image_mean", mean), pp.get("image_std", std)
        if pp.get("do_normalize") is False:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    size = size[0] if isinstance(size, (list, tuple)) else size
    return dict(size=int(size), mean=tuple(mean), std=tuple(std))


def _build_hf(folder: str, trust_remote_code: bool, kw):
    from transformers import AutoModelForImageClassification

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"hf classifier folder not found: {folder}")
    model = AutoModelForImageClassification.from_pretrained(str(folder), local_files_only=True,
                                                            trust_remote_code=bool(trust_remote_code))
    pre = _read_hf_preprocessor(folder, model)
    id2label = getattr(model.config, "id2label", None) or {}
    if len(id2label) == getattr(model.config, "num_labels", -1):
        pre["labels"] = [str(id2label[i]) for i in range(len(id2label))]
    return model, pre


def _label_key(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(name).lower()).strip()


def label_permutation(model_labels: list[str] | None, dataset_classes: list[str] | None, mode: str = "auto",
                      spec: str = "") -> list[int] | None:
    """Model logit index of each dataset class, matched by (normalised) name, or None to keep the model's order.

    mode 'model': never reorder. 'dataset': reorder, and fail naming the classes the model lacks. 'auto': reorder
    only when every dataset class is found among the model's labels in a different order (e.g. the HF Flowers-102
    ViT, whose id2label is not torchvision's order — the reference re-indexes it), else keep the model's order."""
    if mode not in ("auto", "model", "dataset"):
        raise ValueError(f"classifier_label_order must be auto, model or dataset, got {mode!r}")
    if mode == "model" or (mode == "auto" and not (model_labels and dataset_classes)):
        return None
    if not model_labels or not dataset_classes:
        raise ValueError(f"classifier {spec!r}: classifier_label_order=dataset needs label names on both sides "
                         f"(model labels: {'yes' if model_labels else 'none'}, dataset classes: "
                         f"{'yes' if dataset_classes else 'none'})")
    where: dict[str, int] = {}
    for i, name in enumerate(model_labels):
        where.setdefault(_label_key(name), i)
    missing = [c for c in dataset_classes if _label_key(c) not in where]
    if missing:
        if mode == "auto":
            return None
        raise ValueError(f"classifier {spec!r}: {len(missing)} dataset classes have no model label of that name "
                         f"(e.g. {missing[:5]})")
    index = [where[_label_key(c)] for c in dataset_classes]
    return None if index == list(range(len(index))) and len(index) == len(model_labels) else index


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


def imagenet_class_names() -> list[str]:
    """First synonym of each ImageNet class (digin/data/imagenet_classes.json)."""
    table = json.loads((DATA_DIR / "imagenet_classes.json").read_text())
    return [table[str(i)].split(",")[0].strip() for i in range(len(table))]


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
    from digin.extras import require

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
        _load_into(model, checkpoint)
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = pp.get("size", getattr(model.visual, "image_size", 224))
    size = size[0] if isinstance(size, (list, tuple)) else size
    spec = dict(size=int(size), mean=tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
                std=tuple(pp.get("std", open_clip.OPENAI_DATASET_STD)))
    # (some towers' tokenizers come from the HF hub, e.g. CLIPA's BERT: only made when the text side is used)
    return model.eval(), open_clip.get_tokenizer(name) if tokenizer else None, spec


def _build_clip(arch: str, checkpoint, device, kw):
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

    return zs, spec, encode_text, model


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


class TinyConvNet(nn.Module):
    """Two strided convs, global pool, linear head `fc` — a stand-in classifier for tests."""

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


def build_tiny_net(num_classes: int = 10, width: int = 8, seed: int = 0) -> TinyConvNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyConvNet(num_classes, width)


def save_tiny_classifier(folder, *, num_classes: int = 10, size: int = 32, width: int = 8, seed: int = 0,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Path:
    """Write config.json + model.safetensors for `load_classifier('tiny:<folder>')`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    net = build_tiny_net(num_classes, width, seed)
    (folder / "config.json").write_text(json.dumps(
        {"kind": "tiny", "num_classes": num_classes, "size": size, "width": width, "mean": list(mean),
         "std": list(std)}))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def _build_tiny(arg: str, checkpoint, kw):
    if arg:
        cfg = json.loads((Path(arg) / "config.json").read_text())
        net = TinyConvNet(cfg["num_classes"], cfg["width"])
        _load_into(net, checkpoint or Path(arg) / "model.safetensors")
        return net, dict(size=cfg["size"], mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
    net = build_tiny_net(kw.get("num_classes", 10), kw.get("width", 8), kw.get("seed", 0))
    if checkpoint:
        _load_into(net, checkpoint)
    return net, dict(size=kw.get("size", 32), mean=IMAGENET_MEAN, std=IMAGENET_STD)


# ----------------------------------------------------------------------------------------------- registry

KINDS = ("timm", "torchvision", "hf", "madry", "clip", "cal", "mae", "tiny")
_ALIASES = {"madry_l2": "madry", "resnet50_sin": "madry"}  # reference names; both need checkpoint=<file>


def parse_spec(spec: str) -> tuple[str, str]:
    """'kind:arg' → (kind, arg); bare names are timm; 'tiny' alone is the seeded random test net."""
    spec = str(spec)
    if spec in _ALIASES:
        return _ALIASES[spec], ""
    if spec == "tiny":
        return "tiny", ""
    kind, sep, arg = spec.partition(":")
    if sep and kind in KINDS:
        return kind, arg
    return "timm", spec


def load_classifier(spec: str, *, checkpoint: str | None = None, device="cpu", dtype="fp32", num_cutouts: int = 0,
                    cut_power: float = 0.3, noise_sd: float = 0.0, feature_module: str | None = None,
                    trust_remote_code: bool = False, **kw) -> ImageClassifier:
    """Build a frozen, eval-mode `ImageClassifier` from local files (see module docstring for spec kinds).

    kw: size / mean / std override the model's preprocessing; num_classes, model_kwargs (timm/torchvision);
    dataset_classes + label_order ('auto' | 'model' | 'dataset'): reorder the logits to the dataset's class names
    (see label_permutation; HF models carry label names);
    class_names, templates, logit_scale, zeroshot_cache (clip; a .safetensors file of the class embeddings,
    written on first use); num_classes, size, width, seed (tiny); num_classes, num_attentions, arch (cal);
    grad_checkpointing (default: on when cutouts are used and the model supports it — same numbers, less memory).
    """
    from digin.engine.models import resolve_dtype

    kind, arg = parse_spec(spec)
    dataset_classes, label_order = kw.pop("dataset_classes", None), kw.pop("label_order", "auto")
    encode_text = clip_model = None
    if kind == "timm":
        model, pre = _build_timm(arg, checkpoint, kw)
    elif kind == "torchvision":
        model, pre = _build_torchvision(arg, checkpoint, kw)
    elif kind == "hf":
        model, pre = _build_hf(arg, trust_remote_code, kw)
    elif kind == "madry":
        model, pre = _build_madry(arg or checkpoint, kw)
    elif kind == "clip":
        model, pre, encode_text, clip_model = _build_clip(arg, checkpoint, device, kw)
    elif kind == "mae":
        model, pre = _build_mae(arg, checkpoint, kw)
    elif kind == "cal":
        from digin.engine.cal import build_cal

        model, pre = build_cal(arg, checkpoint, kw)
    else:
        model, pre = _build_tiny(arg, checkpoint, kw)
    for k in ("size", "mean", "std"):
        if k in kw:
            pre[k] = kw[k]
    gc = kw.get("grad_checkpointing", num_cutouts > 0)
    if gc and hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
    model = model.to(device=device, dtype=resolve_dtype(dtype))
    clf = ImageClassifier(model, size=pre["size"], mean=pre["mean"], std=pre["std"], num_cutouts=num_cutouts,
                          cut_power=cut_power, noise_sd=noise_sd, feature_module=feature_module,
                          name=str(spec)).to(device)
    if encode_text is not None:
        clip_model.to(device=device, dtype=resolve_dtype(dtype))
        clf.encode_text = encode_text
    index = label_permutation(pre.get("labels"), dataset_classes, label_order, spec)
    if index is not None:  # say so: the logits no longer follow the model's own label ids
        import sys

        print(f"[classifier] {spec}: logits reordered to the dataset's {len(index)} class names "
              f"(classifier_label_order={label_order})", file=sys.stderr, flush=True)
    clf.set_label_order(index)
    return clf
