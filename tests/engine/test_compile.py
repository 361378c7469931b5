"""engine.compile + engine.prepare: compiled call sites (aot_eager on CPU) agree with eager and never recompile across
timesteps / SGD steps / batches of the same shape; grad and no-grad calls are separate graphs; compile failures
fall back to eager with a warning."""
import contextlib

import pytest
import torch
import torch._dynamo

from digin.engine.compile import Compiled, CompileConfig
from digin.engine.presets import resolve_compute
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


@pytest.fixture
def fresh_sd(tiny_sd_dir):
    from digin.engine.models import load_sd

    return load_sd(tiny_sd_dir, dtype="fp32")


def test_prepared_sampling_chain_matches_eager_without_recompiles(fresh_sd):
    from digin.engine.prepare import prepare_sd
    from digin.engine.sampling import decode_latents, denoise

    torch._dynamo.reset()
    sd = fresh_sd
    sched = make_ddim_schedule(sd.scheduler_config, 3)
    x, u, c = _batch(sd, seed=3)
    want = denoise(sd, sched, x, c, u, 3.0)
    want_img = sd.decode(want[1])
    prepare_sd(sd, resolve_compute("eager", "cpu", compile=True, compile_backend="aot_eager"))
    first = denoise(sd, sched, x, c, u, 3.0)  # step 0 compiles; steps 1, 2 reuse the graph
    img = decode_latents(sd, first[1])
    with no_recompiles():
        x2, u2, c2 = _batch(sd, seed=4)
        second = denoise(sd, sched, x2, c2, u2, 3.0)
        decode_latents(sd, second[1])
    rt = sd.runtime
    assert rt.compiled() == {"unet": [rt.unet.graphs[0]], "vae_decode": [rt.decode.graphs[0]]}
    assert not rt.fell_back() and rt.unet.graphs[0][0] is False  # the no-grad graph
    for o, w in zip(first, want):
        torch.testing.assert_close(o, w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(img, want_img, rtol=1e-5, atol=1e-5)


def test_grad_and_no_grad_calls_are_separate_graphs_not_recompiles():
    torch._dynamo.reset()
    f = Compiled(lambda x: (x * 2).sin(), AOT, "f")
    x = torch.randn(3, requires_grad=True)
    with no_recompiles():
        with torch.no_grad():
            f(x.detach())
        y = f(x)
        (g,) = torch.autograd.grad(y.sum(), x)
        f(torch.randn(5))  # another shape: its own graph
    assert len(f.graphs) == 3 and not f.fell_back
    torch.testing.assert_close(g, 2 * (2 * x).cos().detach())


def test_classifier_on_its_views_compiles_once(tiny_sd):
    from digin.engine.classifiers import ImageClassifier
    from digin.engine.prepare import prepare_classifier

    torch._dynamo.reset()
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 5))
    clf = ImageClassifier(net, size=8, num_cutouts=3, noise_sd=0.01)
    eager = ImageClassifier(net, size=8, num_cutouts=3, noise_sd=0.01)
    prepare_classifier(clf, resolve_compute("eager", "cpu", compile=True, compile_backend="aot_eager"))

    def call(c, seed):
        img = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(seed), requires_grad=True)
        logits = c(img, seeds=[seed, seed + 1])
        return logits, torch.autograd.grad(logits.logsumexp(-1).sum(), img)[0]

    call(clf, 0)
    with no_recompiles():
        got = call(clf, 1)
        with torch.no_grad():
            clf(torch.rand(2, 3, 12, 12))  # the non-augmented view: a no-grad graph of its own
    want = call(eager, 1)
    assert not clf.model_call.fell_back and got[0].shape == (2, 3, 5) and len(clf.model_call.graphs) == 2
    for o, w in zip(got, want):
        torch.testing.assert_close(o, w, rtol=1e-5, atol=1e-6)


def test_compile_failure_falls_back_to_eager_with_a_warning():
    torch._dynamo.reset()

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    f = Compiled(lambda x: x * 2 + 1, CompileConfig(backend=broken_backend), "double")
    with pytest.warns(RuntimeWarning, match="double.*eagerly"):
        out = f(torch.ones(3))
    assert f.fell_back and "no compiler here" in f.error
    torch.testing.assert_close(out, torch.full((3,), 3.0))
    torch.testing.assert_close(f(torch.zeros(2)), torch.ones(2))  # eager from now on, no second warning


