"""The config sections tasks share (digin.fields: every key with its help, rule and whether it changes results).

The keys stay the reference's flat names (`guidance_scale=`, `optim_params.sgd_steps=`): a task's Config inherits
the sections it runs with, and hands a stage only the sections it needs (`section_of(cfg, ModelArgs)`).
`CommonArgs` is the reference's CommonArguments. What a stage records of its config (and resumes against) is
`record(cfg, stage, settings)`: every key that changes results, with the compute preset's resolved values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from digin.engine.augment import NOISE_SCHEDULES
from digin.engine.guidance import OptimParams
from digin.engine.objectives import parse_regularizer
from digin.engine.perceptual import require_trunk_file
from digin.engine.presets import (ATTENTION_BACKENDS, CHECKPOINTS, COMPILE_BACKENDS, COMPILE_SCOPES, DTYPE_ALIASES,
                                  DTYPES, PRESETS, TF32_MODES, ComputeSettings, compute_of)
from digin.engine.schedule import SOLVERS
from digin.errors import ConfigError
from digin.fields import COUNT, COUNT0, MISSING, NONNEG, SEED, UNIT, Int, Real, key, record_of, refuse, section
from digin.shards.dist import device_problem


@dataclass
class ModelArgs:
    SECTION = "model (the diffusion model and the image size)"
    model_path: str = key(MISSING, "local SD folder, single file (+ model_config), a hub id in the local HF cache, "
                                   "or tiny | tiny-sd2 | tiny-sdxl")
    model_config: Optional[str] = key(None, "the model's YAML / folder config when model_path is a single file")
    resolution: int = key(512, "image side in pixels (latents: resolution / the VAE's factor)",
                          rule=Int(8, 8192, multiple_of=8))
    center_crop: bool = key(True, "the reference's Resize(1.25·res)+CenterCrop(res); false: plain resize (no crop)")


@dataclass
class SamplingArgs:
    SECTION = "sampling (classifier-free guidance and the sampler)"
    guidance_scale: float = key(3.0, "classifier-free guidance scale", rule=NONNEG)
    num_ddim_steps: int = key(20, "sampling steps", rule=Int(1, 1000))
    solver: str = key("ddim", "ddim | euler (SDXL-Turbo / Playground presets)", choices=SOLVERS)
    guidance_rescale: float = key(0.0, "SDXL guidance rescale (rescale_noise_cfg); 0 = plain CFG", rule=UNIT)


@dataclass
class GuidanceArgs(SamplingArgs):
    SECTION = "guidance (the gradient steps and the classifier's views)"
    optim_params: OptimParams = section(OptimParams, "the gradient steps")
    augmentation_num_cutouts: int = key(16, "random crops (cutouts) per classifier call; 0: the whole image once",
                                        rule=COUNT0)
    augmentation_noise_sd: float = key(0.005, "std of the Gaussian noise added to each view", rule=NONNEG)
    augmentation_noise_schedule: str = key("const", "const | descending (noise shrinks over the gradient steps)",
                                           choices=NOISE_SCHEDULES)
    seed: int = key(42, "start noise and per-sample random streams (keyed by sample)", rule=SEED)

    def check_relations(self, prefix: str = ""):
        steps, loss_steps = self.num_ddim_steps, self.optim_params.loss_steps
        if loss_steps > steps:
            refuse("optim_params.loss_steps", loss_steps, f"an integer in [1, num_ddim_steps={steps}]")


@dataclass
class ClassifierOptions:
    SECTION = "classifier"
    random_weights: bool = key(False, "a classifier named without its *_checkpoint loads its pretrained weights from "
                                      "the local HF / torch hub caches or the stage stops; true runs it with random "
                                      "weights instead (tests, smoke runs)")
    classifier_label_order: str = key("auto", "class k of the image shard set = which classifier logit: auto "
                                              "(reorder when the model's label names are the dataset's classes in "
                                              "another order, e.g. HF Flowers-102 ViT) | model (never) | dataset "
                                              "(always, else error)", choices=("auto", "model", "dataset"))


@dataclass
class ClassifierArgs(ClassifierOptions):
    SECTION = "classifier"
    classifier: str = key(MISSING, "timm name, torchvision:<name>, hf:<folder or id>, madry:<file>, tiny:<folder>, "
                                   "... (digin.engine.classifiers)")
    classifier_checkpoint: Optional[str] = key(None, "its weights file (default: the local hub caches)")


@dataclass
class ObjectiveArgs:
    SECTION = "objective (the loss on the classifier and the regularisers)"
    loss: str = key("CE", "the loss (digin.engine.objectives.LOSSES)")
    loss_weight: float = key(1.0, "weight of the loss", rule=Real())
    regularizers: list = key([], "regulariser names: (px|latent)_[foreground_|background_]<l1|l2|lpips|clip|...>")
    regularizers_ws: list = key([], "one weight per regulariser", each=Real())
    clip_regularizer_model: str = key("ViT-L-14-CLIPA-336", "px_*_clip regularisers: the open_clip tower (name or "
                                                            "folder)")
    clip_regularizer_weights: Optional[str] = key(None, "px_*_clip regularisers: its local weights file")

    def check_relations(self, prefix: str = ""):
        """Regulariser names, one weight each, and the AlexNet file px_lpips needs: refused before a stage writes
        its first file."""
        regs, ws = list(self.regularizers or ()), list(self.regularizers_ws or ())
        if len(regs) != len(ws):
            refuse("regularizers_ws", ws, f"one weight per regulariser ({len(regs)} for regularizers={regs})")
        for name in regs:
            try:
                parse_regularizer(str(name))
            except ValueError as e:
                raise ConfigError(f"regularizers: {e}") from None
        if any(str(name).endswith("_lpips") for name in regs):
            try:
                require_trunk_file()
            except FileNotFoundError as e:
                raise ConfigError(f"regularizers={regs}: {e}") from None


@dataclass
class StageIO:
    SECTION = "stage I/O (where and how the stage runs; never changes results)"
    out: str = key(MISSING, "output folder (a shard set: tars, manifest, commit records)", results=False)
    device: Optional[str] = key(None, "default: cuda:<local rank> if available, else cpu", results=False,
                                check=device_problem)
    num_workers: int = key(0, "data-loader worker processes", rule=COUNT0, results=False)
    force: bool = key(False, "resume into an output folder made with another config", results=False)
    allow_incomplete: bool = key(False, "process only the committed shards of an input whose other shards are "
                                        "missing", results=False)
    progress: bool = key(True, "progress bar on a terminal, timestamped lines in logs", results=False)
    wandb_project: Optional[str] = key(None, "wandb tracking (the reference's key; wandb imported only when set): one"
                                             " run per rank, grouped", results=False)
    wandb_entity: Optional[str] = key(None, "wandb entity (team)", results=False)
    wandb_mode: Optional[str] = key(None, "online | offline (clusters without internet; `wandb sync` later) | "
                                          "disabled", results=False, choices=("online", "offline", "disabled"))


@dataclass
class ComputeArgs:
    """How a stage runs its models: a compute preset (engine/presets.py) and single-key overrides. None = the
    preset's value on this device; the resolved values are recorded in the stage manifest."""

    SECTION = "compute (None: the preset's value on this device; recorded resolved)"
    preset: str = key("auto", "auto (fast on CUDA, eager on CPU) | fast | reference | eager", choices=PRESETS)
    dtype: Optional[str] = key(None, "weights: fp32 | bf16 | fp16 (optimised variables and latents stay fp32)",
                               choices=DTYPES + tuple(DTYPE_ALIASES))
    compile: Optional[bool] = key(None, "torch.compile the UNet call, VAE decode and classifier")
    compile_backend: Optional[str] = key(None, "inductor | aot_eager | eager", choices=COMPILE_BACKENDS)
    batch_size: Optional[int] = key(None, "samples run together (fast 8, reference 1, eager 4)", rule=COUNT)
    checkpoint: Optional[str] = key(None, "step (per-step recompute) | none (keep activations) | block (the "
                                          "reference's)", choices=CHECKPOINTS)
    attention: Optional[str] = key(None, "sdpa | xformers", choices=ATTENTION_BACKENDS)
    cudagraphs: Optional[bool] = key(None, "CUDA graph trees for the compiled no-grad calls (inductor on CUDA)")
    kernels: Optional[bool] = key(None, "fused Triton kernels (CFG+DDIM step, cutouts) on CUDA")
    tf32: Optional[str] = key(None, "off | conv (TF32 convolutions: PyTorch's default, the reference's) | on (fast)",
                              choices=TF32_MODES)
    strict_compile: Optional[bool] = key(None, "a call site falling back to eager stops the run (one line) instead "
                                               "of a warning", results=False)
    compile_scope: Optional[str] = key(None, "full (the whole UNet call) | regional (its transformer blocks, once "
                                             "each)", choices=COMPILE_SCOPES)

    REPORT_ONLY = False  # `digin doctor` reports a bad compute choice on its screen instead of refusing it

    def check_relations(self, prefix: str = ""):
        """The compute preset resolves here already (xformers without CUDA, ...): one line, before any model."""
        if type(self).REPORT_ONLY:
            return
        device = getattr(self, "device", None)
        try:
            compute_of(self, device if device not in (None, "auto") else None)
        except ValueError as e:
            raise ConfigError(str(e)) from None


