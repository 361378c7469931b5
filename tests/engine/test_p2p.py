"""Word positions, P2P re-indexing, schedules, latent blending and the batched schedule search."""
import pytest
import torch

from digin.engine.attention import AttentionController, install_attention, restore_attention
from digin.engine.p2p import (interpolation_schedule, make_blend, pick_best, prompt_words, replacement_matrix,
                              schedule_grid, search_schedules, take_best, token_weights, word_token_positions)
from digin.engine.sampling import run_chain
from digin.engine.schedule import make_ddim_schedule


@pytest.fixture
def sd(tiny_sd):
    yield tiny_sd
    restore_attention(tiny_sd.unet)


# ------------------------------------------------------------------------------------------ words

def test_word_positions_match_the_encoded_prompt(tiny_sd):
    tok = tiny_sd.tokenizer
    prompt = "a photo of a dog, sitting. on grass"
    ids = tok(prompt).input_ids
    pos = word_token_positions(tok, prompt)
    assert pos["a"] == [1, 9]  # repeated word: every occurrence, BOS at 0
    for w in prompt_words(tok, prompt):
        assert [ids[p] for p in w.positions] == tok(w.key, add_special_tokens=False).input_ids
    assert set(pos) == {"a", "photo", "of", "dog", "sitting", "on", "grass"}  # ',' and '.' stripped
    w = token_weights(pos, ["Dog"])
    assert w.nonzero().flatten().tolist() == pos["dog"]
    with pytest.raises(KeyError):
        token_weights(pos, ["cat"])


def test_reindexing_maps_every_token_of_a_multi_token_word_on_every_head(tiny_sd):
    tok = tiny_sd.tokenizer
    prompt = "a dog, on grass"
    new_prompt, M = replacement_matrix(tok, prompt, "dog", "white cat")
    assert new_prompt == "a white cat, on grass"
    src, tgt = word_token_positions(tok, prompt), word_token_positions(tok, new_prompt)
    assert len(src["dog"]) == 3 and len(tgt["white"]) == 5 and len(tgt["cat"]) == 3  # char-level tokens
    g = torch.Generator().manual_seed(0)
    P = torch.rand(2, 4, 6, 77, generator=g)  # (B, heads, Q, K)
    ctrl = AttentionController()
    ctrl.cross_maps = {"layer": {0: P.clone()}}
    ctrl.reindex_cross(M.expand(2, 77, 77))
    Pn = ctrl.cross_maps["layer"][0]
    dog_mean = P[..., src["dog"]].mean(-1)
    for col in tgt["white"] + tgt["cat"]:  # every token of both new words, every head
        torch.testing.assert_close(Pn[..., col], dog_mean)
    torch.testing.assert_close(Pn[..., :2], P[..., :2])  # BOS, 'a'
    shift = len(tgt["white"]) + len(tgt["cat"]) - len(src["dog"])
    for s, t in zip(src["grass"], tgt["grass"]):
        assert t == s + shift
        torch.testing.assert_close(Pn[..., t], P[..., s])
    comma_s, comma_t = src["dog"][-1] + 1, tgt["cat"][-1] + 1
    torch.testing.assert_close(Pn[..., comma_t], P[..., comma_s])


def test_reindexing_equal_word_counts_uses_the_closest_word(tiny_sd):
    tok = tiny_sd.tokenizer
    emb = {"big": torch.tensor([1.0, 0.0]), "dog": torch.tensor([0.0, 1.0]),
           "cat": torch.tensor([0.1, 1.0]), "small": torch.tensor([1.0, 0.1])}
    prompt = "a big dog"
    new_prompt, M = replacement_matrix(tok, prompt, "big dog", "cat small", embed=emb.__getitem__)
    src, tgt = word_token_positions(tok, prompt), word_token_positions(tok, new_prompt)
    P = torch.rand(1, 2, 3, 77)
    Pn = torch.einsum("bhqk,kl->bhql", P, M)
    torch.testing.assert_close(Pn[..., tgt["cat"][0]], P[..., src["dog"]].mean(-1))
    torch.testing.assert_close(Pn[..., tgt["small"][-1]], P[..., src["big"]].mean(-1))


def test_identity_replacement_is_identity(tiny_sd):
    new, M = replacement_matrix(tiny_sd.tokenizer, "a dog on grass", "dog", "dog")
    assert new == "a dog on grass" and torch.equal(M, torch.eye(77))
    with pytest.raises(KeyError):
        replacement_matrix(tiny_sd.tokenizer, "a dog on grass", "cat", "dog")


# ------------------------------------------------------------------------------------------ schedules

