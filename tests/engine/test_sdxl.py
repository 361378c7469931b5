"""SDXL family: packed conditioning, Euler solver, guidance rescale, parity with diffusers' SDXL pipeline,
batch independence, optimisation, inversion, P2P/masks and the loader (tiny random models, CPU, fp32).

The family-generic checks live in tests/engine/family_checks.py (tests/engine/test_sd2.py runs them on SD-2.x).
"""
import json

import pytest
import torch

from digin.engine.attention import attached_controller

from digin.engine.guidance import GuidanceConfig, OptimParams, optimise
from digin.engine.sampling import denoise
from digin.engine.schedule import (ddim_step, euler_init_scale, euler_timesteps_sigmas, make_euler_schedule,
                                   make_schedule, rescale_noise_cfg)
from tests.engine.family_checks import (T, WORDS, check_batch_independence, check_inversion_beats_ddim,
                                        check_loss_decreases, inputs)


def _eps(sd, x, t, emb):
    from digin.engine.sampling import call_unet

    return call_unet(sd, x, t, emb).float()


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    from digin.engine.sdxl import build_tiny_sdxl

    folder = tmp_path_factory.mktemp("tiny_sdxl")
    build_tiny_sdxl(seed=0, folder=folder, words=["star", "ring", "circle", "square"])
    return folder


@pytest.fixture(scope="module")
def sdxl(sdxl_dir):
    from digin.engine.families import load_model

    return load_model(sdxl_dir, dtype="fp32")


# ----------------------------------------------------------------------------- solvers

@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_euler_chain_matches_diffusers_euler(spacing, prediction_type):
    """ddim_step over make_euler_schedule, started at n·euler_init_scale, lands where EulerDiscreteScheduler
    lands (x̄ = x at σ = 0); model inputs equal its scale_model_input."""
    from diffusers import EulerDiscreteScheduler

    cfg = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
               steps_offset=1, timestep_spacing=spacing, prediction_type=prediction_type)
    steps = 5
    sch = EulerDiscreteScheduler(**cfg)
    sch.set_timesteps(steps)
    ts, sig = euler_timesteps_sigmas(cfg, steps)
    assert torch.equal(ts, sch.timesteps) and torch.equal(sig, sch.sigmas)
    ours = make_euler_schedule(cfg, steps)
    torch.testing.assert_close(ours.timesteps.float(), sch.timesteps)

    g = torch.Generator().manual_seed(0)
    W = torch.randn(4, 4, generator=g) * 0.3
    model = lambda x, t: torch.einsum("oc,bchw->bohw", W, x) + 1e-3 * t.float()  # noqa: E731
    n = torch.randn(2, 4, 8, 8, generator=g)
    xbar = n * sch.init_noise_sigma
    x = n * euler_init_scale(cfg, steps)
    for i, t in enumerate(sch.timesteps):
        x_in = sch.scale_model_input(xbar, t)
        torch.testing.assert_close(x, x_in, rtol=1e-5, atol=1e-5)
        out = sch.step(model(x_in, t), t, xbar)
        xbar = out.prev_sample
        x, x0 = ddim_step(ours, i, model(x, ours.timesteps[i]), x)
        torch.testing.assert_close(x0, out.pred_original_sample, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x, xbar, rtol=1e-4, atol=1e-4)


def test_make_schedule_selects_solver():
    cfg = dict(timestep_spacing="trailing")
    ddim, euler = make_schedule(cfg, 4, "ddim"), make_schedule(cfg, 4, "euler")
    assert torch.equal(ddim.timesteps, euler.timesteps)  # trailing: same timesteps, different ᾱ tables
    assert float(euler.alpha_prev[-1]) == 1.0 and float(ddim.alpha_prev[-1]) < 1.0
    with pytest.raises(ValueError, match="solver"):
        make_schedule(cfg, 4, "dpm")
    with pytest.raises(ValueError, match="karras"):
        make_euler_schedule(dict(use_karras_sigmas=True), 4)