@dataclass
class WorkArgs:
    """How a stage's work plan is cut and shared (digin.shards.plan / runner); none of it changes results."""

    SECTION = "work plan (how the work is cut and shared over ranks; never changes results)"
    items_per_shard: Optional[int] = key(None, "work items per output shard (one unit); None: about 1,000 units",
                                         rule=Int(1, 100_000), results=False)
    schedule: str = key("static", "static: unit j → rank j % world | dynamic: ranks claim units (leases; see README)",
                        choices=("static", "dynamic"), results=False)
    lease_s: float = key(300.0, "schedule=dynamic: a unit whose holder stopped beating this long is taken over",
                         rule=Real(1), results=False)
    plan: bool = key(False, "print the work plan (items, units, PFLOP, per-rank work) and exit: no model, no writes",
                     results=False)
    world: Optional[int] = key(None, "plan=true: the job's world size to show (default: this job's, or 1)",
                               rule=COUNT, results=False)
    json: bool = key(False, "plan=true: one JSON object instead of text", results=False)


@dataclass
class SelectArgs:
    """Which images an image stage (caption, invert) does: all, or the selection a later stage needs."""

    SECTION = "selection (which images; the plan records it)"
    select: str = key("all", "all | uvce (the images of the dataset's UVCE pair table, the reference's "
                             "selected=True) | random (the images `digin uvce pairs=random num_images=N seed=S` "
                             "draws) | counterfactuals (the classes of the neuron counterfactual pairs) | <file> "
                             "(.txt one key per line, or a .json list of keys or dataset indices)", results=False)
    class_idcs: Optional[list] = key(None, "only these classes (the reference's class_idcs)", each=COUNT0,
                                     results=False)
    images_per_class: Optional[int] = key(None, "the first N images of each class, in key order (the reference's)",
                                          rule=COUNT, results=False)
    num_images: Optional[int] = key(None, "select=random: how many images", rule=COUNT, results=False)
    seed: int = key(42, "select=random: the seed `digin uvce pairs=random` uses", rule=SEED, results=False)


