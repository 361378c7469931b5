"""Attention processors: fused SDPA (or xformers) everywhere, plus cross-attention capture and Prompt-to-Prompt
injection only where and when they are needed.

Why not a naive processor like the reference: cross-attention has only 77 keys, so its probabilities can be
computed next to the fused kernel at the few layers/steps that need them (capture), and an injected map
enters through linearity — out = (1−w)·SDPA(q,k,v) + w·(P_stored @ v) — so the fused kernel stays on every
layer, self-attention never materialises its N×N probabilities unless a self schedule asks for it.

Batch layout inside a UNet call (CFG): rows [0, B) unconditional, rows [B, 2B) conditional. The step index
arrives as `cross_attention_kwargs={"digin_step": i}` (see sampling.run_chain), so a step recomputed under
torch.utils.checkpoint sees the same index. Without a step kwarg a processor is plain SDPA.

Stored maps live on the model device in the compute dtype (or `store_dtype`):
    cross_maps[layer][step]: (B, heads, Q, 77), conditional half only
    self_maps[layer][step]:  (2B, heads, Q, Q), whole CFG batch, only layers with Q ≤ self_max_queries
A run whose batch is N·B (the schedule search: candidate-major rows n·B + b) reuses the B stored maps by
broadcasting, never by copying.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


# ------------------------------------------------------------------------------------------ kernels

def attention_probs(q_BHQd: torch.Tensor, k_BHKd: torch.Tensor, scale: float, mask=None) -> torch.Tensor:
    """softmax(q·kᵀ·scale) in fp32 (what a naive processor computes), shape (B, H, Q, K)."""
    logits = torch.matmul(q_BHQd.float(), k_BHKd.float().transpose(-1, -2)) * scale
    if mask is not None:
        logits = logits + mask.float()
    return logits.softmax(dim=-1)


def probs_times_values(p_bHQK: torch.Tensor, v_BHKd: torch.Tensor) -> torch.Tensor:
    """Stored probabilities for b samples applied to values of B = N·b rows (candidate-major) → (B, H, Q, d)."""
    b, B = p_bHQK.shape[0], v_BHKd.shape[0]
    if B % b:
        raise ValueError(f"runtime batch {B} is not a multiple of the stored batch {b}")
    H, K, d = v_BHKd.shape[1:]
    out = torch.matmul(p_bHQK.to(v_BHKd.dtype).unsqueeze(0), v_BHKd.view(B // b, b, H, K, d))
    return out.reshape(B, H, p_bHQK.shape[2], d)


def _fused_attention(q, k, v, scale, mask, backend: str):
    if backend == "xformers":
        from digin.extras import require

        xops = require("xformers", "attention=xformers")  # optional extra; CUDA only

        bias = None if mask is None else mask.to(q.dtype)
        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              attn_bias=bias, scale=scale)
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False, scale=scale)


# ------------------------------------------------------------------------------------------ controller

def _steps(steps) -> frozenset:
    return frozenset(int(s) for s in steps)


def _active_steps(factors_BT: torch.Tensor | None) -> frozenset:
    """Steps where any sample has a non-zero factor (one host sync, at set-up time only)."""
    if factors_BT is None:
        return frozenset()
    return frozenset(torch.nonzero(factors_BT.detach().abs().amax(0) > 0).flatten().tolist())


class AttentionController:
    """Captures cross/self attention maps per step and injects stored maps (P2P) with per-sample factors.

    Typical use:
        ctrl = AttentionController()
        ctrl.capture_cross(steps=mask_steps, queries={256})    # foreground mask: 16×16 layers only
        ctrl.capture_cross(steps=p2p_steps)                    # P2P: every cross layer, steps with factor > 0
        install_attention(sd.unet, ctrl); run_chain(..., controller=ctrl)   # initial no-grad pass
        ctrl.stop_capture(); ctrl.reindex_cross(mix_bKK)       # re-index to the edited prompt
        ctrl.set_injection(xa_factors_BT)                      # then every later run_chain(..., controller=ctrl)
    """

    def __init__(self, store_dtype: torch.dtype | None = None):
        self.store_dtype = store_dtype  # None → the compute dtype of the layer
        self.cross_maps: dict[str, dict[int, torch.Tensor]] = {}
        self.self_maps: dict[str, dict[int, torch.Tensor]] = {}
        self.layer_queries: dict[str, int] = {}  # layer name → number of query tokens (h·w), learnt at run time
        self._cross_rules: list[tuple[frozenset | None, frozenset]] = []  # (query counts or None = all, steps)
        self._self_rule: tuple[int, frozenset] | None = None
        self.self_max_queries = 256
        self.xa_factors_BT: torch.Tensor | None = None
        self.self_factors_BT: torch.Tensor | None = None
        self._xa_steps: frozenset = frozenset()
        self._self_steps: frozenset = frozenset()

    # ---- capture set-up
    def capture_cross(self, steps, queries=None) -> "AttentionController":
        """Record conditional-half cross-attention probabilities at `steps`, on layers whose query count is in
        `queries` (e.g. {256} for the 16×16 layers; None = every cross layer)."""
        self._cross_rules.append((None if queries is None else frozenset(queries), _steps(steps)))
        return self

    def capture_self(self, steps, max_queries: int = 256) -> "AttentionController":
        """Record self-attention probabilities (whole batch) on layers with ≤ max_queries tokens (P2P uses 16×16)."""
        self._self_rule = (int(max_queries), _steps(steps))
        self.self_max_queries = int(max_queries)
        return self

    def stop_capture(self) -> "AttentionController":
        self._cross_rules, self._self_rule = [], None
        return self

    # ---- injection set-up
    def set_injection(self, xa_factors_BT: torch.Tensor | None = None, self_factors_BT: torch.Tensor | None = None,
                      steps=None) -> "AttentionController":
        """Per-sample, per-step P2P factors (B_run, T), B_run a multiple of the stored batch. Injection runs at the
        steps where some factor is non-zero, or at `steps` when given (pass all steps when factors are optimised)."""
        self.xa_factors_BT, self.self_factors_BT = xa_factors_BT, self_factors_BT
        self._xa_steps = (_steps(steps) if (steps is not None and xa_factors_BT is not None)
                          else _active_steps(xa_factors_BT))
        self._self_steps = (_steps(steps) if (steps is not None and self_factors_BT is not None)
                            else _active_steps(self_factors_BT))
        for st in self._xa_steps:
            missing = [n for n in self.layer_queries if st not in self.cross_maps.get(n, {})]
            if not self.layer_queries or missing:
                raise ValueError(f"cross-attention injection at step {st} needs maps captured there "
                                 f"(missing for {missing or 'all layers'})")
        return self

    def clear_injection(self) -> "AttentionController":
        return self.set_injection(None, None)

    def free(self):
        self.cross_maps.clear()
        self.self_maps.clear()
        self.clear_injection()

    # ---- stored maps
    def cross_maps_at(self, queries: int, steps) -> torch.Tensor:
        """(B, L·S·heads, Q, 77): stored maps of the layers with `queries` tokens at `steps`, stacked."""
        parts = [self.cross_maps[n][s] for n, q in self.layer_queries.items() if q == queries and n in self.cross_maps
                 for s in sorted(_steps(steps)) if s in self.cross_maps[n]]
        if not parts:
            raise ValueError(f"no cross-attention maps stored for {queries} queries at steps {sorted(_steps(steps))}")
        return torch.cat(parts, dim=1)

    def reindex_cross(self, mix_bKK: torch.Tensor) -> "AttentionController":
        """Re-index every stored cross map to new prompt tokens: P'[..., l] = Σ_k P[..., k]·M[b, k, l]."""
        for per_step in self.cross_maps.values():
            for s, p in per_step.items():
                per_step[s] = torch.einsum("bhqk,bkl->bhql", p, mix_bKK.to(p.dtype))
        return self

    def stored_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.cross_maps, self.self_maps)
                   for per_step in d.values() for t in per_step.values())

    # ---- hot path (called by the processors)
    def acts_at(self, step: int | None) -> bool:
        """Whether this controller captures or injects anything at `step` (else the UNet call needs no hooks and
        may run compiled)."""
        if step is None:
            return False
        return (step in self._xa_steps or step in self._self_steps
                or any(step in steps for _, steps in self._cross_rules)
                or (self._self_rule is not None and step in self._self_rule[1]))

    def _wants_cross(self, Q: int, step: int) -> bool:
        return any(step in steps and (qs is None or Q in qs) for qs, steps in self._cross_rules)

    def process(self, name: str, is_cross: bool, step: int, q, k, v, out, scale: float, mask):
        """q/k/v/out: (2B, H, ·, d). Returns the (possibly injected) attention output."""
        Q = q.shape[2]
        B = q.shape[0] // 2
        if is_cross:
            self.layer_queries.setdefault(name, Q)
            if self._cross_rules and self._wants_cross(Q, step):
                p = attention_probs(q[B:], k[B:], scale, None if mask is None else mask[B:])
                self.cross_maps.setdefault(name, {})[step] = p.detach().to(self.store_dtype or q.dtype)
            if step in self._xa_steps:
                w = self.xa_factors_BT[:, step].to(out.dtype).view(-1, 1, 1, 1)
                out_c = out[B:]
                out = torch.cat([out[:B], out_c + w * (probs_times_values(self.cross_maps[name][step], v[B:]) - out_c)])
            return out
        if Q > self.self_max_queries:
            return out
        if self._self_rule is not None and step in self._self_rule[1] and Q <= self._self_rule[0]:
            p = attention_probs(q, k, scale, mask)
            self.self_maps.setdefault(name, {})[step] = p.detach().to(self.store_dtype or q.dtype)
        if step in self._self_steps and name in self.self_maps:
            w = self.self_factors_BT[:, step].to(out.dtype)
            w = torch.cat([w, w]).view(-1, 1, 1, 1)
            p = self.self_maps[name][step]  # (2b, H, Q, Q): uncond rows then cond rows
            b2, H, _, _ = p.shape
            d = v.shape[-1]
            n = (2 * B) // b2
            inj = torch.matmul(p.to(v.dtype).view(2, 1, b2 // 2, H, Q, Q), v.view(2, n, b2 // 2, H, Q, d))
            out = out + w * (inj.reshape(2 * B, H, Q, d) - out)
        return out


# ------------------------------------------------------------------------------------------ processors

class DiginAttnProcessor:
    """diffusers attention processor: AttnProcessor2_0 semantics (SDPA with attn.scale) + controller hooks."""

    def __init__(self, controller: AttentionController | None, name: str, is_cross: bool, backend: str = "sdpa"):
        if backend not in ("sdpa", "xformers"):
            raise ValueError(f"attention backend {backend!r}: choose sdpa or xformers")
        self.controller, self.name, self.is_cross, self.backend = controller, name, is_cross, backend

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 digin_step: int | None = None):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            n, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(n, c, h * w).transpose(1, 2)
        batch, _, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        d = key.shape[-1] // attn.heads
        q = query.view(batch, -1, attn.heads, d).transpose(1, 2)
        k = key.view(batch, -1, attn.heads, d).transpose(1, 2)
        v = value.view(batch, -1, attn.heads, d).transpose(1, 2)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = _fused_attention(q, k, v, attn.scale, attention_mask, self.backend)
        if digin_step is not None and self.controller is not None:
            out = self.controller.process(self.name, self.is_cross, int(digin_step), q, k, v, out, attn.scale,
                                          attention_mask)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * d).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(n, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def attention_layers(unet) -> dict[str, bool]:
    """Processor key ('…attn2.processor') → is cross-attention, for every Attention module of the UNet."""
    from diffusers.models.attention_processor import Attention

    return {f"{n}.processor": bool(m.is_cross_attention) for n, m in unet.named_modules() if isinstance(m, Attention)}


def _digin_processors(unet) -> list[DiginAttnProcessor] | None:
    procs = list(unet.attn_processors.values())
    return procs if procs and all(isinstance(p, DiginAttnProcessor) for p in procs) else None


def install_attention(unet, controller: AttentionController | None = None, backend: str | None = None):
    """Attach `controller` to every attention layer. A prepared UNet keeps its DiginAttnProcessor instances (only
    their controller changes, so a compiled UNet's graph stays valid); otherwise new ones are installed."""
    procs = _digin_processors(unet)
    if procs is not None and (backend is None or all(p.backend == backend for p in procs)):
        for p in procs:
            p.controller = controller
        return unet
    procs = {key: DiginAttnProcessor(controller, key.removesuffix(".processor"), cross, backend or "sdpa")
             for key, cross in attention_layers(unet).items()}
    unet.set_attn_processor(procs)
    return unet


def restore_attention(unet):
    """Detach any controller: plain fused attention on every layer (the processors are kept)."""
    return install_attention(unet, None)


def use_backend(unet, backend: str = "sdpa"):
    """Fused attention without a controller on every layer: SDPA (default) or xformers' memory-efficient kernel."""
    if backend not in ("sdpa", "xformers"):
        raise ValueError(f"attention backend {backend!r}: choose sdpa or xformers")
    return install_attention(unet, None, backend)


def attached_controller(unet):
    """The controller attached to the UNet's attention layers (None: plain fused attention)."""
    procs = _digin_processors(unet)
    return procs[0].controller if procs else None
