import pytest
import torch
from diffusers import DDIMScheduler

from digin.engine.schedule import (ddim_invert_step, make_schedule, ddim_step, inference_timesteps, loss_step_weights,
                                   make_ddim_schedule)

SD14 = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
            set_alpha_to_one=False, steps_offset=1)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing,T,alpha_one", [("leading", 20, False), ("leading", 7, True), ("trailing", 10, False),
                                                  ("linspace", 5, False)])
def test_ddim_step_equals_diffusers(prediction_type, spacing, T, alpha_one):
    cfg = dict(SD14, timestep_spacing=spacing, prediction_type=prediction_type, set_alpha_to_one=alpha_one)
    ref = DDIMScheduler(**cfg)
    ref.set_timesteps(T)
    ours = make_ddim_schedule(cfg, T)
    assert torch.equal(ours.timesteps, ref.timesteps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, 8, generator=g)
    for i, t in enumerate(ref.timesteps):
        out = torch.randn(3, 4, 8, 8, generator=g)
        r = ref.step(out, t, x)
        prev, x0 = ddim_step(ours, i, out, x)
        torch.testing.assert_close(prev, r.prev_sample, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(x0, r.pred_original_sample, rtol=1e-6, atol=1e-6)
        x = r.prev_sample


def test_sd14_timesteps():
    assert inference_timesteps(dict(SD14, num_train_timesteps=1000, timestep_spacing="leading"), 20).tolist() == \
        list(range(951, 0, -50))


def test_inversion_step_inverts_ddim_step_for_constant_eps():
    """With the same ε at both ends, an inversion step is the exact inverse of the sampling step."""
    s = make_ddim_schedule(SD14, 10)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    eps = torch.randn(2, 4, 8, 8, generator=g)
    for j in range(10):
        x_next = ddim_invert_step(s, j, eps, x)
        back, _ = ddim_step(s, 10 - 1 - j, eps, x_next)
        torch.testing.assert_close(back, x, rtol=1e-4, atol=1e-5)
        x = x_next


def test_inversion_step_matches_prompt_to_prompt_formula():
    s = make_ddim_schedule(SD14, 20)
    ref = DDIMScheduler(**SD14)
    ref.set_timesteps(20)
    ac = ref.alphas_cumprod
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 8, 8, generator=g)
    for j, t in enumerate(ref.timesteps.flip(0)):
        eps = torch.randn(1, 4, 8, 8, generator=g)
        cur = int(t) - 50
        a = ac[cur] if cur >= 0 else ref.final_alpha_cumprod
        a_next = ac[int(t)]
        x0 = (x - (1 - a) ** 0.5 * eps) / a ** 0.5
        expect = a_next ** 0.5 * x0 + (1 - a_next) ** 0.5 * eps
        torch.testing.assert_close(ddim_invert_step(s, j, eps, x), expect, rtol=1e-6, atol=1e-6)
        x = expect


def test_loss_step_weights_reference_values():
    w = loss_step_weights(20, 3, "linear")
    assert w[:17] == [0.0] * 17
    assert w[17:] == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert loss_step_weights(20, 4, "uniform")[16:] == [0.25] * 4
    with pytest.raises(ValueError):
        loss_step_weights(5, 6)


@pytest.mark.parametrize("flag", ["clip_sample", "thresholding", "rescale_betas_zero_snr"])
def test_ddim_refuses_scheduler_flags_its_tables_ignore(flag):
    """diffusers' DDIM would clip / threshold x̂0 or rescale the betas; the tables do neither, so say so."""
    with pytest.raises(ValueError, match=f"DDIM solver: {flag}=True in the model's scheduler/scheduler_config.json"):
        make_schedule({**SD14, flag: True}, 10)
    assert torch.equal(make_schedule({**SD14, flag: False}, 10).alpha_t, make_schedule(SD14, 10).alpha_t)
