"""An offline torch hub cache for LPIPS: a random torchvision AlexNet saved under the file name the real loader
looks for, so tests build LPIPS exactly as users do (no random-trunk fallback)."""
import os
from contextlib import contextmanager

import pytest
import torch


_saved_alexnet = []  # the one file this process wrote; later homes link to it (233 MB each otherwise)


@contextmanager
def torch_home_with_alexnet(root):
    from torchvision.models import alexnet

    from digin.engine.perceptual import ALEXNET_FILE

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(root))
        ckpt = root / "hub" / "checkpoints" / ALEXNET_FILE
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        if _saved_alexnet and os.path.exists(_saved_alexnet[0]):
            os.symlink(_saved_alexnet[0], ckpt)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                torch.save(alexnet(weights=None).state_dict(), ckpt)
            _saved_alexnet[:] = [str(ckpt)]
        yield ckpt
