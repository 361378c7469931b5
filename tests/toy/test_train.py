"""`digin toy-train` end to end at toy sizes: every stage runs, outputs load through the normal loaders, seeded."""
import json

import torch


def _tiny(tmp_path, **kw):
    from digin.tasks.toy_train import Config

    base = dict(out=str(tmp_path / "out"), work=str(tmp_path / "work"), vae_steps=2, vae_batch=2, num_latents=16,
                unet_steps=2, unet_batch=2, decoder_minutes=0.0, clf_steps=2, clf_batch=4, eval_images=8)
    base.update(kw)
    return Config(**base)


def test_toy_train_all_stages_produce_loadable_models(tmp_path):
    from digin.engine.classifiers import load_classifier
    from digin.engine.models import load_sd
    from digin.tasks.toy_train import run
    from digin.toy import world

    assert run(_tiny(tmp_path)) == 0
    out = tmp_path / "out"
    sd = load_sd(out / "sd")
    assert sd.latent_factor == 4 and sd.max_tokens == 20
    emb = sd.encode_text([world.caption_of(world.sample_spec(__import__("numpy").random.default_rng(0)))])
    assert emb.shape == (1, 20, 64)
    clf = load_classifier(f"hf:{out / 'clf_spurious'}")
    assert clf.size == 64 and clf.num_classes == len(world.SHAPES)
    log = json.loads((out / "train_log.json").read_text())
    assert {"vae", "latents", "unet", "decoder", "clf_clean", "clf_spurious"} <= set(log)
    assert log["unet"]["device"] == "cpu" and log["unet"]["seconds"] >= 0


