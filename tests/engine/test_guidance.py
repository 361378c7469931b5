"""The batched DiG-IN loop: checkpointing, batch independence, parity with a naive loop, NaN handling."""
import pytest
import torch
import torch.nn.functional as F

from digin.engine.guidance import (GuidanceConfig, IterateLog, MaskedOptimizer, _grads_adjoint,
                                   _grads_autograd, cosine_lrs, optimise)
from digin.engine.schedule import loss_step_weights, make_ddim_schedule
from tests.engine.family_checks import NoiseCE, inputs, tiny_net
from tests.engine.family_checks import guidance_cfg as _cfg

T = 4  # DDIM steps in these tests (the T of guidance_cfg)


WORDS = ["a red star", "a blue circle", "a green square", "a cat", "a dog"]


def _inputs(sd, B, seed=0):
    return inputs(sd, B, seed, WORDS)


def test_per_step_adjoint_gradients_equal_one_autograd_graph(tiny_sd):
    """checkpoint=step (no-grad chain, then one recompute + VJP per step) gives the gradients of one autograd graph
    over the chain (checkpoint=none) and of diffusers' block checkpointing (block)."""
    z, cond, uncond = _inputs(tiny_sd, 2)
    obj = NoiseCE(tiny_net(), torch.tensor([1, 3]), ["a", "b"])
    sched = make_ddim_schedule(tiny_sd.scheduler_config, T)
    w = loss_step_weights(T, 3)
    steps = [i for i, x in enumerate(w) if x > 0]
    grads = {}
    for mode in ("none", "step", "block"):
        zz = z.clone().requires_grad_(True)
        dC = torch.zeros(2, T, *cond.shape[1:]).requires_grad_(True)
        dU = torch.zeros(2, T, *cond.shape[1:]).requires_grad_(True)
        cfg = GuidanceConfig(checkpoint=mode, num_ddim_steps=T)
        log = IterateLog(1, 2, "cpu", False, obj)
        args = (tiny_sd, sched, zz, dC, dU, cond, uncond, cfg, steps, w, 0, log)
        if mode == "step":
            grads[mode] = _grads_adjoint(*args, None, None)
            continue
        if mode == "block":
            tiny_sd.unet.enable_gradient_checkpointing()
        try:
            grads[mode] = _grads_autograd(*args, [zz, dC, dU], None, None)
        finally:
            tiny_sd.unet.disable_gradient_checkpointing()
    for mode in ("step", "block"):
        for a, b in zip(grads["none"], grads[mode]):
            assert a.abs().sum() > 0
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-8)


def test_batch_independence_with_early_stopping(tiny_sd):
    B = 3
    z, cond, uncond = _inputs(tiny_sd, B)
    targets = torch.tensor([0, 2, 4])
    keys = ["s0", "s1", "s2"]
    net = tiny_net()
    # find a threshold that stops exactly one sample early: run once without stopping
    base = optimise(tiny_sd, NoiseCE(net, targets, keys), z_T=z, cond=cond, uncond=uncond, cfg=_cfg(K=3))
    aug = base.aug_losses  # (K, B)
    thresh = float(aug[1].min() + 1e-6) if aug[1].argmin() != aug[0].argmin() else float(aug[1].min()) + 1e-6
    cfg = _cfg(K=3, early_stopping_loss=thresh)
    together = optimise(tiny_sd, NoiseCE(net, targets, keys), z_T=z, cond=cond, uncond=uncond, cfg=cfg)
    assert together.stopped_early.sum() >= 1 and not together.stopped_early.all()
    for b in range(B):
        idx = torch.tensor([b])
        alone = optimise(tiny_sd, NoiseCE(net, targets, keys).select(idx), z_T=z[idx], cond=cond[idx],
                         uncond=uncond[idx], cfg=cfg)
        assert bool(alone.stopped_early[0]) == bool(together.stopped_early[b])
        assert int(alone.num_logged[0]) == int(together.num_logged[b])
        torch.testing.assert_close(alone.z_T[0], together.z_T[b], atol=1e-5, rtol=0)
        torch.testing.assert_close(alone.cond_delta[0], together.cond_delta[b], atol=1e-5, rtol=0)
        torch.testing.assert_close(alone.uncond_delta[0], together.uncond_delta[b], atol=1e-5, rtol=0)
        torch.testing.assert_close(alone.losses[:, 0], together.losses[:, b], atol=1e-5, rtol=1e-5, equal_nan=True)
        torch.testing.assert_close(alone.ours_images[0], together.ours_images[b], atol=1e-5, rtol=0)


