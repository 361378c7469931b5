import numpy as np
import pytest
import torch

from digin.stages import metrics as M


def hand_fid(a, b):
    """Independent FID: Tr sqrtm(S1 S2) = Tr sqrtm(S1^½ S2 S1^½), a symmetric PSD matrix (eigh only)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(r1 @ s2 @ r1)
    return ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum()


@pytest.mark.parametrize("method", ["sqrtm", "lowrank"])
def test_fid_on_small_gaussian_features(method):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 5))
    b = rng.normal(size=(150, 5)) @ np.diag([1.0, 2.0, 0.5, 1.0, 1.5]) + np.array([0.5, 0, 0, -1, 0])
    assert abs(M.fid_from_features(a, a, method=method)) < 1e-8
    d = M.fid_from_features(a, b, method=method)
    assert d > 1.0
    assert d == pytest.approx(hand_fid(a, b), rel=1e-7)


def test_frechet_distance_closed_form_diagonal():
    # diagonal covariances: FD = |Δμ|² + Σ (√s1 − √s2)²
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    want = 5.0 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert M.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(want)
    # singular covariances take the eps fallback path and still give a finite number
    sing = np.diag([1.0, 0.0, 0.0])
    assert np.isfinite(M.frechet_distance(mu1, sing, mu2, sing))


def test_fid_images_with_random_inception():
    net = M.InceptionPool(random_init_seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 40, 48, generator=g)
    y = (x * 0.5 + 0.5)
    feats = M.inception_features(list(x), net, batch_size=3)  # tail batch of 1
    assert feats.shape == (4, 2048) and feats.std() > 1e-3  # random net is not degenerate
    assert np.allclose(feats, net(x).double().numpy(), atol=1e-5)  # batching does not change features
    assert abs(M.fid_from_features(feats, feats)) < 1e-6
    assert M.fid(list(x), list(y), net, batch_size=4) > 1e-3
    with pytest.raises(ValueError):
        M.InceptionPool()


def test_inception_loads_weights_from_file(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    src = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
    path = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    net = M.InceptionPool(weights_path=path)
    assert torch.equal(net.net.Mixed_7c.branch1x1.conv.weight, src.Mixed_7c.branch1x1.conv.weight)


def test_l1_l2_masked_formulas():
    x = torch.zeros(2, 3, 4, 4)
    y = torch.zeros(2, 3, 4, 4)
    y[0, :, :2, :] = 0.5  # top half differs by 0.5 in sample 0
    y[1, 0, 3, 3] = -2.0  # one pixel of one channel in sample 1
    mask = torch.zeros(2, 4, 4)
    mask[:, :2, :] = 1.0  # foreground = top half
    assert M.l1_distance(x, y).tolist() == [0.5 * 3 * 8, 2.0]
    assert M.l2_distance(x, y).tolist() == pytest.approx([(0.25 * 3 * 8) ** 0.5, 2.0])
    assert M.l1_distance(x, y, mask, "foreground").tolist() == [12.0, 0.0]
    assert M.l1_distance(x, y, mask, "background").tolist() == [0.0, 2.0]
    assert M.l2_distance(x, y, mask[:, None], "background").tolist() == pytest.approx([0.0, 2.0])
    assert M.mask_area(mask, "background", x).tolist() == [8.0, 8.0]
    soft = torch.full((2, 2, 2), 0.25)  # lower-resolution soft mask is resized to the image
    assert M.l1_distance(x, y, soft, "background").tolist() == pytest.approx([9.0, 1.5])
    with pytest.raises(ValueError):
        M.l1_distance(x, y, None, "background")


def test_confidences_and_flip_rate():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    conf, pred = M.confidences(lambda imgs: logits, torch.zeros(2, 3, 2, 2), torch.tensor([0, 1]))
    assert pred.tolist() == [0, 2]
    p = logits.softmax(-1)
    assert conf.tolist() == pytest.approx([p[0, 0].item(), p[1, 1].item()])
    assert M.flip_rate([0, 2, 1, 1], [0, 1, 1, 2]) == 0.5


def test_lpips_random_trunk_masked():
    model = M.build_lpips(random_trunk=True, spatial=True)  # eval's explicit lpips_random_trunk=true
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g)
    y = x.clone()
    y[:, :, 32:, :] = torch.rand(2, 3, 32, 64, generator=g)  # bottom half changed
    mask = torch.zeros(2, 64, 64)
    mask[:, 32:, :] = 1.0  # foreground = the changed half
    assert M.lpips_distance(x, x, lpips_model=model).abs().max() < 1e-6
    full = M.lpips_distance(x, y, lpips_model=model)
    fg = M.lpips_distance(x, y, mask, "foreground", lpips_model=model)
    bg = M.lpips_distance(x, y, mask, "background", lpips_model=model)
    assert (full > 0).all() and (fg > bg).all()
    assert torch.allclose(full, (fg + bg) / 2, rtol=1e-4)  # equal areas: mean of the two halves
