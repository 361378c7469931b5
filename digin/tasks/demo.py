"""The whole chain on the bundled default, on a laptop CPU in a few minutes:
shard → invert → uvce → diff → neurons → gallery.

  digin demo                      # writes ./digin-demo and prints where the gallery is
  digin demo out=/tmp/demo world=tiny

world=toy (default when the toy-world models are installed) uses the bundled, trained toy-world diffusion
model and shape classifiers; world=tiny uses random tiny models (exercises the machinery only).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from digin.cli import build_config


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
    and a spurious shape classifier (digin/toy/MODEL_CARD.md)."""
    from digin import toy

    toy.world.make_dataset_folder(root / "raw", n_per_class=cfg.images_per_class, seed=cfg.seed, split="val")
    preset = [f"{k}={v}" if not isinstance(v, list) else f"{k}=[{','.join(map(str, v))}]"
              for k, v in toy.PRESET.items() if k not in ("num_ddim_steps",)]
    seg = [a for a in preset if a.startswith("segmentation.")]
    common = [a for a in preset if not a.startswith("segmentation.") and not a.startswith("augmentation")]
    aug = [a for a in preset if a.startswith("augmentation")]
    return {"sd": toy.paths()["sd"], "clf": toy.classifier_spec("clean"), "clf2": toy.classifier_spec("spurious"),
            "neuron_clf": toy.classifier_spec("spurious"), "raw": root / "raw", "resolution": toy.PRESET["resolution"],
            "captions_json": root / "raw" / "val" / "captions.json", "common_args": common,
            "invert_args": ["method=null_text", "num_inner_steps=5"], "uvce_args": seg + aug + ["pairs=random"],
            "diff_args": aug,
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
    inv_args = common + [f"inputs={root / 'images'}", f"out={root / 'inversions'}", "batch_size=4",
                         *w.get("invert_args", ["method=negative_prompt"])]
    if "captions_json" in w:
        _stage("caption", lambda: _attach_captions(root, w["captions_json"]))
        inv_args.append(f"captions={root / 'captions'}")
    _stage("invert", lambda: invert.run(build_config(invert.Config, inv_args)))
    _stage("uvce", lambda: uvce.run(build_config(uvce.Config, guided + [
        f"images={root / 'images'}", f"inversions={root / 'inversions'}", f"out={root / 'uvce'}",
        f"classifier={w['clf']}", "pairs=all_classes", "progress=false", *w.get("uvce_args", [])])))
    from digin.shards.manifest import ShardSet

    classes = "[" + ",".join(w.get("classes") or ShardSet.load(root / "images").classes) + "]"
    _stage("diff", lambda: diff.run(build_config(diff.Config, guided + [
        f"out={root / 'diff'}", f"classifier1={w['clf']}", f"classifier2={w['clf2']}", f"class_names={classes}",
        "num_images=2", "progress=false", *w.get("diff_args", [])])))
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
