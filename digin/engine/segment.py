"""Foreground masks: cross-attention maps of the label tokens → squash → optional SAM-HQ refinement →
morphological post-processing (the reference's `calculate_segmentation`).
Batched over samples; masks are computed on demand.

Maps come from AttentionController.cross_maps_at(queries=res², steps=mask_steps(T)) as (B, N, Q, 77),
N = layers × steps × heads.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from digin.engine.resize import tv_resize
from digin.extras import require
from digin.fields import COUNT, UNIT, key, refuse


@dataclass
class SegmentationConfig:
    """The reference's SegmentationArgs (same names and defaults) + where the SAM-HQ weights are."""

    SECTION = "segmentation (the foreground mask from cross-attention, optionally refined by SAM-HQ)"
    xa_map_resolution: int = key(16, "resolution of the cross-attention maps averaged into the mask", rule=COUNT)
    xa_start_t: float = key(0.5, "first normalised time t (1 = the first step) whose attention counts", rule=UNIT)
    xa_end_t: float = key(1.0, "last normalised time whose attention counts", rule=UNIT)
    xa_segmentation_squash: str = key("sqrt_0.3", "map squash: sqrt_c | sqr_c | linear_c | threshold_c | none")
    sam_segmentation: bool = key(True, "refine the attention mask with SAM-HQ (needs sam_checkpoint)")
    sam_prompt: str = key("point", "SAM prompt: point | bb (tight box around mask > threshold; the reference's 'bb' "
                                   "is broken)", choices=("point", "bb"))
    sam_num_points: int = key(5, "SAM point prompts taken from the attention mask", rule=COUNT)
    sam_foreground_threshold: float = key(0.35, "attention-mask threshold for SAM's prompts", rule=UNIT)
    sam_checkpoint: str = key("sam_hq/sam_hq_vit_h.pth", "SAM-HQ weights file")
    sam_model_type: str = key("vit_h", "SAM-HQ model type of that file")
    postprocessing: list = key(help="mask post-processing: erosion_<k>, dilation_<k>, blur_<k>_<sigma>",
                               factory=lambda: ["erosion_3", "dilation_20", "blur_45_30"])

    def check_relations(self, prefix: str = ""):
        if self.xa_start_t > self.xa_end_t:  # an empty window: no step would give a mask
            refuse(f"{prefix}xa_start_t", self.xa_start_t, f"a number ≤ {prefix}xa_end_t={self.xa_end_t}")


def mask_steps(T: int, start_t: float = 0.5, end_t: float = 1.0) -> list[int]:
    """Step indices whose normalised time t = 1 − i/(T−1) lies in [start_t, end_t] (T=20 → 0..9)."""
    return [i for i in range(T) if start_t <= 1 - i / max(T - 1, 1) <= end_t]


# ------------------------------------------------------------------------------------------ squash

def squash(m: torch.Tensor, name: str | None) -> torch.Tensor:
    """'sqrt_c', 'sqr_c', 'linear_c', 'threshold_c' (binary) or 'none' on a map in [0, 1]."""
    if name is None or name == "none":
        return m
    kind, _, c = name.partition("_")
    c = float(c) if c else 0.0
    if kind == "threshold":
        return (m > c).to(m.dtype)
    lin = (m - c).clamp(0, 1) / (1 - c)
    if kind == "linear":
        return lin
    if kind == "sqrt":
        return lin.sqrt()
    if kind == "sqr":
        return lin.square()
    raise ValueError(f"unknown squash {name!r} (sqrt_c | sqr_c | linear_c | threshold_c | none)")


# ------------------------------------------------------------------------------------------ maps → masks

def token_map(maps_BNQK: torch.Tensor, weights_BK: torch.Tensor) -> torch.Tensor:
    """Mean attention over the weighted tokens and over the stack, normalised by its max → (B, 1, r, r)."""
    w = weights_BK.to(maps_BNQK.device, torch.float32)
    m = torch.einsum("bnqk,bk->bq", maps_BNQK.float(), w)
    m = m / (maps_BNQK.shape[1] * w.sum(-1, keepdim=True).clamp_min(1e-12))
    m = m / m.amax(-1, keepdim=True).clamp_min(1e-12)
    r = math.isqrt(m.shape[-1])
    return m.view(-1, 1, r, r)


