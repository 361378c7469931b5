"""The pieces of `digin demo` (digin/tasks/demo.py runs the tasks in sequence): the two worlds it runs on (the
bundled toy world, or random tiny models) with their dataset scenes, the toy scenes' captions, the stage timer."""
from __future__ import annotations

import json
import time
from pathlib import Path

from digin import toy
from digin.engine.classifiers import save_tiny_classifier
from digin.engine.models import build_tiny_sd
from digin.shards.synthetic import make_image_folder
from digin.toy import settings
from digin.toy.demo import write_caption_shards


def toy_available() -> bool:
    """True when the toy world's bundled models are installed (what world=auto picks toy for)."""
    return toy.available()


def timed_stage(name: str, fn):
    """Run one stage of the demo: `fn()`, timed and announced; a non-zero exit code stops the demo."""
    t0 = time.monotonic()
    print(f"[demo] {name} ...", flush=True)
    rc = fn()
    print(f"[demo] {name} done in {time.monotonic() - t0:.1f}s", flush=True)
    if isinstance(rc, int) and rc != 0:
        raise SystemExit(f"digin demo: stage {name} failed (exit {rc})")


def tiny_world(root: Path, cfg) -> dict:
    """Random tiny models (an SD folder, two classifiers) and an image folder of `cfg.images_per_class` scenes per
    class, seeded by `cfg.seed` (`cfg`: the demo's Config)."""
    classes = ["cat", "dog", "fox"]
    if not (root / "models" / "sd" / "unet").exists():
        build_tiny_sd(seed=cfg.seed, folder=root / "models" / "sd")
    clean = save_tiny_classifier(root / "models" / "clf_a", num_classes=3, size=32, seed=1)
    other = save_tiny_classifier(root / "models" / "clf_b", num_classes=3, size=32, seed=2)
    make_image_folder(root / "raw", classes=classes, n_per_class=cfg.images_per_class, size=48, seed=cfg.seed)
    return {"sd": root / "models" / "sd", "clf": f"tiny:{clean}", "clf2": f"tiny:{other}", "classes": classes,
            "raw": root / "raw", "resolution": 32}


def toy_world(root: Path, cfg) -> dict:
    """The bundled toy world: generated shape scenes with their captions, the trained diffusion model, a clean
    and a spurious shape classifier (digin/toy/MODEL_CARD.md). invert / uvce / diff run with the science tests'
    settings; classifier differences start from the captions of the demo's own non-star scenes on non-green
    backgrounds (does the spurious classifier call the same scene on green a star?)."""
    raw = toy.world.make_dataset_folder(root / "raw", n_per_class=cfg.images_per_class, seed=cfg.seed, split="val")
    specs = json.loads((raw / "specs.json").read_text())
    prompts = [toy.world.caption_of(s) for _, s in sorted(specs.items())
               if s["shape"] != toy.world.SPURIOUS_CLASS and s["background"] != toy.world.SPURIOUS_BACKGROUND][:4]
    # the tests' settings carry their own model and step keys; the demo adds only inputs, outputs and batch size
    own = ("model_path=", "resolution=", "num_ddim_steps=")
    return {"sd": toy.paths()["sd"], "clf": toy.classifier_spec("clean"), "clf2": toy.classifier_spec("spurious"),
            "neuron_clf": toy.classifier_spec("spurious"), "raw": root / "raw", "resolution": toy.PRESET["resolution"],
            "captions_json": raw / "captions.json",
            "common_args": [a for a in settings.model() if not a.startswith(own)],
            "stage_args": {"invert": settings.invert(), "uvce": settings.uvce() + ["pairs=random"],
                           "diff": settings.diff(prompts)},
            "neurons": "[0,1]"}


def attach_captions(root: Path, captions_json: Path) -> int:
    """The toy scenes come with their captions: a caption shard set with the image shards' keys and layout
    (ImageFolder order = sorted relative paths)."""
    caps = json.loads(captions_json.read_text())
    write_caption_shards(root / "images", root / "captions", [caps[k] for k in sorted(caps)])
    return 0
