"""Per-sample start noise and fixed-shape sub-batches: a sample's result does not depend on which batch (or
device) it ran in."""
from __future__ import annotations

import hashlib

import torch


def key_seed(key: str, seed: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}|{key}".encode(), digest_size=8).digest(), "little") >> 1


def start_noise(keys: list[str], seed: int, shape, device) -> torch.Tensor:
    """Per-sample Gaussian z_T from a CPU generator seeded by (seed, key): the same on any device and batch."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(key_seed(k, seed)))
                        for k in keys]).to(device)


def latent_shape(sd, resolution: int) -> tuple:
    f = sd.latent_factor
    return (sd.latent_channels, resolution // f, resolution // f)


def fixed_chunks(items: list, size: int):
    """Yield (chunk padded to `size` by repeating its last item, number of real items)."""
    for s in range(0, len(items), size):
        chunk = items[s:s + size]
        n = len(chunk)
        yield chunk + [chunk[-1]] * (size - n), n
