"""Shared test helpers: a tiny classifier net and an objective with the engine's protocol, smooth test images, and
the family-generic checks (batch independence, loss decrease, inversion) that the SDXL and SD-2 tests run."""
import hashlib

import torch
import torch.nn.functional as F

from digin.engine.guidance import GuidanceConfig, OptimParams, optimise
from digin.engine.inversion import invert

T = 4  # DDIM steps of the family checks
WORDS = ["a red star", "a blue ring", "a green square", "a cat"]


def tiny_net(seed=0, num_classes=5):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, stride=2),
                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(16, num_classes))
    return net.eval().requires_grad_(False)


def _seed(key, salt):
    return int.from_bytes(hashlib.blake2b(f"{key}|{salt}".encode(), digest_size=8).digest(), "little") >> 1


class NoiseCE:
    """A minimal objective with the engine's protocol: per-sample CE, per-sample seeded noise augmentation."""

    def __init__(self, net, targets, keys, noise=0.05, nets=None):
        self.nets = nets or [net]
        self.targets, self.keys, self.noise = targets, list(keys), noise

    def _augment(self, img, salt):
        if salt is None:
            return img
        n = torch.stack([torch.randn(img.shape[1:], generator=torch.Generator().manual_seed(_seed(k, salt)))
                         for k in self.keys])
        return img + self.noise * n.to(img)

    def __call__(self, img, z, salt):
        x = self._augment(img, salt)
        if len(self.nets) == 1:
            ce = F.cross_entropy(self.nets[0](x), self.targets, reduction="none")
            return ce, {"CE": ce}
        p = [net(x).softmax(-1).gather(1, self.targets[:, None])[:, 0] for net in self.nets]
        loss = -p[0] + p[1]
        return loss, {"conf": loss}

    def confidences(self, img):
        return {f"conf_{j}": net(img).softmax(-1).gather(1, self.targets[:, None])[:, 0]
                for j, net in enumerate(self.nets)}

    def select(self, idx):
        return NoiseCE(None, self.targets[idx], [self.keys[i] for i in idx], self.noise, self.nets)


def smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=32, mode="bilinear")


def inputs(sd, B, seed=0, words=WORDS):
    """Start noise (B, C, 16, 16) and the prompt / empty-prompt embeddings."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, sd.latent_channels, 16, 16, generator=g)
    cond = sd.encode_text([words[b % len(words)] for b in range(B)])
    uncond = sd.encode_text([""] * B)
    return z, cond, uncond


def guidance_cfg(K=3, **op):
    return GuidanceConfig(guidance_scale=3.0, num_ddim_steps=T, optim_params=OptimParams(sgd_steps=K, **op))


def check_batch_independence(sd):
    B = 3
    z, cond, uncond = inputs(sd, B, seed=1)
    targets, keys, net = torch.tensor([0, 2, 4]), ["s0", "s1", "s2"], tiny_net()
    cfg = guidance_cfg(K=2)
    together = optimise(sd, NoiseCE(net, targets, keys), z_T=z, cond=cond, uncond=uncond, cfg=cfg)
    assert (together.z_T - z).abs().amax() > 1e-6  # something was optimised
    for b in (0, 2):
        idx = torch.tensor([b])
        alone = optimise(sd, NoiseCE(net, targets, keys).select(idx), z_T=z[idx], cond=cond[idx],
                         uncond=uncond[idx], cfg=cfg)
        torch.testing.assert_close(alone.losses[:, 0], together.losses[:, b], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(alone.z_T[0], together.z_T[b], atol=1e-5, rtol=0)
        torch.testing.assert_close(alone.cond_delta[0], together.cond_delta[b], atol=1e-5, rtol=0)
        torch.testing.assert_close(alone.ours_images[0], together.ours_images[b], atol=1e-5, rtol=0)
    return together


def check_loss_decreases(sd):
    B = 2
    z, cond, uncond = inputs(sd, B, seed=5)
    res = optimise(sd, NoiseCE(tiny_net(2), torch.tensor([1, 3]), ["x", "y"]), z_T=z, cond=cond, uncond=uncond,
                   cfg=guidance_cfg(K=5, sgd_stepsize=0.05))
    best = res.losses.gather(0, res.best_iter[None])[0]
    assert (best < res.losses[0] - 1e-4).all(), (res.losses[0], best)
    return res


def check_inversion_beats_ddim(sd):
    r = invert(sd, smooth_images(2), ["a cat", "a dog on grass"], num_steps=6, guidance_scale=3.0)
    for m in r.metrics:
        assert m["status"] == "ok"
        assert m["latent_mse_inv"] < 0.9 * m["latent_mse_ddim"], m
    return r
