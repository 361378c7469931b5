"""The reference's attention arithmetic, spelled out for tests: explicit softmax(QKᵀ·scale) probabilities."""
import torch


def naive_probs(attn, hidden_states, encoder_hidden_states=None):
    """(P (n, H, q, k), V (n, H, k, d)) of a diffusers Attention module on these inputs."""
    ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    n = hidden_states.shape[0]
    q, k, v = attn.to_q(hidden_states), attn.to_k(ctx), attn.to_v(ctx)
    H = attn.heads
    d = q.shape[-1] // H
    q, k, v = (x.view(n, -1, H, d).transpose(1, 2) for x in (q, k, v))
    return torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1), v


def naive_out(attn, p, v):
    """The module's output for probabilities P and values V."""
    n, H, _, d = v.shape
    out = (p @ v).transpose(1, 2).reshape(n, -1, H * d)
    return attn.to_out[1](attn.to_out[0](out))