def test_rescale_noise_cfg_matches_diffusers_and_is_per_sample():
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import rescale_noise_cfg as ref

    g = torch.Generator().manual_seed(0)
    cfg_, cond = torch.randn(3, 4, 8, 8, generator=g) * 3, torch.randn(3, 4, 8, 8, generator=g)
    for phi in (0.0, 0.3, 0.7, 1.0):
        torch.testing.assert_close(rescale_noise_cfg(cfg_, cond, phi), ref(cfg_, cond, phi))
    out = rescale_noise_cfg(cfg_, cond, 1.0)
    torch.testing.assert_close(out.flatten(1).std(1), cond.flatten(1).std(1))  # phi = 1: cond's std
    torch.testing.assert_close(rescale_noise_cfg(cfg_[1:2], cond[1:2], 0.7), out[1:2] * 0 + ref(cfg_, cond, 0.7)[1:2])


# ----------------------------------------------------------------------------- model + diffusers parity

def test_packed_conditioning_layout(sdxl):
    e = sdxl.encode_text(["a red star", ""])
    L = sdxl.max_tokens
    D = sdxl.text_encoder.config.hidden_size + sdxl.text_encoder_2.config.hidden_size
    assert e.shape == (2, L + 1, D) and e.dtype == torch.float32
    assert sdxl.pooled_dim == sdxl.text_encoder_2.config.projection_dim
    assert e[0, L, sdxl.pooled_dim:].abs().max() == 0 and e[0, L, :sdxl.pooled_dim].abs().max() > 0
    assert e[1].abs().max() == 0  # force_zeros_for_empty_prompt
    # the pooled row reaches the UNet through added_cond_kwargs: changing it changes the output
    z = torch.randn(1, 4, 16, 16)
    e2 = e[:1].clone()
    e2[:, L, :4] += 1.0
    t = torch.tensor(500)
    assert (_eps(sdxl, z, t, e[:1]) - _eps(sdxl, z, t, e2)).abs().max() > 1e-4


