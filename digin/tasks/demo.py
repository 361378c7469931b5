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
from digin.fields import COUNT, COUNT0, Int, SEED, key
from digin.shards.dist import device_problem
from digin.stages.demo import attach_captions, timed_stage, tiny_world, toy_available, toy_world


@dataclass
class Config:
    out: str = key("digin-demo", "output folder: every stage's results (the gallery: <out>/gallery/index.html)",
                   results=False)
    world: str = key("auto", "auto (toy when its bundled models are installed, else tiny) | toy | tiny "
                             "(random models)", results=False)
    device: str = key("cpu", "where every stage runs: cpu | cuda | cuda:<n>", results=False, check=device_problem)
    images_per_class: int = key(2, "dataset images made per class (the scenes every stage starts from)", rule=COUNT)
    sgd_steps: int = key(4, "guidance steps per image (optim_params.sgd_steps); world=toy: neuron stages only",
                         rule=COUNT0)
    num_ddim_steps: int = key(10, "DDIM steps of the diffusion stages; world=toy: neuron stages only",
                              rule=Int(1, 1000))
    seed: int = key(0, "seeds the dataset scenes, the tiny models (world=tiny) and the guided stages", rule=SEED)
    force: bool = key(False, "passed to every stage: resume into output folders made with another config",
                      results=False)


def run(cfg: Config):
    from digin.tasks import diff, gallery, invert, shard, uvce

    root = Path(cfg.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    world = cfg.world if cfg.world != "auto" else ("toy" if toy_available() else "tiny")
    w = toy_world(root, cfg) if world == "toy" else tiny_world(root, cfg)
    res = w["resolution"]
    common = [f"model_path={w['sd']}", f"resolution={res}", f"num_ddim_steps={cfg.num_ddim_steps}",
              f"device={cfg.device}", f"force={cfg.force}", *w.get("common_args", [])]
    guided = common + [f"optim_params.sgd_steps={cfg.sgd_steps}", "optim_params.sgd_stepsize=0.05",
                       "augmentation_num_cutouts=4", "batch_size=4", f"seed={cfg.seed}"]
    t_all = time.monotonic()
    timed_stage("shard", lambda: shard.run(build_config(shard.Config, [
        "source=imagefolder", f"root={w['raw']}", "split=val", f"out={root / 'images'}", "name=demo",
        "samples_per_shard=4", "workers=1", f"force={cfg.force}"])))
    stage = w.get("stage_args", {})
    run_args = [f"device={cfg.device}", f"force={cfg.force}", "batch_size=4"]
    inv_args = (stage["invert"] + run_args if "invert" in stage else
                common + ["batch_size=4", "method=negative_prompt"]) + [f"inputs={root / 'images'}",
                                                                      f"out={root / 'inversions'}"]
    if "captions_json" in w:
        timed_stage("caption", lambda: attach_captions(root, w["captions_json"]))
        inv_args.append(f"captions={root / 'captions'}")
    timed_stage("invert", lambda: invert.run(build_config(invert.Config, inv_args)))
    uvce_args = (stage["uvce"] + run_args + [f"seed={cfg.seed}"] if "uvce" in stage else
                 guided + [f"classifier={w['clf']}", "pairs=all_classes"])
    timed_stage("uvce", lambda: uvce.run(build_config(uvce.Config, uvce_args + [
        f"images={root / 'images'}", f"inversions={root / 'inversions'}", f"out={root / 'uvce'}", "progress=false"])))
    from digin.shards.manifest import ShardSet

    classes = "[" + ",".join(w.get("classes") or ShardSet.load(root / "images").classes) + "]"
    diff_args = (stage["diff"] + run_args + [f"seed={cfg.seed}"] if "diff" in stage else guided + [
        f"classifier1={w['clf']}", f"classifier2={w['clf2']}", f"class_names={classes}", "num_images=2"])
    timed_stage("diff", lambda: diff.run(build_config(diff.Config, diff_args + [f"out={root / 'diff'}",
                                                                                "progress=false"])))
    from digin.tasks import neurons

    nargs = guided + [f"out={root / 'neurons'}", f"classifier={w.get('neuron_clf', w['clf'])}",
                      f"images={root / 'images'}", "k=3", "progress=false", "images_per_word=2", "num_images=2",
                      f"neurons={w.get('neurons', '[0,1]')}", "num_images_to_label=3", "sd_batch_size=8"]
    for mode in ("activations", "name", "visualise"):
        own = neurons.MODE_CONFIGS[mode].__dataclass_fields__  # each mode takes only its own keys
        margs = [a for a in nargs if a.split("=", 1)[0].split(".", 1)[0] in own] + [f"mode={mode}"]
        timed_stage(f"neurons {mode}", lambda: neurons.run(build_config(neurons.Config, margs)))
    results = [str(root / "uvce"), str(root / "diff" / "results"), str(root / "neurons" / "visualise")]
    timed_stage("gallery", lambda: gallery.run(build_config(gallery.Config, [
        "results=[" + ",".join(results) + "]", f"out={root / 'gallery'}"])))
    print(f"[demo] world={world}; all stages done in {time.monotonic() - t_all:.1f}s")
    print(f"[demo] gallery: {root / 'gallery' / 'index.html'}")
    return 0
