import pytest
import torch
import torch.nn.functional as F

from digin.engine.augment import augment, cutout_boxes, cutout_noise, make_cutouts, noise_scale_schedule, sample_seed
from digin.kernels.cutouts import boxes_from_uniforms, random_boxes


def naive_cutouts(img_BCHW, boxes_BN3, size):
    out = torch.empty(*boxes_BN3.shape[:2], img_BCHW.shape[1], size, size, dtype=img_BCHW.dtype)
    for b in range(boxes_BN3.shape[0]):
        for n in range(boxes_BN3.shape[1]):
            side, y0, x0 = (int(v) for v in boxes_BN3[b, n])
            out[b, n] = F.adaptive_avg_pool2d(img_BCHW[b, :, y0:y0 + side, x0:x0 + side], size)
    return out


def test_sample_seed_is_stable_and_salted():
    # Pinned values: a change of the hash would silently change every stored result.
    assert sample_seed("imagenet/val/0", 3, 17) == 3342936902012691565
    assert sample_seed("k") == 6641147749483149635
    seeds = {sample_seed("k", i, j) for i in range(5) for j in range(5)} | {sample_seed("j", 0, 0)}
    assert len(seeds) == 26
    assert all(0 <= s < 2 ** 63 for s in seeds)
    assert sample_seed("k", 1, 2) != sample_seed("k", 2, 1)


def test_cutout_box_statistics():
    S, size, N = 64, 16, 4000
    boxes = cutout_boxes(123, S, size, N, 0.3)
    assert boxes.shape == (N, 3) and boxes.dtype == torch.long
    side, y0, x0 = boxes.unbind(1)
    assert side.min() >= size and side.max() <= S
    assert (y0 >= 0).all() and (x0 >= 0).all() and (y0 + side <= S).all() and (x0 + side <= S).all()
    # side = int(u^0.3·(S−size)+size): median at u=0.5 → size + 0.812·(S−size) ≈ 55.
    assert abs(side.float().median().item() - (size + 0.5 ** 0.3 * (S - size))) <= 1.5
    # Offsets uniform over the free range.
    free = (S - side).clamp_min(1).float()
    assert abs((y0 / free).mean().item() - 0.5) < 0.05 and abs((x0 / free).mean().item() - 0.5) < 0.05
    uni = cutout_boxes(5, S, size, N, 1.0)[:, 0].float()  # cut_power 1 → uniform sides
    assert abs(uni.mean().item() - (size + (S - size) / 2 - 0.5)) < 1.5


def test_cutout_boxes_reproducible_and_non_square():
    a = cutout_boxes(7, (40, 70), 16, 50, 0.3)
    assert torch.equal(a, cutout_boxes(7, (40, 70), 16, 50, 0.3))
    assert not torch.equal(a, cutout_boxes(8, (40, 70), 16, 50, 0.3))
    side, y0, x0 = a.unbind(1)
    assert side.max() <= 40 and (y0 + side <= 40).all() and (x0 + side <= 70).all()
    assert (x0 > 40 - side).any()  # uses the wider axis


@pytest.mark.parametrize("H,W,size", [(40, 40, 16), (37, 52, 12), (10, 10, 16)])
def test_boxes_follow_the_references_make_cutouts_rule(H, W, size):
    """Box by box as the reference's MakeCutouts: side = int(u^p·(max − min) + min), max = min(H, W),
    min = min(H, W, size) (a small image gives whole-image crops), offsets uniform in [0, free]."""
    u = torch.rand(64, 3, generator=torch.Generator().manual_seed(H + size), dtype=torch.float64)
    u[0], u[1] = 0.0, 1 - 1e-12  # the extremes of torch.rand
    max_size, min_size = min(H, W), min(H, W, size)
    want = []
    for a, b, c in u.tolist():
        side = int(a ** 0.3 * (max_size - min_size) + min_size)
        want.append([side, int(b * (H - side + 1)), int(c * (W - side + 1))])
    assert boxes_from_uniforms(u, H, W, size, 0.3).tolist() == want
    if H == W:  # the bench/test sampler uses the same rule
        side, y0, x0 = random_boxes(3, 50, H, size, generator=torch.Generator().manual_seed(0)).unbind(-1)
        assert side.min() >= min_size and side.max() <= max_size and (y0 + side <= H).all() and (x0 + side <= W).all()


