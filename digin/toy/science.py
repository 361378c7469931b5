"""Science checks on the toy world: does DiG-IN find what was planted? Each check returns plain numbers.

  python -m digin.toy.science            # all checks on the dev and held-out sets, prints JSON

Sets: `dev` scenes (split seed "val") are what settings were tuned on; `heldout` scenes (split seed "heldout")
were never looked at while tuning — the tests use the held-out set.
Checks (the thresholds live in tests/toy/test_science.py and MODEL_CARD.md):
  generation      clean-classifier accuracy on txt2img samples of captioned scenes
  inversion       PSNR of null-text inversion vs plain DDIM inversion reconstructions (against the original)
  uvce            UVCE success (clean classifier p(target) > 0.5) and background RMS change outside the object
  spurious        classifier differences (spurious − clean, class star): background colour moves to the planted one
  neuron          neuron visualisation: target neuron activation of `ours` over iterate 0
"""
from __future__ import annotations

import json

import numpy as np
import torch

from digin.toy import PRESET, classifier_spec, paths, world

SET_SEEDS = {"dev": world.SPLIT_SEEDS["val"], "heldout": world.SPLIT_SEEDS["heldout"]}


# ------------------------------------------------------------------------------------------ loading

_CACHE: dict = {}


def load_models(device="cpu"):
    """(sd, clean classifier, spurious classifier), frozen fp32, cached per device."""
    key = str(device)
    if key not in _CACHE:
        from digin.engine.classifiers import load_classifier
        from digin.engine.models import load_sd

        sd = load_sd(paths()["sd"], dtype="fp32", device=device)
        clf = {w: load_classifier(classifier_spec(w), device=device, num_cutouts=PRESET["augmentation_num_cutouts"],
                                  noise_sd=PRESET["augmentation_noise_sd"]) for w in ("clean", "spurious")}
        _CACHE[key] = (sd, clf["clean"], clf["spurious"])
    return _CACHE[key]


def scene_set(name: str, n_per_class: int) -> list[dict]:
    return world.balanced_specs(SET_SEEDS[name] * 7 + 1, n_per_class)


def images_of(specs) -> torch.Tensor:
    return torch.from_numpy(world.render_batch(specs)).permute(0, 3, 1, 2).float() / 255.0


def start_noise(sd, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, sd.latent_channels, 16, 16, generator=g).to(sd.device)


@torch.no_grad()
def predict(clf, img_B3HW) -> torch.Tensor:
    return clf(img_B3HW)[:, 0].softmax(-1)


def background_frame(img_B3HW: torch.Tensor, width: int = 2) -> torch.Tensor:
    """(B, 3) mean colour of the outer `width`-pixel frame: objects keep ≥ 2 px from the border, so it is all
    background in every scene."""
    m = torch.ones(img_B3HW.shape[-2:], dtype=torch.bool)
    m[width:-width, width:-width] = False
    return img_B3HW[:, :, m].mean(-1)


def outside_object(specs, scale: float = 1.35, pad: float = 3.0) -> torch.Tensor:
    """(B, 1, 64, 64) mask of pixels farther than scale·radius + pad from the object centre — background that a
    shape edit (any shape of that radius fits inside 1.1·radius) has no reason to touch."""
    yy, xx = np.mgrid[0:world.RES, 0:world.RES] + 0.5
    out = [np.hypot(xx - s["cx"], yy - s["cy"]) > scale * s["radius"] + pad for s in specs]
    return torch.from_numpy(np.stack(out)[:, None].astype(np.float32))


# ---------------------------------------------------------------------------------------- checks

@torch.no_grad()
def check_generation(set_name="heldout", n_per_class=4, steps=20, guidance_scale=3.0, seed=0, device="cpu"):
    from digin.engine.sampling import denoise
    from digin.engine.schedule import make_ddim_schedule

    sd, clean, _ = load_models(device)
    specs = scene_set(set_name, n_per_class)
    prompts = [world.caption_of(s) for s in specs]
    sched = make_ddim_schedule(sd.scheduler_config, steps).to(sd.device)
    z = start_noise(sd, len(specs), seed)
    _, x0 = denoise(sd, sched, z, sd.encode_text(prompts), sd.encode_text([""] * len(specs)), guidance_scale)
    imgs = sd.decode(x0)
    y = torch.tensor([world.SHAPES.index(s["shape"]) for s in specs])
    p = predict(clean, imgs).cpu()
    bg = background_frame(imgs.cpu())
    bg_true = torch.tensor([world.PALETTE[s["background"]] for s in specs]) / 255.0
    return {"accuracy": float((p.argmax(-1) == y).float().mean()), "n": len(specs),
            "background_rms": float((bg - bg_true).pow(2).mean(-1).sqrt().mean()), "images": imgs.cpu()}


