"""Capture and P2P injection against a naive attention processor that materialises the probabilities, run by an
independent chain that passes the step index to it; and the same controller inside one compiled graph (aot_eager):
equal results, every UNet call compiled, one graph per grad mode."""
import pytest
import torch
import torch._dynamo

from digin.engine.attention import AttentionController, install_attention, restore_attention
from digin.engine.p2p import replacement_matrix
from digin.engine.sampling import run_chain, step_vjp
from digin.engine.schedule import make_ddim_schedule
from digin.kernels import cfg_ddim_reference
from tests.engine.naive_attention import naive_out, naive_probs

T = 3


class NaiveProcessor:
    """Reference semantics: explicit softmax(QKᵀ·scale); records conditional cross maps per step and can mix
    stored probabilities into them: P_c ← (1−w)·P_c + w·P_stored (the reference's injection)."""

    def __init__(self, name, is_cross, record, inject=None, w_BT=None):
        self.name, self.is_cross, self.record, self.inject, self.w_BT = name, is_cross, record, inject, w_BT

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 digin_step=None):
        p, v = naive_probs(attn, hidden_states, encoder_hidden_states)
        n = hidden_states.shape[0]
        if self.is_cross and digin_step is not None:
            B = n // 2
            self.record[(self.name, digin_step)] = p[B:].detach().clone()
            if self.inject is not None and (self.name, digin_step) in self.inject:
                w = self.w_BT[:, digin_step].view(-1, 1, 1, 1)
                p = torch.cat([p[:B], (1 - w) * p[B:] + w * self.inject[(self.name, digin_step)]])
        return naive_out(attn, p, v)


def install_naive(unet, record, inject=None, w_BT=None):
    from digin.engine.attention import attention_layers

    unet.set_attn_processor({key: NaiveProcessor(key.removesuffix(".processor"), cross, record, inject, w_BT)
                             for key, cross in attention_layers(unet).items()})


@torch.no_grad()
def naive_chain(sd, z, cond, uncond, g=3.0, steps=T):
    """The DDIM chain with the step index handed to the processors (cross_attention_kwargs), written out here."""
    sched = make_ddim_schedule(sd.scheduler_config, steps)
    x = z
    for i in range(steps):
        e = sd.unet(torch.cat([x, x]), sched.timesteps[i], encoder_hidden_states=torch.cat([uncond, cond]),
                    cross_attention_kwargs={"digin_step": i}).sample
        eu, ec = e.chunk(2)
        x, x0 = cfg_ddim_reference(eu, ec, x, g, sched.alpha_t[i], sched.alpha_prev[i], sched.prediction_type)
    return x0


@pytest.fixture
def sd(tiny_sd):
    yield tiny_sd
    restore_attention(tiny_sd.unet)


