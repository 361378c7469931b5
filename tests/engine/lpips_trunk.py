"""An offline torch hub cache for LPIPS: a random torchvision AlexNet saved under the file name the real loader
looks for, so tests build LPIPS exactly as users do (no random-trunk fallback)."""
from contextlib import contextmanager

import pytest
import torch


@contextmanager
def torch_home_with_alexnet(root):
    from torchvision.models import alexnet

    from digin.engine.perceptual import ALEXNET_FILE

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(root))
        ckpt = root / "hub" / "checkpoints" / ALEXNET_FILE
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            torch.save(alexnet(weights=None).state_dict(), ckpt)
        yield ckpt
