"""The body of `digin toy-train` (digin/tasks/toy_train.py): train the toy world's bundled models with
digin.toy.train, refusing to overwrite the package's own models unless asked to."""
from __future__ import annotations

from pathlib import Path

import digin.toy
from digin.errors import ConfigError
from digin.toy.train import train


def train_toy_models(cfg) -> int:
    """Train every stage `cfg` (digin.tasks.toy_train.Config: a digin.toy.train.TrainConfig + `out`,
    `replace_bundled`) asks for into `cfg.out`; the bundled models folder only with `cfg.replace_bundled`."""
    bundled = (Path(digin.toy.__file__).parent / "models").resolve()
    if Path(cfg.out).resolve() == bundled and not cfg.replace_bundled:
        raise ConfigError(f"out={cfg.out} is the toy world's bundled models ({bundled}), which digin demo and the "
                          "tests load: train into another folder, or pass replace_bundled=true to overwrite them")
    train(cfg)
    return 0