def _resize(m: torch.Tensor, hw) -> torch.Tensor:
    # The reference's TF.resize(BICUBIC): antialiased, i.e. PIL's bicubic kernel (a = −0.5), also when upsampling.
    return tv_resize(m, hw, mode="bicubic").clamp(0, 1)


def foreground_mask_from_maps(maps_BNQK: torch.Tensor, weights_BK: torch.Tensor, latent_hw, pixel_hw,
                              squash_name: str | None = "sqrt_0.3"):
    """→ (pixel mask (B,1,H,W), latent mask (B,1,h,w), unsquashed map (B,1,r,r)), masks in [0, 1]."""
    m = token_map(maps_BNQK, weights_BK)
    return squash(_resize(m, pixel_hw), squash_name), squash(_resize(m, latent_hw), squash_name), m


def word_maps(maps_BNQK: torch.Tensor, positions: list[dict], pixel_hw) -> list[dict]:
    """Per sample, word → (1, H, W) unsquashed map at pixel resolution (for plots)."""
    out = []
    for b, pos in enumerate(positions):
        words = [w for w, p in pos.items() if p]
        if not words:
            out.append({})
            continue
        W = torch.zeros(len(words), maps_BNQK.shape[-1])
        for i, w in enumerate(words):
            W[i, pos[w]] = 1.0
        m = token_map(maps_BNQK[b:b + 1].expand(len(words), -1, -1, -1), W)
        out.append({w: mw for w, mw in zip(words, _resize(m, pixel_hw))})
    return out


# ------------------------------------------------------------------------------------------ post-processing

def _pad_for(k: int) -> tuple[int, int]:
    return k // 2, k - k // 2 - 1  # kornia's anchor (k//2) for a flat k×k element; matters for even k


def dilate(m: torch.Tensor, k: int) -> torch.Tensor:
    """Flat k×k dilation (= kornia.morphology.dilation with ones((k, k)), geodesic border)."""
    a, b = _pad_for(k)
    return F.max_pool2d(F.pad(m, (b, a, b, a), value=-math.inf), k, stride=1)


def erode(m: torch.Tensor, k: int) -> torch.Tensor:
    """Flat k×k erosion (= kornia.morphology.erosion with ones((k, k)), geodesic border)."""
    a, b = _pad_for(k)
    return -F.max_pool2d(F.pad(-m, (a, b, a, b), value=-math.inf), k, stride=1)


def gaussian_blur(m: torch.Tensor, k: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect border (= kornia.filters.gaussian_blur2d((k, k), (σ, σ)))."""
    x = torch.arange(k, dtype=torch.float32, device=m.device) - k // 2
    if k % 2 == 0:
        x = x + 0.5
    g = torch.exp(-x.square() / (2 * sigma * sigma))
    g = (g / g.sum()).to(m.dtype)
    C = m.shape[1]
    a, b = k // 2, (k - 1) // 2
    m = F.conv2d(F.pad(m, (a, b, 0, 0), mode="reflect"), g.view(1, 1, 1, k).expand(C, 1, 1, k), groups=C)
    return F.conv2d(F.pad(m, (0, 0, a, b), mode="reflect"), g.view(1, 1, k, 1).expand(C, 1, k, 1), groups=C)


def postprocess_mask(mask_B1HW: torch.Tensor, ops=("erosion_3", "dilation_20", "blur_45_30")) -> torch.Tensor:
    """Apply 'erosion_k', 'dilation_k', 'blur_k_sigma' in order (the reference's defaults)."""
    m = mask_B1HW
    for op in ops or ():
        name, *args = op.split("_")
        if name == "erosion":
            m = erode(m, int(args[0]))
        elif name == "dilation":
            m = dilate(m, int(args[0]))
        elif name == "blur":
            m = gaussian_blur(m, int(args[0]), float(args[1]))
        else:
            raise ValueError(f"unknown post-processing op {op!r} (erosion_k | dilation_k | blur_k_sigma)")
    return m


# ------------------------------------------------------------------------------------------ SAM-HQ

_SAM_CACHE: dict[tuple, torch.nn.Module] = {}
_SAM_LOCK = threading.Lock()


def build_tiny_sam_hq(img_size: int = 64, embed_dim: int = 32):
    """A tiny randomly initialised SAM-HQ from the package's own classes (tests, demos — no weights)."""
    from functools import partial

    from segment_anything_hq.modeling import ImageEncoderViT, MaskDecoderHQ, PromptEncoder, Sam, TwoWayTransformer

    patch = 16
    emb = img_size // patch
    return Sam(
        image_encoder=ImageEncoderViT(depth=2, embed_dim=embed_dim, img_size=img_size, mlp_ratio=2,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=2, patch_size=patch,
                                      qkv_bias=True, use_rel_pos=True, global_attn_indexes=[0, 1], window_size=0,
                                      out_chans=32),
        prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(emb, emb),
                                     input_image_size=(img_size, img_size), mask_in_chans=4),
        mask_decoder=MaskDecoderHQ(num_multimask_outputs=3,
                                   transformer=TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64, num_heads=2),
                                   transformer_dim=32, iou_head_depth=2, iou_head_hidden_dim=32, vit_dim=embed_dim),
    ).eval()


