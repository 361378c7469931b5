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
