"""Masked CLIP distance, the regulariser px_{foreground,background}_clip (the reference's MaskedLatentDist, set up in
`setup_regularizers`): both images go through an open_clip ViT (the reference's ViT-L-14-CLIPA-336); each output
patch token is weighted by the mask averaged over its patch; the weighted tokens are average-pooled (no division by
mask area), pass the tower's final LayerNorm and projection, and the distance is 1 − cos of the two embeddings.

With a mask of ones (or none) the embedding is exactly the tower's own image embedding for average-pool towers
(CLIPA). Class-token towers (OpenAI ViTs) get the same masked average of their patch tokens, with the LayerNorm
applied per token as those towers do."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from digin.engine.classifiers import open_clip_model
from digin.engine.resize import tv_resize


class MaskedCLIPDistance(nn.Module):
    def __init__(self, visual: nn.Module, size: int, mean, std):
        super().__init__()
        if getattr(visual, "attn_pool", None) is not None:
            raise ValueError("masked CLIP distance: attention-pool towers (CoCa) have no per-patch pooling; use a ViT "
                             "with average or class-token pooling (e.g. ViT-L-14-CLIPA-336)")
        if not hasattr(visual, "forward_intermediates") or not hasattr(visual, "patch_size"):
            raise ValueError(f"masked CLIP distance needs an open_clip VisionTransformer, got {type(visual).__name__}")
        self.visual = visual.eval().requires_grad_(False)
        self.size = int(size)
        self.patch = int(visual.patch_size[0])
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def _resize(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return tv_resize(x_BCHW, self.size)  # the reference's TF.resize (512 → 336: antialiased)

    def patch_weights(self, mask_B1HW: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) mask → (B, L, 1) per-token weights: the mask averaged over each patch (row-major order)."""
        m = F.avg_pool2d(self._resize(mask_B1HW.float()), kernel_size=self.patch, stride=self.patch)
        return m.flatten(2).transpose(1, 2)

    def embed(self, img_B3HW: torch.Tensor, weights_BL1: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] → (B, D) (un-normalised) embeddings pooled with per-patch weights."""
        v = self.visual
        x = (self._resize(img_B3HW.float()) - self.mean) / self.std
        tokens = v.forward_intermediates(x, indices=1, intermediates_only=True,
                                         output_fmt="NLC")["image_intermediates"][-1]  # (B, L, D), no class token
        ln_after_pool = bool(getattr(v, "final_ln_after_pool", False)) and getattr(v, "pool_type", "") == "avg"
        if not ln_after_pool:
            tokens = v.ln_post(tokens)
        if weights_BL1 is not None:
            tokens = tokens * weights_BL1.to(tokens.dtype)
        pooled = tokens.mean(dim=1)
        if ln_after_pool:
            pooled = v.ln_post(pooled)
        return pooled @ v.proj if v.proj is not None else pooled

    def forward(self, x_B3HW: torch.Tensor, x0_B3HW: torch.Tensor, mask_B1HW: torch.Tensor | None = None):
        """1 − cos(e(x, M), e(x0, M)) per sample → (B,)."""
        w = None if mask_B1HW is None else self.patch_weights(mask_B1HW)
        e, e0 = self.embed(x_B3HW, w), self.embed(x0_B3HW, w)
        return 1.0 - F.cosine_similarity(e.float(), e0.float(), dim=-1, eps=1e-8)


def build_masked_clip(model: str = "ViT-L-14-CLIPA-336", weights: str | None = None, device=None,
                      allow_random: bool = False) -> MaskedCLIPDistance:
    """The regulariser's model, offline: `model` is an open_clip name (weights = a local open_clip weights file, e.g.
    ViT-L-14-CLIPA-336's open_clip_pytorch_model.bin from datacomp1b) or a folder with open_clip_config.json."""
    try:
        clip, _, spec = open_clip_model(model, weights, allow_random, what="clip_regularizer_model=",
                                     tokenizer=False)
    except ValueError as e:
        raise ValueError(f"{e}; set clip_regularizer_weights=<file>" if weights is None else str(e)) from None
    return MaskedCLIPDistance(clip.visual, spec["size"], spec["mean"], spec["std"]).to(device)