def test_schedules_match_the_reference_table():
    T = 20
    th = interpolation_schedule("threshold_0.3", T)
    assert th.nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5]  # steps 0–5 of 20
    assert torch.equal(interpolation_schedule("threshold_0.0_0.3", T), th)
    assert interpolation_schedule("threshold_0.1_0.3", T).nonzero().flatten().tolist() == [2, 3, 4, 5]
    assert torch.equal(interpolation_schedule("inv-threshold_0.3", T), 1 - th)
    assert torch.equal(interpolation_schedule("none", T), torch.zeros(T))
    assert torch.equal(interpolation_schedule(None, T), torch.zeros(T))
    i = torch.arange(T, dtype=torch.float64)
    torch.testing.assert_close(interpolation_schedule("cosine", T).double(), 0.5 * (1 + torch.cos(torch.pi * i / T)),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(interpolation_schedule("cosine_2", T).double(),
                               0.5 * (1 + torch.cos(torch.pi * (i / T) ** 2)), atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        interpolation_schedule("linear", T)


def test_grid_and_pick_best():
    g = schedule_grid(["threshold_0.3", "threshold_0.5"], None, ["none", "threshold_0.3"], 10)
    assert g.names == [("threshold_0.3", None, "none"), ("threshold_0.3", None, "threshold_0.3"),
                       ("threshold_0.5", None, "none"), ("threshold_0.5", None, "threshold_0.3")]
    xa, se, bl = g.for_batch(3)
    assert xa.shape == (12, 10) and torch.equal(xa[3 * 2 + 1], g.xa_NT[2]) and se.abs().sum() == 0
    losses = torch.tensor([[3.0, 1.0], [2.0, 5.0], [2.0, 0.5]])  # (N, B)
    assert pick_best(losses).tolist() == [1, 2]
    rows = torch.arange(6.0)  # candidate-major rows n·B + b
    assert take_best(rows, torch.tensor([1, 2])).tolist() == [2.0, 5.0]


# ------------------------------------------------------------------------------------------ blending

def _inputs(sd, prompts, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(len(prompts), 4, 16, 16, generator=g)
    return z, sd.encode_text(prompts), sd.encode_text([""] * len(prompts))


def test_blend_factor_one_pins_masked_latents_and_zero_is_no_blend(tiny_sd):
    T = 4
    sched = make_ddim_schedule(tiny_sd.scheduler_config, T)
    z, cond, uncond = _inputs(tiny_sd, ["a dog", "a car"])
    with torch.no_grad():
        init = run_chain(tiny_sd, sched, z, cond, uncond, 3.0, record_latents=True)
        cond2 = tiny_sd.encode_text(["a cat", "a boat"])
        z2 = torch.randn_like(z)
        plain = run_chain(tiny_sd, sched, z2, cond2, uncond, 3.0, record_latents=True)
        mask = torch.zeros(2, 1, 16, 16)
        mask[0, :, 4:12, 2:9] = 1
        mask[1, :, 8:, :] = 1
        pinned = run_chain(tiny_sd, sched, z2, cond2, uncond, 3.0, record_latents=True,
                           blend=make_blend(mask, init.latents, torch.ones(2, T)))
        free = run_chain(tiny_sd, sched, z2, cond2, uncond, 3.0, record_latents=True,
                         blend=make_blend(mask, init.latents, torch.zeros(2, T)))
        bg = run_chain(tiny_sd, sched, z2, cond2, uncond, 3.0, record_latents=True,
                       blend=make_blend(mask, init.latents, torch.ones(2, T), foreground=False))
    m = mask.expand(-1, 4, -1, -1).bool()
    for i in range(T):
        assert torch.equal(pinned.latents[i][m], init.latents[i][m])
        assert not torch.equal(pinned.latents[i][~m], init.latents[i][~m])
        assert torch.equal(bg.latents[i][~m], init.latents[i][~m])
        assert torch.equal(free.latents[i], plain.latents[i])
    assert torch.equal(free.x0_last, plain.x0_last)


# ------------------------------------------------------------------------------------------ search

def test_batched_schedule_search_equals_one_by_one(sd):
    T, B = 4, 2
    sched = make_ddim_schedule(sd.scheduler_config, T)
    z, cond, uncond = _inputs(sd, ["a dog on grass", "a red car"])
    ctrl = AttentionController().capture_cross(steps=range(T)).capture_self(steps=range(T), max_queries=256)
    install_attention(sd.unet, ctrl)
    with torch.no_grad():
        init = run_chain(sd, sched, z, cond, uncond, 3.0, controller=ctrl, record_latents=True)
    ctrl.stop_capture()
    mask = torch.zeros(B, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 1
    cond2 = sd.encode_text(["a cat on grass", "a blue boat"])
    target = torch.randn(B, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    grid = schedule_grid(["threshold_0.5", "cosine"], [None, "threshold_0.25"], ["none", "threshold_0.5"], T)
    N = grid.size

    def evaluate(xa, se, bl, n):
        ctrl.set_injection(xa, se)
        blend = make_blend(mask, init.latents, bl, foreground=False)
        with torch.no_grad():
            out = run_chain(sd, sched, z.repeat(n, 1, 1, 1), cond2.repeat(n, 1, 1), uncond.repeat(n, 1, 1), 3.0,
                            controller=ctrl, blend=blend)
        return (out.x0_last - target.repeat(n, 1, 1, 1)).square().flatten(1).mean(-1)

    best, losses_NB = search_schedules(evaluate, grid, B)
    one_by_one = torch.stack([evaluate(*(t[n:n + 1].repeat(B, 1) for t in (grid.xa_NT, grid.self_NT, grid.blend_NT)), 1)
                              for n in range(N)])
    torch.testing.assert_close(losses_NB, one_by_one, atol=1e-5, rtol=1e-5)
    assert torch.equal(best, one_by_one.argmin(0))
    assert losses_NB.std(0).min() > 0  # the candidates really differ
    best_c, _ = search_schedules(evaluate, grid, B, chunk=3)  # chunked evaluation gives the same choice
    assert torch.equal(best_c, best)
