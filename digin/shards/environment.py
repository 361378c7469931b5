"""What a rank ran on, recorded in its JSONL log at start: results of the DiG-IN optimisation move with float
rounding (library builds, GPU kind, thread counts), so a result needs its environment next to it."""
from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("digin", "torch", "torchvision", "diffusers", "transformers", "timm", "open_clip_torch", "triton",
            "numpy", "safetensors")


def package_version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The digin checkout's commit when running from a git clone (editable installs on clusters), else None."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def run_environment(device=None) -> dict:
    import torch

    env = {"host": socket.gethostname(), "python": platform.python_version(), "platform": platform.platform(),
           "packages": {p: v for p in PACKAGES if (v := package_version(p)) is not None}, "digin_git": git_commit(),
           "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "cuda": torch.version.cuda, "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(dev)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   cudnn=torch.backends.cudnn.version())
    return env


def version_line() -> str:
    """`digin <version>`, plus the git commit when digin runs from a checkout (editable installs on clusters)."""
    commit = git_commit()
    return f"digin {package_version('digin') or '(version unknown: not installed)'}" + (
        f" (git {commit})" if commit else "")