def _sam_builder(model_type: str):
    if model_type == "tiny":
        return build_tiny_sam_hq

    sam_model_registry = require("sam", "SAM-HQ mask refinement").sam_model_registry
    if model_type not in sam_model_registry:
        raise ValueError(f"unknown SAM-HQ model type {model_type!r}; "
                         f"choose one of {sorted(sam_model_registry)} or tiny")
    return lambda: sam_model_registry[model_type](checkpoint=None)  # we load the weights ourselves, strictly


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)  # refuses pickled code
    return state["model"] if isinstance(state.get("model"), dict) else state  # some checkpoints nest the weights


def load_sam_hq(checkpoint: str, model_type: str = "vit_h", device="cpu") -> torch.nn.Module:
    """SAM-HQ with weights from `checkpoint` (strict state-dict load), built once per process and device."""
    path = Path(checkpoint).expanduser().resolve()
    key = (str(path), model_type, str(device))
    with _SAM_LOCK:
        if key not in _SAM_CACHE:
            if not path.is_file():
                raise FileNotFoundError(f"SAM-HQ checkpoint {path} not found (set sam_checkpoint)")
            model = _sam_builder(model_type)()
            model.load_state_dict(_read_state_dict(path), strict=True)
            _SAM_CACHE[key] = model.to(device).eval().requires_grad_(False)
        return _SAM_CACHE[key]


