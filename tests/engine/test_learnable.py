"""Learnable edit schedules (mask blend, cross- and self-attention interpolation) against an independent batch-1 loop
with the reference's semantics (naive attention with `w > 0` injection, torch Adam groups, clip to [0, 1]); per-sample
independence; the per-step adjoint's schedule gradients; the ConfigErrors; compiled call sites."""
import copy

import pytest
import torch

from digin.engine.attention import attention_layers, restore_attention
from digin.engine.classifiers import load_classifier
from digin.engine.edit import MaskBlendParams, P2PParams, prepare_edit
from digin.engine.guidance import GuidanceConfig, IterateLog, OptimParams, _grads_adjoint, _grads_autograd, optimise
from digin.engine.learnable import LearnableBlend, learnable_blend, learned_schedules
from digin.engine.objectives import Objective
from digin.engine.schedule import loss_step_weights, make_ddim_schedule
from digin.errors import ConfigError
from tests.engine.naive_attention import naive_out, naive_probs

T = 4
PROMPTS = ["a photo of a red star", "a photo of a blue ring"]
WORDS = [["star"], ["ring"]]
REPL = [("star", "circle"), ("ring", "square")]


@pytest.fixture
def sd(tiny_sd):
    yield tiny_sd
    restore_attention(tiny_sd.unet)


def _batch(sd, rows):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 16, 16, generator=g)[rows]
    images = torch.rand(2, 3, 32, 32, generator=g)[rows]
    return z, sd.encode_text([""] * len(rows)), images


def _objective(rows, cutouts=0, noise=0.0):
    clf = load_classifier("tiny", num_classes=5, size=32, num_cutouts=cutouts, noise_sd=noise)
    return Objective("CE", [clf], torch.tensor([1, 3])[rows], [f"k{b}" for b in rows],
                     regularizers=["latent_background_l2"], regularizers_ws=[5.0])


def _cfg(K=3, checkpoint="step", **op):
    return GuidanceConfig(guidance_scale=3.0, num_ddim_steps=T, checkpoint=checkpoint,
                          optim_params=OptimParams(sgd_steps=K, loss_steps=2, **op))


def _edit(sd, rows, obj, xa=("cosine",), self_=("cosine",), blend=("threshold_0.5",), learn=True):
    z, uncond, images = _batch(sd, rows)
    setup = prepare_edit(
        sd, obj, z_T=z, uncond=uncond, prompts=[PROMPTS[b] for b in rows], foreground_words=[WORDS[b] for b in rows],
        guidance_scale=3.0, num_ddim_steps=T, replacements=[REPL[b] for b in rows], images=images,
        p2p=P2PParams(xa_interpolation_schedule=list(xa), self_interpolation_schedule=list(self_),
                      optimize_xa_interpolation_schedule=learn, optimize_self_interpolation_schedule=learn),
        blend=MaskBlendParams(foreground_blend=False, initial_mask_blend_schedule=list(blend),
                              optimize_mask_blend=learn))
    return setup, z, uncond


# schedules with zeros at injected steps (the reference's `w > 0` gate) and a blend with zeros (those do learn)
XA = torch.tensor([[1.0, 0.7, 0.0, 0.4], [0.5, 0.9, 0.3, 0.0]])
SELF = torch.tensor([[0.8, 0.0, 0.5, 0.3], [0.0, 0.6, 0.2, 0.9]])
BLEND = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.5, 0.0, 0.0]])


def _set_schedules(setup, rows, blend_on=None):
    """Put the test schedules into the edit (attention injected at every step, so zero factors are exercised)."""
    ctrl = setup.controller
    ctrl.set_injection(XA[rows], SELF[rows], steps=range(T))
    bl = setup.blend
    on = torch.ones(len(rows), dtype=torch.bool) if blend_on is None else blend_on[rows]
    setup.blend = LearnableBlend(bl.mask_B1hw, bl.templates_TBCHW, BLEND[rows].clone(), lr=bl.lr, on_B=on)


# ----------------------------------------------------------------------------------- the reference's loop

