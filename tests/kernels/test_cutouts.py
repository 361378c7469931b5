"""Fused cutouts (crop + area resize + noise + normalise) vs the eager reference, forward and backward
w.r.t. the image, under TRITON_INTERPRET=1 on CPU tensors. Also checked against engine.augment.make_cutouts
when that module exists."""

import pytest
import torch
import torch.nn.functional as F

from digin.kernels import cutouts_reference, fused_cutouts, random_boxes, set_kernels
from digin.kernels import cutouts_triton
from digin.kernels.cutouts import _cutouts_op
from tests.kernels.spies import spy_launchers

MEAN, STD = torch.tensor([0.48, 0.46, 0.41]), torch.tensor([0.27, 0.26, 0.28])


@pytest.fixture
def triton_calls(monkeypatch):
    return spy_launchers(monkeypatch, cutouts_triton, "cutouts_forward", "cutouts_backward")


def _case(B=2, N=3, S=21, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(B, 3, S, S, generator=g, requires_grad=True)
    boxes = random_boxes(B, N, S, size, generator=g)
    # include the edge cases: whole image, smallest crop in the bottom-right corner
    boxes[0, 0] = torch.tensor([S, 0, 0])
    boxes[-1, -1] = torch.tensor([size, S - size, S - size])
    noise = 0.01 * torch.randn(B, N, 3, size, size, generator=g)
    return img, boxes, noise


def test_reference_is_crop_pool_noise_normalise():
    img, boxes, noise = _case()
    out = cutouts_reference(img, boxes, 8, MEAN, STD, noise)
    side, y0, x0 = boxes[1, 2].tolist()
    want = F.adaptive_avg_pool2d(img[1:2, :, y0:y0 + side, x0:x0 + side], 8)[0]
    want = (want + noise[1, 2] - MEAN.view(3, 1, 1)) / STD.view(3, 1, 1)
    torch.testing.assert_close(out[1, 2], want)


@pytest.mark.parametrize("with_noise", [True, False])
def test_forward_backward_match_reference(with_noise, triton_calls):
    img, boxes, noise = _case()
    noise = noise if with_noise else None
    got = fused_cutouts(img, boxes, 8, MEAN, STD, noise)
    want = cutouts_reference(img, boxes, 8, MEAN, STD, noise)
    assert got.shape == (2, 3, 3, 8, 8) and triton_calls["fwd"] == 1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g_out = torch.randn(got.shape, generator=torch.Generator().manual_seed(3))
    (g_got,) = torch.autograd.grad(got, img, g_out)
    (g_want,) = torch.autograd.grad(want, img, g_out)
    assert triton_calls["bwd"] == 1
    torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-6)


def test_non_divisible_sizes_and_upsampling_crops():
    """Overlapping pool windows (side not a multiple of size) and crops smaller than size (min_side)."""
    img, boxes, _ = _case(B=1, N=4, S=13, size=5, seed=2)
    boxes[0] = torch.tensor([[7, 1, 2], [3, 4, 4], [13, 0, 0], [2, 11, 0]])
    got = fused_cutouts(img, boxes, 5, MEAN, STD, min_side=2)
    want = cutouts_reference(img, boxes, 5, MEAN, STD)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g_out = torch.randn(got.shape, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(torch.autograd.grad(got, img, g_out)[0], torch.autograd.grad(want, img, g_out)[0],
                               rtol=1e-5, atol=1e-6)


def test_bf16_output_for_the_classifier():
    img, boxes, noise = _case(B=1, N=2)
    got = fused_cutouts(img, boxes, 8, MEAN, STD, noise, out_dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16
    want = cutouts_reference(img, boxes, 8, MEAN, STD, noise, out_dtype=torch.float32)
    torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=2e-2)


def test_custom_op_registration_passes_opcheck():
    img, boxes, noise = _case(B=1, N=2, S=12, size=4)
    torch.library.opcheck(_cutouts_op, (img, boxes, noise, MEAN, STD, 4, 4, torch.float32))


def test_kill_switch(triton_calls):
    img, boxes, noise = _case(B=1, N=2)
    old = set_kernels({"cutouts": False})
    try:
        fused_cutouts(img, boxes, 8, MEAN, STD, noise)
    finally:
        set_kernels(old)
    assert triton_calls["fwd"] == 0


def test_matches_engine_make_cutouts():
    from digin.engine.augment import make_cutouts

    img, boxes, noise = _case()
    want = (make_cutouts(img, boxes, 8) + noise - MEAN.view(3, 1, 1)) / STD.view(3, 1, 1)
    got = fused_cutouts(img, boxes, 8, MEAN, STD, noise)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g_out = torch.randn(got.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(torch.autograd.grad(got, img, g_out)[0], torch.autograd.grad(want, img, g_out)[0],
                               rtol=1e-5, atol=1e-6)


def test_op_without_triton_uses_closed_form_backward(monkeypatch):
    """Where Triton cannot run (CPU without the interpreter), the custom op's own reference forward/backward
    serve; its backward runs below autograd, so it must not rely on autograd."""
    import digin.kernels.cutouts as cut

    monkeypatch.setattr(cut, "triton_runs_on", lambda t: False)
    img, boxes, noise = _case(size=5, S=17)
    out = fused_cutouts(img, boxes, 5, MEAN, STD, noise, min_side=1)
    (g,) = torch.autograd.grad((out * torch.arange(out.numel()).view_as(out).sin()).sum(), img)
    ref = cutouts_reference(img, boxes, 5, MEAN, STD, noise, torch.float32)
    (g_ref,) = torch.autograd.grad((ref * torch.arange(ref.numel()).view_as(ref).sin()).sum(), img)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)
