r"""`digin doctor`: one screen about this machine before a (cluster) job — device and GPU, versions, optional stacks
(imported and, on a GPU, run on a tiny input), the compute settings a stage picks here (`preset=` and the compute
keys as the stages take them), the compile cache, rank/world as torchrun or Slurm set them, and, given
`model_path` / `classifier`, whether they are complete. Nothing is written; SD weights are checked from their file
headers (nothing is loaded onto a GPU); a classifier is built on the CPU.

  digin doctor
  digin doctor model_path=/models/sd-1.4 classifier=vit_base_patch16_384.augreg_in21k_ft_in1k \
      classifier_checkpoint=/ckpt/vit.safetensors stage=uvce
  srun --ntasks-per-node=8 digin doctor needs=[gpu,triton] sam_checkpoint=/ckpt/sam_hq_vit_h.pth

Exit code 1 when something asked for is missing or broken — a given model_path / classifier / checkpoint, a stack
in `needs`, an input the named `stage` needs — and such a line says what to do. "no GPU" is information unless
needs=[gpu] (or device=cuda) asks for one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from digin.stages.args import ComputeArgs
from digin.stages.doctor import NEEDS, collect, render


@dataclass
class Config(ComputeArgs):  # preset= and the compute keys: what a stage given them would pick here
    model_path: Optional[str] = None  # SD folder or single file: configs + weight files present, readable, whole
    model_config: Optional[str] = None  # the local diffusers folder a single file needs
    classifier: Optional[str] = None  # a classifier spec as the stages take it; built on the CPU
    classifier_checkpoint: Optional[str] = None
    sam_checkpoint: Optional[str] = None  # SAM-HQ weights (segmentation.sam_checkpoint of the stages)
    flamingo_checkpoint: Optional[str] = None  # OpenFlamingo weights (flamingo.checkpoint of `digin caption`)
    stage: Optional[str] = None  # a task: the inputs it cannot start without must be given (and pass)
    needs: list = field(default_factory=list)  # must work: gpu, triton, xformers, sam, flamingo, lpips, clip, wandb
    device: Optional[str] = None  # default: what a stage picks (cuda:<local rank>, else cpu)


def _validate(cfg: Config):
    unknown = [n for n in cfg.needs if n not in NEEDS]
    if unknown:
        raise SystemExit(f"digin doctor: needs={unknown} unknown; choose from {', '.join(NEEDS)}")
    from digin.tasks import TASKS

    if cfg.stage is not None and cfg.stage not in TASKS:
        raise SystemExit(f"digin doctor: stage={cfg.stage!r} is not a task; tasks: {', '.join(TASKS)}")


def run(cfg: Config) -> int:
    _validate(cfg)
    checks = collect(cfg)
    print(render(checks), flush=True)
    return 1 if any(c.status == "FAIL" for c in checks) else 0