class RefProcessor:
    """The reference's TrackAttentionProcessor during the SGD loop: explicit softmax probabilities; where the
    step's factor is > 0 (a Python check, as in the reference) the stored map is mixed in: cross-attention into the
    conditional half, self-attention into the whole batch."""

    def __init__(self, name, is_cross, maps, factors):
        self.name, self.is_cross, self.maps, self.factors = name, is_cross, maps, factors

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 digin_step=None):
        p, v = naive_probs(attn, hidden_states, encoder_hidden_states)
        n = hidden_states.shape[0]
        w = self.factors["xa" if self.is_cross else "self"][digin_step]
        stored = self.maps["xa" if self.is_cross else "self"].get(self.name, {}).get(digin_step)
        if w > 0 and stored is not None:
            if self.is_cross:
                p = torch.cat([p[: n // 2], (1 - w) * p[n // 2:] + w * stored])
            else:
                p = (1 - w) * p + w * stored
        return naive_out(attn, p, v)


def reference_loop(sd, setup, z, uncond, K):
    """Batch 1: DDIMScheduler.step, blend x ← m·template + (1 − m)·x with m = s_i·M, the reference's processors,
    one torch Adam over [z_T, ΔC, Δ∅, blend, xa, self] (lrs 1e-3, 1e-2, 1e-2, 0.05, 0.05, 0.05), z_T re-projected and
    the schedules clipped to [0, 1] after each step → (per-iterate totals, {name: per-iterate schedules})."""
    from diffusers import DDIMScheduler

    unet = copy.deepcopy(sd.unet)
    ctrl, bl, objective, cond = setup.controller, setup.blend, setup.objective, setup.cond
    sched = {"mask_blend": bl.factors_BT[0].clone(), "xa": ctrl.xa_factors_BT[0].clone(),
             "self": ctrl.self_factors_BT[0].clone()}
    for s in sched.values():
        s.requires_grad_(True)
    maps = {"xa": {n: {s: p[0:1] for s, p in d.items()} for n, d in ctrl.cross_maps.items()},
            "self": {n: dict(d) for n, d in ctrl.self_maps.items()}}
    unet.set_attn_processor({key: RefProcessor(key.removesuffix(".processor"), cross, maps, sched)
                             for key, cross in attention_layers(unet).items()})
    sch = DDIMScheduler.from_config(sd.scheduler_config)
    sch.set_timesteps(T)
    zt = z.clone().requires_grad_(True)
    dC = torch.zeros(T, *cond.shape, requires_grad=True)
    dU = torch.zeros(T, *cond.shape, requires_grad=True)
    adam = torch.optim.Adam([{"params": [zt], "lr": 1e-3}, {"params": [dC], "lr": 1e-2}, {"params": [dU], "lr": 1e-2},
                             {"params": [sched["mask_blend"]], "lr": 0.05}, {"params": [sched["xa"]], "lr": 0.05},
                             {"params": [sched["self"]], "lr": 0.05}])
    norm0 = z.norm()
    totals, traj = [], {k: [] for k in sched}
    for k in range(K + 1):
        for name, s in sched.items():
            traj[name].append(s.detach().clone())
        x, x0s = zt, []
        for i, t in enumerate(sch.timesteps):
            m = sched["mask_blend"][i] * bl.mask_B1hw
            x = m * bl.templates_TBCHW[i] + (1 - m) * x
            e = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond + dU[i], cond + dC[i]]),
                     cross_attention_kwargs={"digin_step": i}).sample
            eu, ec = e.chunk(2)
            out = sch.step(eu + 3.0 * (ec - eu), t, x)
            x = out.prev_sample
            x0s.append(out.pred_original_sample)
        imgs = [(sd.vae.decode(x0 / sd.vae_scale).sample / 2 + 0.5).clamp(0, 1) for x0 in x0s[-2:]]
        with torch.no_grad():
            totals.append(objective(imgs[-1], x0s[-1], None)[0].item())
        if k == K:
            break
        loss = (objective(imgs[0], x0s[-2], None)[0] / 3 + 2 * objective(imgs[1], x0s[-1], None)[0] / 3).sum()
        adam.zero_grad()
        loss.backward()
        adam.step()
        with torch.no_grad():
            zt.mul_(norm0 / zt.norm())
            for s in sched.values():
                s.clamp_(0.0, 1.0)
    return torch.tensor(totals), {k: torch.stack(v) for k, v in traj.items()}


