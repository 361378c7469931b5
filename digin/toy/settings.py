"""The toy world's stage settings as `digin <task>` key=value lists — one source for the science tests
(digin/science/toy_science.py, tests/toy), `digin demo` and the command lines in MODEL_CARD.md. Tuned on the dev split
only; the tests assert the held-out numbers.

  from digin.toy import settings
  settings.invert()                      # ["model_path=...", "resolution=64", ..., "num_inner_steps=10"]
  settings.uvce(prompt_edit=False)       # the gradient-only UVCE variant: caption kept, no Prompt-to-Prompt edit
  settings.diff(prompts)                 # classifier differences spurious − clean for class star from `prompts`
"""
from __future__ import annotations

from digin.toy import PRESET, classifier_spec, paths, world

NUM_DDIM_STEPS = 10  # every guided stage and the inversion (the inversion's null texts are per step)


def _value(v) -> str:
    return f"[{','.join(map(str, v))}]" if isinstance(v, (list, tuple)) else str(v)


def model() -> list[str]:
    """Model, resolution, precision and chain settings shared by every stage."""
    return [f"model_path={paths()['sd']}", f"resolution={PRESET['resolution']}",
            f"center_crop={str(PRESET['center_crop']).lower()}", f"dtype={PRESET['dtype']}",
            f"guidance_scale={PRESET['guidance_scale']}", f"num_ddim_steps={NUM_DDIM_STEPS}"]


def guided() -> list[str]:
    """model() plus what the guided stages (uvce, diff) share."""
    # 64² images: keeping the activations for the backward is faster than recomputing them on a CPU
    return model() + ["checkpoint=none"]


def augmentation() -> list[str]:
    return [f"{k}={PRESET[k]}" for k in ("augmentation_num_cutouts", "augmentation_noise_sd")]


def segmentation() -> list[str]:
    return [f"{k}={_value(v).lower() if isinstance(v, bool) else _value(v)}" for k, v in PRESET.items()
            if k.startswith("segmentation.")]


def invert() -> list[str]:
    """Null-text inversion with the reference's 10 inner steps (5 miss the excess-error criterion: 0.58 > 0.5)."""
    return model() + ["method=null_text", "num_inner_steps=10"]


# Normalised-gradient SGD on one conditioning / null-text delta shared by all steps (instead of Adam on per-step
# deltas): each step moves the embeddings a fixed distance along the gradient, so tokens the classifier does not
# care about stay put and the chain stays on the images the toy model can draw (Adam moves every coordinate of
# every step's delta by the learning rate, which the toy model answers with textures).
SHARED_SGD = ["optim_params.sgd_optim=sgd", "optim_params.normalize_gradients=true",
              "optim_params.per_timestep_conditioning_delta=false", "optim_params.per_timestep_uncond_delta=false",
              "optim_params.optimize_latents=false", "optim_params.loss_steps=1"]


def uvce(prompt_edit: bool = True) -> list[str]:
    """UVCEs on the clean classifier with the reference's background regularisers. prompt_edit=False: the
    gradient-only variant — the caption is kept (no Prompt-to-Prompt shape swap), so whatever reaches the target
    comes from the classifier gradient."""
    args = guided() + augmentation() + segmentation() + [
        f"classifier={classifier_spec('clean')}", "loss=CE",
        "regularizers=[latent_background_l2,px_background_l2]", "regularizers_ws=[25.0,250.0]"]
    if prompt_edit:
        return args + ["optim_params.sgd_steps=8", "optim_params.sgd_stepsize=0.1", "optim_params.loss_steps=1"]
    return args + SHARED_SGD + ["p2p.do_p2p=false", "mask_blend.initial_mask_blend_schedule=[threshold_0.5]",
                                "optim_params.sgd_steps=12", "optim_params.sgd_stepsize=3.0"]


def diff(prompts: list[str]) -> list[str]:
    """Classifier differences for the planted class with the reference's two-classifier loss −p_spurious(star) +
    p_clean(star), from `prompts` (captions of other shapes on other backgrounds). Only the null text moves (the
    caption's conditioning and the start noise stay): the scene the caption describes is kept, the optimisation can
    only change how strongly each of its parts is drawn. (`log_conf` was tried: its gradient is spent on driving the
    clean classifier's p(star), already ≈ 0, further down, and the spurious classifier rarely flips.)"""
    quoted = ",".join(f"'{p}'" for p in prompts)
    return guided() + [
        f"classifier1={classifier_spec('spurious')}", f"classifier2={classifier_spec('clean')}", "loss=conf",
        # more noise per cutout than the other stages: the gradient of the noised copies favours broad changes
        # (a background colour) over pixel patterns
        "augmentation_num_cutouts=4", "augmentation_noise_sd=0.1",
        f"class_names=[{','.join(world.SHAPES)}]", f"target_classes=[{world.SHAPES.index(world.SPURIOUS_CLASS)}]",
        "num_images=1", f"prompts=[{quoted}]"] + SHARED_SGD + [
        # smaller steps, more of them: with lr 3 one step could jump a scene past the flip to a new field (a plain
        # yellow or pale-cyan image the spurious classifier also calls star); lr 1.5 walks up to the first flip
        "optim_params.optimize_conditioning=false", "optim_params.sgd_steps=64", "optim_params.sgd_stepsize=1.5",
        # stop a sample at its first clear flip (p_spur(star) − p_clean(star) > 0.8 on the augmented cutouts): the
        # smallest edit that tells the story, instead of pushing on while the object drifts
        "early_stopping_confidence=0.8"]
