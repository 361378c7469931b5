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

from digin.toy.train import TrainConfig


@dataclass
class Config(TrainConfig):
    out: str = "toy-models"
    replace_bundled: bool = False  # allow out= to be the package's own digin/toy/models (what `digin demo` loads)


def run(cfg: Config):
    from pathlib import Path

    import digin.toy
    from digin.errors import ConfigError
    from digin.toy.train import train

    bundled = (Path(digin.toy.__file__).parent / "models").resolve()
    if Path(cfg.out).resolve() == bundled and not cfg.replace_bundled:
        raise ConfigError(f"out={cfg.out} is the toy world's bundled models ({bundled}), which digin demo and the "
                          "tests load: train into another folder, or pass replace_bundled=true to overwrite them")
    train(cfg)
    return 0