def sample_points(mask_B1HW: torch.Tensor, num_points: int, threshold: float, generator=None):
    """(B, P, 2) (x, y) points drawn ∝ mask value among pixels with mask > threshold; ok_B False where none."""
    B, _, H, W = mask_B1HW.shape
    w = mask_B1HW.float().flatten(1) * (mask_B1HW.flatten(1) > threshold)
    ok = w.sum(-1) > 0
    w = torch.where(ok[:, None], w, torch.ones_like(w))
    enough = bool(((w > 0).sum(-1) >= num_points).all())
    idx = torch.multinomial(w.cpu(), num_points, replacement=not enough, generator=generator).to(w.device)
    pts = torch.stack([idx % W, idx // W], dim=-1).float()
    return pts, ok


def mask_boxes(mask_B1HW: torch.Tensor, threshold: float):
    """(B, 4) XYXY pixel boxes around mask > threshold (max edge exclusive, as SAM's box coordinates); ok_B False
    where no pixel passes (box then covers the whole image)."""
    H, W = mask_B1HW.shape[-2:]
    on = mask_B1HW[:, 0] > threshold
    ok = on.flatten(1).any(-1)
    cols, rows = on.any(1), on.any(2)  # (B, W), (B, H)
    ar_w, ar_h = torch.arange(W, device=on.device), torch.arange(H, device=on.device)
    x0 = torch.where(cols, ar_w, W).amin(-1)
    x1 = torch.where(cols, ar_w + 1, 0).amax(-1)
    y0 = torch.where(rows, ar_h, H).amin(-1)
    y1 = torch.where(rows, ar_h + 1, 0).amax(-1)
    box = torch.stack([x0, y0, x1, y1], -1).float()
    full = torch.tensor([0.0, 0.0, W, H], device=on.device)
    return torch.where(ok[:, None], box, full), ok


@torch.no_grad()
def refine_with_sam(sam, images_B3HW: torch.Tensor, mask_B1HW: torch.Tensor, num_points: int = 5,
                    threshold: float = 0.35, generator=None,
                    prompt: str = "point") -> tuple[torch.Tensor, torch.Tensor]:
    """SAM-HQ on images in [0, 1] (single mask, HQ token only), prompted with `num_points` positive points drawn
    ∝ mask value (prompt='point', the reference's) or the box around mask > threshold (prompt='bb').

    Returns (mask (B,1,H,W) — binary where SAM ran, the input mask where it could not —, ok_B)."""
    if prompt not in ("point", "bb"):
        raise ValueError(f"segmentation.sam_prompt {prompt!r}: expected 'point' or 'bb'")
    B, _, H, W = images_B3HW.shape
    dev = next(sam.parameters()).device
    size = sam.image_encoder.img_size
    scale = size / max(H, W)
    hw = (int(H * scale + 0.5), int(W * scale + 0.5))
    imgs = F.interpolate(images_B3HW.float().to(dev) * 255, size=hw, mode="bilinear", align_corners=False,
                         antialias=True)
    to_input = torch.tensor([hw[1] / W, hw[0] / H], device=dev)
    if prompt == "bb":
        boxes, ok = mask_boxes(mask_B1HW, threshold)
        boxes = boxes.to(dev) * to_input.repeat(2)
        batch = [{"image": imgs[b], "original_size": (H, W), "boxes": boxes[b:b + 1]} for b in range(B)]
    else:
        pts, ok = sample_points(mask_B1HW, num_points, threshold, generator)
        pts = pts.to(dev) * to_input
        batch = [{"image": imgs[b], "original_size": (H, W), "point_coords": pts[b:b + 1],
                  "point_labels": torch.ones(1, num_points, device=dev)} for b in range(B)]
    try:
        outs = sam(batch, multimask_output=False, hq_token_only=True)
    except Exception:  # the reference keeps the cross-attention mask when SAM fails
        return mask_B1HW, torch.zeros(B, dtype=torch.bool, device=mask_B1HW.device)
    sam_B1HW = torch.cat([o["masks"][:, :1] for o in outs]).to(mask_B1HW.device, mask_B1HW.dtype)
    ok = ok.to(mask_B1HW.device)
    return torch.where(ok.view(-1, 1, 1, 1), sam_B1HW, mask_B1HW), ok


# ------------------------------------------------------------------------------------------ all together

def segment_foreground(maps_BNQK, weights_BK, latent_hw, pixel_hw, cfg: SegmentationConfig | None = None,
                       images_B3HW=None, generator=None) -> dict:
    """XA mask → (SAM-HQ) → post-processing. Returns {'px': (B,1,H,W), 'latent': (B,1,h,w), 'xa': (B,1,r,r),
    'sam_ok': (B,) or None}. As in the reference, the latent mask is the post-processed pixel mask resized when
    SAM or post-processing ran, else the squashed cross-attention mask at latent resolution."""
    cfg = cfg or SegmentationConfig()
    px, lat, raw = foreground_mask_from_maps(maps_BNQK, weights_BK, latent_hw, pixel_hw, cfg.xa_segmentation_squash)
    sam_ok = None
    if cfg.sam_segmentation and images_B3HW is not None:
        sam = load_sam_hq(cfg.sam_checkpoint, cfg.sam_model_type, device=maps_BNQK.device)
        px, sam_ok = refine_with_sam(sam, images_B3HW, px, cfg.sam_num_points, cfg.sam_foreground_threshold, generator,
                                     prompt=cfg.sam_prompt)
    if cfg.postprocessing:
        px = postprocess_mask(px, cfg.postprocessing)
    if sam_ok is not None or cfg.postprocessing:
        lat = tv_resize(px, latent_hw).clamp(0, 1)
    return {"px": px, "latent": lat, "xa": raw, "sam_ok": sam_ok}