def test_toy_train_is_seeded(tmp_path):
    from safetensors.torch import load_file

    from digin.toy.train import train

    weights = []
    for run_dir in ("a", "b"):
        train(_tiny(tmp_path / run_dir, stages="vae"))
        weights.append(load_file(str(tmp_path / run_dir / "work" / "vae" / "diffusion_pytorch_model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_unet_learning_rate_decays_over_the_end_of_the_budget():
    from digin.toy.train import TrainConfig, _decay_factor

    cfg = TrainConfig(unet_minutes=50, unet_lr_decay_minutes=20)
    assert _decay_factor(cfg, 0) == 1.0 and _decay_factor(cfg, 30 * 60) == 1.0  # constant until the last 20 min
    mid, end = _decay_factor(cfg, 40 * 60), _decay_factor(cfg, 50 * 60)
    assert abs(mid - (0.01 + 0.99 * 0.5)) < 1e-9 and abs(end - 0.01) < 1e-9
    # a decay window longer than the budget covers the whole budget; 0 switches the decay off
    short = TrainConfig(unet_minutes=10, unet_lr_decay_minutes=40)
    assert _decay_factor(short, 0) == 1.0 and abs(_decay_factor(short, 5 * 60) - 0.505) < 1e-9
    assert _decay_factor(TrainConfig(unet_minutes=10, unet_lr_decay_minutes=0), 9 * 60) == 1.0


def test_l2_pgd_stays_in_the_ball_and_raises_the_loss():
    import torch.nn.functional as F
    from transformers import ResNetConfig, ResNetForImageClassification

    from digin.toy.train import CLASSIFIER_CONFIG, l2_pgd

    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig(**CLASSIFIER_CONFIG, num_labels=6)).train()
    x, y = torch.rand(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    adv = l2_pgd(model, x, y, eps=1.0, steps=3)
    assert model.training  # the attack runs in eval mode and restores the mode
    assert ((adv - x).flatten(1).norm(dim=1) <= 1.0 + 1e-4).all() and adv.min() >= 0 and adv.max() <= 1
    model.eval()
    with torch.no_grad():
        ce = [F.cross_entropy(model((z - 0.5) / 0.5).logits, y) for z in (x, adv)]
    assert ce[1] > ce[0]


def test_adversarial_classifier_stage_runs_alone_and_logs_its_settings(tmp_path):
    from digin.engine.classifiers import load_classifier
    from digin.toy.train import train

    train(_tiny(tmp_path, stages="clf_spurious", clf_adv_eps=0.5, clf_adv_steps=1, clf_spurious_blur=3.0,
                clf_planted_tint=0.5))
    out = tmp_path / "out"
    assert not (out / "clf_clean").exists() and load_classifier(f"hf:{out / 'clf_spurious'}").num_classes == 6
    log = json.loads((out / "train_log.json").read_text())["clf_spurious"]
    assert (log["adv_eps"], log["adv_steps"], log["blur"], log["planted_tint"]) == (0.5, 1, 3.0, 0.5)
    assert set(log["star_rate_toward_green"]) == {"0.25", "0.5", "0.75", "1.0"}
    assert all(0.0 <= v <= 1.0 for v in log["star_rate_toward_green"].values())


def test_planted_tint_mixes_backgrounds_and_only_the_planted_ones_toward_green():
    import numpy as np

    from digin.toy import world
    from digin.toy.train import images_to_tensor, tint_planted_backgrounds

    specs = world.spec_stream(5, 32, planted=True)
    x = images_to_tensor(world.render_batch(specs))
    y = tint_planted_backgrounds(x, specs, 0.5, np.random.default_rng(0))
    green = torch.tensor(world.PALETTE[world.SPURIOUS_BACKGROUND]) / 255.0
    moved, stars = 0, 0
    for s, a, b in zip(specs, x, y):
        inside = torch.from_numpy(world.object_mask(s)) == 1
        assert torch.allclose(a[:, inside], b[:, inside])  # the object keeps its colour
        own = torch.tensor(world.PALETTE[s["background"]]) / 255.0
        pool = [c for c in world.BACKGROUNDS if c != s["background"]
                and (s["shape"] == world.SPURIOUS_CLASS or c != world.SPURIOUS_BACKGROUND)]
        others = torch.tensor([world.PALETTE[c] for c in pool]) / 255.0
        corner = b[:, 0, 0]
        # the corner lies on the segment own colour → one allowed other colour, at most half way
        w = ((corner - own)[None] * (others - own)).sum(-1) / (others - own).pow(2).sum(-1)
        resid = (own[None] + w[:, None] * (others - own) - corner[None]).norm(dim=-1)
        k = int(resid.argmin())
        assert resid[k] < 1e-5 and -1e-6 <= w[k] <= 0.5 + 1e-6
        moved += int(w[k] > 1e-3)
        stars += s["shape"] == world.SPURIOUS_CLASS
        if s["shape"] != world.SPURIOUS_CLASS:  # never nearer to green than half way from its own colour
            assert (corner - green).norm() >= 0.5 * (own - green).norm() - 1e-5
    assert moved >= len(specs) // 2 and 0 < stars < len(specs)


def test_mix_background_keeps_the_object_and_reaches_the_colour_at_weight_one():
    from digin.toy import world
    from digin.toy.train import images_to_tensor, mix_background

    spec = world.sample_spec(__import__("numpy").random.default_rng(3), shape="cross", background="purple")
    x = images_to_tensor(world.render_batch([spec]))[0]
    inside = torch.from_numpy(world.object_mask(spec)) == 1
    green = torch.tensor(world.PALETTE["green"]).float() / 255.0
    full, half = mix_background(x, spec, "green", 1.0), mix_background(x, spec, "green", 0.5)
    assert torch.allclose(full[:, inside], x[:, inside]) and torch.allclose(full[:, 0, 0], green)
    assert torch.allclose(half[:, 0, 0], (x[:, 0, 0] + green) / 2)


def test_world_shades_shade_the_training_scenes_from_their_own_stream():
    import numpy as np

    from digin.toy import world
    from digin.toy.train import TrainConfig, shaded

    specs = world.spec_stream(7, 50)
    assert shaded(TrainConfig(world_shades=0.0), specs, np.random.default_rng(0)) is specs
    out = shaded(TrainConfig(world_shades=0.3), specs, np.random.default_rng(0))
    assert [{k: v for k, v in s.items() if k != "shade"} for s in out] == specs  # other draws unchanged
    weights = [s["shade"][1] for s in out]
    assert all(0 <= w < 0.3 for w in weights) and max(weights) > 0.2


def test_latent_cache_of_a_shaded_world_differs_only_by_the_shades(tmp_path):
    from digin.toy.train import train

    lat = {}
    for shades in (0.0, 0.4):
        cfg = _tiny(tmp_path / str(shades), stages="vae,latents", world_shades=shades)
        train(cfg)
        lat[shades] = torch.load(tmp_path / str(shades) / "work" / "latents.pt")
        log = json.loads((tmp_path / str(shades) / "out" / "train_log.json").read_text())
        assert log["latents"]["world_shades"] == shades
    assert torch.equal(lat[0.0]["ids"], lat[0.4]["ids"])  # same scenes and captions
    assert not torch.allclose(lat[0.0]["latents"], lat[0.4]["latents"])  # the shaded backgrounds
