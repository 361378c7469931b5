"""The Triton kernels on CUDA tensors at Stable Diffusion shapes (skipped without a GPU; run by bench/gpu_check.sh):
the fused CFG+DDIM step on 8 × 4 × 64² latents with bf16 and fp32 UNet outputs, and the fused cutouts on 512² images
to 16 × 384² views (ViT-B/16-384) in bf16 and fp32, forward and backward, against their eager references."""
import pytest
import torch

from digin.engine.schedule import make_ddim_schedule
from digin.kernels import (cfg_ddim_reference, cutouts_reference, fused_cfg_ddim, fused_cutouts, random_boxes,
                           set_kernels)
from digin.kernels import cfg_ddim_triton, cutouts_triton
from tests.kernels.spies import spy_launchers

pytestmark = pytest.mark.gpu

MEAN, STD = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.5, 0.5, 0.5])


@pytest.fixture(autouse=True)
def kernels_on():
    old = set_kernels(True)
    yield
    set_kernels(old)


@pytest.mark.parametrize("eps_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("pt", ["epsilon", "v_prediction"])
def test_cfg_ddim_on_cuda_at_sd_shapes(eps_dtype, pt, monkeypatch):
    calls = spy_launchers(monkeypatch, cfg_ddim_triton, "cfg_ddim_forward", "cfg_ddim_backward")
    g = torch.Generator(device="cuda").manual_seed(0)
    eu, ec = (torch.randn(8, 4, 64, 64, device="cuda", generator=g).to(eps_dtype).requires_grad_() for _ in range(2))
    x = torch.randn(8, 4, 64, 64, device="cuda", generator=g).requires_grad_()
    sched = make_ddim_schedule(None, 20, prediction_type=pt).to("cuda")
    for i in (0, 19):
        got = fused_cfg_ddim(eu, ec, x, 3.0, sched.alpha_t[i], sched.alpha_prev[i], pt)
        want = cfg_ddim_reference(eu, ec, x, 3.0, sched.alpha_t[i], sched.alpha_prev[i], pt)
        for o, w in zip(got, want):
            assert o.is_cuda and o.dtype == torch.float32
            torch.testing.assert_close(o, w, rtol=1e-5, atol=1e-5)
        g_out = [torch.randn(x.shape, device="cuda", generator=g) for _ in range(2)]
        for o, w in zip(torch.autograd.grad(got, (eu, ec, x), g_out), torch.autograd.grad(want, (eu, ec, x), g_out)):
            assert o.dtype == w.dtype
            tol = 1e-2 if w.dtype == torch.bfloat16 else 1e-5  # one bf16 rounding of the same fp32 value
            torch.testing.assert_close(o.float(), w.float(), rtol=tol, atol=tol)
    assert calls["fwd"] == 2 and calls["bwd"] == 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cutouts_on_cuda_at_vit384_shapes(dtype, monkeypatch):
    calls = spy_launchers(monkeypatch, cutouts_triton, "cutouts_forward", "cutouts_backward")
    g = torch.Generator().manual_seed(1)
    B, N, S, size = 2, 16, 512, 384
    img = torch.rand(B, 3, S, S, generator=g).cuda().requires_grad_()
    boxes = random_boxes(B, N, S, size, generator=g).cuda()
    noise = (0.005 * torch.randn(B, N, 3, size, size, generator=g)).cuda()
    got = fused_cutouts(img, boxes, size, MEAN.cuda(), STD.cuda(), noise, out_dtype=dtype)
    want = cutouts_reference(img, boxes, size, MEAN.cuda(), STD.cuda(), noise, out_dtype=dtype)
    assert got.shape == (B, N, 3, size, size) and got.dtype == dtype
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
    g_out = torch.randn(got.shape, generator=g).cuda().to(dtype)
    (g_got,) = torch.autograd.grad(got, img, g_out)
    (g_want,) = torch.autograd.grad(want, img, g_out)
    torch.testing.assert_close(g_got, g_want, rtol=1e-3, atol=1e-4)
    assert calls["fwd"] == 1 and calls["bwd"] == 1
