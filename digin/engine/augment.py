"""Cutout + noise augmentation for classifier guidance (eager reference of the fused kernel).

The reference wrapper (REFERENCE §3.3) takes `num_cutouts` square crops of the image, side
`int(u**cut_power · (S − size) + size)` with u ~ U(0,1) and S = min(H, W), at a uniform offset, average-pools
each crop to `size` and adds `noise_sd · N(0,1)`. Here every random number of a sample comes from its own CPU
`torch.Generator`, seeded from the sample key (`sample_seed`), so a sample's augmentation never depends on
which batch it lands in, and CPU and GPU runs draw the very same boxes and noise.

`make_cutouts` is a pure function of (image, boxes): crop + adaptive average pool, written as two batched
matrix products (pool_y · crop · pool_xᵀ) so it runs at fixed shapes with no host syncs. It equals
`F.adaptive_avg_pool2d` on each crop (bins [⌊i·L/s⌋, ⌈(i+1)·L/s⌉)) up to float rounding; see
`make_cutouts_reference` for the literal loop.
"""
from __future__ import annotations

import hashlib
import struct

import torch
import torch.nn.functional as F

_MASK63 = (1 << 63) - 1


def sample_seed(key: str, *salts: int) -> int:
    """Stable 63-bit seed from a sample key and integers (iteration, DDIM step, ...); same on every machine."""
    h = hashlib.blake2b(digest_size=8, person=b"digin-aug")
    h.update(str(key).encode("utf-8"))
    for s in salts:
        h.update(b"\x00" + struct.pack("<q", int(s)))
    return int.from_bytes(h.digest(), "little") & _MASK63


