"""One registry, spec prefix → family builder, and `load_classifier`, which builds a frozen `ImageClassifier` from
local files only (the reference's src/utils/models/ loaders, offline):
  timm:<name> (bare names too) · torchvision:<name> · hf:<folder> · madry:<file> (Madry L2 / Stylized-ImageNet
  ResNet-50 checkpoints; the reference's names madry_l2 / resnet50_sin + checkpoint=<file>) · clip:<arch or
  open_clip folder> (zero-shot head) · cal:<car|bird|aircraft> (WS-DAN + CAL ResNet-101, the reference's Cars
  classifier) · mae:<cub> (MAE fine-tuned ViT-L/16, global pool) · tiny / tiny:<folder> (test net).

A builder is `build(arg, checkpoint, kw, *, device, trust_remote_code) -> (model, input spec)`: the spec is
{size, mean, std}, plus `labels` (the model's class names, hf) or `encode_text` + `text_model` (clip) where the
family has them. Weights: safetensors preferred; other files through `torch.load(weights_only=True)` (weights.py).
"""
from __future__ import annotations

from digin.engine.models import resolve_dtype

from .cal import build_cal
from .clip import build_clip
from .hf import build_hf
from .labels import label_permutation
from .madry import build_madry
from .mae import build_mae
from .pretrained import timm_weights, torchvision_weights
from .timm_nets import build_timm
from .tiny import build_tiny
from .torchvision_nets import build_torchvision
from .wrapper import ImageClassifier

BUILDERS = {"timm": build_timm, "torchvision": build_torchvision, "hf": build_hf, "madry": build_madry,
            "clip": build_clip, "cal": build_cal, "mae": build_mae, "tiny": build_tiny}
KINDS = tuple(BUILDERS)
ALIASES = {"madry_l2": "madry", "resnet50_sin": "madry"}  # reference names; both need checkpoint=<file>


def parse_spec(spec: str) -> tuple[str, str]:
    """'kind:arg' → (kind, arg); bare names are timm; 'tiny' alone is the seeded random test net."""
    spec = str(spec)
    if spec in ALIASES:
        return ALIASES[spec], ""
    if spec == "tiny":
        return "tiny", ""
    kind, sep, arg = spec.partition(":")
    if sep and kind in KINDS:
        return kind, arg
    return "timm", spec


def load_classifier(spec: str, *, checkpoint: str | None = None, device="cpu", dtype="fp32", num_cutouts: int = 0,
                    cut_power: float = 0.3, noise_sd: float = 0.0, feature_module: str | None = None,
                    trust_remote_code: bool = False, **kw) -> ImageClassifier:
    """Build a frozen, eval-mode `ImageClassifier` from local files (spec kinds: BUILDERS).

    kw: size / mean / std override the model's preprocessing; num_classes, model_kwargs (timm/torchvision);
    dataset_classes + label_order ('auto' | 'model' | 'dataset'): reorder the logits to the dataset's class names
    (see label_permutation; HF models carry label names);
    class_names, templates, logit_scale, zeroshot_cache (clip; a .safetensors file of the class embeddings,
    written on first use); num_classes, size, width, seed (tiny); num_classes, num_attentions, arch (cal);
    grad_checkpointing (default: on when cutouts are used and the model supports it — same numbers, less memory).
    """
    kind, arg = parse_spec(spec)
    dataset_classes, label_order = kw.pop("dataset_classes", None), kw.pop("label_order", "auto")
    model, pre = BUILDERS[kind](arg, checkpoint, kw, device=device, trust_remote_code=trust_remote_code)
    encode_text, clip_model = pre.pop("encode_text", None), pre.pop("text_model", None)
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


def weights_source(spec: str, checkpoint=None) -> str:
    """Where a classifier spec's weights come from, for `digin doctor`: the checkpoint, the cached pretrained file,
    or the family's own files (ConfigError when a timm / torchvision name has none)."""
    if checkpoint:
        return f"weights {checkpoint}"
    kind, arg = parse_spec(spec)
    if kind == "timm" and not arg.startswith("hf-hub:"):
        return f"pretrained weights from the local cache: {timm_weights(arg)}"
    if kind == "torchvision":
        return f"pretrained weights from the local cache: {torchvision_weights(arg)}"
    return "the weights of its own folder / files"