def uvce_pairs(set_name: str, n: int) -> list[tuple[dict, str]]:
    """n (scene, target shape) pairs: scenes of every shape in turn, target drawn among the other shapes."""
    rng = np.random.default_rng(SET_SEEDS[set_name] + 17)
    specs = scene_set(set_name, max(1, -(-n // len(world.SHAPES))))
    order = [specs[c * (len(specs) // 6) + k] for k in range(len(specs) // 6) for c in range(6)][:n]
    return [(s, [t for t in world.SHAPES if t != s["shape"]][rng.integers(5)]) for s in order]


def check_inversion(set_name="heldout", n=6, steps=10, inner_steps=10, guidance_scale=3.0, device="cpu"):
    """Null-text vs plain DDIM inversion on the images of the first n UVCE pairs (so check_uvce can reuse it)."""
    from digin.engine.inversion import invert

    sd, _, _ = load_models(device)
    specs = [s for s, _ in uvce_pairs(set_name, n)]
    res = invert(sd, images_of(specs), [world.caption_of(s) for s in specs], num_steps=steps,
                 guidance_scale=guidance_scale, num_inner_steps=inner_steps)
    inv = [m["psnr_inv_vs_orig"] for m in res.metrics]
    ddim = [m["psnr_ddim_vs_orig"] for m in res.metrics]
    vae = [m["psnr_vae_vs_orig"] for m in res.metrics]
    # the error an inversion adds beyond the VAE round trip (its ceiling): MSE(method) − MSE(VAE), MSE = 10^(−PSNR/10)
    mse = lambda db: 10.0 ** (-np.asarray(db) / 10.0)  # noqa: E731
    excess_inv, excess_ddim = mse(inv) - mse(vae), mse(ddim) - mse(vae)
    return {"psnr_inv": float(np.mean(inv)), "psnr_ddim": float(np.mean(ddim)), "psnr_vae": float(np.mean(vae)),
            "per_image_gain": [a - b for a, b in zip(inv, ddim)],
            "excess_error_ratio": float(excess_inv.mean() / max(excess_ddim.mean(), 1e-12)),
            "n": len(specs), "result": res,
            "settings": (set_name, n, steps, guidance_scale)}


def check_uvce(set_name="heldout", n=6, steps=10, inner_steps=10, sgd_steps=10, lr=0.03, guidance_scale=3.0,
               reg_ws=(25.0, 250.0), xa_schedules=("threshold_0.0_0.3", "threshold_0.0_0.4", "threshold_0.0_0.5"),
               inversion=None, loss_steps=3, device="cpu"):
    """UVCEs of held-out scenes (P2P shape swap + background mask blend + CE on the clean classifier).
    `inversion`: a check_inversion result made with the same set/n/steps/guidance (reused, not recomputed)."""
    from digin.engine.edit import MaskBlendParams, P2PParams, prepare_edit
    from digin.engine.guidance import GuidanceConfig, OptimParams, optimise
    from digin.engine.inversion import invert
    from digin.engine.objectives import Objective
    from digin.engine.segment import SegmentationConfig

    sd, clean, _ = load_models(device)
    pairs = uvce_pairs(set_name, n)
    specs = [s for s, _ in pairs]
    prompts = [world.caption_of(s) for s in specs]
    imgs = images_of(specs).to(sd.device)
    tgt = torch.tensor([world.SHAPES.index(t) for _, t in pairs])
    if inversion is not None and inversion["settings"] == (set_name, n, steps, guidance_scale):
        inv = inversion["result"]
    else:
        inv = invert(sd, imgs, prompts, num_steps=steps, guidance_scale=guidance_scale,
                     num_inner_steps=inner_steps, compute_metrics=False)
    keys = [f"{set_name}/{k}" for k in range(len(pairs))]
    obj = Objective("CE", [clean], tgt, keys, regularizers=["latent_background_l2", "px_background_l2"],
                    regularizers_ws=list(reg_ws))
    seg = SegmentationConfig(sam_segmentation=False, xa_map_resolution=PRESET["segmentation.xa_map_resolution"],
                             postprocessing=list(PRESET["segmentation.postprocessing"]))
    setup = prepare_edit(sd, obj, z_T=inv.z_T, uncond=inv.null_texts, prompts=prompts,
                         foreground_words=[[s["shape"]] for s in specs], guidance_scale=guidance_scale,
                         num_ddim_steps=steps, replacements=[(s["shape"], t) for s, t in pairs], images=imgs,
                         p2p=P2PParams(xa_interpolation_schedule=list(xa_schedules)), segmentation=seg,
                         blend=MaskBlendParams(do_mask_blend=True, foreground_blend=False,
                                               initial_mask_blend_schedule=["none", "threshold_0.3"]))
    try:
        res = optimise(sd, obj, z_T=inv.z_T, cond=setup.cond, uncond=inv.null_texts, blend=setup.blend,
                       controller=setup.controller,
                       cfg=GuidanceConfig(guidance_scale, steps, OptimParams(sgd_steps=sgd_steps, sgd_stepsize=lr,
                                                                             loss_steps=loss_steps),
                                          checkpoint="none"))
    finally:
        setup.close(sd)
    ours = res.ours_images.cpu()
    conf = predict(clean, ours)[torch.arange(len(pairs)), tgt]
    bg = outside_object(specs)
    recon = setup.initial_images.cpu()

    def bg_rms(a, b):
        return (((a - b).pow(2).mean(1, keepdim=True) * bg).sum((1, 2, 3)) / bg.sum((1, 2, 3))).sqrt()

    return {"success_rate": float((conf > 0.5).float().mean()), "target_conf": conf.tolist(),
            "background_rms": bg_rms(ours, recon).tolist(),  # the edit's change: ours vs its starting point
            "background_rms_vs_orig": bg_rms(ours, imgs.cpu()).tolist(),
            "recon_background_rms_vs_orig": bg_rms(recon, imgs.cpu()).tolist(), "n": len(pairs),
            "pairs": [(s["shape"], t) for s, t in pairs], "ours": ours, "orig": imgs.cpu()}


def check_spurious(set_name="heldout", n=6, steps=10, sgd_steps=10, lr=0.05, guidance_scale=3.0, seed=1,
                   loss_steps=3, loss="conf", start="target", device="cpu"):
    """Classifier differences, target = the planted class: maximise p_spurious(star) − p_clean(star) (loss
    'conf'; 'log_conf': the log-ratio) from captions on non-planted backgrounds; measure the background colour."""
    from digin.engine.guidance import GuidanceConfig, OptimParams, optimise
    from digin.engine.objectives import Objective

    sd, clean, spur = load_models(device)
    # start "target": prompts name the target class (as the reference); "other": prompts of the other shapes —
    # then p_clean(star) is already ~0 and the objective can only rise through what the spurious classifier reads
    rng = np.random.default_rng(SET_SEEDS[set_name] + 23)
    others = [sh for sh in world.SHAPES if sh != world.SPURIOUS_CLASS]
    specs = [world.sample_spec(rng, shape=world.SPURIOUS_CLASS if start == "target" else others[k % len(others)],
                               exclude_backgrounds=(world.SPURIOUS_BACKGROUND,)) for k in range(n)]
    prompts = [world.caption_of(s) for s in specs]
    B = len(specs)
    y = torch.full((B,), world.SHAPES.index(world.SPURIOUS_CLASS))
    obj = Objective(loss, [spur, clean], y, [f"spur/{k}" for k in range(B)])
    res = optimise(sd, obj, z_T=start_noise(sd, B, seed), cond=sd.encode_text(prompts),
                   uncond=sd.encode_text([""] * B),
                   cfg=GuidanceConfig(guidance_scale, steps, OptimParams(sgd_steps=sgd_steps, sgd_stepsize=lr,
                                                                         loss_steps=loss_steps),
                                      checkpoint="none"))
    planted = torch.tensor(world.PALETTE[world.SPURIOUS_BACKGROUND]) / 255.0
    d_sd = (background_frame(res.sd_images.cpu()) - planted).norm(dim=-1)
    d_ours = (background_frame(res.ours_images.cpu()) - planted).norm(dim=-1)
    return {"dist_sd": d_sd.tolist(), "dist_ours": d_ours.tolist(), "mean_dist_sd": float(d_sd.mean()),
            "mean_dist_ours": float(d_ours.mean()), "moved_toward": float((d_ours < d_sd).float().mean()),
            "conf_diff_sd": float(-res.losses[0].mean()), "conf_diff_ours": float(-res.losses.nan_to_num(9)
                                                                                   .amin(0).mean()),
            "n": B, "sd": res.sd_images.cpu(), "ours": res.ours_images.cpu()}


def pick_neuron(clf, cls: int) -> int:
    """The penultimate feature with the largest weight into class `cls` of the final linear layer."""
    from digin.engine.classifiers import final_linear_name

    head = clf.model.get_submodule(final_linear_name(clf.model))
    return int(head.weight[cls].argmax())


def check_neuron(set_name="heldout", n=4, steps=10, sgd_steps=10, lr=0.05, guidance_scale=3.0, seed=2,
                 target_class="star", loss_steps=3, device="cpu"):
    from digin.engine.guidance import GuidanceConfig, OptimParams, optimise
    from digin.engine.objectives import Objective

    sd, clean, _ = load_models(device)
    specs = [s for s in scene_set(set_name, n) if s["shape"] != target_class][:n]
    prompts = [world.caption_of(s) for s in specs]
    B = len(specs)
    cls = world.SHAPES.index(target_class)
    neuron = pick_neuron(clean, cls)
    obj = Objective("neuron_activation", [clean], torch.tensor([[cls, neuron]] * B), [f"neuron/{k}" for k in range(B)])
    res = optimise(sd, obj, z_T=start_noise(sd, B, seed), cond=sd.encode_text(prompts),
                   uncond=sd.encode_text([""] * B),
                   cfg=GuidanceConfig(guidance_scale, steps, OptimParams(sgd_steps=sgd_steps, sgd_stepsize=lr,
                                                                         loss_steps=loss_steps),
                                      checkpoint="none"))
    with torch.no_grad():
        a0 = clean.features(res.sd_images)[1][:, 0, neuron].cpu()
        a1 = clean.features(res.ours_images)[1][:, 0, neuron].cpu()
    return {"neuron": neuron, "act_sd": a0.tolist(), "act_ours": a1.tolist(),
            "ratio_of_means": float(a1.mean() / a0.mean().clamp(min=1e-6)), "n": B}


# The settings of tests/toy/test_science.py (tuned on `dev`, asserted on `heldout`).
TEST_SETTINGS = {
    "generation": dict(n_per_class=4, steps=20),  # 24 samples: 12 made one image decide 8 points of accuracy
    "inversion": dict(n=6, steps=10, inner_steps=10),
    "uvce": dict(n=6, steps=10, sgd_steps=8, lr=0.1, loss_steps=1),
    "spurious": dict(n=8, steps=10, sgd_steps=12, loss_steps=1, loss="log_conf", start="other", lr=0.5),
    "neuron": dict(n=3, steps=10, sgd_steps=6, lr=0.1, loss_steps=1),
}


def run_all(set_name: str) -> dict:
    """Every check with the test settings → JSON-able numbers."""
    out = {}
    inv = None
    for name, kw in TEST_SETTINGS.items():
        fn = globals()[f"check_{name}"]
        res = fn(set_name, inversion=inv, **kw) if name == "uvce" else fn(set_name, **kw)
        if name == "inversion":
            inv = res
        out[name] = {k: v for k, v in res.items()
                     if not isinstance(v, torch.Tensor) and k not in ("result", "settings")}
    return out


def main(argv=None):
    import sys

    torch.set_num_threads(1)
    sets = (argv if argv is not None else sys.argv[1:]) or ["dev", "heldout"]
    print(json.dumps({name: run_all(name) for name in sets}, indent=1))


if __name__ == "__main__":
    main()