def test_learned_schedules_follow_the_reference_loop(sd):
    """Per-iteration totals and the three schedules' trajectories equal the reference-semantics loop's. The
    trajectories show its rules: attention factors at 0 stay there (injection only where w > 0), values stay in
    [0, 1]."""
    K = 3
    setup, z, uncond = _edit(sd, [0], _objective([0]))
    try:
        _set_schedules(setup, [0])
        res = optimise(sd, setup.objective, z_T=z, cond=setup.cond, uncond=uncond, cfg=_cfg(K), blend=setup.blend,
                       controller=setup.controller)
        # the edit keeps its starting schedules (the run learned copies)
        assert torch.equal(setup.controller.xa_factors_BT, XA[:1]) and torch.equal(setup.blend.factors_BT, BLEND[:1])
        totals, traj = reference_loop(sd, setup, z, uncond, K)
    finally:
        setup.close(sd)
    torch.testing.assert_close(res.losses[:, 0], totals, rtol=1e-5, atol=1e-6)
    assert set(res.schedule_trajectory) == {"mask_blend", "xa", "self"}
    for name, want in traj.items():
        got = res.schedule_trajectory[name][:, 0]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)
        assert (got[-1] - got[0]).abs().max() > 0.02, name  # the schedule really was learned
        assert got.min() >= 0 and got.max() <= 1
    assert traj["xa"][:, 2].eq(0).all() and traj["self"][:, 1].eq(0).all()  # attention factors at 0 stay
    best = int(res.best_iter[0])
    for name in traj:
        torch.testing.assert_close(res.schedules[name][0], res.schedule_trajectory[name][best, 0])


def test_learned_schedules_are_per_sample(sd):
    """A sample's run with learned schedules is the same alone and in a batch (own factors, own Adam state), and a
    sample without a blend schedule (chose 'none') learns none."""
    K = 2
    off = torch.tensor([True, False])
    setup, z, uncond = _edit(sd, [0, 1], _objective([0, 1], cutouts=2, noise=0.01))
    try:
        _set_schedules(setup, [0, 1], blend_on=off)
        setup.blend.factors_BT[1] = 0.0
        both = optimise(sd, setup.objective, z_T=z, cond=setup.cond, uncond=uncond, cfg=_cfg(K),
                        blend=setup.blend, controller=setup.controller)
    finally:
        setup.close(sd)
    assert both.schedule_trajectory["mask_blend"][:, 1].eq(0).all()  # no blend schedule: stays off
    assert (both.schedule_trajectory["mask_blend"][-1, 0] - BLEND[0]).abs().max() > 0.02
    for b in (0, 1):
        setup, z1, u1 = _edit(sd, [b], _objective([b], cutouts=2, noise=0.01))
        try:
            _set_schedules(setup, [b], blend_on=off)
            if b == 1:
                setup.blend.factors_BT[0] = 0.0
            alone = optimise(sd, setup.objective, z_T=z1, cond=setup.cond, uncond=u1, cfg=_cfg(K),
                             blend=setup.blend, controller=setup.controller)
        finally:
            setup.close(sd)
        torch.testing.assert_close(alone.losses[:, 0], both.losses[:, b], rtol=1e-5, atol=1e-5)
        for name in ("mask_blend", "xa", "self"):
            torch.testing.assert_close(alone.schedule_trajectory[name][:, 0], both.schedule_trajectory[name][:, b],
                                       rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(alone.z_T[0], both.z_T[b], rtol=0, atol=1e-5)


def test_per_step_adjoint_schedule_gradients_equal_one_autograd_graph(sd):
    """checkpoint=step pulls the loss back to the schedule factors as one autograd graph (none) and diffusers'
    block checkpointing (block) do."""
    setup, z, uncond = _edit(sd, [0, 1], _objective([0, 1]))
    try:
        _set_schedules(setup, [0, 1])
        sched = make_ddim_schedule(sd.scheduler_config, T)
        w = loss_step_weights(T, 2)
        steps = [i for i, x in enumerate(w) if x > 0]
        grads = {}
        for mode in ("none", "step", "block"):
            with learned_schedules(setup.blend, setup.controller) as (blend, learned):
                zz = z.clone().requires_grad_(True)
                dC = torch.zeros(2, T, *setup.cond.shape[1:]).requires_grad_(True)
                dU = torch.zeros(2, T, *setup.cond.shape[1:]).requires_grad_(True)
                log = IterateLog(1, 2, "cpu", False, setup.objective, learned)
                args = (sd, sched, zz, dC, dU, setup.cond, uncond, _cfg(1, mode), steps, w, 0, log)
                if mode == "step":
                    grads[mode] = _grads_adjoint(*args, blend, setup.controller)
                    continue
                if mode == "block":
                    sd.unet.enable_gradient_checkpointing()
                try:
                    grads[mode] = _grads_autograd(*args, [zz, dC, dU] + [s.factors_BT for s in learned], blend,
                                                  setup.controller)
                finally:
                    sd.unet.disable_gradient_checkpointing()
    finally:
        setup.close(sd)
    assert len(grads["none"]) == 6
    g_blend, g_xa, g_self = grads["none"][3:]
    assert g_xa[0, 2] == 0 and g_xa[1, 3] == 0 and g_xa[0, 0] != 0  # injection gated at w = 0
    assert g_self[0, 1] == 0 and g_self[1, 0] == 0 and g_self[0, 0] != 0
    assert (g_blend[:, 2:] != 0).all()  # blending acts at every step: factors at 0 get a gradient
    for mode in ("step", "block"):
        for a, b in zip(grads["none"], grads[mode]):
            assert a.abs().sum() > 0
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)


