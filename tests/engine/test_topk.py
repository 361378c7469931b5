import pytest
import torch

from digin.stages.neurons.topk import EMPTY_ID, TopK


def brute_force(acts_NF, ids_N, k):
    """Per neuron: sort python tuples by (-value, id) — written independently of select_topk."""
    out_v, out_i = [], []
    for f in range(acts_NF.shape[1]):
        rows = sorted(zip(acts_NF[:, f].tolist(), ids_N.tolist()), key=lambda r: (-r[0], r[1]))[:k]
        out_v.append([r[0] for r in rows])
        out_i.append([r[1] for r in rows])
    return torch.tensor(out_v), torch.tensor(out_i)


def data(n=57, f=6, seed=0, ties=True):
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(n, f, generator=g)
    if ties:  # quantise so many values tie and the id tie-break matters
        acts = (acts * 2).round() / 2
    ids = torch.randperm(1000, generator=g)[:n]
    return acts, ids


def stream(acts, ids, k, batch, order=None):
    tk = TopK(acts.shape[1], k)
    order = torch.arange(len(ids)) if order is None else order
    for s in range(0, len(ids), batch):
        sel = order[s:s + batch]
        tk.update(acts[sel], ids[sel])
    return tk


def test_equals_brute_force():
    acts, ids = data()
    tk = stream(acts, ids, k=5, batch=8)
    v, i = brute_force(acts, ids, 5)
    torch.testing.assert_close(tk.values_FK, v)
    assert torch.equal(tk.ids_FK, i)


def test_merge_of_two_ranks_equals_one_pass_and_order_independent():
    acts, ids = data(seed=1)
    one = stream(acts, ids, k=7, batch=10)
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(3))
    a = stream(acts[perm[:20]], ids[perm[:20]], k=7, batch=3)
    b = stream(acts[perm[20:]], ids[perm[20:]], k=7, batch=16)
    merged_ab = TopK.from_state_dict(a.state_dict()).merge(b)
    merged_ba = TopK.from_state_dict(b.state_dict()).merge(a)
    shuffled = stream(acts, ids, k=7, batch=5, order=perm)
    for other in (merged_ab, merged_ba, shuffled):
        assert torch.equal(other.values_FK, one.values_FK)
        assert torch.equal(other.ids_FK, one.ids_FK)


def test_fewer_samples_than_k_padding_mask_and_nan():
    acts = torch.tensor([[1.0, float("nan")], [2.0, 0.5], [9.0, 9.0]])
    ids = torch.tensor([4, 2, 7])
    tk = TopK(2, 4)
    tk.update(acts, ids, valid_B=torch.tensor([True, True, False]))  # row 2 is a padded tail row
    assert tk.result(0) == [(2, 2.0), (4, 1.0)]
    assert tk.result(1)[0] == (2, 0.5) and tk.result(1)[1][0] == 4  # NaN ranks as -inf, below real values
    assert tk.ids_FK[0, 2:].tolist() == [EMPTY_ID, EMPTY_ID]


def test_state_dict_roundtrips_through_safetensors():
    from safetensors.torch import load, save

    acts, ids = data(n=3, seed=2)
    tk = stream(acts, ids, k=5, batch=2)  # k > n: -inf slots must survive
    back = TopK.from_state_dict(load(save(tk.state_dict())))
    assert torch.equal(back.values_FK, tk.values_FK) and torch.equal(back.ids_FK, tk.ids_FK)
    with pytest.raises(ValueError):
        back.merge(TopK(acts.shape[1], 4))