def _inputs(sd, prompts, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(len(prompts), 4, 16, 16, generator=g)
    return z, sd.encode_text(prompts), sd.encode_text([""] * len(prompts))


def _run(sd, z, cond, uncond, ctrl=None):
    sched = make_ddim_schedule(sd.scheduler_config, T)
    with torch.no_grad():
        return run_chain(sd, sched, z, cond, uncond, 3.0, controller=ctrl).x0_last


def test_captured_maps_equal_naive_attention(sd):
    prompts = ["a dog on grass", "a red car"]
    z, cond, uncond = _inputs(sd, prompts)
    ctrl = AttentionController().capture_cross(steps=range(T))
    install_attention(sd.unet, ctrl)
    x0 = _run(sd, z, cond, uncond, ctrl)

    record = {}
    install_naive(sd.unet, record)
    x0_naive = naive_chain(sd, z, cond, uncond)
    assert len(record) == len(ctrl.layer_queries) * T > 0
    for (name, step), p in record.items():
        assert ctrl.cross_maps[name][step].shape == p.shape  # (B, heads, Q, 77): conditional half only
        torch.testing.assert_close(ctrl.cross_maps[name][step], p, atol=1e-5, rtol=0)
    torch.testing.assert_close(x0, x0_naive, atol=1e-4, rtol=1e-4)
    # the two samples attend differently: a capture that mixed up samples/halves would be caught
    name, _ = next(iter(record))
    assert (record[(name, 0)][0] - record[(name, 0)][1]).abs().max() > 1e-4


def test_capture_only_selected_layers_and_steps(sd):
    z, cond, uncond = _inputs(sd, ["a dog"])
    ctrl = AttentionController().capture_cross(steps=[1], queries={256})
    install_attention(sd.unet, ctrl)
    _run(sd, z, cond, uncond, ctrl)
    assert set(ctrl.layer_queries.values()) == {256, 64}  # tiny UNet: 16×16 and 8×8 cross layers (all known)
    stored = {(n, s) for n, d in ctrl.cross_maps.items() for s in d}
    assert stored and all(ctrl.layer_queries[n] == 256 and s == 1 for n, s in stored)
    assert ctrl.cross_maps_at(256, [1]).shape[:2] == (1, len(stored) * 1 * ctrl.cross_maps[stored.pop()[0]][1].shape[1])
    assert ctrl.stored_bytes() > 0


def test_no_controller_is_plain_sdpa(sd):
    z, cond, uncond = _inputs(sd, ["a dog"])
    base = _run(sd, z, cond, uncond)
    install_attention(sd.unet, AttentionController())
    torch.testing.assert_close(_run(sd, z, cond, uncond), base, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_run(sd, z, cond, uncond, AttentionController()), base, atol=1e-5, rtol=1e-5)


def test_p2p_identity_factor_one_reproduces_stored_run(sd):
    prompt = "a dog on grass"
    z, cond, uncond = _inputs(sd, [prompt])
    ctrl = AttentionController().capture_cross(steps=range(T))
    install_attention(sd.unet, ctrl)
    stored_x0 = _run(sd, z, cond, uncond, ctrl)
    ctrl.stop_capture()
    new_prompt, M = replacement_matrix(sd.tokenizer, prompt, "dog", "dog")
    assert new_prompt == prompt
    ctrl.reindex_cross(M[None])
    ctrl.set_injection(torch.ones(1, T))
    torch.testing.assert_close(_run(sd, z, cond, uncond, ctrl), stored_x0, atol=1e-5, rtol=0)
    # and injecting the stored maps really steers another prompt's run towards the stored one
    cond2 = sd.encode_text(["a cat on grass"])
    plain2 = _run(sd, z, cond2, uncond)
    inj2 = _run(sd, z, cond2, uncond, ctrl)
    assert (inj2 - plain2).abs().max() > 1e-4


def test_injection_equals_naive_probability_mixing(sd):
    """out = (1−w)·SDPA + w·P_stored·v equals mixing the probabilities themselves, per sample and per step,
    also when the runtime batch holds N candidates of the stored samples."""
    prompts = ["a dog on grass", "a red car"]
    z, cond, uncond = _inputs(sd, prompts)
    ctrl = AttentionController().capture_cross(steps=[0, 1])
    install_attention(sd.unet, ctrl)
    _run(sd, z, cond, uncond, ctrl)
    ctrl.stop_capture()
    stored = {(n, s): p.clone() for n, d in ctrl.cross_maps.items() for s, p in d.items()}
    N = 2
    w_BT = torch.tensor([[1.0, 0.5, 0.0], [0.3, 0.0, 0.0], [0.0, 0.7, 0.0], [0.9, 0.9, 0.0]])  # (N·B, T)
    cond2 = sd.encode_text(["a cat in snow", "a blue boat"]).repeat(N, 1, 1)
    zz, uu = z.repeat(N, 1, 1, 1), uncond.repeat(N, 1, 1)
    ctrl.set_injection(w_BT)
    ours = _run(sd, zz, cond2, uu, ctrl)
    inject = {k: p.repeat(N, 1, 1, 1) for k, p in stored.items()}
    install_naive(sd.unet, {}, inject, w_BT)
    ref = naive_chain(sd, zz, cond2, uu)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    install_naive(sd.unet, {})
    assert (naive_chain(sd, zz, cond2, uu) - ref).abs().max() > 1e-4  # injection did something


def test_injection_without_captured_step_is_refused(sd):
    z, cond, uncond = _inputs(sd, ["a dog"])
    ctrl = AttentionController().capture_cross(steps=[0])
    install_attention(sd.unet, ctrl)
    _run(sd, z, cond, uncond, ctrl)
    with pytest.raises(ValueError, match="step 1"):
        ctrl.set_injection(torch.tensor([[1.0, 1.0, 0.0]]))


def test_self_injection_identity_reproduces_run_and_gradients_flow(sd):
    z, cond, uncond = _inputs(sd, ["a dog", "a car"])
    ctrl = AttentionController().capture_self(steps=range(T), max_queries=256).capture_cross(steps=range(T))
    install_attention(sd.unet, ctrl)
    base = _run(sd, z, cond, uncond, ctrl)
    assert ctrl.self_maps and all(p.shape[0] == 4 for d in ctrl.self_maps.values() for p in d.values())
    ctrl.stop_capture().set_injection(torch.ones(2, T), torch.ones(2, T))
    torch.testing.assert_close(_run(sd, z, cond, uncond, ctrl), base, atol=1e-5, rtol=0)
    # differentiable in the conditioning and the factors (the reference can optimise schedules)
    sched = make_ddim_schedule(sd.scheduler_config, T)
    w = torch.full((2, T), 0.5, requires_grad=True)
    c = cond.clone().requires_grad_(True)
    ctrl.set_injection(w, steps=range(T))
    out = run_chain(sd, sched, z, c, uncond, 3.0, controller=ctrl)
    out.x0_last.square().mean().backward()
    assert c.grad.abs().sum() > 0 and w.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ compiled

def _controlled_run(sd, z, cond, uncond, cond2):
    """Capture (cross + self) → re-index → inject with learnable factors: the no-grad chain and one recompute + VJP
    of every step, as the UVCE stage runs them. → (captured maps, x̂0, gradients)."""
    sched = make_ddim_schedule(sd.scheduler_config, T)
    ctrl = AttentionController().capture_cross(steps=[0, 1]).capture_self(steps=[0], max_queries=256)
    install_attention(sd.unet, ctrl)
    with torch.no_grad():
        run_chain(sd, sched, z, cond, uncond, 3.0, controller=ctrl)
    ctrl.stop_capture()
    maps = {(n, s): p.clone() for n, d in ctrl.cross_maps.items() for s, p in d.items()}
    _, M = replacement_matrix(sd.tokenizer, "a dog on grass", "dog", "cat")
    ctrl.reindex_cross(M.expand(2, -1, -1))
    xa = torch.tensor([[1.0, 0.6, 0.0], [0.0, 0.8, 0.0]], requires_grad=True)
    se = torch.tensor([[0.5, 0.0, 0.0], [0.7, 0.0, 0.0]], requires_grad=True)
    ctrl.set_injection(xa, se)
    with torch.no_grad():
        out = run_chain(sd, sched, z, cond2, uncond, 3.0, controller=ctrl, record_inputs=True)
    g_x, g_c, g_xa, g_se = torch.ones_like(z), 0, 0, 0
    for i in reversed(range(T)):  # the per-step adjoint: every step recomputed with grad, as guidance does
        g_x, g_ci, _, (g_xai, g_sei) = step_vjp(sd, sched, i, out.inputs[i], cond2, uncond, 3.0, g_x, None,
                                                wrt_cond=True, wrt_uncond=False, controller=ctrl, factors=[xa, se])
        g_c, g_xa, g_se = g_c + g_ci, g_xa + g_xai, g_se + g_sei
    restore_attention(sd.unet)
    assert g_xa[0, 2] == 0 and g_xa[1, 0] == 0 and g_se[0, 1] == 0  # injection gated at w = 0
    return maps, out.x0_last, [g_x, g_c, g_xa, g_se]


def test_controlled_calls_run_one_compiled_graph_per_grad_mode(tiny_sd_dir):
    """The whole controlled sequence compiled (aot_eager): the same maps, images and gradients as eager, no UNet call
    eager, one no-grad graph (capture and injection alike) and one graph with grad, no recompile."""
    from digin.engine.models import load_sd
    from digin.engine.prepare import prepare_sd
    from digin.engine.presets import resolve_compute
    from tests.engine.test_compile import no_recompiles

    runs = {}
    for mode in ("eager", "compiled"):
        m = load_sd(tiny_sd_dir, dtype="fp32")
        z, cond, uncond = _inputs(m, ["a dog on grass", "a red car"])
        cond2 = m.encode_text(["a cat on grass", "a red boat"])
        if mode == "compiled":
            torch._dynamo.reset()
            prepare_sd(m, resolve_compute("eager", "cpu", compile=True, compile_backend="aot_eager"))
            with no_recompiles():
                runs[mode] = _controlled_run(m, z, cond, uncond, cond2)
            rt = m.runtime
            unet = rt.unet.outcome()
            assert unet["calls_eager"] == 0 and unet["calls_compiled"] == 3 * T and not unet["fell_back"]
            assert sorted(k[0] for k in rt.unet.graphs) == [False, True], rt.unet.graphs
        else:
            runs[mode] = _controlled_run(m, z, cond, uncond, cond2)
    (maps_e, x0_e, g_e), (maps_c, x0_c, g_c) = runs["eager"], runs["compiled"]
    assert maps_e.keys() == maps_c.keys() and len(maps_e) > 0
    for k in maps_e:
        torch.testing.assert_close(maps_c[k], maps_e[k], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x0_c, x0_e, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_c, g_e):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_regional_compile_runs_the_controlled_calls_in_compiled_blocks(tiny_sd_dir):
    """compile_scope=regional: only the transformer blocks are compiled (one graph per block shape, shared by the
    blocks), and the controlled sequence gives the eager results, no UNet call eager."""
    from digin.engine.models import load_sd
    from digin.engine.prepare import prepare_sd
    from digin.engine.presets import resolve_compute

    runs = {}
    for mode in ("eager", "regional"):
        m = load_sd(tiny_sd_dir, dtype="fp32")
        if mode == "regional":
            torch._dynamo.reset()
            prepare_sd(m, resolve_compute("eager", "cpu", compile=True, compile_backend="eager",
                                          compile_scope="regional"))
        z, cond, uncond = _inputs(m, ["a dog on grass", "a red car"])
        runs[mode] = _controlled_run(m, z, cond, uncond, m.encode_text(["a cat on grass", "a red boat"]))
        if mode == "regional":
            o = m.runtime.unet.outcome()
            assert (o["how"], o["calls_eager"], o["calls_compiled"], o["graphs"]) == ("compiled", 0, 3 * T, 2)
            assert all(b._compiled_call_impl is not None for b in m.runtime.unet.blocks)
    (maps_e, x0_e, g_e), (maps_r, x0_r, g_r) = runs["eager"], runs["regional"]
    for k in maps_e:
        torch.testing.assert_close(maps_r[k], maps_e[k], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x0_r, x0_e, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_r, g_e):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
