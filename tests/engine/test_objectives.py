import math

import pytest
import torch
import torch.nn.functional as F

from digin.engine.augment import classifier_seeds, sample_seed
from digin.engine.classifiers import load_classifier
from digin.engine.objectives import (LOSSES, Objective, ce_loss, check_loss, conf_diff_loss, conf_loss,
                                     log_conf_diff_loss, logits_diff_loss, loss_spec, neuron_loss, parse_regularizer,
                                     text_loss)
from digin.engine.distances import mean_lp
from digin.engine.perceptual import build_lpips
from digin.engine.perceptual import masked_lpips as lpips_distance
from tests.engine.lpips_trunk import torch_home_with_alexnet

# Two samples, two cutouts, three classes.
L1 = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]],
                   [[0.5, -1.0, 1.5], [2.0, 1.0, 1.0]]])
L2 = torch.tensor([[[0.0, 1.0, 1.0], [2.0, 0.0, 0.0]],
                   [[1.0, 1.0, 1.0], [0.0, 3.0, 0.0]]])
Y = torch.tensor([1, 2])


def p(row, k):
    return math.exp(row[k]) / sum(math.exp(v) for v in row)


def per_sample(fn):
    return torch.tensor([sum(fn(b, n) for n in range(2)) / 2 for b in range(2)])


def close(a, b):
    torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-6)


def test_one_classifier_losses_by_hand():
    close(ce_loss(L1, Y), per_sample(lambda b, n: -math.log(p(L1[b, n].tolist(), Y[b]))))
    close(conf_loss(L1, Y), per_sample(lambda b, n: -p(L1[b, n].tolist(), Y[b])))


def test_two_classifier_losses_by_hand():
    def margin(z, y):
        z = z.tolist()
        return z[y] - max(v for k, v in enumerate(z) if k != y)

    close(conf_diff_loss(L1, L2, Y),
          per_sample(lambda b, n: -p(L1[b, n].tolist(), Y[b]) + p(L2[b, n].tolist(), Y[b])))
    close(log_conf_diff_loss(L1, L2, Y),
          per_sample(lambda b, n: -math.log(p(L1[b, n].tolist(), Y[b])) + math.log(p(L2[b, n].tolist(), Y[b]))))
    close(logits_diff_loss(L1, L2, Y),
          per_sample(lambda b, n: -margin(L1[b, n], Y[b]) + margin(L2[b, n], Y[b])))
    # margin of sample 1 cutout 1 in L2: z_y=0, max other = 3 → −3.
    assert margin(L2[1, 1], 2) == -3.0


def test_neuron_losses_by_hand():
    feats = torch.tensor([[[0.1, 0.7, -0.2], [0.3, 0.5, 0.0]],
                          [[1.0, 2.0, 3.0], [-1.0, 0.0, 1.0]]])
    t = torch.tensor([[1, 1], [2, 0]])  # [class, neuron]
    a = per_sample(lambda b, n: feats[b, n, t[b, 1]].item())
    logp = per_sample(lambda b, n: math.log(p(L1[b, n].tolist(), t[b, 0])))
    close(neuron_loss("neuron_activation", L1, feats, t), -a)
    close(neuron_loss("neg_neuron_activation", L1, feats, t), a)
    close(neuron_loss("neuron_activation_plus_log_confidence", L1, feats, t), -10 * a - 0.5 * logp)
    close(neuron_loss("neg_neuron_activation_plus_log_confidence", L1, feats, t), 10 * a - 0.5 * logp)