def test_prepare_edit_makes_the_chosen_schedules_learnable(sd):
    """optimize_* keys: the chosen schedules start the learned ones, with their step sizes; a sample that chose
    'none' learns no blend; without the keys nothing is learned."""
    setup, z, uncond = _edit(sd, [0, 1], _objective([0, 1]), xa=("threshold_0.0_0.5",), self_=("threshold_0.0_0.5",),
                             blend=("none", "threshold_0.5"))
    try:
        assert isinstance(setup.blend, LearnableBlend) and setup.blend.lr == 0.05
        assert setup.blend.on_B.tolist() == [c[2] != "none" for c in setup.chosen]
        assert set(setup.controller.learn) == {"xa", "self"}
        assert all(s.lr == 0.05 and s.on_B.all() for s in setup.controller.learn.values())
        res = optimise(sd, setup.objective, z_T=z, cond=setup.cond, uncond=uncond, cfg=_cfg(2), blend=setup.blend,
                       controller=setup.controller)
        start = {"mask_blend": setup.blend.factors_BT, "xa": setup.controller.xa_factors_BT,
                 "self": setup.controller.self_factors_BT}
        for name, s0 in start.items():
            torch.testing.assert_close(res.schedule_trajectory[name][0], s0)
        assert (res.schedule_trajectory["xa"][-1] - start["xa"]).abs().max() > 0.02
    finally:
        setup.close(sd)
    plain, _, _ = _edit(sd, [0, 1], _objective([0, 1]), learn=False)
    try:
        assert not isinstance(plain.blend, LearnableBlend) and plain.controller.learn == {}
        res = optimise(sd, plain.objective, z_T=z, cond=plain.cond, uncond=uncond, cfg=_cfg(1), blend=plain.blend,
                       controller=plain.controller)
        assert res.schedules == {} and res.schedule_trajectory == {}
    finally:
        plain.close(sd)


