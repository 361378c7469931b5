"""WS-DAN + CAL classifier: a checkpoint in the published layout (nested state_dict, DataParallel `module.` prefix,
extra feature_center) loads strictly through load_classifier, and the logits equal an independent computation from
the raw tensors (output stride 16, attention pooling, signed sqrt + L2, fc on 100·f)."""
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from digin.engine.classifiers.cal import NUM_CLASSES, WSDANCAL
from digin.engine.classifiers import IMAGENET_MEAN, IMAGENET_STD, load_classifier


def _randomise_bn(model, g):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


@pytest.fixture(scope="module")
def cal_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = WSDANCAL(num_classes=7, num_attentions=4, arch="resnet50").eval()
    _randomise_bn(model, torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.fc.weight.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("cal") / "model_bestacc.pth"
    torch.save({"logs": {"epoch": 3, "val_acc": 0.5}, "feature_center": torch.zeros(7, 4 * 2048),
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path, {k: v.clone() for k, v in model.state_dict().items()}


def _trunk_by_hand(sd, x):
    """ResNet-50 bottleneck trunk from raw tensors (eval BN), stride 1 in the last stage."""
    def bn(t, p, eps=1e-5):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                            False, 0.0, eps)

    x = F.relu(bn(F.conv2d(x, sd["features.0.weight"], stride=2, padding=3), "features.1"))
    x = F.max_pool2d(x, 3, 2, 1)
    for stage, (blocks, stride) in enumerate([(3, 1), (4, 2), (6, 2), (3, 1)]):
        for b in range(blocks):
            p = f"features.{4 + stage}.{b}"
            s = stride if b == 0 else 1
            y = F.relu(bn(F.conv2d(x, sd[p + ".conv1.weight"]), p + ".bn1"))
            y = F.relu(bn(F.conv2d(y, sd[p + ".conv2.weight"], stride=s, padding=1), p + ".bn2"))
            y = bn(F.conv2d(y, sd[p + ".conv3.weight"]), p + ".bn3")
            if p + ".downsample.0.weight" in sd:
                x = bn(F.conv2d(x, sd[p + ".downsample.0.weight"], stride=s), p + ".downsample.1")
            x = F.relu(x + y)
    return x


def test_cal_checkpoint_loads_and_matches_a_computation_from_raw_tensors(cal_checkpoint):
    path, sd = cal_checkpoint
    clf = load_classifier("cal:7", checkpoint=str(path), arch="resnet50", num_attentions=4, size=64)
    assert clf.num_classes == 7 and clf.size == 64
    img = torch.rand(2, 3, 80, 80, generator=torch.Generator().manual_seed(2))
    x = TF.resize(img, 64, interpolation=TF.InterpolationMode.BILINEAR)  # the reference wrapper's resize
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        f = _trunk_by_hand(sd, x)
        assert f.shape[-2:] == (4, 4)  # 64 px / output stride 16
        a = F.relu(F.batch_norm(F.conv2d(f, sd["attentions.conv.weight"]), sd["attentions.bn.running_mean"],
                                sd["attentions.bn.running_var"], sd["attentions.bn.weight"], sd["attentions.bn.bias"],
                                False, 0.0, 0.001))
        pooled = torch.stack([(a[:, m:m + 1] * f).mean(dim=(2, 3)) for m in range(4)], dim=1).flatten(1)
        pooled = F.normalize(pooled.sign() * (pooled.abs() + 1e-6).sqrt(), dim=-1)
        expect = (100 * pooled) @ sd["fc.weight"].T
        logits = clf(img)[:, 0]
    torch.testing.assert_close(logits, expect, rtol=1e-4, atol=1e-4)
    assert logits.std() > 0.1  # not a degenerate comparison


def test_cal_names_and_errors(cal_checkpoint):
    assert NUM_CLASSES["car"] == 196
    with pytest.raises(ValueError, match="checkpoint"):
        load_classifier("cal:car")
    with pytest.raises(ValueError, match="bottleneck"):
        load_classifier("cal:car", allow_random=True, arch="resnet18")
    with pytest.raises(ValueError, match="does not match"):  # a Cars checkpoint is not a 200-class CUB model
        load_classifier("cal:bird", checkpoint=str(cal_checkpoint[0]), arch="resnet50", num_attentions=4)
    clf = load_classifier("cal:car", allow_random=True, arch="resnet50", num_attentions=2)
    assert clf.size == 448 and clf.num_classes == 196
