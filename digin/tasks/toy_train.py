"""`digin toy-train`: train the toy world's bundled models (VAE, UNet + text encoder, two shape classifiers).

  digin toy-train out=/tmp/toy-models   # all stages (CPU, 1 thread, ~70 min)
  digin toy-train out=digin/toy/models replace_bundled=true   # over the models this package ships
  digin toy-train stages=classifiers    # one stage; work files (VAE, latent cache, UNet state) under work=
  digin toy-train device=cuda threads=8 unet_minutes=10

Seeded and resumable (the UNet stage checkpoints every `checkpoint_minutes` and picks up its state from
`work`); `out/train_log.json` records what ran, on which device, for how long. See digin/toy/MODEL_CARD.md.
"""
from __future__ import annotations

from dataclasses import dataclass

from digin.fields import key
from digin.stages.toy_train import train_toy_models
from digin.toy.train import TrainConfig


@dataclass
class Config(TrainConfig):
    out: str = key("toy-models", "output folder of the trained models (sd/, clf_clean/, clf_spurious/, "
                                 "train_log.json)", results=False)
    replace_bundled: bool = key(False, "allow out= to be the package's own digin/toy/models (what `digin demo` "
                                       "loads)")


def run(cfg: Config):
    return train_toy_models(cfg)
