"""Fused CFG + DDIM kernel vs its eager reference (and the engine's schedule functions), forward and
backward, under TRITON_INTERPRET=1 on CPU tensors."""
import pytest
import torch

from digin.engine.schedule import cfg_combine, ddim_step, make_ddim_schedule
from digin.kernels import cfg_ddim_reference, fused_cfg_ddim, kernel_enabled, set_kernels, triton_runs_on
from digin.kernels import cfg_ddim_triton
from digin.kernels.cfg_ddim import _cfg_ddim_op
from tests.kernels.spies import spy_launchers

PTS = ["epsilon", "v_prediction"]


@pytest.fixture
def triton_calls(monkeypatch):
    return spy_launchers(monkeypatch, cfg_ddim_triton, "cfg_ddim_forward", "cfg_ddim_backward")


def _inputs(B=3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    eu, ec, x = (torch.randn(B, 4, 6, 5, generator=g).to(dtype).requires_grad_() for _ in range(3))
    return eu, ec, x


@pytest.mark.parametrize("pt", PTS)
def test_reference_matches_schedule_functions(pt):
    sched = make_ddim_schedule(None, 10, prediction_type=pt)
    eu, ec, x = _inputs()
    for i in (0, 4, 9):
        want = ddim_step(sched, i, cfg_combine(eu, ec, 7.5), x)
        got = cfg_ddim_reference(eu, ec, x, 7.5, sched.alpha_t[i], sched.alpha_prev[i], pt)
        for w, o in zip(want, got):
            torch.testing.assert_close(o, w, rtol=0, atol=0)


@pytest.mark.parametrize("pt", PTS)
def test_forward_and_backward_match_reference(pt, triton_calls):
    assert triton_runs_on(torch.zeros(1)), "tests expect TRITON_INTERPRET=1 (tests/conftest.py)"
    sched = make_ddim_schedule(None, 20, prediction_type=pt)
    eu, ec, x = _inputs()
    # per-sample guidance scales and timesteps (batch of samples at different steps)
    g_B = torch.tensor([1.0, 3.0, 7.5])
    a_t, a_prev = sched.alpha_t[[0, 7, 19]], sched.alpha_prev[[0, 7, 19]]
    got = fused_cfg_ddim(eu, ec, x, g_B, a_t, a_prev, pt)
    want = cfg_ddim_reference(eu, ec, x, g_B, a_t, a_prev, pt)
    assert triton_calls["fwd"] == 1
    for o, w in zip(got, want):
        assert o.dtype == torch.float32 and o.shape == x.shape
        torch.testing.assert_close(o, w, rtol=1e-6, atol=1e-6)
    gen = torch.Generator().manual_seed(1)
    g_out = [torch.randn(x.shape, generator=gen) for _ in range(2)]
    g_got = torch.autograd.grad(got, (eu, ec, x), g_out)
    g_want = torch.autograd.grad(want, (eu, ec, x), g_out)
    assert triton_calls["bwd"] == 1
    for o, w in zip(g_got, g_want):
        torch.testing.assert_close(o, w, rtol=1e-5, atol=1e-6)


def test_only_one_output_used_and_low_precision_halves():
    """Gradient through x̂0 alone; bf16 UNet halves give bf16 grads, computed in fp32."""
    sched = make_ddim_schedule(None, 20)
    eu, ec, x = _inputs(B=2, dtype=torch.bfloat16)
    x = x.detach().float().requires_grad_()
    _, x0 = fused_cfg_ddim(eu, ec, x, 3.0, sched.alpha_t[5], sched.alpha_prev[5])
    _, x0_ref = cfg_ddim_reference(eu, ec, x, 3.0, sched.alpha_t[5], sched.alpha_prev[5])
    torch.testing.assert_close(x0, x0_ref, rtol=1e-6, atol=1e-6)
    got = torch.autograd.grad(x0.square().sum(), (eu, ec, x))
    want = torch.autograd.grad(x0_ref.square().sum(), (eu, ec, x))
    assert got[0].dtype == torch.bfloat16 and got[2].dtype == torch.float32
    for o, w in zip(got, want):
        torch.testing.assert_close(o.float(), w.float(), rtol=1e-2, atol=1e-2)


def test_custom_op_registration_passes_opcheck():
    """Fake impl, schema and autograd registration are consistent (what torch.compile relies on)."""
    eu, ec, x = _inputs(B=2)
    coef = torch.tensor([[3.0, 0.3, 0.5], [1.5, 0.2, 0.4]])
    torch.library.opcheck(_cfg_ddim_op, (eu, ec, x, coef, False))
    torch.library.opcheck(_cfg_ddim_op, (eu, ec, x, coef, True))


def test_kill_switch_falls_back_to_reference(triton_calls):
    eu, ec, x = _inputs(B=1)
    old = set_kernels(False)
    try:
        assert not kernel_enabled("cfg_ddim")
        out = fused_cfg_ddim(eu, ec, x, 2.0, 0.4, 0.6)
    finally:
        set_kernels(old)
    assert triton_calls["fwd"] == 0 and out[0].grad_fn is not None
    assert kernel_enabled("cfg_ddim")


def test_env_switch_parsing(monkeypatch):
    from digin.kernels import switch

    monkeypatch.setenv("DIGIN_KERNELS", "0")
    assert not any(switch._from_env().values())
    monkeypatch.setenv("DIGIN_KERNELS", "cutouts")
    assert switch._from_env() == {"cfg_ddim": False, "cutouts": True}
    monkeypatch.setenv("DIGIN_KERNELS", "nope")
    with pytest.raises(ValueError, match="nope"):
        switch._from_env()


def test_bad_prediction_type():
    eu, ec, x = _inputs(B=1)
    with pytest.raises(ValueError, match="prediction_type"):
        fused_cfg_ddim(eu, ec, x, 2.0, 0.4, 0.6, "sample")