def test_text_losses_by_hand():
    e = F.normalize(torch.tensor([[[1.0, 0.0]], [[0.6, 0.8]]]), dim=-1)  # (B=2, N=1, D=2)
    pos = torch.tensor([[0.0, 1.0], [0.6, 0.8]])
    neg = torch.tensor([[1.0, 0.0], [-0.6, -0.8]])
    close(text_loss("inner_product", e, pos, 2.0), torch.tensor([0.0, -2.0]))
    # ‖e − t‖ = √2 → 2·arcsin(√2/2)² = 2·(π/4)²; identical → 0.
    close(text_loss("spherical_distance", e, pos, 1.0), torch.tensor([2 * (math.pi / 4) ** 2, 0.0]))
    sims = torch.tensor([[0.0, 1.0], [1.0, -1.0]]) * 3.0 ** 2  # factor² quirk
    close(text_loss("cross_entropy", e, torch.stack([pos, neg], 1), 3.0), -torch.log_softmax(sims, -1)[:, 0])


def test_lp_regularisers_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [0.5, 0.25]]]])  # (1,1,2,2)
    x0 = torch.tensor([[[[1.0, 1.0], [0.0, 0.75]]]])
    m = torch.tensor([[[[1.0, 0.0], [0.5, 1.0]]]])
    close(mean_lp(x, x0, 1), torch.tensor([(1 + 0 + 0.5 + 0.5) / 4]))
    close(mean_lp(x, x0, 2), torch.tensor([(1 + 0 + 0.25 + 0.25) / 4]))
    close(mean_lp(x, x0, 2, m), torch.tensor([(1 + 0 + 0.125 + 0.25) / 4]))  # no division by mask area
    close(mean_lp(x, x0, 1, 1 - m), torch.tensor([(0 + 0 + 0.25 + 0) / 4]))


@pytest.fixture(scope="module")
def clf():
    return load_classifier("tiny", num_classes=5, size=16, num_cutouts=4, noise_sd=0.05, seed=0)


@pytest.fixture(scope="module")
def lpips_net(tmp_path_factory):
    with torch_home_with_alexnet(tmp_path_factory.mktemp("torch_home")):
        return build_lpips("cpu")


def test_lpips_without_its_alexnet_file_is_an_error_naming_it(tmp_path, monkeypatch, clf):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    want = str(tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth")
    with pytest.raises(FileNotFoundError, match=want):
        build_lpips("cpu")
    with pytest.raises(FileNotFoundError, match=want):  # at construction, before any image is made
        Objective("CE", [clf], torch.tensor([0, 1, 2]), KEYS, regularizers=["px_lpips"], regularizers_ws=[1.0])
    with torch_home_with_alexnet(tmp_path):  # the same file present: the objective builds
        Objective("CE", [clf], torch.tensor([0, 1, 2]), KEYS, regularizers=["px_lpips"], regularizers_ws=[1.0])


def _batch(B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, 3, 64, 64, generator=g), torch.randn(B, 4, 8, 8, generator=g),
            torch.rand(B, 3, 64, 64, generator=g), torch.randn(B, 4, 8, 8, generator=g),
            torch.rand(B, 1, 64, 64, generator=g), torch.rand(B, 1, 8, 8, generator=g))


KEYS = ["ds/val/0", "ds/val/1", "ds/val/2"]


def test_objective_total_and_parts(clf, lpips_net):
    img, z, img0, z0, pm, lm = _batch()
    regs = ["px_l1", "latent_l2", "px_background_l2", "latent_foreground_l1", "px_lpips"]
    ws = [0.5, 2.0, 250.0, 25.0, 3.0]
    obj = Objective("CE", [clf], torch.tensor([0, 3, 4]), KEYS, loss_weight=1.5, regularizers=regs,
                    regularizers_ws=ws, img0=img0, z0=z0, px_mask=pm, latent_mask=lm, lpips_model=lpips_net)
    total, parts = obj(img, z, (2, 19))
    assert set(parts) == {"CE", *regs} and all(v.shape == (3,) for v in parts.values())
    seeds = [sample_seed(k, 2, 19) for k in KEYS]
    close(parts["CE"], ce_loss(clf(img, seeds), torch.tensor([0, 3, 4])))
    close(parts["px_l1"], (img - img0).abs().mean(dim=(1, 2, 3)))
    close(parts["latent_l2"], (z - z0).pow(2).mean(dim=(1, 2, 3)))
    close(parts["px_background_l2"], ((1 - pm) * (img - img0).pow(2)).mean(dim=(1, 2, 3)))
    close(parts["latent_foreground_l1"], (lm * (z - z0).abs()).mean(dim=(1, 2, 3)))
    close(parts["px_lpips"], lpips_net(img, img0, normalize=True).view(3))
    close(total, 1.5 * parts["CE"] + sum(w * parts[r] for r, w in zip(regs, ws)))
    # Non-augmented: resize-only classifier view.
    _, plain = obj(img, z, None)
    close(plain["CE"], ce_loss(clf(img), torch.tensor([0, 3, 4])))


