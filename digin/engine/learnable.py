"""Learnable edit schedules: the mask-blend and the cross-/self-attention interpolation factors optimised with the
image, each as its own optimiser group (the reference's `optimize_mask_blend`, `optimize_xa_interpolation_schedule`,
`optimize_self_interpolation_schedule`).

Reference semantics (src/utils/sd_backprop_pipe.py, src/utils/cross_attention.py), kept:
- the parameter is the schedule itself, one factor per DDIM step, started from the schedule the search chose;
- learning rates are absolute (`mask_blend_stepsize`, `schedule_stepsize`, not × sgd_stepsize), the cosine
  annealing (floor sgd_stepsize/10) and gradient clipping / normalisation act on these groups like on the others;
- after every step the factors are clamped to [0, 1];
- blending acts at every step, so every blend factor gets a gradient; attention injection only acts where its factor
  is > 0, so a factor at 0 gets none (it stays 0: nothing moves it back up);
- a sample whose chosen schedule is 'none' has no schedule and learns none.
Batched: every sample has its own factors and optimiser state ((B, T) tensors, rows masked by `on_B`).

A schedule is declared learnable where it is applied: `LearnableBlend` (a `sampling.Blend` with a step size) and
`AttentionController.learn` ({"xa" | "self": ScheduleSpec}). `optimise` takes fresh copies of the factors as its
variables for the run (`learned_schedules`), so the caller's blend and controller keep the starting schedules.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .sampling import Blend

SCHEDULE_NAMES = ("mask_blend", "xa", "self")  # the reference's order of the optimiser groups
_CONTROLLER_ATTR = {"xa": "xa_factors_BT", "self": "self_factors_BT"}


@dataclass(frozen=True)
class ScheduleSpec:
    lr: float  # absolute step size of this group
    on_B: torch.Tensor  # (B,) bool: samples that have this schedule


@dataclass
class LearnableBlend(Blend):
    """A blend whose per-sample factors are optimised (step size `lr`; rows with on_B False stay as they are)."""

    lr: float = 0.05
    on_B: torch.Tensor | None = None  # None: every sample learns


@dataclass
class LearnedSchedule:
    name: str  # "mask_blend" | "xa" | "self"
    factors_BT: torch.Tensor  # the optimised leaf (fp32), read by the blend / controller during the run
    spec: ScheduleSpec


def has_schedule(names) -> torch.Tensor:
    """(B,) bool from per-sample chosen schedule names: 'none' / None is no schedule (the reference then has no
    tensor to optimise)."""
    return torch.tensor([n not in (None, "none") for n in names], dtype=torch.bool)


def learnable_blend(blend: Blend, lr: float, on_B: torch.Tensor) -> LearnableBlend:
    return LearnableBlend(blend.mask_B1hw, blend.templates_TBCHW, blend.factors_BT, lr=float(lr),
                          on_B=on_B.to(blend.factors_BT.device))


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().clone().requires_grad_(True)


@contextmanager
def learned_schedules(blend, controller):
    """For one optimisation run: (the blend to run with, [LearnedSchedule]) with fresh leaf tensors in place of the
    learnable factors; the controller's own factors are put back afterwards."""
    learned, swapped = [], []
    if isinstance(blend, LearnableBlend):
        leaf = _leaf(blend.factors_BT)
        on_B = blend.on_B if blend.on_B is not None else torch.ones(leaf.shape[0], dtype=torch.bool,
                                                                    device=leaf.device)
        learned.append(LearnedSchedule("mask_blend", leaf, ScheduleSpec(blend.lr, on_B)))
        blend = Blend(blend.mask_B1hw, blend.templates_TBCHW, leaf)
    specs = getattr(controller, "learn", None) or {}
    try:
        for name in ("xa", "self"):
            attr = _CONTROLLER_ATTR[name]
            factors = getattr(controller, attr, None)
            if name not in specs or factors is None:
                continue
            leaf = _leaf(factors)
            swapped.append((attr, factors))
            setattr(controller, attr, leaf)
            learned.append(LearnedSchedule(name, leaf, specs[name]))
        yield blend, learned
    finally:
        for attr, factors in swapped:
            setattr(controller, attr, factors)


@torch.no_grad()
def mask_schedule_grads(grads: list[torch.Tensor], learned: list[LearnedSchedule]) -> list[torch.Tensor]:
    """Zero the gradient rows of samples without the schedule (grads: one per learned schedule, same order)."""
    return [torch.where(s.spec.on_B.view(-1, 1), g, torch.zeros_like(g)) for g, s in zip(grads, learned)]


@torch.no_grad()
def clamp_schedules(learned: list[LearnedSchedule]) -> None:
    """The reference's clip_(0, 1) after each step (rows not updated are already in [0, 1])."""
    for s in learned:
        s.factors_BT.clamp_(0.0, 1.0)
