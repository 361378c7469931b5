"""`tiny` / `tiny:<folder>`: a two-conv test classifier, seeded (random init from a seed) or saved to a folder
(config.json + model.safetensors) by `save_tiny_classifier`."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .imagenet import IMAGENET_MEAN, IMAGENET_STD
from .weights import load_into


class TinyConvNet(nn.Module):
    """Two strided convs, global pool, linear head `fc` — a stand-in classifier for tests."""

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


def build_tiny_net(num_classes: int = 10, width: int = 8, seed: int = 0) -> TinyConvNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyConvNet(num_classes, width)


def save_tiny_classifier(folder, *, num_classes: int = 10, size: int = 32, width: int = 8, seed: int = 0,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Path:
    """Write config.json + model.safetensors for `load_classifier('tiny:<folder>')`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    net = build_tiny_net(num_classes, width, seed)
    (folder / "config.json").write_text(json.dumps(
        {"kind": "tiny", "num_classes": num_classes, "size": size, "width": width, "mean": list(mean),
         "std": list(std)}))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def build_tiny(arg: str, checkpoint, kw: dict, **_):
    if arg:
        cfg = json.loads((Path(arg) / "config.json").read_text())
        net = TinyConvNet(cfg["num_classes"], cfg["width"])
        load_into(net, checkpoint or Path(arg) / "model.safetensors")
        return net, dict(size=cfg["size"], mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
    net = build_tiny_net(kw.get("num_classes", 10), kw.get("width", 8), kw.get("seed", 0))
    if checkpoint:
        load_into(net, checkpoint)
    return net, dict(size=kw.get("size", 32), mean=IMAGENET_MEAN, std=IMAGENET_STD)

