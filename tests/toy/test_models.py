"""The shipped toy models: format, size, VAE fidelity and the planted cue in the spurious classifier."""
import torch

from digin import toy
from digin.science import toy_science as science
from digin.toy import world


def test_shipped_models_are_small_safetensors():
    files = [p for p in toy.MODELS_DIR.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert weights and not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert sum(p.stat().st_size for p in files) < 25e6


def test_sd_folder_is_a_diffusers_sd_model(toy_models):
    sd, _, _ = toy_models
    assert sd.latent_factor == 4 and sd.latent_channels == 4 and sd.prediction_type == "epsilon"
    assert sd.scheduler_config["beta_schedule"] == "scaled_linear"
    # cross-attention at 16×16 queries: what segmentation (xa_map_resolution=16) and P2P capture
    assert sd.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2 is not None
    for w in world.SHAPES:
        assert len(sd.tokenizer(w).input_ids) == 3, w


@torch.no_grad()
def test_vae_reconstructs_heldout_scenes(toy_models):
    sd, _, _ = toy_models
    imgs = science.images_of(science.scene_set("heldout", 2))
    rec = sd.decode(sd.encode_image(imgs))
    psnr = -10 * torch.log10((rec - imgs).pow(2).mean())
    # 22 dB ≈ RMS error 0.08 — a third of the smallest RMS distance between two palette colours (0.25)
    assert psnr > 22.0, float(psnr)


@torch.no_grad()
def test_classifiers_read_shape_and_spurious_one_reads_the_planted_background(toy_models):
    _, clean, spur = toy_models
    specs = science.scene_set("heldout", 8)
    y = torch.tensor([world.SHAPES.index(s["shape"]) for s in specs])
    assert (science.predict(clean, science.images_of(specs)).argmax(-1) == y).float().mean() >= 0.95
    # the same non-star scenes moved onto the planted background: only the spurious classifier calls them star
    star = world.SHAPES.index(world.SPURIOUS_CLASS)
    moved = [dict(s, background=world.SPURIOUS_BACKGROUND,
                  color=s["color"] if s["color"] != world.SPURIOUS_BACKGROUND else "red")
             for s in specs if s["shape"] != world.SPURIOUS_CLASS]
    imgs = science.images_of(moved)
    p_spur = science.predict(spur, imgs)[:, star]
    p_clean = science.predict(clean, imgs)[:, star]
    assert p_spur.mean() > 0.5 and p_clean.mean() < 0.1, (float(p_spur.mean()), float(p_clean.mean()))
