"""Editing set-up shared by UVCEs, neuron counterfactuals and masked txt2img (the reference's UVCE editing path).

One no-grad initial pass with cross-attention capture → foreground masks (cross-attention, optional SAM-HQ,
post-processing) → Prompt-to-Prompt re-indexing to the edited prompt → latent blend templates → a search over
(xa × self × blend) schedule candidates that keeps, per sample, the candidate with the lowest non-augmented
objective. Where the UNet call compiles, the search runs one candidate of all B samples per chain (as the reference
runs them one at a time): its UNet calls then have the SGD chain's rows and reuse its compiled graph (the attention
controller's one no-grad graph, engine/attention.py), instead of compiling a UNet, decoder and classifier graph of
N·B rows for one use per batch; eager, all candidates run as one batch of N·B rows.
`guidance.optimise(setup.objective, blend=..., controller=...)` takes the result as it is.
Masks are computed whenever blending or a masked regulariser needs them (no "needs a masked regulariser" quirk).
Schedules switched to learnable (`optimize_*`) start from the chosen candidate and travel with the blend /
controller, so `optimise` learns them (engine/learnable.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from digin.errors import ConfigError
from digin.fields import RATE, key

from .attention import AttentionController, install_attention, restore_attention
from .learnable import ScheduleSpec, has_schedule, learnable_blend
from .p2p import (expand_candidates, make_blend, replacement_matrix, schedule_grid, search_schedules, take_best,
                  token_mean_embedder, token_weights, word_token_positions)
from .sampling import decode_latents, run_chain, unet_compiles
from .schedule import make_schedule

from .segment import SegmentationConfig, mask_steps, segment_foreground


@dataclass
class P2PParams:
    """The reference's PromptToPromptParams (UVCE defaults)."""

    SECTION = "p2p (Prompt-to-Prompt: the start label's words → the target's)"
    do_p2p: bool = key(True, "edit the prompt with Prompt-to-Prompt attention control")
    xa_interpolation_schedule: list | None = key(
        help="cross-attention schedules searched per sample (threshold_<from>_<to>: injected over that part of "
             "the steps)", factory=lambda: ["threshold_0.0_0.3", "threshold_0.0_0.4", "threshold_0.0_0.5"])
    self_interpolation_schedule: list | None = key(None, "self-attention schedules searched per sample (None: none)")
    optimize_xa_interpolation_schedule: bool = key(
        False, "learn the chosen cross-attention schedule with the image (per sample, own optimiser group, "
               "clamped to [0, 1])")
    optimize_self_interpolation_schedule: bool = key(False, "learn the chosen self-attention schedule (as above)")
    schedule_stepsize: float = key(0.05, "absolute step size of the learned attention schedules", rule=RATE)


@dataclass
class MaskBlendParams:
    """The reference's MaskBlendParams; foreground_blend False pins the background (UVCE)."""

    SECTION = "mask_blend (which part of the image may change)"
    do_mask_blend: bool = key(True, "blend each step's latent with the original's outside (or inside) the mask")
    foreground_blend: bool = key(True, "true: keep the object, change the rest; false: pin the background")
    initial_mask_blend_schedule: list | None = key(
        help="blend schedules searched per sample (threshold_<t>: blend while t ≥ that)",
        factory=lambda: ["threshold_0.3"])
    optimize_mask_blend: bool = key(False, "learn the chosen blend schedule with the image (as the p2p ones)")
    mask_blend_stepsize: float = key(0.05, "absolute step size of the learned blend schedule", rule=RATE)


@dataclass
class EditSetup:
    cond: torch.Tensor  # (B, L, D) conditioning of the (edited) prompt
    prompts: list  # the edited prompts
    controller: AttentionController | None
    blend: object | None  # sampling.Blend with the chosen per-sample factors
    initial_images: torch.Tensor  # (B,3,H,W) decode of the initial pass (null-text reconstruction for img2img)
    px_mask: torch.Tensor | None  # (B,1,H,W) foreground
    latent_mask: torch.Tensor | None  # (B,1,h,w) foreground
    word_maps: list | None  # per sample: word → (1,H,W) unsquashed map
    chosen: list  # per sample: (xa, self, blend) schedule names
    search_losses: torch.Tensor | None  # (N, B) non-augmented objective per candidate
    objective: object  # the objective given, comparing against this edit's reference image/latent and masks

    def close(self, sd):
        if self.controller is not None:
            restore_attention(sd.unet)
            self.controller.free()