def test_all_ones_masks_equal_unmasked(lpips_net):
    img, z, img0, z0, _, _ = _batch()
    ones_px, ones_lat = torch.ones(3, 1, 64, 64), torch.ones(3, 1, 8, 8)
    zeros_px, zeros_lat = torch.zeros(3, 1, 64, 64), torch.zeros(3, 1, 8, 8)
    for x, x0, ones, zeros in ((img, img0, ones_px, zeros_px), (z, z0, ones_lat, zeros_lat)):
        for p_ in (1, 2):
            close(mean_lp(x, x0, p_, ones), mean_lp(x, x0, p_))
            assert mean_lp(x, x0, p_, zeros).abs().max() == 0
    close(lpips_distance(lpips_net, img, img0, ones_px), lpips_net(img, img0, normalize=True).view(3))
    close(lpips_distance(lpips_net, img, img0), lpips_net(img, img0, normalize=True).view(3))
    # Through Objective: foreground with M = 1 equals the unmasked regulariser; background with M = 1 is 0.
    regs = ["px_l2", "px_foreground_l2", "px_background_l2", "latent_l1", "latent_foreground_l1",
            "px_lpips", "px_foreground_lpips", "px_background_lpips"]
    obj = Objective("CE", [load_classifier("tiny", size=16)], torch.zeros(3, dtype=torch.long), KEYS,
                    regularizers=regs, regularizers_ws=[1.0] * len(regs), img0=img0, z0=z0, px_mask=ones_px,
                    latent_mask=ones_lat, lpips_model=lpips_net)
    _, parts = obj(img, z, None)
    close(parts["px_foreground_l2"], parts["px_l2"])
    close(parts["latent_foreground_l1"], parts["latent_l1"])
    close(parts["px_foreground_lpips"], parts["px_lpips"])
    assert parts["px_background_l2"].abs().max() == 0 and parts["px_background_lpips"].abs().max() == 0


def test_masked_lpips_ignores_changes_outside_the_mask(lpips_net):
    img0 = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    img = img0.clone()
    img[..., :, 48:] = torch.rand(1, 3, 64, 16)  # change only the right quarter
    fg = torch.zeros(1, 1, 64, 64)
    fg[..., :, :16] = 1.0  # far-left quarter
    assert lpips_distance(lpips_net, img, img0, 1 - fg) > 10 * lpips_distance(lpips_net, img, img0, fg)


def test_masked_lpips_is_the_references_masked_lpips(lpips_net):
    """The reference's MaskedLPIPS, recomputed literally: per layer the mask is TF.resize'd (antialiased
    bilinear) to the feature grid, diff = (M⊙(f0 − f1))² of unit-normalised features, lin layer, spatial mean."""
    import lpips
    import torchvision.transforms.functional as TF

    g = torch.Generator().manual_seed(5)
    img, img0 = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    mask = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float().repeat_interleave(8, 2).repeat_interleave(8, 3)
    with torch.no_grad():
        f0 = lpips_net.net.forward(lpips_net.scaling_layer(2 * img - 1))
        f1 = lpips_net.net.forward(lpips_net.scaling_layer(2 * img0 - 1))
        want = 0
        for kk in range(lpips_net.L):
            m = TF.resize(mask, list(f0[kk].shape[2:]))
            d = (m * (lpips.normalize_tensor(f0[kk]) - lpips.normalize_tensor(f1[kk]))) ** 2
            want = want + lpips_net.lins[kk](d).mean(dim=(1, 2, 3))
        close(lpips_distance(lpips_net, img, img0, mask), want)


