"""`digin toy-train`: train the toy world's bundled models (VAE, UNet + text encoder, two shape classifiers).

  digin toy-train                       # all stages into digin/toy/models (CPU, 1 thread, ~70 min)
  digin toy-train stages=classifiers    # one stage; work files (VAE, latent cache, UNet state) under work=
  digin toy-train device=cuda threads=8 unet_minutes=10

Seeded and resumable (the UNet stage checkpoints every `checkpoint_minutes` and picks up its state from
`work`); `out/train_log.json` records what ran, on which device, for how long. See digin/toy/MODEL_CARD.md.
"""
from __future__ import annotations

from dataclasses import dataclass

from digin.toy.train import TrainConfig


@dataclass
class Config(TrainConfig):
    pass


def run(cfg: Config):
    from digin.toy.train import train

    train(cfg)
    return 0
