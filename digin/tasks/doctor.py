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

from dataclasses import dataclass
from typing import Optional

from digin.fields import key
from digin.shards.dist import device_problem
from digin.stages.args import ComputeArgs
from digin.stages.doctor import NEEDS, collect, render
from digin.tasks import TASKS


@dataclass
class Config(ComputeArgs):  # preset= and the compute keys: what a stage given them would pick here
    REPORT_ONLY = True  # a bad compute choice is reported on the doctor's screen, not refused
    model_path: Optional[str] = key(None, "SD folder or single file: configs + weight files present, readable, whole")
    model_config: Optional[str] = key(None, "the local diffusers folder a single file needs")
    classifier: Optional[str] = key(None, "a classifier spec as the stages take it; built on the CPU")
    classifier_checkpoint: Optional[str] = key(None, "the classifier's weights file: header checked, then loaded "
                                                      "into the CPU build")
    sam_checkpoint: Optional[str] = key(None, "SAM-HQ weights (segmentation.sam_checkpoint of the stages)")
    flamingo_checkpoint: Optional[str] = key(None, "OpenFlamingo weights (flamingo.checkpoint of `digin caption`)")
    stage: Optional[str] = key(None, "a task: the inputs it cannot start without must be given (and pass)")
    needs: list = key(help="must work: gpu, triton, xformers, sam, flamingo, lpips, clip, wandb", factory=list)
    device: Optional[str] = key(None, "default: what a stage picks (cuda:<local rank>, else cpu)", results=False, check=device_problem)


def _validate(cfg: Config):
    unknown = [n for n in cfg.needs if n not in NEEDS]
    if unknown:
        raise SystemExit(f"digin doctor: needs={unknown} unknown; choose from {', '.join(NEEDS)}")

    if cfg.stage is not None and cfg.stage not in TASKS:
        raise SystemExit(f"digin doctor: stage={cfg.stage!r} is not a task; tasks: {', '.join(TASKS)}")


def run(cfg: Config) -> int:
    _validate(cfg)
    checks = collect(cfg)
    print(render(checks), flush=True)
    return 1 if any(c.status == "FAIL" for c in checks) else 0
