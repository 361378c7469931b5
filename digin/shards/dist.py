"""Rank/world from torchrun or Slurm, and the GPU for this process. No process group needed."""
from __future__ import annotations

import os

from digin.errors import ConfigError


def _env_int(*names, default=None):
    for n in names:
        v = os.environ.get(n)
        if v not in (None, ""):
            try:
                return int(v)
            except ValueError:
                raise ConfigError(f"environment variable {n}={v!r} is not an integer (set by torchrun / Slurm; "
                                  "unset it for a single-process run)") from None
    return default


def rank_world() -> tuple[int, int, int]:
    """(global rank, world size, local rank): torchrun's RANK/WORLD_SIZE/LOCAL_RANK first, then Slurm's
    SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, else (0, 1, 0)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
        local = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    elif "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        rank, world = _env_int("SLURM_PROCID"), _env_int("SLURM_NTASKS")
        local = _env_int("SLURM_LOCALID", default=0)
    else:
        rank, world, local = 0, 1, 0
    if not (0 <= rank < world):
        names = "RANK/WORLD_SIZE" if "RANK" in os.environ and "WORLD_SIZE" in os.environ else \
            "SLURM_PROCID/SLURM_NTASKS"
        raise ConfigError(f"bad rank/world from the environment: {names} = {rank}/{world} (want 0 <= rank < world); "
                          "launch with torchrun or srun, or unset them for a single-process run")
    return rank, world, local


def device_problem(device) -> str | None:
    """Why a `device=` value cannot run here (None: it can; unset and `auto` pick one at run time)."""
    import torch

    if not isinstance(device, str) or device == "auto":
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        return "a torch device such as cpu, cuda or cuda:1 (or unset: the rank's GPU)"
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index or 0) >= n:
            return f"a device this machine has (CUDA devices visible: {n})"
    return None


def device_for_local_rank(local_rank: int | None = None):
    """cuda:<local rank mod visible GPUs> when CUDA is available, else cpu."""
    import torch

    if local_rank is None:
        local_rank = rank_world()[2]
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
        return dev
    return torch.device("cpu")
