"""Per-sample evaluation metrics (the reference's eval helpers in src/utils/loss_functions.py, the wandb metrics of
uvces_imagenet.py, FID of src/utils/fid.py).

Images are float tensors in [0, 1], shape (B, 3, H, W). Masks are foreground masks in [0, 1], (B, 1, H, W) or
(B, H, W); `region="background"` weights pixels by 1 − M, `"foreground"` by M, `None` uses every pixel.

- L1 / L2 follow the reference's `calculate_lp_distances`: norms of the pixel difference over the whole image,
  L1 = Σ w·|x − y|, L2 = sqrt(Σ w·(x − y)²) (sums over channels and pixels, w = mask weight or 1). They are not
  normalised by area; divide by `mask_area` for a per-pixel mean.
- LPIPS: `lpips.LPIPS(net='alex', spatial=True)` on [0,1] inputs (normalize=True), built by
  `perceptual.build_lpips` (the AlexNet trunk file must be in the torch hub cache; a random trunk only when asked
  for). Masked LPIPS is the mask-weighted mean of the spatial LPIPS map (not the per-layer MaskedLPIPS
  regulariser).
- FID: torchvision Inception-v3, 2048-d pool features after Mixed_7c, inputs resized (bilinear) to 299 and scaled
  to [−1, 1]; Fréchet distance via scipy.linalg.sqrtm with an eps·I fallback when the product is singular.
  Like the reference this uses torchvision's ImageNet Inception weights, not the TF-FID network, so values are
  not comparable to published TF-FID numbers.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from digin.engine.distances import sum_lp
from digin.engine.perceptual import build_lpips


# ---------------------------------------------------------------- classifier metrics

@torch.no_grad()
def confidences(classifier, images_BCHW: torch.Tensor, classes_B: torch.Tensor):
    """Softmax probability of `classes_B` and the argmax prediction; classifier maps [0,1] images to logits
    (B, K), or (B, N, K) over N views as `digin.engine.classifiers.ImageClassifier` returns (probabilities are
    averaged over views; without augmentation N = 1)."""
    logits = classifier(images_BCHW).float()
    probs_BK = logits.softmax(dim=-1)
    if probs_BK.ndim == 3:
        probs_BK = probs_BK.mean(dim=1)
    classes_B = torch.as_tensor(classes_B, device=probs_BK.device).long()
    return probs_BK.gather(1, classes_B[:, None])[:, 0], probs_BK.argmax(dim=-1)


def flip_rate(preds_B, targets_B) -> float:
    """Fraction of samples whose prediction is the target class (the counterfactual 'flipped' the decision)."""
    preds_B, targets_B = torch.as_tensor(preds_B), torch.as_tensor(targets_B)
    if preds_B.numel() == 0:
        return float("nan")
    return (preds_B == targets_B).float().mean().item()


# ---------------------------------------------------------------- pixel distances

def _weights(mask, region, like_BCHW):
    if region is None or mask is None:
        if region is not None:
            raise ValueError(f"region={region!r} needs a mask")
        return torch.ones_like(like_BCHW[:, :1])
    m = torch.as_tensor(mask, dtype=like_BCHW.dtype, device=like_BCHW.device)
    m_B1HW = m[:, None] if m.ndim == 3 else m
    if m_B1HW.shape[-2:] != like_BCHW.shape[-2:]:
        m_B1HW = F.interpolate(m_B1HW, size=like_BCHW.shape[-2:], mode="bilinear", align_corners=False)
    if region == "foreground":
        return m_B1HW
    if region == "background":
        return 1.0 - m_B1HW
    raise ValueError(f"region must be None, 'foreground' or 'background', got {region!r}")


def l1_distance(x_BCHW, y_BCHW, mask=None, region=None) -> torch.Tensor:
    """(B,) Σ w·|x − y| over channels and pixels."""
    return sum_lp(x_BCHW, y_BCHW, 1, _weights(mask, region, x_BCHW))


def l2_distance(x_BCHW, y_BCHW, mask=None, region=None) -> torch.Tensor:
    """(B,) sqrt(Σ w·(x − y)²) over channels and pixels."""
    return sum_lp(x_BCHW, y_BCHW, 2, _weights(mask, region, x_BCHW)).sqrt()


def mask_area(mask, region, like_BCHW) -> torch.Tensor:
    """(B,) Σ w over pixels (one channel), to turn the norms above into per-pixel means."""
    return _weights(mask, region, like_BCHW).flatten(1).sum(1)


# ---------------------------------------------------------------- LPIPS

@torch.no_grad()
def lpips_distance(x_BCHW, y_BCHW, mask=None, region=None, lpips_model=None) -> torch.Tensor:
    """(B,) LPIPS-alex on [0,1] images; with a mask, the mask-weighted mean of the spatial LPIPS map."""
    model = lpips_model if lpips_model is not None else build_lpips(x_BCHW.device, spatial=True)
    dist_B1HW = model(x_BCHW, y_BCHW, normalize=True)
    if dist_B1HW.ndim < 4:  # a model built without spatial=True returns (B,1,1,1) or (B,)
        return dist_B1HW.flatten()
    w_B1HW = _weights(mask, region, dist_B1HW)
    return (w_B1HW * dist_B1HW).flatten(1).sum(1) / w_B1HW.flatten(1).sum(1).clamp_min(1e-12)


# ---------------------------------------------------------------- FID

class InceptionPool(torch.nn.Module):
    """Images in [0,1] (B,3,H,W) -> (B, 2048) Inception-v3 pool features (after Mixed_7c, global avg pool)."""

    def __init__(self, weights_path=None, random_init_seed: int | None = None):
        super().__init__()
        from torchvision.models import inception_v3

        if weights_path is None and random_init_seed is None:
            raise ValueError("give inception weights_path (FID needs trained weights) or random_init_seed (tests)")
        # init_weights=False skips scipy's slow truncated-normal init; transform_input=False: we scale ourselves
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0 if random_init_seed is None else random_init_seed)
            net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
            if weights_path is None:  # random test net: fan-in init keeps activations O(1) through 90+ layers
                for mod in net.modules():
                    if isinstance(mod, torch.nn.Conv2d):
                        torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
        if weights_path is not None:
            net.load_state_dict(load_state_dict_file(weights_path))
        net.fc = torch.nn.Identity()  # the pooled 2048-d vector is the output
        self.net = net.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, images_BCHW):
        x = F.interpolate(images_BCHW.float(), size=(299, 299), mode="bilinear", align_corners=False)
        x = x * 2.0 - 1.0
        self.net.eval()
        return self.net(x).flatten(1)  # eval mode: plain tensor (no aux logits)


def load_state_dict_file(path) -> dict:
    """safetensors, or a torch file loaded with weights_only=True (never unpickles code)."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def feature_stats(features_ND) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features_ND, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors (N, D), got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 − mu2||² + Tr(S1 + S2 − 2·sqrtm(S1·S2)); adds eps·I to both covariances when sqrtm fails."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has a large imaginary part {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_from_features(features1_ND, features2_ND, eps: float = 1e-6, method: str = "auto") -> float:
    """FID of two feature sets. method 'sqrtm' = the reference's formula; 'lowrank' = the same value computed
    exactly from the centred features when N1 + N2 ≤ D ('auto' picks it then): Tr sqrtm(S1·S2) equals the
    nuclear norm of A·Bᵀ / sqrt((N1−1)(N2−1)) for centred A, B — an (N1×N2) SVD instead of a singular
    (D×D) sqrtm (2048² sqrtm takes about a minute on one core and is ill-conditioned when N < D)."""
    f1, f2 = np.asarray(features1_ND, np.float64), np.asarray(features2_ND, np.float64)
    if method == "auto":
        method = "lowrank" if f1.shape[0] + f2.shape[0] <= f1.shape[1] else "sqrtm"
    if method == "sqrtm":
        return frechet_distance(*feature_stats(f1), *feature_stats(f2), eps=eps)
    if method != "lowrank":
        raise ValueError(f"method must be auto, sqrtm or lowrank, got {method!r}")
    (mu1, _), (mu2, _) = feature_stats(f1), feature_stats(f2)  # also validates shapes
    a, b = f1 - mu1, f2 - mu2
    n1, n2 = a.shape[0] - 1, b.shape[0] - 1
    tr1, tr2 = (a * a).sum() / n1, (b * b).sum() / n2
    tr_covmean = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt(n1 * n2)
    diff = mu1 - mu2
    return float(diff @ diff + tr1 + tr2 - 2.0 * tr_covmean)


@torch.no_grad()
def inception_features(images, model: InceptionPool, batch_size: int = 32, device="cpu") -> np.ndarray:
    """Iterable of (3,H,W) [0,1] tensors (any sizes) -> (N, 2048) float64 features, batched."""
    feats, batch = [], []
    for img in images:
        batch.append(F.interpolate(img[None].float(), size=(299, 299), mode="bilinear", align_corners=False)[0])
        if len(batch) == batch_size:
            feats.append(model(torch.stack(batch).to(device)).double().cpu())
            batch = []
    if batch:
        feats.append(model(torch.stack(batch).to(device)).double().cpu())
    return torch.cat(feats).numpy() if feats else np.zeros((0, 2048))


def fid(images1, images2, model: InceptionPool, batch_size: int = 32, device="cpu") -> float:
    """FID between two image sets (iterables of (3,H,W) tensors in [0,1])."""
    return fid_from_features(inception_features(images1, model, batch_size, device),
                             inception_features(images2, model, batch_size, device))