@dataclass
class CommonArgs(WorkArgs, ComputeArgs, StageIO, ObjectiveArgs, ClassifierOptions, GuidanceArgs, ModelArgs):
    """The reference's CommonArguments (same key names), plus engine settings (bases listed last-shown first)."""


def compute_values(cfg, settings: ComputeSettings | None) -> dict:
    """The resolved compute values of the ComputeArgs keys `cfg` records (for `record`)."""
    if settings is None:
        return {}
    have = {f for f in ComputeArgs.__dataclass_fields__ if f in getattr(cfg, "__dataclass_fields__", {})}
    return {k: v for k, v in settings.as_dict().items() if k in have and k not in ("preset", "strict_compile")}


def record(cfg, stage: str, settings: ComputeSettings | None = None, **resolved) -> dict:
    """What a stage records of its config in its manifest (and resumes against): every key that changes results,
    the compute keys as the preset resolved them on this device, and `resolved` values (e.g. the dataset)."""
    return record_of(cfg, stage, **compute_values(cfg, settings), **resolved)


def tracking_for(cfg) -> dict | None:
    """run_stage's `tracking` argument from wandb_* keys (None: no tracking)."""
    project = getattr(cfg, "wandb_project", None)
    return {"project": project, "entity": cfg.wandb_entity, "mode": cfg.wandb_mode} if project else None
