"""One set of distances serves the regularisers, the eval metrics and the inversion report; each caller's numbers
are bit-for-bit what its own formula gave before they shared it."""
import torch

from digin.stages import metrics as M
from digin.engine.distances import l2_norm, mean_lp, psnr
from digin.engine.objectives import REGULARIZERS


def _pair(seed=0, shape=(3, 4, 16, 16)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g), torch.rand(*shape, generator=g), torch.rand(shape[0], 1, *shape[2:],
                                                                                         generator=g)


def test_each_caller_keeps_its_numbers_bit_for_bit():
    x, y, m = _pair()
    for p in (1, 2):  # the regularisers: mean over C,H,W of M·|x − y|^p
        d = (x - y).abs()
        d = d if p == 1 else d.pow(p)
        reg = REGULARIZERS[f"l{p}"].fn
        assert torch.equal(reg(x, y, None, None), d.flatten(1).mean(1))
        assert torch.equal(reg(x, y, m, None), (d * m).flatten(1).mean(1))
    mse = (x - y).pow(2).flatten(1).mean(1)  # the inversion report
    assert torch.equal(mean_lp(x, y, 2), mse)
    assert torch.equal(psnr(x, y), (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).clamp(max=100.0))
    assert torch.equal(l2_norm(x, y), (x - y).flatten(1).norm(dim=1))
    assert torch.equal(psnr(x, x), torch.full((3,), 100.0))
    w = 1.0 - m  # eval: sums over channels and pixels, weighted by the (background) mask
    assert torch.equal(M.l1_distance(x, y, m, "background"), (w * (x - y).abs()).flatten(1).sum(1))
    assert torch.equal(M.l2_distance(x, y, m, "background"), (w * (x - y).square()).flatten(1).sum(1).sqrt())
