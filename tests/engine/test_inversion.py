"""Batched null-text / negative-prompt inversion on the tiny SD model (CPU, fp32)."""
import pytest
import torch

from digin.engine.inversion import ddim_inversion, invert
from digin.engine.schedule import make_ddim_schedule
from tests.engine.family_checks import smooth_images

PROMPTS = ["a cat", "a dog on grass", "an image of a bird", "x"]


class _XFreeModel:
    """ε depends on t and the embedding only, so DDIM inversion is exactly undone by DDIM sampling when the
    inversion evaluates each step at the sampler's timestep (any index slip breaks the round trip)."""

    dtype = torch.float32

    def __init__(self):
        self.pattern = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))

    def unet(self, x, t, encoder_hidden_states, return_dict=False):
        return (self.pattern * torch.sin(t.float() / 97.0) + encoder_hidden_states.mean((1, 2)).view(-1, 1, 1, 1),)


def test_ddim_inversion_is_undone_by_ddim_sampling():
    from digin.engine.schedule import ddim_step

    sched = make_ddim_schedule(None, 5)
    m = _XFreeModel()
    z0 = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    cond = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(3))
    lat = ddim_inversion(m, sched, z0, cond)
    assert len(lat) == 6 and torch.equal(lat[0], z0)
    z = lat[-1]
    for i in range(5):
        z, _ = ddim_step(sched, i, m.unet(z, sched.timesteps[i], cond)[0], z)
        torch.testing.assert_close(z, lat[4 - i], rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def nti_batch(tiny_sd):
    return invert(tiny_sd, smooth_images(4), PROMPTS, num_steps=8, guidance_scale=3.0)


def test_null_text_reconstruction_beats_plain_ddim(nti_batch):
    # The random tiny VAE decodes most latents to similar images, so the check is on the latent (x̂0 vs z_0);
    # the image metrics are reported as well and must be finite.
    for m in nti_batch.metrics:
        assert m["status"] == "ok"
        assert m["latent_mse_inv"] < 0.9 * m["latent_mse_ddim"], m
        assert all(m[k] is not None for k in ("psnr_inv_vs_vae", "psnr_ddim_vs_vae", "l2_inv_vs_orig"))
        assert m["unet_forward"] == 3 * 8 + sum(m["inner_steps"])
    r = nti_batch
    assert r.z_T.shape == (4, 4, 16, 16) and r.z_T.dtype == torch.float32
    assert r.null_texts.shape == (4, 8, 77, 32) and r.null_texts.dtype == torch.float32


def test_iterate_zero_of_guidance_reproduces_reconstruction(tiny_sd, nti_batch):
    from digin.engine.guidance import GuidanceConfig, OptimParams, optimise

    class Zero:
        def __call__(self, img, z, salt):
            return img.sum((1, 2, 3)) * 0, {}

    r = nti_batch
    cond = tiny_sd.encode_text(PROMPTS)
    cfg = GuidanceConfig(guidance_scale=3.0, num_ddim_steps=8, optim_params=OptimParams(sgd_steps=0))
    out = optimise(tiny_sd, Zero(), z_T=r.z_T, cond=cond, uncond=r.null_texts, cfg=cfg)
    torch.testing.assert_close(out.sd_images, r.reconstruction, rtol=0, atol=1e-4)
    # …and the null texts matter: the plain "" null text gives another image.
    empty = tiny_sd.encode_text([""] * 4)
    plain = optimise(tiny_sd, Zero(), z_T=r.z_T, cond=cond, uncond=empty, cfg=cfg)
    assert (plain.sd_images - r.reconstruction).abs().max() > 1e-3


@pytest.fixture(scope="module")
def tiny_sd_fp64(tiny_sd_dir):
    from digin.engine.models import load_sd

    return load_sd(tiny_sd_dir, dtype="fp64")


@pytest.mark.parametrize("precision", ["fp32", "fp64"])
def test_batch_equals_each_image_alone_with_different_early_stops(precision, request):
    """Batch of 4 == each image alone, with samples stopping after different numbers of Adam steps.

    fp64 weights (the chain and Adam stay fp32) remove BLAS batch-size rounding: results must agree to 1e-6.
    In fp32 the UNet's batch-size-dependent rounding is amplified by Adam's per-element normalisation where a
    gradient element is ≈ 0 (its sign is noise, the step is still ±lr), so null texts agree to 2e-3 (lr = 1e-2);
    the early-stop decisions and z_T must agree exactly / to 1e-5."""
    sd = request.getfixturevalue("tiny_sd" if precision == "fp32" else "tiny_sd_fp64")
    imgs = smooth_images(4)
    kw = dict(num_steps=4, guidance_scale=3.0, epsilon=0.12, compute_metrics=False)  # stops differ at step 0
    batch = invert(sd, imgs, PROMPTS, **kw)
    stops = [m["inner_steps"][0] for m in batch.metrics]
    assert len(set(stops)) >= 3, stops
    tol = 1e-6 if precision == "fp64" else 2e-3
    for b in range(4):
        alone = invert(sd, imgs[b:b + 1], PROMPTS[b:b + 1], **kw)
        assert alone.metrics[0]["inner_steps"] == batch.metrics[b]["inner_steps"]
        torch.testing.assert_close(batch.z_T[b:b + 1], alone.z_T, rtol=0, atol=1e-5)
        torch.testing.assert_close(batch.null_texts[b:b + 1], alone.null_texts, rtol=0, atol=tol)


def test_negative_prompt_inversion(tiny_sd):
    imgs = smooth_images(2)
    r = invert(tiny_sd, imgs, PROMPTS[:2], num_steps=4, method="negative_prompt")
    cond = tiny_sd.encode_text(PROMPTS[:2])
    assert torch.equal(r.null_texts, cond.unsqueeze(1).expand(-1, 4, -1, -1))
    for m in r.metrics:
        assert m["unet_forward"] == 4 and m["unet_backward"] == 0
        # CFG with ∅ = C is the conditional chain, i.e. the inversion run backwards: closer than plain DDIM.
        assert m["latent_mse_inv"] < m["latent_mse_ddim"]
    with pytest.raises(ValueError, match="method"):
        invert(tiny_sd, imgs, PROMPTS[:2], num_steps=2, method="edict")


def test_nonfinite_sample_is_flagged_and_isolated(tiny_sd):
    imgs = smooth_images(3)
    kw = dict(num_steps=2, guidance_scale=3.0, num_inner_steps=2, compute_metrics=False)
    clean = invert(tiny_sd, imgs, PROMPTS[:3], **kw)
    bad = imgs.clone()
    bad[1, :, 3, 3] = float("nan")
    r = invert(tiny_sd, bad, PROMPTS[:3], **kw)
    assert [m["status"] for m in r.metrics] == ["ok", "nonfinite", "ok"]
    for b in (0, 2):
        torch.testing.assert_close(r.null_texts[b], clean.null_texts[b], rtol=0, atol=1e-6)
    assert torch.isfinite(r.null_texts[1]).all()  # the flagged sample keeps its last finite embedding
