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
