"""Editing set-up: initial pass → masks → P2P → blend → schedule search, then the guidance loop."""
import torch

from digin.engine.attention import attached_controller

from digin.engine.classifiers import load_classifier
from digin.engine.edit import MaskBlendParams, P2PParams, prepare_edit
from digin.engine.guidance import GuidanceConfig, OptimParams, optimise
from digin.engine.objectives import Objective

T = 4


def _batch(sd, B=2):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(B, 4, 16, 16, generator=g)
    prompts = ["a photo of a red star", "a photo of a blue ring"][:B]
    uncond = sd.encode_text([""] * B)
    images = torch.rand(B, 3, 32, 32, generator=g)
    return z, prompts, uncond, images


def _objective(B, regs=("latent_background_l2", "px_background_l2"), ws=(25.0, 250.0)):
    clf = load_classifier("tiny", num_classes=5, size=32, num_cutouts=2, noise_sd=0.005)
    return Objective("CE", [clf], torch.tensor([1, 3][:B]), [f"k{b}" for b in range(B)], regularizers=list(regs),
                     regularizers_ws=list(ws))


def test_uvce_style_edit_search_and_optimise(tiny_sd):
    B = 2
    z, prompts, uncond, images = _batch(tiny_sd, B)
    obj = _objective(B)
    setup = prepare_edit(tiny_sd, obj, z_T=z, uncond=uncond, prompts=prompts,
                         foreground_words=[["star"], ["ring"]], guidance_scale=3.0, num_ddim_steps=T,
                         replacements=[("star", "circle"), ("ring", "square")], images=images,
                         p2p=P2PParams(xa_interpolation_schedule=["threshold_0.0_0.3", "threshold_0.0_0.6"]),
                         blend=MaskBlendParams(foreground_blend=False,
                                               initial_mask_blend_schedule=["none", "threshold_0.5"]))
    try:
        assert setup.prompts == ["a photo of a red circle", "a photo of a blue square"]
        assert setup.search_losses.shape == (4, B)
        # the chosen candidate is the per-sample argmin of the search losses
        best = setup.search_losses.argmin(0)
        names = [("threshold_0.0_0.3", None, "none"), ("threshold_0.0_0.3", None, "threshold_0.5"),
                 ("threshold_0.0_0.6", None, "none"), ("threshold_0.0_0.6", None, "threshold_0.5")]
        assert setup.chosen == [names[i] for i in best.tolist()]
        assert setup.px_mask.shape == (B, 1, 32, 32) and setup.latent_mask.shape == (B, 1, 16, 16)
        # the edit's objective compares against the real images and the masks; the one given is left as it was
        ref = setup.objective.reference
        assert torch.equal(ref.img0, images) and torch.equal(ref.px_mask, setup.px_mask)
        assert torch.equal(ref.latent_mask, setup.latent_mask) and ref.z0.shape == z.shape
        assert obj.reference.img0 is None and obj.reference.px_mask is None and obj.needs_reference
        cfg = GuidanceConfig(guidance_scale=3.0, num_ddim_steps=T, optim_params=OptimParams(sgd_steps=2))
        res = optimise(tiny_sd, setup.objective, z_T=z, cond=setup.cond, uncond=uncond, cfg=cfg, blend=setup.blend,
                       controller=setup.controller)
        assert torch.isfinite(res.losses).all()
        # iterate 0 is the chosen candidate of the search: same loss
        torch.testing.assert_close(res.losses[0], setup.search_losses.gather(0, best[None])[0], rtol=1e-5, atol=1e-6)
    finally:
        setup.close(tiny_sd)
    assert attached_controller(tiny_sd.unet) is None  # the controller is detached after the edit


def test_identity_p2p_full_injection_reproduces_initial_pass(tiny_sd):
    B = 2
    z, prompts, uncond, _ = _batch(tiny_sd, B)
    obj = _objective(B, regs=(), ws=())
    setup = prepare_edit(tiny_sd, obj, z_T=z, uncond=uncond, prompts=prompts, foreground_words=[["star"], ["ring"]],
                         guidance_scale=3.0, num_ddim_steps=T, replacements=[("star", "star"), ("ring", "ring")],
                         p2p=P2PParams(xa_interpolation_schedule=["threshold_0.0_1.0"]),
                         blend=MaskBlendParams(do_mask_blend=False))
    try:
        cfg = GuidanceConfig(guidance_scale=3.0, num_ddim_steps=T, optim_params=OptimParams(sgd_steps=0))
        res = optimise(tiny_sd, setup.objective, z_T=z, cond=setup.cond, uncond=uncond, cfg=cfg,
                       controller=setup.controller)
        torch.testing.assert_close(res.sd_images, setup.initial_images, atol=1e-5, rtol=0)
    finally:
        setup.close(tiny_sd)


def test_background_blend_pins_background_of_iterate0(tiny_sd):
    """With blend factor 1 at every step and a binary mask, the background of x_T..x_1 follows the templates."""
    B = 1
    z, prompts, uncond, images = _batch(tiny_sd, B)
    obj = _objective(B, regs=("latent_background_l2",), ws=(1.0,))
    setup = prepare_edit(tiny_sd, obj, z_T=z, uncond=uncond, prompts=prompts, foreground_words=[["star"]],
                         guidance_scale=3.0, num_ddim_steps=T, replacements=None,
                         blend=MaskBlendParams(foreground_blend=False, initial_mask_blend_schedule=["threshold_1.01"]))
    try:
        assert setup.controller is None  # masks only: plain attention in the loop
        assert setup.blend is not None and float(setup.blend.factors_BT.min()) == 1.0
        bl = setup.blend
        x = torch.randn_like(z)
        pinned = bl.apply(2, x)
        m = 1 - setup.latent_mask
        torch.testing.assert_close(pinned, m * bl.templates_TBCHW[2] + (1 - m) * x)
    finally:
        setup.close(tiny_sd)
