"""The wrapper the objectives talk to: resize or cutouts + noise, normalise, model → logits (B, N, K) fp32.

`ImageClassifier` does what the reference's `NormalizationAndCutoutWrapper` (src/utils/models/model_wrappers.py)
did: images come in as floats in [0,1]; without seeds they are resized to the model size as the reference's
`TF.resize` does (antialiased bilinear, engine/resize.py) and normalised (one view), with per-sample seeds they
are cut out + noised (`engine.augment`) into `num_cutouts` views, or, without cutouts, resized + noised into one
view (the reference's cutout wrapper with num_cutouts=0). Logits come back as (B, N, K) fp32 whatever the
model dtype. `features` also returns the penultimate features (the input of the final linear layer, or the pooled
output of a named module) for neuron losses.
"""
from __future__ import annotations

import torch
from torch import nn

from digin.engine.augment import augment, cutout_boxes, cutout_noise
from digin.engine.resize import tv_resize
from digin.kernels import fused_cutouts

from .imagenet import IMAGENET_MEAN, IMAGENET_STD


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
            if seeds is not None:
                x_BNCss = self._noised(x_BNCss, seeds, noise_scale)
        x_BNCss = (x_BNCss - self.mean.float()) / self.std.float()
        return x_BNCss.to(self.dtype)

    def _noised(self, x_BNCss: torch.Tensor, seeds: list[int], noise_scale: float) -> torch.Tensor:
        """Augmented views without cutouts: the reference's wrapper still adds its noise to the resized image; drawn
        from the per-sample noise streams, on the device where the fused cutouts draw theirs there."""
        sd = self.noise_sd * noise_scale
        if not sd:
            return x_BNCss
        if len(seeds) != x_BNCss.shape[0]:
            raise ValueError(f"views: got {len(seeds)} seeds for a batch of {x_BNCss.shape[0]}")
        # on the GPU itself when the images are there, in every preset (as the reference's randn_like)
        return x_BNCss + cutout_noise(seeds, x_BNCss.shape[1:], sd, x_BNCss.device, x_BNCss.dtype, on_device=None)

    def _fused_views(self, img_BCHW: torch.Tensor, seeds: list[int], noise_scale: float) -> torch.Tensor:
        """The same cutouts and noise as `augment` (per-sample streams; noise drawn on the device) through the fused
        crop + area-resize + noise + normalise op: one kernel each way instead of B·N crops and pools."""
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