def test_logits_loss_is_the_intended_margin_not_the_references_constant():
    """Two-classifier 'logits' = −(z1_y − max_{k≠y} z1_k) + (z2_y − max_{k≠y} z2_k), gradient ±1 on the two logits
    that set each margin. (The reference masks the target with +1e12 instead of −inf, so its max is the target
    itself: loss 0, gradient 0 — recomputed literally below; digin keeps the intended margin.)"""
    z1 = torch.tensor([[[2.0, 5.0, 1.0, 4.5]]], requires_grad=True)  # (B=1, N=1, K=4), y = 1
    z2 = torch.tensor([[[3.0, 0.5, 1.0, -2.0]]], requires_grad=True)
    y = torch.tensor([1])
    loss = logits_diff_loss(z1, z2, y)
    assert loss.item() == pytest.approx(-(5.0 - 4.5) + (0.5 - 3.0))
    g1, g2 = torch.autograd.grad(loss.sum(), (z1, z2))
    assert g1.flatten().tolist() == [0.0, -1.0, 0.0, 1.0] and g2.flatten().tolist() == [-1.0, 1.0, 0.0, 0.0]

    def reference_literal(o1, o2, t):  # the reference's loss_functions.py 'logits' branch, one cutout batch
        target_mask = torch.zeros_like(o1)
        target_mask[:, t] = -1e12
        m1, m2 = torch.max(o1 - target_mask, dim=1)[0], torch.max(o2 - target_mask, dim=1)[0]
        return -(o1[:, t] - m1).mean() + (o2[:, t] - m2).mean()

    ref = reference_literal(z1[0], z2[0], 1)
    assert ref.item() == 0.0
    assert all(g.abs().max() == 0 for g in torch.autograd.grad(ref, (z1, z2)))


def test_two_classifier_losses_draw_views_per_classifier(clf):
    """Each classifier of a two-classifier loss draws its own cutouts and noise (as the reference's two wrappers do):
    classifier 0 from the sample seeds (the one-classifier draws), classifier 1 from a derived per-sample stream."""
    img = _batch()[0]
    twin = load_classifier("tiny", num_classes=5, size=16, num_cutouts=4, noise_sd=0.05, seed=0)
    y = Y.new_tensor([0, 1, 2])
    for loss in ("conf", "log_conf", "logits"):
        obj = Objective(loss, [clf, twin], y, KEYS)
        total, _ = obj(img, None, (0, 17))
        assert total.abs().min() > 1e-6, loss  # identical nets on different views: no longer exactly zero
        assert obj(img, None, None)[0].abs().max() == 0, loss  # without augmentation both see the same resize
        assert set(obj.confidences(img)) == {"conf_0", "conf_1"}
    other = load_classifier("tiny", num_classes=5, size=16, num_cutouts=4, noise_sd=0.05, seed=1)
    obj = Objective("conf", [clf, other], y, KEYS)
    seeds = [sample_seed(k, 0, 17) for k in KEYS]
    close(obj(img, None, (0, 17))[0], conf_diff_loss(clf(img, seeds), other(img, classifier_seeds(seeds, 1)), y))
    assert classifier_seeds(seeds, 0) == seeds and len(set(classifier_seeds(seeds, 1)) & set(seeds)) == 0
    # per sample: a sample's two-classifier loss does not depend on its batch
    alone = Objective("conf", [clf, other], y[1:2], KEYS[1:2])(img[1:2], None, (0, 17))[0]
    close(alone, obj(img, None, (0, 17))[0][1:2])


