"""Cutout + noise augmentation for classifier guidance (eager reference of the fused kernel).

The reference's MakeCutouts (src/utils/models/model_wrappers.py) takes `num_cutouts` square crops of the image,
side `int(u**cut_power · (S − s) + s)` with u ~ U(0,1), S = min(H, W), s = min(S, size), at a uniform offset,
average-pools each crop to `size` and adds `noise_sd · N(0,1)`. Here every random number of a sample comes from
its own `torch.Generator`, seeded from the sample key (`sample_seed`), so a sample's augmentation never depends
on which batch it lands in. Boxes are drawn on the CPU (the same on every machine, as the reference draws its
sizes and offsets on the host); the noise on the GPU when the image is there (every preset, the reference one
included: the reference adds `torch.randn_like` of the GPU tensor), on the CPU otherwise.

`make_cutouts` is a pure function of (image, boxes): crop + adaptive average pool, written as two batched
matrix products (pool_y · crop · pool_xᵀ) so it runs at fixed shapes with no host syncs. It equals
`F.adaptive_avg_pool2d` on each crop (bins [⌊i·L/s⌋, ⌈(i+1)·L/s⌉)) up to float rounding, as the reference's
MakeCutouts (no antialiasing there: the area pool is its own filter); `kernels.cutouts_reference` is the literal
loop (with noise and normalisation), `kernels.fused_cutouts` the fused op.
"""
from __future__ import annotations

import hashlib
import struct

import torch

from digin.kernels.cutouts import boxes_from_uniforms, pool_matrix

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


def classifier_seeds(seeds: list[int], index: int) -> list[int]:
    """Augmentation seeds of classifier `index` in a multi-classifier loss: classifier 0 keeps the sample seeds,
    classifier j > 0 draws its own boxes and noise from a derived per-sample stream (the reference's two wrappers
    draw independently from the global RNG)."""
    if index == 0:
        return list(seeds)
    return [_substream(s, f"classifier{int(index)}") for s in seeds]


def _hw(image_size) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def cutout_boxes(seed: int, image_size, size: int, num_cutouts: int, cut_power: float) -> torch.Tensor:
    """(N, 3) int64 boxes [side, y0, x0] on the CPU, the reference MakeCutouts rule (`boxes_from_uniforms`)
    applied to uniforms from `torch.Generator(seed)`. image_size: S or (H, W)."""
    H, W = _hw(image_size)
    g = torch.Generator(device="cpu").manual_seed(_substream(seed, "boxes"))
    u_N3 = torch.rand(num_cutouts, 3, generator=g, dtype=torch.float64)
    return boxes_from_uniforms(u_N3, H, W, size, cut_power)


def make_cutouts(img_BCHW: torch.Tensor, boxes_BN3: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each box and average-pool it to size×size → (B, N, C, size, size). Differentiable in the image."""
    B, C, H, W = img_BCHW.shape
    boxes = boxes_BN3.to(img_BCHW.device)
    side, y0, x0 = boxes[..., 0], boxes[..., 1], boxes[..., 2]
    pool_y_BNsH = pool_matrix(y0, side, size, H, img_BCHW.dtype)
    pool_x_BNsW = pool_matrix(x0, side, size, W, img_BCHW.dtype)
    rows_BNCsW = torch.einsum("bnih,bchw->bnciw", pool_y_BNsH, img_BCHW)
    return torch.einsum("bnciw,bnjw->bncij", rows_BNCsW, pool_x_BNsW)


def cutout_noise(seeds: list[int], shape, noise_sd: float, device, dtype=torch.float32,
                 on_device: bool | None = None) -> torch.Tensor:
    """(B, *shape) noise_sd·N(0,1), one generator per sample (per sample and batch-independent either way): drawn on
    `device` itself when it is a GPU (`on_device` None or True) — as the reference draws its cutout noise
    (`torch.randn_like` on the GPU tensor) — or on the CPU (on a CPU device, or `on_device=False`: bitwise the same
    on every machine, at ~100 ms per 16×3×384² sample, which would dominate a GPU loss step). CUDA's draws differ
    from the CPU's."""
    device = torch.device(device)
    if on_device is None:
        on_device = device.type == "cuda"
    gen_device = device if on_device else torch.device("cpu")
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


NOISE_SCHEDULES = ("const", "constant", "descending")  # augmentation_noise_schedule


def noise_scale_schedule(schedule: str, num_steps: int):
    """Multiplier of noise_sd per augmented call (the `augmentation_noise_schedule` key), as a function of the
    guidance salt (iteration k, step i); None for a constant scale.

    'descending' → linspace(1, 0, num_steps)[k mod num_steps] with num_steps = sgd_steps: the noise falls from
    noise_sd to 0 over the run and all loss steps of one iteration share it. (The reference advances its
    linspace once per classifier call, checkpoint recomputations included, so it runs down and restarts every
    few iterations; see README "Departures from the reference".)
    """
    if schedule in (None, "const", "constant"):
        return None
    if schedule != "descending":
        raise ValueError(f"augmentation_noise_schedule must be const or descending, got {schedule!r}")
    n = max(int(num_steps), 1)

    def scale(salt: tuple[int, ...]) -> float:
        k = int(salt[0]) % n
        return 1.0 - k / (n - 1) if n > 1 else 1.0

    return scale