def test_make_cutouts_equals_crop_and_pool_loop():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 37, 45, generator=g, dtype=torch.float64)
    boxes = torch.stack([cutout_boxes(s, (37, 45), 12, 6, 0.3) for s in (1, 2)])
    boxes[0, 0] = torch.tensor([7, 3, 30])  # crop smaller than the output: upsampling bins
    boxes[1, 1] = torch.tensor([37, 0, 8])  # full-height crop
    img.requires_grad_(True)
    out = make_cutouts(img, boxes, 12)
    ref = naive_cutouts(img, boxes, 12)
    assert out.shape == (2, 6, 3, 12, 12)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    w = torch.rand_like(ref)
    (g1,) = torch.autograd.grad((out * w).sum(), img)
    (g2,) = torch.autograd.grad((ref * w).sum(), img)
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-12)


def test_augment_is_batch_independent():
    img = torch.rand(4, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    seeds = [sample_seed(f"s/{i}", 2, 5) for i in range(4)]
    batch = augment(img, seeds, 16, 5, 0.3, 0.05)
    assert batch.shape == (4, 5, 3, 16, 16)
    for k in range(4):
        alone = augment(img[k:k + 1], seeds[k:k + 1], 16, 5, 0.3, 0.05)
        torch.testing.assert_close(alone[0], batch[k], rtol=0, atol=1e-6)
    # Same sample at another batch position, other companions: same views.
    other = augment(torch.stack([img[3], img[0]]), [seeds[3], seeds[0]], 16, 5, 0.3, 0.05)
    torch.testing.assert_close(other[0], batch[3], rtol=0, atol=1e-6)
    assert not torch.allclose(batch[0], augment(img[:1], [seeds[1]], 16, 5, 0.3, 0.05)[0])


def test_cutout_noise_is_per_sample_and_scaled():
    a = cutout_noise([11, 12], (4, 3, 8, 8), 0.5, "cpu")
    assert a.shape == (2, 4, 3, 8, 8)
    assert torch.equal(a[1], cutout_noise([12], (4, 3, 8, 8), 0.5, "cpu")[0])
    assert not torch.equal(a[0], a[1])
    big = cutout_noise([3], (100, 3, 16, 16), 0.25, "cpu")
    assert abs(big.std().item() - 0.25) < 0.01 and abs(big.mean().item()) < 0.01


def test_augment_adds_the_seeded_noise():
    img = torch.rand(2, 3, 32, 32)
    seeds = [5, 6]
    clean = augment(img, seeds, 8, 3, 0.3, 0.0)
    noisy = augment(img, seeds, 8, 3, 0.3, 0.1)
    torch.testing.assert_close(noisy - clean, cutout_noise(seeds, (3, 3, 8, 8), 0.1, "cpu"), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="seeds"):
        augment(img, [1], 8, 3, 0.3, 0.0)


def test_noise_scale_schedules():
    assert noise_scale_schedule("const", 10) is None
    f = noise_scale_schedule("descending", 5)
    assert [f((k, 17)) for k in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 1.0]
    with pytest.raises(ValueError, match="augmentation_noise_schedule.*bogus"):
        noise_scale_schedule("bogus", 3)


@pytest.mark.gpu
def test_cuda_augmentation_draws_its_noise_on_the_device_per_sample():
    """On a GPU the noise is drawn there (as the reference's randn_like), per sample and batch-independent; the boxes
    are the CPU's, so the noise-free cutouts equal the CPU's; on_device=False keeps the CPU draws."""
    img = torch.rand(3, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    seeds = [sample_seed(f"g/{i}", 1, 2) for i in range(3)]
    noise_cpu = cutout_noise(seeds, (4, 3, 16, 16), 0.1, "cpu")
    noise_dev = cutout_noise(seeds, (4, 3, 16, 16), 0.1, "cuda")
    assert noise_dev.is_cuda and torch.equal(cutout_noise(seeds[1:2], (4, 3, 16, 16), 0.1, "cuda"), noise_dev[1:2])
    assert 0.09 < float(noise_dev.std()) < 0.11
    assert torch.equal(cutout_noise(seeds, (4, 3, 16, 16), 0.1, "cuda", on_device=False).cpu(), noise_cpu)
    torch.testing.assert_close(augment(img.cuda(), seeds, 16, 4, 0.3, 0.0).cpu(),
                               augment(img, seeds, 16, 4, 0.3, 0.0), rtol=0, atol=1e-5)