def _substream(seed: int, stream: str) -> int:
    """Independent seed for a named sub-stream (boxes vs. noise) of one sample seed."""
    h = hashlib.blake2b(struct.pack("<Q", int(seed) & _MASK63) + stream.encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & _MASK63


def _hw(image_size) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def cutout_boxes(seed: int, image_size, size: int, num_cutouts: int, cut_power: float) -> torch.Tensor:
    """(N, 3) int64 boxes [side, y0, x0] on the CPU, drawn from `torch.Generator(seed)`.

    image_size: S or (H, W). side = int(u**cut_power · (S_max − S_min) + S_min) with S_max = min(H, W),
    S_min = min(S_max, size) (reference MakeCutouts); offsets uniform in [0, H − side] × [0, W − side].
    """
    H, W = _hw(image_size)
    max_size = min(H, W)
    min_size = min(max_size, size)
    g = torch.Generator(device="cpu").manual_seed(_substream(seed, "boxes"))
    u_N3 = torch.rand(num_cutouts, 3, generator=g, dtype=torch.float64)
    side_N = (u_N3[:, 0] ** cut_power * (max_size - min_size) + min_size).long().clamp_(min_size, max_size)
    y0_N = (u_N3[:, 1] * (H - side_N + 1)).long().clamp_max_(H - side_N)
    x0_N = (u_N3[:, 2] * (W - side_N + 1)).long().clamp_max_(W - side_N)
    return torch.stack([side_N, y0_N, x0_N], dim=1)


def _pool_matrix(offset_BN: torch.Tensor, side_BN: torch.Tensor, size: int, length: int, dtype) -> torch.Tensor:
    """(B, N, size, length) rows that average input[offset + ⌊i·L/s⌋ : offset + ⌈(i+1)·L/s⌉] (L = side)."""
    i = torch.arange(size, device=side_BN.device)
    L = side_BN[..., None]
    start = offset_BN[..., None] + torch.div(i * L, size, rounding_mode="floor")  # (B,N,size)
    end = offset_BN[..., None] + torch.div((i + 1) * L + size - 1, size, rounding_mode="floor")
    r = torch.arange(length, device=side_BN.device)
    inside = (r >= start[..., None]) & (r < end[..., None])  # (B,N,size,length)
    return inside.to(dtype) / (end - start)[..., None].to(dtype)


def make_cutouts(img_BCHW: torch.Tensor, boxes_BN3: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each box and average-pool it to size×size → (B, N, C, size, size). Differentiable in the image."""
    B, C, H, W = img_BCHW.shape
    boxes = boxes_BN3.to(img_BCHW.device)
    side, y0, x0 = boxes[..., 0], boxes[..., 1], boxes[..., 2]
    pool_y_BNsH = _pool_matrix(y0, side, size, H, img_BCHW.dtype)
    pool_x_BNsW = _pool_matrix(x0, side, size, W, img_BCHW.dtype)
    rows_BNCsW = torch.einsum("bnih,bchw->bnciw", pool_y_BNsH, img_BCHW)
    return torch.einsum("bnciw,bnjw->bncij", rows_BNCsW, pool_x_BNsW)


def make_cutouts_reference(img_BCHW: torch.Tensor, boxes_BN3: torch.Tensor, size: int) -> torch.Tensor:
    """Literal loop (crop, then `F.adaptive_avg_pool2d`), for checking `make_cutouts` and fused kernels."""
    out = []
    for b in range(img_BCHW.shape[0]):
        crops = []
        for side, y0, x0 in boxes_BN3[b].tolist():
            crop = img_BCHW[b:b + 1, :, y0:y0 + side, x0:x0 + side]
            crops.append(F.adaptive_avg_pool2d(crop, size)[0])
        out.append(torch.stack(crops))
    return torch.stack(out)


def cutout_noise(seeds: list[int], shape, noise_sd: float, device, dtype=torch.float32,
                 on_device: bool = False) -> torch.Tensor:
    """(B, *shape) noise_sd·N(0,1), one generator per sample: on the CPU (bitwise the same on every device), or,
    with `on_device`, a generator on `device` itself (per sample and batch-independent as well, but CUDA's draws
    differ from the CPU's; used by the fused CUDA path, where CPU draws at 16×3×384² per sample would dominate)."""
    gen_device = torch.device(device) if on_device else torch.device("cpu")
    noise = torch.stack([
        torch.randn(tuple(shape), generator=torch.Generator(device=gen_device).manual_seed(_substream(s, "noise")),
                    device=gen_device)
        for s in seeds])
    return (noise * noise_sd).to(device=device, dtype=dtype, non_blocking=True)


def augment(img_BCHW: torch.Tensor, seeds: list[int], size: int, num_cutouts: int, cut_power: float,
            noise_sd: float) -> torch.Tensor:
    """Cutouts then additive Gaussian noise → (B, N, C, size, size). `noise_sd` already includes any schedule."""
    B, C, H, W = img_BCHW.shape
    if len(seeds) != B:
        raise ValueError(f"augment: got {len(seeds)} seeds for a batch of {B}")
    boxes_BN3 = torch.stack([cutout_boxes(s, (H, W), size, num_cutouts, cut_power) for s in seeds])
    cut_BNCss = make_cutouts(img_BCHW, boxes_BN3.to(img_BCHW.device, non_blocking=True), size)
    if noise_sd:
        cut_BNCss = cut_BNCss + cutout_noise(seeds, cut_BNCss.shape[1:], noise_sd, img_BCHW.device, cut_BNCss.dtype)
    return cut_BNCss


def noise_scale_schedule(schedule: str, num_steps: int):
    """Multiplier of noise_sd per augmented call, as a function of the guidance salt (iteration k, step i).

    'const' → 1. 'descending' → linspace(1, 0, num_steps)[k mod num_steps]: the reference walks
    linspace(noise_sd → 0, n) once per augmented call; here the position is the SGD iteration k, so all loss
    steps of one iteration share a scale and the result does not depend on call order.
    """
    if schedule in (None, "const", "constant"):
        return None
    if schedule != "descending":
        raise ValueError(f"unknown augmentation noise schedule {schedule!r}; use 'const' or 'descending'")
    n = max(int(num_steps), 1)

    def scale(salt: tuple[int, ...]) -> float:
        k = int(salt[0]) % n
        return 1.0 - k / (n - 1) if n > 1 else 1.0

    return scale