def test_neuron_objective_and_confidences(clf):
    img = _batch()[0]
    t = torch.tensor([[0, 3], [1, 0], [4, 15]])
    obj = Objective("neg_neuron_activation_plus_log_confidence", [clf], t, KEYS)
    seeds = [sample_seed(k, 1, 2) for k in KEYS]
    logits, feats = clf.features(img, seeds)
    close(obj(img, None, (1, 2))[0], neuron_loss("neg_neuron_activation_plus_log_confidence", logits, feats, t))
    conf = obj.confidences(img)
    lg, ft = clf.features(img)
    close(conf["activation"], ft[:, 0, :].gather(1, t[:, 1:]).squeeze(1))
    close(conf["conf_0"], torch.softmax(lg[:, 0], -1).gather(1, t[:, :1]).squeeze(1))


def test_neuron_loss_on_non_final_module():
    mid = load_classifier("tiny", num_classes=5, size=16, seed=0, feature_module="conv1")
    img = _batch()[0]
    t = torch.tensor([[0, 2], [1, 7], [2, 0]])
    obj = Objective("neuron_activation", [mid], t, KEYS)
    act = mid.model.conv1(mid.views(img)[:, 0]).mean(dim=(2, 3))
    close(obj(img, None, None)[0], -act.gather(1, t[:, 1:]).squeeze(1))


def test_text_objective_uses_image_embedding(clf):
    img = _batch()[0]
    text = F.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    obj = Objective("inner_product", [clf], torch.zeros(3, dtype=torch.long), KEYS, text_embeddings=text)
    _, feats = clf.features(img)
    close(obj(img, None, None)[0], -(F.normalize(feats[:, 0], dim=-1) * text).sum(-1))
    assert set(obj.confidences(img)) == {"similarity"}


def test_batch_members_are_independent_and_select(clf):
    img, z, img0, z0, pm, lm = _batch()
    regs = ["px_background_l2", "latent_l2"]
    obj = Objective("CE", [clf], torch.tensor([0, 3, 4]), KEYS, regularizers=regs, regularizers_ws=[2.0, 3.0],
                    img0=img0, z0=z0, px_mask=pm, latent_mask=lm)
    total, parts = obj(img, z, (4, 18))
    for k in range(3):
        sub = obj.select(torch.tensor([k]))
        assert sub.sample_keys == [KEYS[k]] and sub.targets.tolist() == [obj.targets[k].item()]
        t_k, p_k = sub(img[k:k + 1], z[k:k + 1], (4, 18))
        torch.testing.assert_close(t_k[0], total[k], rtol=0, atol=1e-6)
    rev = obj.select(torch.tensor([2, 0]))
    torch.testing.assert_close(rev(img[[2, 0]], z[[2, 0]], (4, 18))[0], total[[2, 0]], rtol=0, atol=1e-6)
    # A different salt gives other cutouts.
    assert not torch.allclose(obj(img, z, (5, 18))[1]["CE"], parts["CE"])


def test_gradient_reaches_only_its_own_sample(clf):
    img = _batch()[0].requires_grad_(True)
    obj = Objective("conf", [clf], torch.tensor([0, 1, 2]), KEYS)
    total, _ = obj(img, None, (0, 0))
    (g,) = torch.autograd.grad(total[1], img)
    assert g[1].abs().sum() > 0 and g[0].abs().sum() == 0 and g[2].abs().sum() == 0


def test_noise_scale_fn_is_applied(clf):
    img = _batch()[0]
    calls = []

    def no_noise(salt):
        calls.append(salt)
        return 0.0

    obj = Objective("CE", [clf], torch.tensor([0, 1, 2]), KEYS, noise_scale_fn=no_noise)
    seeds = [sample_seed(k, 3, 1) for k in KEYS]
    close(obj(img, None, (3, 1))[0], ce_loss(clf(img, seeds, noise_scale=0.0), torch.tensor([0, 1, 2])))
    assert not torch.allclose(obj(img, None, (3, 1))[0], ce_loss(clf(img, seeds), torch.tensor([0, 1, 2])))
    assert calls[0] == (3, 1)


