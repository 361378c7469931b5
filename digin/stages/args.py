"""The config sections every model-running task shares (the reference's CommonArguments, same key names, plus the
compute keys) and what a stage records of its config in its manifest."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from digin.engine.guidance import OptimParams


@dataclass
class ComputeArgs:
    """How a stage runs its models: a compute preset (engine/presets.py) and single-key overrides. None = the
    preset's value on this device; the resolved values are written back and recorded in the stage manifest."""

    preset: str = "auto"  # auto (fast on CUDA, eager on CPU) | fast | reference | eager
    dtype: Optional[str] = None  # weights: fp32 | bf16 | fp16 (optimised variables and latents stay fp32)
    compile: Optional[bool] = None  # torch.compile the UNet call, VAE decode and classifier
    compile_backend: Optional[str] = None  # inductor | aot_eager | eager
    batch_size: Optional[int] = None  # samples run together (fast 8, reference 1, eager 4)
    checkpoint: Optional[str] = None  # step (per-step recompute) | none (keep activations) | block (the reference's)
    attention: Optional[str] = None  # sdpa | xformers
    cudagraphs: Optional[bool] = None  # CUDA graph trees for the compiled no-grad calls (inductor on CUDA)
    kernels: Optional[bool] = None  # fused Triton kernels (CFG+DDIM step, cutouts) on CUDA
    tf32: Optional[str] = None  # off | conv (TF32 convolutions: PyTorch's default, the reference's) | on (fast)
    strict_compile: Optional[bool] = None  # a call site falling back to eager stops the run (one line) instead
    compile_scope: Optional[str] = None  # full (the whole UNet call) | regional (its transformer blocks, once each)


@dataclass
class WorkArgs:
    """How a stage's work plan is cut and shared (digin.shards.plan / runner); none of it changes results."""

    items_per_shard: Optional[int] = None  # work items per output shard (one unit); None: about 1,000 units
    schedule: str = "static"  # static: unit j → rank j % world | dynamic: ranks claim units (leases; see README)
    lease_s: float = 300.0  # schedule=dynamic: a unit whose holder stopped beating this long is taken over
    plan: bool = False  # print the work plan (items, units, PFLOP, per-rank work) and exit: no model, no writes
    world: Optional[int] = None  # plan=true: the job's world size to show (default: this job's, or 1)
    json: bool = False  # plan=true: one JSON object instead of text


@dataclass
class SelectArgs:
    """Which images an image stage (caption, invert) does: all, or the selection a later stage needs."""

    # all | uvce (the images of the dataset's UVCE pair table, the reference's selected=True) | random (the
    # images `digin uvce pairs=random num_images=N seed=S` draws) | counterfactuals (the classes of the neuron
    # counterfactual pairs) | <file> (.txt one key per line, or a .json list of keys or dataset indices)
    select: str = "all"
    class_idcs: Optional[list] = None  # only these classes (the reference's class_idcs)
    images_per_class: Optional[int] = None  # the first N images of each class, in key order (the reference's)
    num_images: Optional[int] = None  # select=random: how many images
    seed: int = 42  # select=random: the seed `digin uvce pairs=random` uses


@dataclass
class CommonArgs(ComputeArgs, WorkArgs):
    """The reference's CommonArguments (same key names), plus engine settings."""

    model_path: str = "???"  # local SD folder, single file (+ model_config), or tiny | tiny-sd2 | tiny-sdxl
    model_config: Optional[str] = None
    resolution: int = 512
    center_crop: bool = True  # the reference's Resize(1.25·res)+CenterCrop(res); false: plain resize (no crop)
    guidance_scale: float = 3.0
    num_ddim_steps: int = 20
    optim_params: OptimParams = field(default_factory=OptimParams)
    augmentation_num_cutouts: int = 16
    augmentation_noise_sd: float = 0.005
    augmentation_noise_schedule: str = "const"  # const | descending
    solver: str = "ddim"  # ddim | euler (SDXL-Turbo / Playground presets)
    guidance_rescale: float = 0.0  # SDXL guidance rescale (rescale_noise_cfg); 0 = plain CFG
    seed: int = 42
    # a classifier named without its *_checkpoint loads its pretrained weights from the local HF / torch hub caches
    # or the stage stops; true runs it with random weights instead (tests, smoke runs)
    random_weights: bool = False
    # class k of the image shard set = which classifier logit: auto (reorder when the model's label names are the
    # dataset's classes in another order, e.g. HF Flowers-102 ViT) | model (never) | dataset (always, else error)
    classifier_label_order: str = "auto"
    # px_{foreground,background}_clip regularisers: open_clip tower (name or folder) + its local weights file
    clip_regularizer_model: str = "ViT-L-14-CLIPA-336"
    clip_regularizer_weights: Optional[str] = None
    # optional wandb tracking (the reference's key; wandb imported only when set): one run per rank, grouped
    wandb_project: Optional[str] = None
    wandb_entity: Optional[str] = None
    wandb_mode: Optional[str] = None  # online | offline (clusters without internet; `wandb sync` later) | disabled
    device: Optional[str] = None  # default: cuda:<local rank> if available, else cpu
    num_workers: int = 0
    force: bool = False  # resume into an output folder made with another config
    allow_incomplete: bool = False  # process only the committed shards of an input whose other shards are missing
    progress: bool = True


WORK_KEYS = ("items_per_shard", "schedule", "lease_s", "plan", "world", "json")
# Keys that do not change a stage's outputs: left out of the config recorded (and hashed) in its manifest.
OPERATIONAL_KEYS = ("out", "device", "num_workers", "force", "allow_incomplete", "progress", "wandb_project",
                    "wandb_entity", "wandb_mode", "strict_compile", *WORK_KEYS)


def stage_config_of(cfg, stage: str, drop=()) -> dict:
    """The resolved config of a task as recorded in its stage manifest, without operational keys and `drop`."""
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    for k in (*OPERATIONAL_KEYS, *drop):
        d.pop(k, None)
    return {"stage": stage, **d}


def tracking_for(cfg) -> dict | None:
    """run_stage's `tracking` argument from wandb_* keys (None: no tracking)."""
    project = getattr(cfg, "wandb_project", None)
    return {"project": project, "entity": cfg.wandb_entity, "mode": cfg.wandb_mode} if project else None


# The compute keys a stage records (they move results through float rounding).
COMPUTE_FIELDS = ("preset", "dtype", "compile", "compile_backend", "batch_size", "checkpoint", "attention",
                  "cudagraphs", "kernels", "tf32", "compile_scope")
