"""The toy world: generated 64×64 shape scenes + bundled trained models with planted ground truth.

  from digin import toy
  toy.paths()                  # {"sd": folder, "clean": folder, "spurious": folder} (shipped under toy/models)
  toy.classifier_spec("clean") # "hf:<folder>" for load_classifier / classifier= on the CLI
  toy.world.make_scene(7)      # (PIL image, caption, labels)
  toy.world.make_dataset_folder(root, n_per_class=4, seed=0, split="val")

See digin/toy/MODEL_CARD.md for data, training, size and measured science metrics, and digin/science/toy_science.py
for the checks themselves; digin/toy/judge.py reads results independently of the classifiers (shape, colour,
background from the pixels) and digin/toy/cue.py measures the spurious classifier's cue by a sweep.
"""
from __future__ import annotations

from pathlib import Path

from digin.toy import world  # noqa: F401  (re-exported)

MODELS_DIR = Path(__file__).resolve().parent / "models"
_FOLDERS = {"sd": "sd", "clean": "clf_clean", "spurious": "clf_spurious"}


def paths() -> dict:
    """Shipped model folders: `sd` (diffusers SD folder for `load_sd` / model_path=), `clean` and `spurious`
    (HF image-classifier folders for `load_classifier('hf:<folder>')`)."""
    return {k: MODELS_DIR / v for k, v in _FOLDERS.items()}


def classifier_spec(which: str = "clean") -> str:
    """The `load_classifier` spec of a shipped classifier: 'clean' or 'spurious'."""
    if which not in ("clean", "spurious"):
        raise ValueError(f"toy classifier must be 'clean' or 'spurious', got {which!r}")
    return f"hf:{paths()[which]}"


def available() -> bool:
    """True when all shipped model folders hold weights."""
    p = paths()
    return ((p["sd"] / "unet" / "diffusion_pytorch_model.safetensors").is_file()
            and all((p[k] / "model.safetensors").is_file() for k in ("clean", "spurious")))


# Model-level settings of the toy world (keys are the task configs' names); the per-stage settings the science
# tests assert and `digin demo` runs are in digin/toy/settings.py.
PRESET = {
    "resolution": 64,
    "center_crop": False,  # scenes are rendered at the model's size: no 1.25× resize + crop
    "guidance_scale": 3.0,
    "dtype": "fp32",
    "augmentation_num_cutouts": 2,  # the classifiers read 64² images: cutouts are the whole image + noise
    "augmentation_noise_sd": 0.02,
    # cross-attention maps at 16×16 latents; the reference's 512-px post-processing kernels scaled by 1/8
    "segmentation.xa_map_resolution": 16,
    "segmentation.sam_segmentation": False,
    "segmentation.postprocessing": ["dilation_3", "blur_7_3"],
}