def test_a_recompile_is_reported_not_hidden_by_the_fallback():
    torch._dynamo.reset()
    f = Compiled(lambda x, t: x * t, AOT, "scale")
    f(torch.ones(2), 3)
    with no_recompiles(), pytest.raises(torch._dynamo.exc.RecompileError):
        f(torch.ones(2), 4)  # a Python int timestep is specialised: exactly what the engine must avoid
    assert not f.fell_back


def test_too_many_shapes_fall_back_to_eager():
    torch._dynamo.reset()
    f = Compiled(lambda x: x + 1, CompileConfig(backend="aot_eager", max_graphs=2), "grow")
    f(torch.ones(1))
    f(torch.ones(2))
    with pytest.warns(RuntimeWarning, match="distinct shapes"):
        torch.testing.assert_close(f(torch.ones(3)), torch.full((3,), 2.0))
    assert f.fell_back


def test_cuda_graphs_only_for_no_grad_graphs_on_cuda(monkeypatch):
    """The selection, checked on CPU: with cudagraphs on, inductor on a CUDA device compiles no-grad keys with
    mode reduce-overhead (CUDA graph trees, outputs copied out of the graph pool) and grad keys without."""
    modes = []

    def fake_compile(fn, **kw):
        modes.append(kw.get("mode"))
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    f = Compiled(lambda x: x * 2, CompileConfig(backend="inductor", cudagraphs=True), "unet", device="cuda")
    x = torch.ones(2, requires_grad=True)
    with torch.no_grad():
        out = f(x.detach())
    f(x)
    assert modes == ["reduce-overhead", None]
    assert f.uses_cudagraphs(grad=False) and not f.uses_cudagraphs(grad=True)
    cpu = Compiled(lambda x: x * 2, CompileConfig(backend="inductor", cudagraphs=True), "unet", device="cpu")
    with torch.no_grad():
        cpu(x.detach())
    assert modes[-1] is None and torch.equal(out, torch.full((2,), 2.0))


def test_every_outcome_is_recorded_and_strict_compile_refuses_a_fallback():
    """outcome(): how a call site ran, its graphs and compile seconds, calls each way; a fallback says why, and under
    strict it stops with one line naming the call site and the reason."""
    from digin.engine.compile import CompileFellBack, compiled_or_eager

    torch._dynamo.reset()

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    ok = Compiled(lambda x: x + 1, AOT, "good")
    ok(torch.ones(2))
    ok(torch.ones(2))
    o = ok.outcome()
    assert (o["how"], o["graphs"], o["calls_compiled"], o["calls_eager"]) == ("compiled", 1, 2, 0)
    assert not o["fell_back"]
    assert len(o["compile_s_per_graph"]) == 1 and o["compile_s"] >= 0
    off = compiled_or_eager(lambda x: x + 1, None, "off")  # compile off: eager, and counted
    off(torch.ones(2))
    assert off.outcome()["how"] == "eager" and off.outcome()["calls_eager"] == 1
    with pytest.warns(RuntimeWarning):
        Compiled(lambda x: x * 2, CompileConfig(backend=broken_backend), "soft")(torch.ones(2))
    strict = Compiled(lambda x: x * 2, CompileConfig(backend=broken_backend, strict=True), "unet")
    with pytest.raises(CompileFellBack) as err:
        strict(torch.ones(2))
    msg = str(err.value)
    assert "'unet'" in msg and "no compiler here" in msg and "\n" not in msg
    assert strict.outcome()["how"] == "fell_back" and "no compiler here" in strict.outcome()["reason"]


@pytest.mark.parametrize("wrapped", [False, True])
def test_out_of_memory_while_compiling_is_an_out_of_memory_error(wrapped):
    """An OOM in the compiler (inductor autotuning, a CUDA-graph capture), raised as is or wrapped the way dynamo
    wraps backend errors, reaches the runner as an OOM (it halves the batch) instead of an eager fallback."""
    from torch._dynamo.exc import BackendCompilerFailed

    from digin.shards.runner import is_oom

    torch._dynamo.reset()

    def oom_backend(gm, example_inputs):
        e = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if wrapped:
            raise BackendCompilerFailed(oom_backend, e, None) from e
        raise e

    f = Compiled(lambda x: x * 2, CompileConfig(backend=oom_backend), "unet")
    with pytest.raises(torch.OutOfMemoryError) as err:
        f(torch.ones(2))
    assert is_oom(err.value) and not f.fell_back and f.graphs == []
