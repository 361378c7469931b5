"""LPIPS-alex, built one way for the px_lpips regulariser and `digin eval`'s LPIPS metric.

The linear heads ship with the `lpips` package; the AlexNet trunk is torchvision's ImageNet file, looked for in the
torch hub cache ($TORCH_HOME/hub/checkpoints). Nothing is downloaded: a missing file is an error naming it. A random
trunk (numbers defined but not perceptual) is only built when asked for (`digin eval lpips_random_trunk=true`).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from digin.engine.resize import tv_resize
from digin.extras import require

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet_Weights.IMAGENET1K_V1


def lpips_trunk_file() -> Path:
    """Where LPIPS' AlexNet trunk weights are looked for (torchvision's file name in the torch hub cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


def require_trunk_file() -> Path:
    """The AlexNet trunk file, or FileNotFoundError naming where it was looked for."""
    trunk = lpips_trunk_file()
    if not trunk.is_file():
        raise FileNotFoundError(f"LPIPS needs the AlexNet trunk weights {trunk} (torchvision's {ALEXNET_FILE}; "
                                f"copy it there, nothing is downloaded)")
    return trunk


def build_lpips(device=None, *, random_trunk: bool = False, spatial: bool = False):
    """LPIPS-alex on `device`, frozen. spatial=True: forward returns the per-pixel map (the masked metric)."""
    lpips = require("lpips", "LPIPS (the px_lpips regulariser, eval's lpips)")
    if not random_trunk:
        require_trunk_file()
    with warnings.catch_warnings():  # torchvision's deprecation notes about lpips' `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=random_trunk, spatial=spatial, verbose=False)
    return net.eval().requires_grad_(False).to(device)


def masked_lpips(net, x_BCHW, x0_BCHW, mask_B1HW=None) -> torch.Tensor:
    """LPIPS (inputs in [0,1]) → (B,). With a mask: per layer diff = (M⊙(f0 − f1))² on unit-normalised features,
    M resized to the layer's resolution as the reference's TF.resize (antialiased bilinear), then the layer's
    linear head and spatial mean (the reference's MaskedLPIPS)."""
    import lpips

    in0 = net.scaling_layer(2 * x_BCHW.float() - 1)
    in1 = net.scaling_layer(2 * x0_BCHW.float() - 1)
    outs0, outs1 = net.net.forward(in0), net.net.forward(in1)
    total = 0
    for kk in range(net.L):
        diff = lpips.normalize_tensor(outs0[kk]) - lpips.normalize_tensor(outs1[kk])
        if mask_B1HW is not None:
            diff = diff * tv_resize(mask_B1HW.float(), diff.shape[-2:])
        total = total + net.lins[kk](diff.pow(2)).mean(dim=(1, 2, 3))
    return total
