r"""Classifier differences: text-to-image guided so that one classifier is sure of a class and another is not
(the reference's imagenet_guided_generation.py).

  digin diff out=runs/diff model_path=/models/sd-1.4 classifier1=madry:/ckpt/madry_l2.pt \
      classifier2=vit_base_patch16_224 classifier2_checkpoint=/ckpt/vit.safetensors target_classes=[1,2,3] num_images=10

The work plan is the (class, start prompt, i) items, from the config alone; it is cut into units split over ranks,
resumable and exactly-once like every stage; results go to `<out>/results`. Prompt "{prompt_template}
{label}", or with `prompts=[...]` every target class starts from each of those prompts (e.g. scenes of other
classes: which change makes classifier1 see the target where classifier2 does not?); start noise per (class, i)
from `seed` (no giant pre-allocated table); with classifier2 the loss is
the two-classifier `conf` (−p1(y) + p2(y)) unless `loss` names another two-classifier loss (log_conf, logits).
Unlike the reference, `regularizers` are applied when given (the reference parses and ignores them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from digin.stages.args import CommonArgs, stage_config_of
from digin.stages.diff import class_names_for, make_process, work_items
from digin.stages.models import load_classifier_for, load_sd_for, pick_device, stage_compute


@dataclass
class Config(CommonArgs):
    out: str = "???"
    classifier1: str = "vit_large_patch16_224"
    classifier1_checkpoint: Optional[str] = None
    classifier2: Optional[str] = None
    classifier2_checkpoint: Optional[str] = None
    eval_classifier: Optional[str] = None  # independent classifier, evaluated only
    eval_classifier_checkpoint: Optional[str] = None
    dataset: str = "imagenet"  # class-name table: imagenet | cub | cars | food101 | flowers102
    class_names: list = field(default_factory=list)  # overrides the table (e.g. a toy world's labels)
    prompt_template: str = "a photograph of a"
    # explicit start prompts instead of "<prompt_template> <label>": each target class gets num_images images per
    # prompt (keys diff/c<class>/p<prompt>/i<image>)
    prompts: list = field(default_factory=list)
    target_classes: Optional[list] = None  # None → all classes
    num_images: int = 10
    loss: str = "CE"  # with classifier2: conf unless log_conf / logits
    loss_weight: float = 1.0
    regularizers: list = field(default_factory=list)
    regularizers_ws: list = field(default_factory=list)
    # stop a sample once classifier1's p(y) exceeds it (with classifier2 and loss=conf: once p1(y) − p2(y) does)
    early_stopping_confidence: Optional[float] = None


def stage_config(cfg: Config) -> dict:
    return stage_config_of(cfg, "diff")


def build_spec(cfg: Config):
    from digin.shards.runner import StageSpec
    from digin.stages.plans import listed_plan

    classes = class_names_for(cfg)
    return StageSpec("diff", listed_plan("diff", cfg, work_items(cfg, classes)), stage_config(cfg),
                     required=("item",), classes=classes)


def run(cfg: Config):
    from digin.stages.plans import run_or_show

    dev = pick_device(cfg)
    settings = stage_compute(cfg, dev)  # resolves the compute keys the recorded config holds
    spec = build_spec(cfg)

    def load():
        clfs = [load_classifier_for(cfg.classifier1, cfg, dev, checkpoint=cfg.classifier1_checkpoint,
                                    settings=settings, key="classifier1_checkpoint")]
        if cfg.classifier2:
            clfs.append(load_classifier_for(cfg.classifier2, cfg, dev, checkpoint=cfg.classifier2_checkpoint,
                                            settings=settings, key="classifier2_checkpoint"))
        eval_clf = (load_classifier_for(cfg.eval_classifier, cfg, dev, checkpoint=cfg.eval_classifier_checkpoint,
                                        cutouts=False, settings=settings, key="eval_classifier_checkpoint")
                    if cfg.eval_classifier else None)
        return make_process(load_sd_for(cfg, dev, settings), clfs, eval_clf, cfg)

    return run_or_show(cfg, spec, load, out=str(Path(cfg.out) / "results"), device=dev)
