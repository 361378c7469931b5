#!/usr/bin/env python
"""How far bf16 weights move DiG-IN's results, measured on the toy world (digin/toy: trained tiny SD + classifiers).

  python bench/bf16_drift.py [n=16] [guided_steps=8] [diff_steps=24] [device=cpu] [out=rows.jsonl]

Each workload runs the engine (`guidance.optimise`) on the same held-out prompts, start noise and sample keys three
times: fp32 weights at batch n (the baseline), fp32 at batch 1 (each sample alone: the float-rounding scale a change
of batch gives) and bf16 weights (SD and classifiers, as `preset=fast` loads them) at batch n. Images are scored by
the fp32 classifiers, non-augmented, so only the run's dtype differs. One JSON row per (workload, comparison):
  img_sd_max / img_ours_max     max |Δpixel| of iterate 0 (`sd`) / of the result (`ours`)
  loss0_rel                     max relative Δ of the logged total at iterate 0
  conf_ours_mean / _max         |Δp(target)| of `ours` (clean classifier; spurious for `diff`)
  success_a / success_b         success rate of each run (p(target) > 0.5; `diff`: p_spurious(star) > 0.5)
  agreement                     share of samples whose success flag is the same in both runs
  best_iter_agreement           share of samples whose best iterate is the same
Workloads: `guided` (clean classifier, CE toward star from captions of other shapes; Adam with the toy UVCE
settings: lr 0.1, last step's x̂0 only) and `diff`
(classifier differences spurious − clean with the toy settings: normalised SGD on shared null-text deltas, lr 1.5,
stopped at p_spur − p_clean > 0.8 on the augmented views).
"""
from __future__ import annotations

import json
import platform
import sys
import time


def _args(argv):
    kw = dict(n="16", device="cpu", out="", guided_steps="8", diff_steps="24")
    for a in argv:
        k, _, v = a.partition("=")
        if k not in kw:
            raise SystemExit(f"unknown key {k!r}; known: {', '.join(kw)}")
        kw[k] = v
    return kw


def _models(dtype, device):
    from digin.engine.classifiers import load_classifier
    from digin.engine.models import load_sd
    from digin.toy import PRESET, classifier_spec, paths

    sd = load_sd(paths()["sd"], dtype=dtype, device=device)
    clf = {w: load_classifier(classifier_spec(w), device=device, dtype=dtype,
                              num_cutouts=PRESET["augmentation_num_cutouts"], noise_sd=PRESET["augmentation_noise_sd"])
           for w in ("clean", "spurious")}
    return sd, clf


def _workload(name, steps):
    """(loss, classifier names, GuidanceConfig, targets builder) of a workload."""
    from digin.engine.guidance import GuidanceConfig, OptimParams
    from digin.toy.settings import NUM_DDIM_STEPS

    if name == "guided":
        op = OptimParams(sgd_steps=steps, sgd_stepsize=0.1, loss_steps=1)  # the toy UVCE settings' optimiser
        return "CE", ("clean",), GuidanceConfig(3.0, NUM_DDIM_STEPS, op, checkpoint="none")
    op = OptimParams(sgd_steps=steps, sgd_stepsize=1.5, sgd_optim="sgd", normalize_gradients=True,
                     per_timestep_conditioning_delta=False, per_timestep_uncond_delta=False, optimize_latents=False,
                     optimize_conditioning=False, loss_steps=1, early_stopping_loss=-0.8)
    return "conf", ("spurious", "clean"), GuidanceConfig(3.0, NUM_DDIM_STEPS, op, checkpoint="none")


def _run(sd, clf, name, prompts, rows, steps, seed=0):
    import torch

    from digin.engine.guidance import optimise
    from digin.engine.objectives import Objective
    from digin.science import toy_science as science
    from digin.toy import world

    loss, names, cfg = _workload(name, steps)
    star = world.SHAPES.index(world.SPURIOUS_CLASS)
    z = science.start_noise(sd, len(prompts), seed)[rows]
    keys = [f"bf16/{name}/{i}" for i in rows]
    obj = Objective(loss, [clf[c] for c in names], torch.full((len(rows),), star), keys)
    p = [prompts[i] for i in rows]
    res = optimise(sd, obj, z_T=z, cond=sd.encode_text(p), uncond=sd.encode_text([""] * len(rows)), cfg=cfg)
    return res


