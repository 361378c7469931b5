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

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from digin.fields import COUNT, COUNT0, Real, key, section_of
from digin.shards.runner import StageSpec
from digin.stages.args import CommonArgs, GuidanceArgs, ModelArgs, ObjectiveArgs, record
from digin.stages.diff import class_names_for, early_stopping_loss, effective_loss, make_process, work_items
from digin.stages.models import load_classifier_for, load_sd_for, pick_device, stage_compute
from digin.stages.plans import listed_plan, run_or_show


@dataclass
class Config(CommonArgs):
    classifier1: str = key("vit_large_patch16_224", "the classifier that should be sure (timm name, hf:, madry:, "
                                                    "tiny:, ...)")
    classifier1_checkpoint: Optional[str] = key(None, "its weights file (default: the local hub caches)")
    classifier2: Optional[str] = key(None, "the classifier that should not be sure (None: classifier1 alone)")
    classifier2_checkpoint: Optional[str] = key(None, "its weights file")
    eval_classifier: Optional[str] = key(None, "independent classifier, evaluated only")
    eval_classifier_checkpoint: Optional[str] = key(None, "its weights file")
    dataset: str = key("imagenet", "class-name table: imagenet | cub | cars | food101 | flowers102")
    class_names: list = key([], "overrides the table (e.g. a toy world's labels)")
    prompt_template: str = key("a photograph of a", 'start prompt "<prompt_template> <label>"')
    prompts: list = key([], 'explicit start prompts instead of "<prompt_template> <label>": each target class gets '
                            "num_images images per prompt (keys diff/c<class>/p<prompt>/i<image>)")
    target_classes: Optional[list] = key(None, "class indices to generate (None: all classes)", each=COUNT0)
    num_images: int = key(10, "images per target class (and start prompt)", rule=COUNT)
    loss: str = key("CE", "with classifier2: conf unless log_conf / logits")
    early_stopping_confidence: Optional[float] = key(None, "stop a sample once classifier1's p(y) exceeds it (with "
                                                           "classifier2 and loss=conf: once p1(y) − p2(y) does)",
                                                     rule=Real(0, 1, lo_open=True, hi_open=True))

    def check_relations(self, prefix: str = ""):
        """The loss for one or two classifiers, and a confidence scale for early stopping (the loss table)."""
        early_stopping_loss(self)


def build_spec(cfg: Config, settings):
    classes = class_names_for(cfg)
    return StageSpec("diff", listed_plan("diff", cfg, work_items(cfg, classes)), record(cfg, "diff", settings),
                     required=("item",), classes=classes)


def run(cfg: Config):
    dev = pick_device(cfg.device)
    settings = stage_compute(cfg, dev)
    spec = build_spec(cfg, settings)
    guidance = section_of(cfg, GuidanceArgs)

    def load():
        clfs = [load_classifier_for(cfg.classifier1, dev, settings, guidance, checkpoint=cfg.classifier1_checkpoint,
                                    key="classifier1_checkpoint", random_weights=cfg.random_weights)]
        if cfg.classifier2:
            clfs.append(load_classifier_for(cfg.classifier2, dev, settings, guidance,
                                            checkpoint=cfg.classifier2_checkpoint, key="classifier2_checkpoint",
                                            random_weights=cfg.random_weights))
        eval_clf = (load_classifier_for(cfg.eval_classifier, dev, settings, guidance, cutouts=False,
                                        checkpoint=cfg.eval_classifier_checkpoint, key="eval_classifier_checkpoint",
                                        random_weights=cfg.random_weights)
                    if cfg.eval_classifier else None)
        sd = load_sd_for(section_of(cfg, ModelArgs), dev, settings)
        return make_process(sd, clfs, eval_clf, section_of(cfg, ObjectiveArgs), guidance, settings,
                            loss=effective_loss(cfg), early_stopping_loss=early_stopping_loss(cfg),
                            resolution=cfg.resolution)

    return run_or_show(cfg, spec, load, settings, out=str(Path(cfg.out) / "results"), device=dev)