def test_reference_and_masks_given_later_make_a_new_objective(clf):
    img, z, img0, z0, pm, lm = _batch()
    obj = Objective("CE", [clf], torch.tensor([0, 1, 2]), KEYS, regularizers=["latent_background_l2"],
                    regularizers_ws=[25.0])
    assert obj.needs_reference and obj.needs_masks
    with pytest.raises(ValueError, match="latent_background_l2.*reference"):
        obj(img, z, None)
    with_ref = obj.with_reference(img0=img0, z0=z0)
    assert not with_ref.needs_reference and obj.needs_reference  # the first objective is unchanged
    with pytest.raises(ValueError, match="latent_background_l2.*mask"):
        with_ref(img, z, None)
    full = with_ref.with_reference(px_mask=pm, latent_mask=lm)
    close(full(img, z, None)[1]["latent_background_l2"], ((1 - lm) * (z - z0) ** 2).mean(dim=(1, 2, 3)))
    # a reference given earlier is kept (txt2img's iterate-0 fill-in never overrides an explicit one)
    assert torch.equal(full.with_reference(img0=img, z0=z).reference.z0, z0)
    with pytest.raises(ValueError, match="px_mask must be"):
        obj.with_reference(px_mask=pm[:, 0])


def test_clear_errors(clf):
    t = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="'bogus'"):
        Objective("bogus", [clf], t, KEYS)
    with pytest.raises(ValueError, match="'px_l3'"):
        Objective("CE", [clf], t, KEYS, regularizers=["px_l3"], regularizers_ws=[1.0])
    assert parse_regularizer("px_background_clip") == ("px", "background", "clip")
    with pytest.raises(ValueError, match="clip_regularizer_weights"):  # the model must be built by the task
        Objective("CE", [clf], t, KEYS, regularizers=["px_background_clip"], regularizers_ws=[1.0])
    with pytest.raises(ValueError, match="latent_clip"):
        parse_regularizer("latent_clip")
    with pytest.raises(ValueError, match="latent_lpips"):
        parse_regularizer("latent_lpips")
    with pytest.raises(ValueError, match="regularizers_ws"):
        Objective("CE", [clf], t, KEYS, regularizers=["px_l1", "px_l2"], regularizers_ws=[1.0])
    with pytest.raises(ValueError, match="exactly one classifier"):
        Objective("CE", [clf, clf], t, KEYS)
    with pytest.raises(ValueError, match="two classifiers"):
        Objective("logits", [clf], t, KEYS)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        Objective("neuron_activation", [clf], t, KEYS)
    with pytest.raises(ValueError, match="text_embeddings"):
        Objective("spherical_distance", [clf], t, KEYS)
    with pytest.raises(ValueError, match="sample keys"):
        Objective("CE", [clf], t, KEYS[:2])
    assert parse_regularizer("latent_foreground_l2") == ("latent", "foreground", "l2")


# ------------------------------------------------------------------------------------------ the loss table

# every loss name accepted before the table, each form pinned to the function it computed then
def _CE(o, y, t):
    return ce_loss(o[0], y)


_NEURON = {n: lambda o, y, t, n=n: neuron_loss(n, o[0][0], o[0][1], y)
           for n in ("neuron_activation", "neg_neuron_activation", "neuron_activation_plus_log_confidence",
                     "neg_neuron_activation_plus_log_confidence")}
_TEXT = {n: lambda o, y, t, n=n: text_loss(n, o[0][1], t, 2.0)
         for n in ("inner_product", "spherical_distance", "cross_entropy")}
PINNED = {("CE", 1): _CE, ("log_conf", 1): _CE, ("NLL", 1): _CE,
          ("conf", 1): lambda o, y, t: conf_loss(o[0], y),
          ("conf", 2): lambda o, y, t: conf_diff_loss(o[0], o[1], y),
          ("log_conf", 2): lambda o, y, t: log_conf_diff_loss(o[0], o[1], y),
          ("logits", 2): lambda o, y, t: logits_diff_loss(o[0], o[1], y),
          **{(n, 1): f for n, f in {**_NEURON, **_TEXT}.items()}}


