"""Optional stacks (pyproject extras): what each is for, how to install it, and one import helper whose error
names the install command. `digin doctor` reports every stack from the same table."""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Stack:
    label: str
    dist: str  # the distribution whose version `digin doctor` shows
    modules: tuple[str, ...]  # imported in this order; `require` returns the first
    install: str
    used_for: str


STACKS = {
    "triton": Stack("Triton", "triton", ("triton",), "pip install triton (CUDA builds of torch on Linux bring it)",
                    "the fused CFG+DDIM and cutout kernels (CUDA)"),
    "xformers": Stack("xformers", "xformers", ("xformers.ops",), "pip install 'digin[xformers]'",
                      "attention=xformers (CUDA)"),
    "sam": Stack("SAM-HQ", "segment-anything-hq", ("segment_anything_hq",), "pip install 'digin[sam]'",
                 "SAM-HQ mask refinement (segmentation.sam_segmentation=true)"),
    "flamingo": Stack("open_flamingo", "open-flamingo", ("open_flamingo", "einops", "einops_exts"),
                      "pip install --no-deps open-flamingo==2.0.1 einops einops-exts sentencepiece (the `flamingo` "
                      "extra; --no-deps: it pins an old torch)", "digin caption backend=open_flamingo"),
    "lpips": Stack("LPIPS", "lpips", ("lpips",), "pip install 'digin[lpips]'",
                   "the px_lpips regulariser and eval's LPIPS"),
    "clip": Stack("open_clip", "open_clip_torch", ("open_clip",), "pip install 'digin[clip]'",
                  "clip: classifiers and the px_*_clip regularisers"),
    "wandb": Stack("wandb", "wandb", ("wandb",), "pip install 'digin[wandb]'", "wandb_project= tracking"),
}


def require(stack: str, what: str):
    """Import the stack's modules (returns the first) or raise ImportError: `what` needs it, and how to install."""
    s = STACKS[stack]
    mods = []
    for name in s.modules:
        try:
            mods.append(importlib.import_module(name))
        except ImportError as e:
            raise ImportError(f"{what} needs {s.label}, which does not import here ({e}); install it: "
                              f"{s.install}") from None
    return mods[0]
