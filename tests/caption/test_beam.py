import torch

from digin.caption.beam import beam_search

PAD, EOS, A, B, C, D = 0, 1, 2, 3, 4, 5
V = 6


def _table():
    """Next-token log-probs by previous token: greedy takes A (0.55) and ends in a flat tail, beam search finds
    B (0.45) followed by EOS (0.99), the better sequence."""
    p = torch.full((V, V), 1e-6)
    p[A, C], p[A, D] = 0.6, 0.4
    p[B, EOS] = 0.99
    p[C, EOS], p[C, D] = 0.6, 0.4
    p[D, EOS], p[D, C] = 0.6, 0.4
    p[B, C] = 0.01
    return p.log()


def _run(num_beams, batch=1, first=None):
    table = _table()
    if first is None:
        first = torch.full((V,), 1e-6)
        first[A], first[B] = 0.55, 0.45
        first = first.log()[None].repeat(batch, 1)
    first_NV = first.repeat_interleave(num_beams, 0)
    calls = []

    def step(tok_N, rows_N):
        calls.append(rows_N.clone())
        return table[tok_N]

    return beam_search(first_NV, step, batch, num_beams, max_new_tokens=5, eos_id=EOS, pad_id=PAD), calls


def test_beam_beats_greedy_on_a_known_table():
    greedy, _ = _run(1)
    beam, calls = _run(3)
    assert greedy == [[A, C]]
    assert beam == [[B]]
    assert all(((r // 3) == torch.arange(3) // 3).all() for r in calls)  # rows never cross samples


def test_samples_in_one_batch_are_independent():
    firsts = torch.full((2, V), 1e-6)
    firsts[0, A], firsts[0, B] = 0.55, 0.45
    firsts[1, D] = 0.9
    both, _ = _run(3, batch=2, first=firsts.log())
    alone = [_run(3, batch=1, first=firsts[i:i + 1].log())[0][0] for i in range(2)]
    assert both == alone == [[B], [D]]