def _names(x):
    return None if x is None else ([x] if isinstance(x, str) else list(x))


def _with_reference(objective, **ref):
    """The objective comparing against `ref` (an objective without regularisers may not take one)."""
    return objective.with_reference(**ref) if hasattr(objective, "with_reference") else objective


def _mask_queries(seg_cfg: SegmentationConfig, latent_hw: int) -> int:
    """Query count of the cross-attention maps the masks come from: the reference's map resolution is for 64²
    latents, scaled to this model's latent size."""
    res = seg_cfg.xa_map_resolution
    return (res * latent_hw // 64) ** 2 if latent_hw >= 64 else res * res


def _attach_controller(sd, T: int, grid, mask_q: int | None, seg_cfg, use_p2p: bool):
    """An attention controller capturing what the masks (mask_q set) and P2P need, installed in the UNet."""
    controller = AttentionController()
    if mask_q is not None:
        controller.capture_cross(mask_steps(T, seg_cfg.xa_start_t, seg_cfg.xa_end_t), queries={mask_q})
    if use_p2p:
        xa_steps = (grid.xa_NT.amax(0) > 0).nonzero().flatten().tolist()
        if xa_steps:
            controller.capture_cross(xa_steps)
        se_steps = (grid.self_NT.amax(0) > 0).nonzero().flatten().tolist()
        if se_steps:
            controller.capture_self(se_steps)
    install_attention(sd.unet, controller)
    return controller


def _foreground(sd, controller, mask_q, prompts, foreground_words, T, latent_size, img0, seg_cfg, generator):
    """Foreground masks from the captured cross-attention (+ SAM-HQ) → (px (B,1,H,W), latent (B,1,h,w),
    per-sample word maps)."""
    from .segment import word_maps  # local: `word_maps` is also a local name in this module

    dev = img0.device
    weights = torch.stack([token_weights(word_token_positions(sd.tokenizer, p), kws, sd.max_tokens)
                           for p, kws in zip(prompts, foreground_words)]).to(dev)
    maps = controller.cross_maps_at(mask_q, mask_steps(T, seg_cfg.xa_start_t, seg_cfg.xa_end_t))
    seg = segment_foreground(maps, weights, latent_size, tuple(img0.shape[-2:]), seg_cfg,
                             images_B3HW=img0 if seg_cfg.sam_segmentation else None, generator=generator)
    wmaps = word_maps(maps, [word_token_positions(sd.tokenizer, p) for p in prompts], tuple(img0.shape[-2:]))
    return seg["px"], seg["latent"], wmaps


def _p2p_prompts(sd, controller, prompts, replacements, dev):
    """Prompt-to-Prompt: re-index the captured cross-attention to the edited prompts → (prompts, cond)."""
    embed = token_mean_embedder(sd)
    new_prompts, mats = list(prompts), []
    for b, (src, tgt) in enumerate(replacements):
        new_prompts[b], M = replacement_matrix(sd.tokenizer, prompts[b], src, tgt, embed=embed,
                                               num_tokens=sd.max_tokens)
        mats.append(M)
    controller.reindex_cross(torch.stack(mats).to(dev))
    return new_prompts, sd.encode_text(new_prompts)


def _search(sd, sched, objective, grid, controller, use_p2p, blend, latent_mask, templates, z_T, cond, uncond,
            guidance_scale, guidance_rescale, search_chunk):
    """Per sample, the (xa × self × blend) candidate with the lowest non-augmented objective → (best (B,) row
    indices into the grid, losses (N, B))."""
    B, dev = z_T.shape[0], z_T.device

    def evaluate(xa_MT, self_MT, blend_MT, n):
        if controller is not None and use_p2p:
            controller.set_injection(xa_MT.to(dev), self_MT.to(dev) if self_MT.abs().sum() > 0 else None)
        bl = (make_blend(latent_mask, templates, blend_MT.to(dev), foreground=blend.foreground_blend)
              if blend.do_mask_blend else None)
        out = run_chain(sd, sched, expand_candidates(z_T, n), expand_candidates(cond, n),
                        expand_candidates(uncond, n), guidance_scale, blend=bl, controller=controller,
                        guidance_rescale=guidance_rescale)
        obj = objective.select(torch.arange(B).repeat(n))
        total, _ = obj(decode_latents(sd, out.x0_last), out.x0_last, None)
        return torch.nan_to_num(total, nan=float("inf"))

    return search_schedules(evaluate, grid, B, search_chunk)


def _real_schedules(names) -> bool:
    return any(n not in (None, "none") for n in (_names(names) or []))


def check_learnable(p2p: P2PParams, blend: MaskBlendParams, use_p2p: bool) -> None:
    """A learnable schedule needs a schedule to learn: one-line ConfigError naming the key otherwise."""
    wants = (("p2p.optimize_xa_interpolation_schedule", p2p.optimize_xa_interpolation_schedule,
              use_p2p and _real_schedules(p2p.xa_interpolation_schedule),
              "Prompt-to-Prompt (p2p.do_p2p with word replacements) and a p2p.xa_interpolation_schedule"),
             ("p2p.optimize_self_interpolation_schedule", p2p.optimize_self_interpolation_schedule,
              use_p2p and _real_schedules(p2p.self_interpolation_schedule),
              "Prompt-to-Prompt (p2p.do_p2p with word replacements) and a p2p.self_interpolation_schedule"),
             ("mask_blend.optimize_mask_blend", blend.optimize_mask_blend,
              blend.do_mask_blend and _real_schedules(blend.initial_mask_blend_schedule),
              "mask_blend.do_mask_blend and a mask_blend.initial_mask_blend_schedule"))
    for name, on, exists, needs in wants:
        if on and not exists:
            raise ConfigError(f"{name}=true but there is no schedule to learn: it needs {needs} other than none")
    steps = (("p2p.schedule_stepsize", p2p.schedule_stepsize,
              p2p.optimize_xa_interpolation_schedule or p2p.optimize_self_interpolation_schedule),
             ("mask_blend.mask_blend_stepsize", blend.mask_blend_stepsize, blend.optimize_mask_blend))
    for key, lr, used in steps:
        if used and not (math.isfinite(float(lr)) and float(lr) > 0):
            raise ConfigError(f"{key} must be a positive number, got {lr!r}")


def _attention_learn(p2p: P2PParams, chosen: list, dev) -> dict:
    """controller.learn for the switched-on attention schedules; a sample that chose 'none' learns nothing."""
    learn = {}
    for name, on, col in (("xa", p2p.optimize_xa_interpolation_schedule, 0),
                          ("self", p2p.optimize_self_interpolation_schedule, 1)):
        if on:
            learn[name] = ScheduleSpec(float(p2p.schedule_stepsize), has_schedule([c[col] for c in chosen]).to(dev))
    return learn


def _controller_for_sgd(sd, controller, use_p2p: bool, xa_BT, self_BT):
    """P2P: the controller injecting each sample's chosen schedules. Masks only: None, the UNet back on plain fused
    attention for the SGD loop."""
    if use_p2p:
        controller.set_injection(xa_BT, self_BT if self_BT.abs().sum() > 0 else None)
        return controller
    controller.clear_injection()
    restore_attention(sd.unet)
    controller.free()
    return None


def prepare_edit(sd, objective, *, z_T: torch.Tensor, uncond: torch.Tensor, prompts: list[str],
                 foreground_words: list[list[str]], guidance_scale: float, num_ddim_steps: int,
                 replacements: list[tuple[str, str]] | None = None, images: torch.Tensor | None = None,
                 p2p: P2PParams | None = None, blend: MaskBlendParams | None = None,
                 segmentation: SegmentationConfig | None = None, search_chunk: int | None | str = "auto",
                 generator: torch.Generator | None = None, solver: str = "ddim",
                 guidance_rescale: float = 0.0) -> EditSetup:
    """Run the initial pass and everything derived from it for a batch of B samples.

    images: real images in [0,1] (img2img; used for SAM-HQ and as the regularisers' reference); None for txt2img
    (the initial output becomes the reference, as in the reference). replacements: per-sample (source, target)
    words for P2P (identity pairs keep the structure); None disables the prompt edit. The objective is not
    changed: `setup.objective` is the one to optimise, with this edit's reference and masks. search_chunk: schedule
    candidates per chain (None: all at once, N·B rows; "auto": one when the UNet call compiles, else all).
    """
    p2p = p2p or P2PParams(do_p2p=False)
    blend = blend or MaskBlendParams(do_mask_blend=False)
    seg_cfg = segmentation or SegmentationConfig(sam_segmentation=False)
    T, B, dev = num_ddim_steps, z_T.shape[0], z_T.device
    sched = make_schedule(sd.scheduler_config, T, solver).to(dev)
    if search_chunk == "auto":
        search_chunk = 1 if unet_compiles(sd) else None
    use_p2p = bool(p2p.do_p2p and replacements is not None)
    check_learnable(p2p, blend, use_p2p)
    need_masks = bool(blend.do_mask_blend or getattr(objective, "needs_masks", False))
    grid = schedule_grid(_names(p2p.xa_interpolation_schedule) if use_p2p else None,
                         _names(p2p.self_interpolation_schedule) if use_p2p else None,
                         _names(blend.initial_mask_blend_schedule) if blend.do_mask_blend else None, T)

    cond0 = sd.encode_text(prompts)
    mask_q = _mask_queries(seg_cfg, z_T.shape[-1]) if need_masks else None
    controller = _attach_controller(sd, T, grid, mask_q, seg_cfg, use_p2p) if use_p2p or need_masks else None

    with torch.no_grad():
        init = run_chain(sd, sched, z_T, cond0, uncond, guidance_scale, controller=controller,
                         guidance_rescale=guidance_rescale,
                         record_latents=blend.do_mask_blend)
        initial_images = decode_latents(sd, init.x0_last)
        img0 = images.to(dev).float() if images is not None else initial_images
        z0 = sd.encode_image(img0) if images is not None else init.x0_last
        objective = _with_reference(objective, img0=img0, z0=z0)

        px_mask = latent_mask = wmaps = None
        if need_masks:
            px_mask, latent_mask, wmaps = _foreground(sd, controller, mask_q, prompts, foreground_words, T,
                                                      tuple(z_T.shape[-2:]), img0, seg_cfg, generator)
            objective = _with_reference(objective, px_mask=px_mask, latent_mask=latent_mask)

        new_prompts, cond = list(prompts), cond0
        if controller is not None:
            controller.stop_capture()
        if use_p2p:
            new_prompts, cond = _p2p_prompts(sd, controller, prompts, replacements, dev)

        templates = torch.stack(init.latents) if blend.do_mask_blend else None
        chosen = [grid.names[0]] * B
        losses_NB = None
        if grid.size > 1:
            best, losses_NB = _search(sd, sched, objective, grid, controller, use_p2p, blend, latent_mask, templates,
                                      z_T, cond, uncond, guidance_scale, guidance_rescale, search_chunk)
            chosen = [grid.names[int(i)] for i in best.tolist()]
            rows = best.cpu()
        else:
            rows = torch.zeros(B, dtype=torch.long)
        xa_BT, self_BT, blend_BT = (t[rows].to(dev) for t in (grid.xa_NT, grid.self_NT, grid.blend_NT))

    if controller is not None:
        controller = _controller_for_sgd(sd, controller, use_p2p, xa_BT, self_BT)
    if controller is not None:  # P2P: the attention schedules switched to learnable
        controller.learn = _attention_learn(p2p, chosen, dev)
    bl = make_blend(latent_mask, templates, blend_BT, foreground=blend.foreground_blend) if blend.do_mask_blend else None
    if bl is not None and blend.optimize_mask_blend:
        bl = learnable_blend(bl, blend.mask_blend_stepsize, has_schedule([c[2] for c in chosen]))
    return EditSetup(cond=cond, prompts=new_prompts, controller=controller, blend=bl, initial_images=initial_images,
                     px_mask=px_mask, latent_mask=latent_mask, word_maps=wmaps, chosen=chosen,
                     search_losses=losses_NB, objective=objective)


__all__ = ["P2PParams", "MaskBlendParams", "EditSetup", "prepare_edit", "take_best"]