@pytest.mark.parametrize("solver,gs", [("euler", 3.0), ("ddim", 3.0), ("euler", 1.0)])
def test_engine_chain_matches_diffusers_sdxl_pipeline(sdxl, solver, gs):
    """The engine's denoise() on the packed conditioning = StableDiffusionXLPipeline (negative prompt zeroed); at
    guidance 1 (SDXL-Turbo) both run the conditional half only — the engine's UNet sees batch B, not 2B."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionXLPipeline

    sched_cls = EulerDiscreteScheduler if solver == "euler" else DDIMScheduler
    pipe = StableDiffusionXLPipeline(vae=sdxl.vae, text_encoder=sdxl.text_encoder, text_encoder_2=sdxl.text_encoder_2,
                                     tokenizer=sdxl.tokenizer, tokenizer_2=sdxl.tokenizer_2, unet=sdxl.unet.unet,
                                     scheduler=sched_cls.from_config(sdxl.scheduler_config),
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    n = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    prompts = ["a red star", "a blue ring"]
    ref = pipe(prompt=prompts, height=32, width=32, num_inference_steps=T, guidance_scale=gs, latents=n.clone(),
               output_type="latent").images
    sched = make_schedule(sdxl.scheduler_config, T, solver)
    scale = euler_init_scale(sdxl.scheduler_config, T) if solver == "euler" else 1.0
    batches = []
    hook = sdxl.unet.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        z, _ = denoise(sdxl, sched, n * scale, sdxl.encode_text(prompts), sdxl.encode_text(["", ""]), gs)
    finally:
        hook.remove()
    torch.testing.assert_close(z, ref, rtol=1e-4, atol=1e-4)
    assert set(batches) == {2 if gs == 1.0 else 4}


def test_guidance_rescale_loop_matches_diffusers(sdxl):
    """A Euler loop over the wrapper with rescale_noise_cfg = the pipeline with guidance_rescale=0.7."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    cfg = dict(sdxl.scheduler_config, timestep_spacing="trailing")
    pipe = StableDiffusionXLPipeline(vae=sdxl.vae, text_encoder=sdxl.text_encoder, text_encoder_2=sdxl.text_encoder_2,
                                     tokenizer=sdxl.tokenizer, tokenizer_2=sdxl.tokenizer_2, unet=sdxl.unet.unet,
                                     scheduler=EulerDiscreteScheduler.from_config(cfg), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    n = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    ref = pipe(prompt=["a cat"], height=32, width=32, num_inference_steps=T, guidance_scale=5.0,
               guidance_rescale=0.7, latents=n.clone(), output_type="latent").images
    sched = make_schedule(cfg, T, "euler")
    c, u = sdxl.encode_text(["a cat"]), sdxl.encode_text([""])
    x = n * euler_init_scale(cfg, T)
    with torch.no_grad():
        for i in range(T):
            eu, ec = _eps(sdxl, torch.cat([x, x]), sched.timesteps[i], torch.cat([u, c])).chunk(2)
            x, _ = ddim_step(sched, i, rescale_noise_cfg(eu + 5.0 * (ec - eu), ec, 0.7), x)
    torch.testing.assert_close(x, ref, rtol=1e-4, atol=1e-4)
    plain, _ = denoise(sdxl, sched, n * euler_init_scale(cfg, T), c, u, 5.0)
    assert (plain - ref).abs().max() > 1e-3  # the rescale matters at this scale


# ----------------------------------------------------------------------------- engine on SDXL

def test_sdxl_batch_independence(sdxl):
    res = check_batch_independence(sdxl)
    # the pooled row of the conditioning delta (OptimParamsXL's add delta) is optimised too
    assert res.cond_delta[:, :, -1, :sdxl.pooled_dim].abs().amax() > 0


def test_sdxl_loss_decreases(sdxl):
    check_loss_decreases(sdxl)


def test_sdxl_inversion_beats_ddim(sdxl):
    r = check_inversion_beats_ddim(sdxl)
    assert r.null_texts.shape[-2:] == (sdxl.max_tokens + 1, 64)


def test_sdxl_p2p_identity_injection_and_masks(sdxl):
    """P2P/masks on SDXL: maps have the tokenizer's 77 keys; identity P2P with full injection reproduces the
    initial pass; foreground masks come out at pixel/latent size."""
    from digin.engine.classifiers import load_classifier
    from digin.engine.edit import MaskBlendParams, P2PParams, prepare_edit
    from digin.engine.objectives import Objective
    from digin.engine.segment import SegmentationConfig

    B = 2
    z, _, uncond = inputs(sdxl, B, seed=3)
    prompts = ["a photo of a red star", "a photo of a blue ring"]
    clf = load_classifier("tiny", num_classes=5, size=32, num_cutouts=2, noise_sd=0.005)
    obj = Objective("CE", [clf], torch.tensor([1, 3]), ["k0", "k1"], regularizers=["latent_background_l2"],
                    regularizers_ws=[1.0])
    seg = SegmentationConfig(sam_segmentation=False, xa_map_resolution=8)  # tiny SDXL: cross-attention at 8×8
    setup = prepare_edit(sdxl, obj, z_T=z, uncond=uncond, prompts=prompts, foreground_words=[["star"], ["ring"]],
                         guidance_scale=3.0, num_ddim_steps=T, replacements=[("star", "star"), ("ring", "ring")],
                         p2p=P2PParams(xa_interpolation_schedule=["threshold_0.0_1.0"]),
                         blend=MaskBlendParams(foreground_blend=False, initial_mask_blend_schedule=["none"]),
                         segmentation=seg)
    try:
        maps = next(iter(setup.controller.cross_maps.values()))
        assert next(iter(maps.values())).shape[-1] == sdxl.max_tokens
        assert setup.px_mask.shape == (B, 1, 32, 32) and setup.latent_mask.shape == (B, 1, 16, 16)
        assert (setup.px_mask.amax((1, 2, 3)) > setup.px_mask.amin((1, 2, 3))).all()  # not a constant mask
        cfg = GuidanceConfig(guidance_scale=3.0, num_ddim_steps=T, optim_params=OptimParams(sgd_steps=0))
        res = optimise(sdxl, setup.objective, z_T=z, cond=setup.cond, uncond=uncond, cfg=cfg,
                       controller=setup.controller)
        torch.testing.assert_close(res.sd_images, setup.initial_images, atol=1e-5, rtol=0)
    finally:
        setup.close(sdxl)
    assert attached_controller(sdxl.unet) is None  # the controller is detached after the edit


# ----------------------------------------------------------------------------- loader

def test_sdxl_loader_round_trip_and_detection(sdxl_dir, sdxl, tmp_path):
    from digin.engine.families import detect_family, family_of, load_model, model_family
    from digin.engine.sdxl import SDXLModel, build_tiny_sdxl

    built = build_tiny_sdxl(seed=0, words=["star", "ring", "circle", "square"])
    for a, b in ((built.unet, sdxl.unet), (built.vae, sdxl.vae), (built.text_encoder, sdxl.text_encoder),
                 (built.text_encoder_2, sdxl.text_encoder_2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    torch.testing.assert_close(built.encode_text(WORDS), sdxl.encode_text(WORDS))
    assert isinstance(sdxl, SDXLModel) and detect_family(sdxl_dir) == "sdxl" and model_family(sdxl) == "sdxl"
    assert family_of("tiny-sdxl") == "sdxl" and sdxl.scheduler_config["_class_name"] == "EulerDiscreteScheduler"
    assert json.loads((sdxl_dir / "model_index.json").read_text())["force_zeros_for_empty_prompt"] is True

    half = load_model(sdxl_dir, dtype="fp16")  # SDXL VAE force_upcast: stays fp32
    assert half.dtype == torch.float16 and half.text_encoder_2.dtype == torch.float16
    assert half.vae_dtype == torch.float32
    img = half.decode(torch.randn(1, 4, 16, 16))
    assert img.dtype == torch.float32 and torch.isfinite(img).all()

    with pytest.raises(FileNotFoundError, match="SDXL"):
        from digin.engine.sdxl import load_sdxl

        load_sdxl(tmp_path)


# ----------------------------------------------------------------------------- presets

PROPOSED_KEYS = {"solver", "guidance_rescale"}  # CommonArgs fields the lead adds with the engine hooks


@pytest.mark.parametrize("name", ["sdxl_512", "sdxl_turbo", "sdxl_playground_512", "sdxl_base", "sd2_768v",
                                  "sd2_base_512"])
def test_family_presets(name):
    import dataclasses

    from omegaconf import OmegaConf

    from digin.cli import PRESET_DIR, build_config
    from digin.engine.schedule import SOLVERS
    from digin.stages.args import CommonArgs
    from digin.tasks.diff import Config

    preset = OmegaConf.to_container(OmegaConf.load(PRESET_DIR / f"{name}.yaml"))
    fields = {f.name for f in dataclasses.fields(CommonArgs)}
    assert set(preset) <= fields | PROPOSED_KEYS, set(preset) - fields - PROPOSED_KEYS
    assert preset["solver"] in SOLVERS and preset["model_path"] == "???"
    op = {"loss_steps": OptimParams().loss_steps, **preset.get("optim_params", {})}
    assert 1 <= op["loss_steps"] <= preset["num_ddim_steps"]
    if PROPOSED_KEYS <= fields:  # once the Config has the solver keys, the preset must build
        cfg = build_config(Config, [f"config={name}", "model_path=/x", "out=/y"])
        assert cfg.resolution == preset["resolution"] and cfg.solver == preset["solver"]