def test_all_samples_stopped_skips_the_remaining_iterations(tiny_sd):
    z, cond, uncond = _inputs(tiny_sd, 2)
    obj = NoiseCE(tiny_net(), torch.tensor([1, 3]), ["a", "b"])
    calls = []
    hook = tiny_sd.unet.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        cfg = _cfg(K=4, early_stopping_loss=1e9)  # every sample stops on its first augmented loss
        cfg.keep_trajectory = True
        res = optimise(tiny_sd, obj, z_T=z, cond=cond, uncond=uncond, cfg=cfg)
    finally:
        hook.remove()
    assert len(calls) == T  # one chain (iterate 0), no backward recomputation, no further iterations
    assert res.stopped_early.all() and res.num_logged.tolist() == [1, 1] and res.best_iter.tolist() == [0, 0]
    assert torch.isfinite(res.losses[0]).all() and torch.isnan(res.losses[1:]).all()
    assert res.trajectory.shape[0] == 5 and torch.equal(res.trajectory[4], res.trajectory[0])
    torch.testing.assert_close(res.ours_images, res.sd_images)
    torch.testing.assert_close(res.z_T, z)


def _naive_loop(sd, net, z, cond, uncond, target, K, dtype, gs=3.0):
    """An independent batch-1 loop (DDIMScheduler.step, unet, vae, torch Adam) in `dtype` (float64: the truth) →
    (per-iterate losses, final ΔC, final Δ∅)."""
    import copy

    from diffusers import DDIMScheduler

    unet, vae, net = (copy.deepcopy(m).to(dtype) for m in (sd.unet, sd.vae, net))
    z, cond, uncond = z.to(dtype), cond.to(dtype), uncond.to(dtype)
    sch = DDIMScheduler.from_config(sd.scheduler_config)
    sch.set_timesteps(T)
    zt = z.clone().requires_grad_(True)
    dC = torch.zeros(T, 1, *cond.shape[1:], dtype=dtype, requires_grad=True)
    dU = torch.zeros(T, 1, *cond.shape[1:], dtype=dtype, requires_grad=True)
    adam = torch.optim.Adam([{"params": [zt], "lr": 0.001}, {"params": [dC], "lr": 0.01}, {"params": [dU], "lr": 0.01}])
    norm0 = z.norm()
    losses = []
    for k in range(K + 1):
        x = zt
        x0s = []
        for i, t in enumerate(sch.timesteps):
            e = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond + dU[i], cond + dC[i]])).sample
            eu, ec = e.chunk(2)
            step = sch.step(eu + gs * (ec - eu), t, x)
            x, x0 = step.prev_sample, step.pred_original_sample
            x0s.append(x0)
        imgs = [(vae.decode(x0 / 0.18215).sample / 2 + 0.5).clamp(0, 1) for x0 in x0s[-2:]]
        with torch.no_grad():
            losses.append(F.cross_entropy(net(imgs[-1]), target).item())
        if k == K:
            break
        loss = (1 / 3) * F.cross_entropy(net(imgs[0]), target) + (2 / 3) * F.cross_entropy(net(imgs[1]), target)
        adam.zero_grad()
        loss.backward()
        adam.step()
        with torch.no_grad():
            zt.mul_(norm0 / zt.norm())
    return torch.tensor(losses, dtype=torch.float64), dC.detach()[:, 0], dU.detach()[:, 0]


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_parity_with_naive_diffusers_loop(tiny_sd):
    """digin (fp32) follows an independent naive loop: its per-iterate losses equal the fp32 loop's, and its deltas
    are within 3e-6 of the float64 loop's (the truth). With Adam's bias corrections in fp32 (before the fix) every
    step was ~6.4e-6 short and the deltas were 6.5e-6 off (vs 1.3e-6 now)."""
    z, cond, uncond = _inputs(tiny_sd, 1, seed=3)
    target = torch.tensor([2])
    net = tiny_net(1)
    K = 3
    ours = optimise(tiny_sd, NoiseCE(net, target, ["k"], noise=0.0), z_T=z, cond=cond, uncond=uncond,
                    cfg=_cfg(K=K, loss_steps=2), )
    assert ours.best_iter.tolist() == [K]  # the deltas compared are the final ones
    naive, dC32, dU32 = _naive_loop(tiny_sd, net, z, cond, uncond, target, K, torch.float32)
    torch.testing.assert_close(ours.losses[:, 0].double(), naive, rtol=1e-6, atol=0)
    assert len(set(round(v, 6) for v in naive.tolist())) > 1  # the trajectory actually moves
    truth, dC64, dU64 = _naive_loop(tiny_sd, net, z, cond, uncond, target, K, torch.float64)
    torch.testing.assert_close(ours.losses[:, 0].double(), truth, rtol=1e-6, atol=0)
    for mine, fp32, fp64 in ((ours.cond_delta[0], dC32, dC64), (ours.uncond_delta[0], dU32, dU64)):
        assert _rel(mine, fp64) < 3e-6, _rel(mine, fp64)
        assert _rel(mine, fp32) < 3e-6, _rel(mine, fp32)