@pytest.mark.parametrize("key, p2p, blend, repl", [
    ("p2p.optimize_xa_interpolation_schedule", dict(do_p2p=False, optimize_xa_interpolation_schedule=True), {}, True),
    ("p2p.optimize_xa_interpolation_schedule", dict(optimize_xa_interpolation_schedule=True), {}, False),
    ("p2p.optimize_xa_interpolation_schedule",
     dict(xa_interpolation_schedule=["none"], optimize_xa_interpolation_schedule=True), {}, True),
    ("p2p.optimize_self_interpolation_schedule", dict(optimize_self_interpolation_schedule=True), {}, True),
    ("mask_blend.optimize_mask_blend", {}, dict(do_mask_blend=False, optimize_mask_blend=True), True),
    ("mask_blend.optimize_mask_blend", {}, dict(initial_mask_blend_schedule=["none"], optimize_mask_blend=True), True),
    ("p2p.schedule_stepsize", dict(optimize_xa_interpolation_schedule=True, schedule_stepsize=0.0), {}, True),
    ("mask_blend.mask_blend_stepsize", {}, dict(optimize_mask_blend=True, mask_blend_stepsize=-1.0), True),
])
def test_learnable_key_without_a_schedule_is_a_config_error(sd, key, p2p, blend, repl):
    z, uncond, images = _batch(sd, [0])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        prepare_edit(sd, _objective([0]), z_T=z, uncond=uncond, prompts=PROMPTS[:1], foreground_words=WORDS[:1],
                     guidance_scale=3.0, num_ddim_steps=T, replacements=REPL[:1] if repl else None, images=images,
                     p2p=P2PParams(**p2p), blend=MaskBlendParams(**blend))
    assert "\n" not in str(err.value)


def test_learned_blend_under_compiled_call_sites(tiny_sd_dir):
    """Blend-only edit (no attention controller: every UNet call compiled, aot_eager on CPU): the learned blend
    schedule and the totals equal the eager run's, without a compile fallback."""
    import torch._dynamo

    from digin.engine.models import load_sd
    from digin.engine.prepare import prepare_sd
    from digin.engine.presets import resolve_compute

    runs = {}
    for mode in ("eager", "compiled"):
        m = load_sd(tiny_sd_dir, dtype="fp32")
        if mode == "compiled":
            torch._dynamo.reset()
            prepare_sd(m, resolve_compute("eager", "cpu", compile=True, compile_backend="aot_eager"))
        z, uncond, images = _batch(m, [0, 1])
        setup = prepare_edit(m, _objective([0, 1]), z_T=z, uncond=uncond, prompts=PROMPTS, foreground_words=WORDS,
                             guidance_scale=3.0, num_ddim_steps=T, images=images,
                             blend=MaskBlendParams(foreground_blend=False, optimize_mask_blend=True,
                                                   initial_mask_blend_schedule=["threshold_0.5"]))
        assert setup.controller is None
        runs[mode] = optimise(m, setup.objective, z_T=z, cond=setup.cond, uncond=uncond, cfg=_cfg(2),
                              blend=setup.blend)
        if mode == "compiled":
            assert not m.runtime.fell_back() and m.runtime.compiled()["unet"]
    eager, comp = runs["eager"], runs["compiled"]
    torch.testing.assert_close(comp.losses, eager.losses, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(comp.schedule_trajectory["mask_blend"], eager.schedule_trajectory["mask_blend"],
                               rtol=1e-4, atol=1e-5)
    assert (eager.schedule_trajectory["mask_blend"][-1] - eager.schedule_trajectory["mask_blend"][0]).abs().max() > 0.02


def test_learnable_blend_keeps_the_blend(sd):
    mask = torch.ones(2, 1, 4, 4)
    from digin.engine.sampling import Blend

    bl = Blend(mask, torch.zeros(T, 2, 4, 4, 4), torch.full((2, T), 0.5))
    lb = learnable_blend(bl, 0.1, torch.tensor([True, False]))
    x = torch.randn(2, 4, 4, 4)
    torch.testing.assert_close(lb.apply(1, x), bl.apply(1, x))
    assert lb.lr == 0.1 and lb.on_B.tolist() == [True, False]