def _score(clf32, name, res):
    import torch

    from digin.toy import world

    star = world.SHAPES.index(world.SPURIOUS_CLASS)
    which = "spurious" if name == "diff" else "clean"
    with torch.no_grad():
        p = {k: clf32[which](getattr(res, f"{k}_images").float())[:, 0].softmax(-1)[:, star] for k in ("sd", "ours")}
    return p


def _compare(name, a, b, pa, pb, label):
    ok_a, ok_b = pa["ours"] > 0.5, pb["ours"] > 0.5
    l0a, l0b = a.losses[0].double(), b.losses[0].double()
    return {"workload": name, "comparison": label, "n": int(a.losses.shape[1]),
            "img_sd_max": float((a.sd_images - b.sd_images).abs().max()),
            "img_ours_max": float((a.ours_images - b.ours_images).abs().max()),
            "img_ours_mean": float((a.ours_images - b.ours_images).abs().mean()),
            "loss0_rel": float(((l0a - l0b).abs() / l0a.abs().clamp_min(1e-12)).max()),
            "conf_sd_max": float((pa["sd"] - pb["sd"]).abs().max()),
            "conf_ours_mean": float((pa["ours"] - pb["ours"]).abs().mean()),
            "conf_ours_max": float((pa["ours"] - pb["ours"]).abs().max()),
            "success_a": float(ok_a.float().mean()), "success_b": float(ok_b.float().mean()),
            "agreement": float((ok_a == ok_b).float().mean()),
            "best_iter_agreement": float((a.best_iter == b.best_iter).float().mean())}


def main(argv=None) -> int:
    import torch

    from digin import toy
    from digin.science import toy_science as science

    kw = _args(sys.argv[1:] if argv is None else argv)
    if not toy.available():
        raise SystemExit("toy model weights are not in digin/toy/models")
    n, dev = int(kw["n"]), kw["device"]
    prompts = science.spurious_prompts("heldout", n)
    sd32, clf32 = _models("fp32", dev)
    sd16, clf16 = _models("bf16", dev)
    rows_out = []
    for name, steps in (("guided", int(kw["guided_steps"])), ("diff", int(kw["diff_steps"]))):
        t0 = time.time()
        base = _run(sd32, clf32, name, prompts, list(range(n)), steps)
        alone = [_run(sd32, clf32, name, prompts, [i], steps) for i in range(n)]
        alone = _stack(alone)
        half = _run(sd16, clf16, name, prompts, list(range(n)), steps)
        p = {k: _score(clf32, name, r) for k, r in (("base", base), ("alone", alone), ("bf16", half))}
        for label, other in (("fp32 batch 1 vs fp32 batch n", "alone"), ("bf16 vs fp32", "bf16")):
            row = _compare(name, base, {"alone": alone, "bf16": half}[other], p["base"], p[other], label)
            row.update(seconds=round(time.time() - t0, 1), sgd_steps=steps, device=dev,
                       torch=torch.__version__, python=platform.python_version())
            rows_out.append(row)
            print(json.dumps(row), flush=True)
    if kw["out"]:
        with open(kw["out"], "a") as f:
            for row in rows_out:
                f.write(json.dumps(row) + "\n")
    return 0


def _stack(results):
    """Batch-1 results as one batch-n result (the fields _compare reads)."""
    import types

    import torch

    cat = torch.cat
    return types.SimpleNamespace(
        sd_images=cat([r.sd_images for r in results]), ours_images=cat([r.ours_images for r in results]),
        losses=cat([r.losses for r in results], dim=1), best_iter=cat([r.best_iter for r in results]))


if __name__ == "__main__":
    sys.exit(main())