def test_optimisation_raises_target_confidence(tiny_sd):
    B = 3
    z, cond, uncond = _inputs(tiny_sd, B, seed=5)
    targets = torch.tensor([1, 2, 3])
    net = tiny_net(2)
    res = optimise(tiny_sd, NoiseCE(net, targets, ["x", "y", "w"]), z_T=z, cond=cond, uncond=uncond,
                   cfg=_cfg(K=6, sgd_stepsize=0.05))
    conf = res.confidences["conf_0"]
    final_best = conf.gather(0, res.best_iter[None])[0]
    assert (final_best > conf[0]).all(), (conf[0], final_best)
    assert (res.losses.gather(0, res.best_iter[None])[0] < res.losses[0]).all()
    # `sd` is iterate 0 and `ours` differs from it
    assert (res.ours_images - res.sd_images).abs().amax() > 1e-4


def test_two_classifier_loss_moves_confidences_apart(tiny_sd):
    B = 2
    z, cond, uncond = _inputs(tiny_sd, B, seed=7)
    targets = torch.tensor([1, 4])
    nets = [tiny_net(3), tiny_net(4)]
    res = optimise(tiny_sd, NoiseCE(None, targets, ["p", "q"], nets=nets), z_T=z, cond=cond, uncond=uncond,
                   cfg=_cfg(K=6, sgd_stepsize=0.05))
    gap = res.confidences["conf_0"] - res.confidences["conf_1"]
    best = gap.gather(0, res.best_iter[None])[0]
    assert (best > gap[0]).all(), (gap[0], best)


class NaNAt(NoiseCE):
    def __init__(self, *a, bad=1, at=2, **kw):
        super().__init__(*a, **kw)
        self.bad, self.at = bad, at

    def __call__(self, img, z, salt):
        total, parts = super().__call__(img, z, salt)
        if salt is not None and salt[0] == self.at:
            total = total.clone()
            total[self.bad] = float("nan")
        return total, parts


def test_nan_in_one_sample_stops_only_that_sample(tiny_sd):
    B = 3
    z, cond, uncond = _inputs(tiny_sd, B, seed=9)
    targets = torch.tensor([0, 1, 2])
    keys = ["n0", "n1", "n2"]
    net = tiny_net(5)
    cfg = _cfg(K=4)
    clean = optimise(tiny_sd, NoiseCE(net, targets, keys), z_T=z, cond=cond, uncond=uncond, cfg=cfg)
    bad = optimise(tiny_sd, NaNAt(net, targets, keys, bad=1, at=2), z_T=z, cond=cond, uncond=uncond, cfg=cfg)
    assert bad.nonfinite.tolist() == [False, True, False]
    assert int(bad.num_logged[1]) == 3 and int(bad.num_logged[0]) == 5
    for b in (0, 2):
        torch.testing.assert_close(bad.z_T[b], clean.z_T[b], atol=1e-6, rtol=0)
        torch.testing.assert_close(bad.losses[:, b], clean.losses[:, b], atol=1e-6, rtol=0)
    assert torch.isfinite(bad.z_T).all() and torch.isfinite(bad.ours_images).all()


def test_masked_adam_matches_torch_adam_and_respects_mask():
    torch.manual_seed(0)
    p = torch.randn(3, 5)
    for kind, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        ref = p.clone().requires_grad_(True)
        opt_ref = cls([ref], lr=0.1)
        mine = MaskedOptimizer(kind, [p.clone()], [0.1])
        frozen = mine.params[0][1].clone()
        active = torch.tensor([True, False, True])
        for _ in range(3):
            g = torch.randn(3, 5)
            ref.grad = g.clone()
            opt_ref.step()
            mine.step([g], active)
        # torch's own formulas and float64 bias corrections: equal to rounding (fp32 corrections were ~1e-6 off)
        torch.testing.assert_close(mine.params[0][[0, 2]], ref.detach()[[0, 2]], rtol=1e-7, atol=1e-7)
        assert torch.equal(mine.params[0][1], frozen)


