"""The whole chain on the bundled default, on a laptop CPU in a few minutes:
shard → invert → uvce → diff → neurons → gallery.

  digin demo                      # writes ./digin-demo and prints where the gallery is
  digin demo out=/tmp/demo world=tiny

world=toy (default when the toy-world models are installed) uses the bundled, trained toy-world diffusion
model and shape classifiers, and runs invert / uvce / diff with the settings the science tests assert
(digin/toy/settings.py; `sgd_steps` and `num_ddim_steps` below then only apply to the neuron stages);
world=tiny uses random tiny models (exercises the machinery only).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from digin.config_check import build_config


@dataclass
class Config:
    out: str = "digin-demo"
    world: str = "auto"  # auto | toy | tiny
    device: str = "cpu"
    images_per_class: int = 2
    sgd_steps: int = 4
    num_ddim_steps: int = 10
    seed: int = 0
    force: bool = False


def _toy_available() -> bool:
    try:
        from digin import toy
    except ImportError:
        return False
    return toy.available()


def _stage(name: str, fn):
    t0 = time.monotonic()
    print(f"[demo] {name} ...", flush=True)
    rc = fn()
    print(f"[demo] {name} done in {time.monotonic() - t0:.1f}s", flush=True)
    if isinstance(rc, int) and rc != 0:
        raise SystemExit(f"digin demo: stage {name} failed (exit {rc})")


def _tiny_world(root: Path, cfg: Config) -> dict:
    from digin.engine.classifiers import save_tiny_classifier
    from digin.engine.models import build_tiny_sd
    from digin.shards.synthetic import make_image_folder

    classes = ["cat", "dog", "fox"]
    if not (root / "models" / "sd" / "unet").exists():
        build_tiny_sd(seed=cfg.seed, folder=root / "models" / "sd")
    clean = save_tiny_classifier(root / "models" / "clf_a", num_classes=3, size=32, seed=1)
    other = save_tiny_classifier(root / "models" / "clf_b", num_classes=3, size=32, seed=2)
    make_image_folder(root / "raw", classes=classes, n_per_class=cfg.images_per_class, size=48, seed=cfg.seed)
    return {"sd": root / "models" / "sd", "clf": f"tiny:{clean}", "clf2": f"tiny:{other}", "classes": classes,
            "raw": root / "raw", "resolution": 32}


def _toy_world(root: Path, cfg: Config) -> dict:
    """The bundled toy world: generated shape scenes with their captions, the trained diffusion model, a clean
    and a spurious shape classifier (digin/toy/MODEL_CARD.md). invert / uvce / diff run with the science tests'
    settings; classifier differences start from the captions of the demo's own non-star scenes on non-green
    backgrounds (does the spurious classifier call the same scene on green a star?)."""
    import json

    from digin import toy
    from digin.toy import settings

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


def _attach_captions(root: Path, captions_json: Path) -> int:
    """The toy scenes come with their captions: a caption shard set with the image shards' keys and layout
    (ImageFolder order = sorted relative paths)."""
    import json

    from digin.toy.demo import write_caption_shards

    caps = json.loads(captions_json.read_text())
    write_caption_shards(root / "images", root / "captions", [caps[k] for k in sorted(caps)])
    return 0


def run(cfg: Config):
    from digin.tasks import diff, gallery, invert, shard, uvce

    root = Path(cfg.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    world = cfg.world if cfg.world != "auto" else ("toy" if _toy_available() else "tiny")
    w = _toy_world(root, cfg) if world == "toy" else _tiny_world(root, cfg)
    res = w["resolution"]
    common = [f"model_path={w['sd']}", f"resolution={res}", f"num_ddim_steps={cfg.num_ddim_steps}",
              f"device={cfg.device}", f"force={cfg.force}", *w.get("common_args", [])]
    guided = common + [f"optim_params.sgd_steps={cfg.sgd_steps}", "optim_params.sgd_stepsize=0.05",
                       "augmentation_num_cutouts=4", "batch_size=4", f"seed={cfg.seed}"]
    t_all = time.monotonic()
    _stage("shard", lambda: shard.run(build_config(shard.Config, [
        "source=imagefolder", f"root={w['raw']}", "split=val", f"out={root / 'images'}", "name=demo",
        "samples_per_shard=4", "workers=1", f"force={cfg.force}"])))
    stage = w.get("stage_args", {})
    run_args = [f"device={cfg.device}", f"force={cfg.force}", "batch_size=4"]
    inv_args = (stage["invert"] + run_args if "invert" in stage else
                common + ["batch_size=4", "method=negative_prompt"]) + [f"inputs={root / 'images'}",
                                                                      f"out={root / 'inversions'}"]
    if "captions_json" in w:
        _stage("caption", lambda: _attach_captions(root, w["captions_json"]))
        inv_args.append(f"captions={root / 'captions'}")
    _stage("invert", lambda: invert.run(build_config(invert.Config, inv_args)))
    uvce_args = (stage["uvce"] + run_args + [f"seed={cfg.seed}"] if "uvce" in stage else
                 guided + [f"classifier={w['clf']}", "pairs=all_classes"])
    _stage("uvce", lambda: uvce.run(build_config(uvce.Config, uvce_args + [
        f"images={root / 'images'}", f"inversions={root / 'inversions'}", f"out={root / 'uvce'}", "progress=false"])))
    from digin.shards.manifest import ShardSet

    classes = "[" + ",".join(w.get("classes") or ShardSet.load(root / "images").classes) + "]"
    diff_args = (stage["diff"] + run_args + [f"seed={cfg.seed}"] if "diff" in stage else guided + [
        f"classifier1={w['clf']}", f"classifier2={w['clf2']}", f"class_names={classes}", "num_images=2"])
    _stage("diff", lambda: diff.run(build_config(diff.Config, diff_args + [f"out={root / 'diff'}", "progress=false"])))
    from digin.tasks import neurons

    nargs = guided + [f"out={root / 'neurons'}", f"classifier={w.get('neuron_clf', w['clf'])}",
                      f"images={root / 'images'}", "k=3", "progress=false", "images_per_word=2", "num_images=2",
                      f"neurons={w.get('neurons', '[0,1]')}", "num_images_to_label=3", "sd_batch_size=8"]
    for mode in ("activations", "name", "visualise"):
        _stage(f"neurons {mode}", lambda: neurons.run(build_config(neurons.Config, nargs + [f"mode={mode}"])))
    results = [str(root / "uvce"), str(root / "diff" / "results"), str(root / "neurons" / "visualise")]
    _stage("gallery", lambda: gallery.run(build_config(gallery.Config, [
        "results=[" + ",".join(results) + "]", f"out={root / 'gallery'}"])))
    print(f"[demo] world={world}; all stages done in {time.monotonic() - t_all:.1f}s")
    print(f"[demo] gallery: {root / 'gallery' / 'index.html'}")
    return 0
