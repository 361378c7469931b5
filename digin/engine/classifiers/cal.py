"""`cal:<car|bird|aircraft|num_classes>`: the WS-DAN + CAL (counterfactual attention learning) fine-grained
classifier, as the reference's Cars UVCEs use it (its load_cal_model in src/utils/models/: ResNet-101 trunk, M = 32
attention maps, 448 px, ImageNet normalisation, first output only). Parameter names follow the published
checkpoints (`features.<i>`, `attentions.{conv,bn}`, `fc`), so a `model_bestacc.pth` loads strictly.

Inference path: trunk features F (B, C, h, w) with output stride 16 (the last stage keeps stride 1), attention maps
A = ReLU(BN(conv1×1(F))) (B, M, h, w); bilinear attention pooling f = mean over positions of A_m·F_c → (B, M·C),
signed square root, L2-normalised; logits = fc(100·f). Training-time pieces (counterfactual branch, crop/drop
augmentation, centre loss) are not needed to guide or evaluate and are left out.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .imagenet import IMAGENET_MEAN, IMAGENET_STD
from .weights import load_into

NUM_CLASSES = {"car": 196, "cars": 196, "bird": 200, "cub": 200, "aircraft": 100}
SIZE = 448
_EPS = 1e-6


class AttentionConv(nn.Module):
    """1×1 conv (no bias) + BatchNorm(eps 1e-3) + ReLU: the M attention maps."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def bilinear_attention_pool(features_BCHW: torch.Tensor, attentions_BMHW: torch.Tensor) -> torch.Tensor:
    """(B, M·C): per attention map, the spatial mean of map × feature; signed sqrt; L2 norm over all M·C."""
    B, _, H, W = features_BCHW.shape
    if attentions_BMHW.shape[-2:] != (H, W):
        attentions_BMHW = F.interpolate(attentions_BMHW, size=(H, W), mode="bilinear", align_corners=True)
    fm = torch.einsum("bmhw,bchw->bmc", attentions_BMHW, features_BCHW).reshape(B, -1) / float(H * W)
    fm = torch.sign(fm) * torch.sqrt(fm.abs() + _EPS)
    return F.normalize(fm, dim=-1)


class WSDANCAL(nn.Module):
    def __init__(self, num_classes: int, num_attentions: int = 32, arch: str = "resnet101"):
        super().__init__()
        import torchvision

        if arch not in ("resnet50", "resnet101", "resnet152"):
            raise ValueError(f"CAL backbone {arch!r}: only bottleneck ResNets (resnet50/101/152) match the published "
                             f"checkpoints")
        net = torchvision.models.get_model(arch, weights=None)
        last = net.layer4[0]  # the published trunk keeps stride 1 in its last stage (output stride 16)
        last.conv2.stride = (1, 1)
        last.downsample[0].stride = (1, 1)
        self.features = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                                      net.layer1, net.layer2, net.layer3, net.layer4)
        self.num_features = 512 * 4
        self.attentions = AttentionConv(self.num_features, num_attentions)
        self.fc = nn.Linear(num_attentions * self.num_features, num_classes, bias=False)

    def forward(self, x):
        f = self.features(x)
        return self.fc(bilinear_attention_pool(f, self.attentions(f)) * 100.0)


def build_cal(arg: str, checkpoint, kw: dict, **_) -> tuple[nn.Module, dict]:
    """cal:<car|bird|aircraft|num_classes> + checkpoint=<model_bestacc.pth> → (model, preprocessing)."""
    key = (arg or "car").lower()
    if key in NUM_CLASSES:
        n = NUM_CLASSES[key]
    elif key.isdigit():
        n = int(key)
    else:
        raise ValueError(f"cal:{arg}: expected one of {sorted(NUM_CLASSES)} or a class count")
    n = int(kw.get("num_classes", n))
    if not checkpoint and not kw.get("allow_random", False):
        raise ValueError(f"cal:{arg} needs checkpoint=<WS-DAN-CAL model_bestacc.pth> (random init refused)")
    model = WSDANCAL(n, int(kw.get("num_attentions", 32)), kw.get("arch", "resnet101"))
    if checkpoint:
        load_into(model, checkpoint)
    return model, dict(size=SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD)