def test_adam_steps_follow_float64_adam():
    """Against torch Adam in float64 (the truth), per sample with its own step count: the fp32 optimiser's
    displacement is off by fp32 rounding only (< 5e-7 relative). With the bias corrections in fp32 it was 6e-6."""
    g = torch.Generator().manual_seed(0)
    B, steps = 3, 25
    p0 = torch.zeros(B, 40, dtype=torch.float64)  # from 0: the variable's own rounding stays below the step's
    grads = torch.randn(steps, B, 40, generator=g, dtype=torch.float64)
    active = torch.rand(steps, B, generator=g) > 0.3
    mine = MaskedOptimizer("adam", [p0.float().clone()], [0.01])
    for k in range(steps):
        mine.step([grads[k].float()], active[k])
    for b in range(B):
        ref = p0[b].clone().requires_grad_(True)
        opt = torch.optim.Adam([ref], lr=0.01)
        for k in range(steps):
            if active[k, b]:
                ref.grad = grads[k, b].float().double()
                opt.step()
        moved = ref.detach() - p0[b]
        err = float((mine.params[0][b].double() - ref.detach()).norm() / moved.norm())
        assert err < 5e-7, (b, err)


def _reference_groups(factors, stepsize=0.01, K=10):
    """The reference's optimiser: one Adam over the [z_T, ΔC, Δ∅] groups (lr = stepsize·factor) and one
    CosineAnnealingLR(T_max=sgd_steps, eta_min=stepsize/10) over all of them."""
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(2, 3, generator=g), torch.randn(2, 4, 5, generator=g), torch.randn(2, 4, 5, generator=g)]
    ref = [p.clone().requires_grad_(True) for p in params]
    opt = torch.optim.Adam([{"params": [p], "lr": stepsize * f} for p, f in zip(ref, factors)], lr=stepsize)
    return params, ref, opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=K, eta_min=stepsize / 10)


@pytest.mark.parametrize("factors", [(0.1, 1.0, 1.0), (0.05, 1.0, 0.5)])
def test_cosine_learning_rates_are_the_references_per_group(factors):
    """Per-group lrs equal torch's CosineAnnealingLR at every step; the absolute floor eta_min = stepsize/10 is
    shared, so z_T (factor 0.1: base lr = floor) stays at 1e-3 and a group below the floor rises to it. Adam
    driven by these lrs follows torch's Adam + scheduler."""
    K, stepsize = 10, 0.01
    params, ref, opt_ref, sch = _reference_groups(factors, stepsize, K)
    mine = MaskedOptimizer("adam", params, [stepsize * f for f in factors])
    active = torch.ones(2, dtype=torch.bool)
    g = torch.Generator().manual_seed(1)
    for k in range(K):
        lrs = cosine_lrs(mine.base_lrs, k, K, stepsize / 10)
        assert lrs == pytest.approx([grp["lr"] for grp in opt_ref.param_groups], rel=1e-12, abs=1e-15)
        grads = [torch.randn(p.shape, generator=g) for p in params]
        for p, gr in zip(ref, grads):
            p.grad = gr.clone()
        opt_ref.step()
        sch.step()
        mine.step(grads, active, lrs)
    for p, r in zip(mine.params, ref):
        torch.testing.assert_close(p, r.detach(), rtol=1e-7, atol=1e-7)  # torch's formulas, float64 corrections
    if factors[0] == 0.1:
        assert all(lr == pytest.approx(1e-3) for lr in (cosine_lrs(mine.base_lrs, k, K, 1e-3)[0] for k in range(K)))
    else:
        assert cosine_lrs(mine.base_lrs, K - 1, K, 1e-3)[0] > mine.base_lrs[0]


def test_optimise_steps_with_the_per_group_cosine_rates(tiny_sd, monkeypatch):
    """optimise hands the optimiser the reference's per-group cosine lrs (z_T, ΔC, Δ∅) at each SGD step."""
    seen = []
    step = MaskedOptimizer.step

    def spy(self, grads, active_B, lrs=None):
        seen.append(list(self.base_lrs if lrs is None else lrs))
        return step(self, grads, active_B, lrs)

    monkeypatch.setattr(MaskedOptimizer, "step", spy)
    z, cond, uncond = _inputs(tiny_sd, 1)
    cfg = _cfg(K=3, sgd_scheduler="cosine", sgd_stepsize=0.01, uncond_lr_factor=0.5)
    optimise(tiny_sd, NoiseCE(tiny_net(), torch.tensor([1]), ["a"]), z_T=z, cond=cond, uncond=uncond, cfg=cfg)
    base = [0.001, 0.01, 0.005]
    assert seen == [pytest.approx(cosine_lrs(base, k, 3, 0.001), rel=1e-12) for k in range(3)]
    assert [lrs[0] for lrs in seen] == pytest.approx([0.001] * 3)