def _loss_inputs(form, B=2, N=3, K=5, F_=7, D=6):
    """Tiny random (outputs, targets, text embeddings) with the shapes the form declares."""
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(B, N, K, generator=g) for _ in range(form.classifiers)]
    y = torch.randint(0, K, (B,), generator=g)
    if form.target == "class":
        return logits, y, None
    if form.target == "class+neuron":
        neuron = torch.randint(0, F_, (B,), generator=g)
        return [(logits[0], torch.randn(B, N, F_, generator=g))], torch.stack([y, neuron], 1), None
    text = torch.randn(B, D, generator=g) if form.target == "text" else torch.randn(B, 2, D, generator=g)
    return [(logits[0], torch.randn(B, N, D, generator=g))], torch.zeros(B, dtype=torch.long), text


def test_every_table_entry_evaluates_with_the_shapes_it_declares():
    forms = {(name, f.classifiers): f for name, spec in LOSSES.items() for f in spec.forms}
    assert set(forms) == set(PINNED)
    for (name, n), form in forms.items():
        assert form.target in ("class", "class+neuron", "text", "text pair") and n in (1, 2), name
        assert form.help and "\n" not in form.help, name
        assert loss_spec(name, n) is form
        outs, y, text = _loss_inputs(form)
        got = form.fn(outs, y, text, 2.0)
        assert got.shape == (2,) and torch.isfinite(got).all(), (name, n)
        close(got, PINNED[name, n](outs, y, text))


@pytest.mark.parametrize("c", [0.05, 0.5, 0.8, 0.99])
def test_confidence_to_loss_round_trips_through_the_loss(c):
    """The loss at confidence c (a logit vector whose softmax gives p(y) = c; with two classifiers p1 − p2 = c) is
    the table's value for c, and a surer vector is below it: the early-stopping threshold means 'past c'."""
    def logits_at(p, K=4):  # softmax p on class 0, the rest shared equally
        return torch.tensor([math.log(p)] + [math.log((1 - p) / (K - 1))] * (K - 1)).view(1, 1, K)

    def outputs(form, c):
        return [logits_at(c)] if form.classifiers == 1 else [logits_at((1 + c) / 2), logits_at((1 - c) / 2)]

    y, checked = torch.tensor([0]), set()
    for name, spec in LOSSES.items():
        for form in spec.forms:
            if form.confidence_to_loss is None:
                with pytest.raises(ValueError, match=f"early_stopping_confidence={c}: loss '{name}'.*no confidence"):
                    check_loss(name, form.classifiers, c)
                continue
            want = form.confidence_to_loss(c)
            assert form.fn(outputs(form, c), y).item() == pytest.approx(want, rel=1e-5, abs=1e-6), name
            assert form.fn(outputs(form, c + 0.5 * (1 - c)), y).item() < want, name
            assert check_loss(name, form.classifiers, c) == pytest.approx(want)
            checked.add((name, form.classifiers))
    assert checked == {("CE", 1), ("log_conf", 1), ("NLL", 1), ("conf", 1), ("conf", 2)}


def test_an_unknown_loss_is_refused_naming_the_known_ones(clf):
    for refuse in (lambda: check_loss("bogus", 1), lambda: loss_spec("bogus", 1),
                   lambda: Objective("bogus", [clf], torch.tensor([0, 1, 2]), KEYS)):
        with pytest.raises(ValueError) as e:
            refuse()
        msg = str(e.value)
        assert "\n" not in msg and "'bogus'" in msg and all(name in msg for name in LOSSES), msg
    with pytest.raises(ValueError, match="'CE' needs exactly one classifier, got 2"):
        check_loss("CE", 2)
    with pytest.raises(ValueError, match="'conf' needs one or two classifiers, got 3"):
        check_loss("conf", 3)
    assert check_loss("logits", 2) is None  # no confidence given: nothing to map
