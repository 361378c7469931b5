"""engine.compile: compiled step functions (aot_eager on CPU) agree with eager and do not recompile across
timesteps / SGD steps / batches of the same shape; compile failures fall back to eager with a warning."""
import contextlib

import pytest
import torch
import torch._dynamo

from digin.engine.compile import (CompileConfig, CompiledFunction, build_step_functions, compile_sd, pad_batch,
                                  uncompile_sd, valid_mask)
from digin.engine.schedule import make_ddim_schedule

AOT = CompileConfig(backend="aot_eager")


@contextlib.contextmanager
def no_recompiles():
    old = torch._dynamo.config.error_on_recompile
    torch._dynamo.config.error_on_recompile = True
    try:
        yield
    finally:
        torch._dynamo.config.error_on_recompile = old


def _batch(sd, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4, 16, 16, generator=g)
    D = sd.unet.config.cross_attention_dim
    return x, torch.randn(B, 7, D, generator=g), torch.randn(B, 7, D, generator=g)


def test_guided_step_compiled_matches_eager_without_recompiles(tiny_sd):
    torch._dynamo.reset()
    sched = make_ddim_schedule(tiny_sd.scheduler_config, 10)
    fast = build_step_functions(tiny_sd, cfg=AOT)
    eager = build_step_functions(tiny_sd, cfg=CompileConfig(enabled=False))

    def run(steps, i, x, u, c):
        return steps.guided_ddim_step(x, sched.timesteps[i], u, c, 3.0, sched.alpha_t[i], sched.alpha_prev[i])

    x, u, c = _batch(tiny_sd)
    x.requires_grad_(True)
    first = run(fast, 0, x, u, c)  # compiles (forward + backward graphs)
    (g_first,) = torch.autograd.grad(first[0].sum() + first[1].square().sum(), x)
    assert fast.guided_ddim_step.first_call_s is not None and not fast.guided_ddim_step.fell_back
    with no_recompiles():  # other timesteps, other data, same shapes: the same graph
        for i, seed in ((4, 1), (9, 2)):
            x, u, c = _batch(tiny_sd, seed=seed)
            x.requires_grad_(True)
            got = run(fast, i, x, u, c)
            want = run(eager, i, x, u, c)
            for o, w in zip(got, want):
                torch.testing.assert_close(o, w, rtol=1e-5, atol=1e-5)
            g_got = torch.autograd.grad(got[0].sum() + got[1].square().sum(), x)[0]
            g_want = torch.autograd.grad(want[0].sum() + want[1].square().sum(), x)[0]
            torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(g_first).all() and not fast.guided_ddim_step.fell_back


def test_compile_sd_in_place_runs_the_sampling_chain_without_recompiles(tiny_sd):
    from digin.engine.sampling import denoise

    torch._dynamo.reset()
    sched = make_ddim_schedule(tiny_sd.scheduler_config, 3)
    x, u, c = _batch(tiny_sd, seed=3)
    want = denoise(tiny_sd, sched, x, c, u, 3.0)
    compile_sd(tiny_sd, AOT)
    try:
        first = denoise(tiny_sd, sched, x, c, u, 3.0)  # step 0 compiles; steps 1, 2 must reuse the graph
        img = tiny_sd.decode(first[1])
        with no_recompiles():
            x2, u2, c2 = _batch(tiny_sd, seed=4)
            second = denoise(tiny_sd, sched, x2, c2, u2, 3.0)
            img2 = tiny_sd.decode(second[1])
        compiled = tiny_sd.unet.__dict__["forward"], tiny_sd.vae.decoder.__dict__["forward"]
        assert all(isinstance(f, CompiledFunction) and not f.fell_back for f in compiled)
    finally:
        uncompile_sd(tiny_sd)
    assert "forward" not in tiny_sd.unet.__dict__
    for o, w in zip(first, want):
        torch.testing.assert_close(o, w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(img2, tiny_sd.decode(second[1]), rtol=1e-5, atol=1e-5)
    assert img.shape == (2, 3, 32, 32)


def test_classifier_on_fused_cutouts_compiles_once():
    """The fused cutouts custom op inside a compiled graph (fake impl), new boxes/noise → no recompile."""
    from digin.kernels import random_boxes

    torch._dynamo.reset()
    clf = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 5)).requires_grad_(False)

    class _SD:  # build_step_functions only needs these attributes for the classifier part
        unet = vae = clf
        device = torch.device("cpu")
        prediction_type = "epsilon"

    steps = build_step_functions(_SD(), clf, AOT)
    eager = build_step_functions(_SD(), clf, CompileConfig(enabled=False))
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.3, 0.25])

    def call(fns, seed):
        gen = torch.Generator().manual_seed(seed)
        img = torch.rand(2, 3, 12, 12, generator=gen, requires_grad=True)
        boxes = random_boxes(2, 3, 12, 6, generator=gen)
        noise = 0.01 * torch.randn(2, 3, 3, 6, 6, generator=gen)
        logits = fns.classify_cutouts(img, boxes, noise, 6, mean, std)
        return logits, torch.autograd.grad(logits.logsumexp(-1).sum(), img)[0]

    call(steps, 0)
    with no_recompiles():
        got = call(steps, 1)
    want = call(eager, 1)
    assert not steps.classify_cutouts.fell_back and got[0].shape == (2, 3, 5)
    for o, w in zip(got, want):
        torch.testing.assert_close(o, w, rtol=1e-5, atol=1e-6)


def test_compile_failure_falls_back_to_eager_with_a_warning():
    torch._dynamo.reset()

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    f = CompiledFunction(lambda x: x * 2 + 1, CompileConfig(backend=broken_backend), "double")
    with pytest.warns(RuntimeWarning, match="double.*eagerly"):
        out = f(torch.ones(3))
    assert f.fell_back and "no compiler here" in f.error
    torch.testing.assert_close(out, torch.full((3,), 3.0))
    torch.testing.assert_close(f(torch.zeros(2)), torch.ones(2))  # eager from now on, no second warning


def test_a_recompile_is_reported_not_hidden_by_the_fallback():
    torch._dynamo.reset()
    f = CompiledFunction(lambda x, t: x * t, AOT, "scale")
    f(torch.ones(2), 3)
    with no_recompiles(), pytest.raises(torch._dynamo.exc.RecompileError):
        f(torch.ones(2), 4)  # a Python int timestep is specialised: exactly what the engine must avoid
    assert not f.fell_back


def test_pad_batch_and_mask():
    x = torch.arange(6.0).view(3, 2)
    padded, n = pad_batch(x, 5)
    assert n == 3 and padded.shape == (5, 2)
    torch.testing.assert_close(padded[3:], x[-1:].expand(2, 2))
    assert valid_mask(n, 5).tolist() == [True, True, True, False, False]
    assert pad_batch(x, 3)[0] is x
    with pytest.raises(ValueError, match="exceeds"):
        pad_batch(x, 2)
