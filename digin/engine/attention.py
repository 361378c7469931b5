"""Attention processors: fused SDPA (or xformers) everywhere, plus cross-attention capture and Prompt-to-Prompt
injection, computed inside the UNet call from tensors given to it — so a compiled UNet call runs the same graph at
every step, whether the controller captures, injects or does nothing there.

Why not a naive processor like the reference: cross-attention has only 77 keys, so its probabilities can be
computed next to the fused kernel (capture), and an injected map enters through linearity —
out = (1−w)·SDPA(q,k,v) + w·(P_stored @ v) — so the fused kernel stays on every layer, and self-attention never
materialises its N×N probabilities unless a self schedule asks for it.

Attention control is data (engine/ATTENTION.md). A controlled UNet call takes, besides (x, t, emb):
    ctl = {"xw": (N,) injection factors of this step, "xmaps": {layer: (b, H, Q, 77) stored maps of this step},
           "sw": (N,), "smaps": {layer: (2b, H, Q, Q)}}          (the keys the controller's layout needs)
and a static `Layout` (which layers it captures), and returns (prediction, {"x/<layer>" | "s/<layer>": probs}).
The controller picks the step's rows and maps outside the graph (Python-int views of device tensors: no host sync, no
copy); a step without stored maps gets a zero map of the same shape with factor 0 — the same value exactly (out +
0·(P@v − out) = out), and the gradient of a factor at 0 is 0 (the reference injects only where w > 0). The layout is
fixed from the controller's first call on (capture keeps being computed after `stop_capture`, its maps are
dropped), so the initial pass, the schedule search at the same rows and the SGD chain share one no-grad graph; calls
with grad compute no capture. A step recomputed in the per-step adjoint gets the same step index, hence the same
injection. Inside the call each layer reads its share from a slot on its processor (`unet_forward`), so no layer's
code depends on its name and a compiled transformer block serves every block of its shape (compile_scope=regional).
An eager call site gets only what its step does (`control(dense=False)`: the reference's per-step work), the same
values without the zero work.

Batch layout inside a UNet call (CFG): rows [0, B) unconditional, rows [B, 2B) conditional.

Stored maps live on the model device in the compute dtype (or `store_dtype`):
    cross_maps[layer][step]: (B, heads, Q, 77), conditional half only
    self_maps[layer][step]:  (2B, heads, Q, Q), whole CFG batch, only layers with Q ≤ self_max_queries
A run whose batch is N·B (the schedule search: candidate-major rows n·B + b) reuses the B stored maps by
broadcasting, never by copying.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from digin.extras import require


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
        xops = require("xformers", "attention=xformers")  # optional extra; CUDA only

        bias = None if mask is None else mask.to(q.dtype)
        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              attn_bias=bias, scale=scale)
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False, scale=scale)


# ------------------------------------------------------------------------------------------ controller

def _injected(w_B: torch.Tensor) -> torch.Tensor:
    """The factor as injected: the reference injects only where w > 0, so a factor at 0 gets no gradient (and a
    learned one that reached 0 stays there)."""
    return w_B * (w_B > 0)


def _steps(steps) -> frozenset:
    return frozenset(int(s) for s in steps)


def _active_steps(factors_BT: torch.Tensor | None) -> frozenset:
    """Steps where any sample has a non-zero factor (one host sync, at set-up time only)."""
    if factors_BT is None:
        return frozenset()
    return frozenset(torch.nonzero(factors_BT.detach().abs().amax(0) > 0).flatten().tolist())


class Layout(NamedTuple):
    """What a controlled UNet call captures (static: one compiled graph per layout, grad mode and shape)."""

    cross: tuple | str | None  # query counts of the cross layers captured, "all", or None (no capture)
    self_max_q: int  # self-attention captured on layers with ≤ this many queries (0: none)
    store_dtype: str | None  # dtype of the captured maps (None: the layer's compute dtype)

    def captures(self) -> bool:
        return self.cross is not None or self.self_max_q > 0


_NO_CAPTURE = Layout(None, 0, None)


def _dtype_name(dt: torch.dtype | None) -> str | None:
    return None if dt is None else str(dt).replace("torch.", "")


def control_layer(slot: dict, is_cross: bool, q, k, v, out, scale: float, mask):
    """The controlled part of one attention layer (inside the UNet call, traced into its graph). `slot`: this
    layer's share of the call's control ({"layout", "w": (N,) factors, "map": stored map or None}), put on its
    processor by `unet_forward`; the captured probabilities go back in slot["out"]. q/k/v/out: (2B, H, ·, d).
    Returns the (possibly injected) attention output. Nothing here depends on which layer it is, so a compiled
    transformer block serves every block of its shape (regional compilation)."""
    lay: Layout = slot["layout"]
    Q, B = q.shape[2], q.shape[0] // 2
    store = getattr(torch, lay.store_dtype) if lay.store_dtype else q.dtype
    m = slot.get("map")
    if is_cross:
        if lay.cross is not None and (lay.cross == "all" or Q in lay.cross):
            p = attention_probs(q[B:], k[B:], scale, None if mask is None else mask[B:])
            slot["out"] = p.detach().to(store)
        if m is not None:
            w = _injected(slot["w"]).to(out.dtype).view(-1, 1, 1, 1)
            out_c = out[B:]
            out = torch.cat([out[:B], out_c + w * (probs_times_values(m, v[B:]) - out_c)])
        return out
    if lay.self_max_q and Q <= lay.self_max_q:
        slot["out"] = attention_probs(q, k, scale, mask).detach().to(store)
    if m is not None:
        w = _injected(slot["w"]).to(out.dtype)
        w = torch.cat([w, w]).view(-1, 1, 1, 1)
        b2, H, _, _ = m.shape  # (2b, H, Q, Q): uncond rows then cond rows
        d = v.shape[-1]
        n = (2 * B) // b2
        inj = torch.matmul(m.to(v.dtype).view(2, 1, b2 // 2, H, Q, Q), v.view(2, n, b2 // 2, H, Q, d))
        out = out + w * (inj.reshape(2 * B, H, Q, d) - out)
    return out


def unet_forward(unet, x, t, emb, ctl: dict | None = None, *, layout: Layout | None = None):
    """One UNet call: the prediction, or with a layout (prediction, captured maps {"x/<layer>" | "s/<layer>": probs})
    — the function every UNet call site compiles (engine/prepare.py), so controlled and plain steps are data, not
    branches of Python around it. The control reaches the layers as a slot on each processor (set before the
    call, cleared after), so the layers' code never looks up its own name and one compiled transformer block serves
    every block of its shape; under diffusers' block checkpointing (checkpoint=block, eager) it travels in
    cross_attention_kwargs instead, so the backward's recompute of a block sees its call's control."""
    if layout is None:
        return unet(x, t, encoder_hidden_states=emb, return_dict=False)[0]
    ctl = ctl or {}
    procs = digin_processors(unet)
    slots = {}
    for p in procs:
        kind = "x" if p.is_cross else "s"
        maps = ctl.get(kind + "maps")
        if kind == "x" or layout.self_max_q or maps is not None:
            slots[p.name] = {"layout": layout, "w": ctl.get(kind + "w"),
                             "map": None if maps is None else maps.get(p.name)}
    if getattr(unet, "is_gradient_checkpointing", False):
        # diffusers' block checkpointing recomputes blocks in the backward, after this call: the control must travel
        # with the blocks' arguments (cross_attention_kwargs are), not on the processors
        out = unet(x, t, encoder_hidden_states=emb, cross_attention_kwargs={"digin": slots}, return_dict=False)[0]
    else:
        for p in procs:
            p.slot = slots.get(p.name)
        try:
            out = unet(x, t, encoder_hidden_states=emb, return_dict=False)[0]
        finally:
            for p in procs:
                p.slot = None
    captured = {("x/" if p.is_cross else "s/") + p.name: slots[p.name]["out"] for p in procs
                if p.name in slots and "out" in slots[p.name]}
    return out, captured


class AttentionController:
    """Captures cross/self attention maps per step and injects stored maps (P2P) with per-sample factors.

    Typical use:
        ctrl = AttentionController()
        ctrl.capture_cross(steps=mask_steps, queries={256})    # foreground mask: 16×16 layers only
        ctrl.capture_cross(steps=p2p_steps)                    # P2P: every cross layer, steps with factor > 0
        install_attention(sd.unet, ctrl); run_chain(..., controller=ctrl)   # initial no-grad pass
        ctrl.stop_capture(); ctrl.reindex_cross(mix_bKK)       # re-index to the edited prompt
        ctrl.set_injection(xa_factors_BT)                      # then every later run_chain(..., controller=ctrl)

    `control(sd, step, x, t, emb)` gives a UNet call its tensors and layout; `keep(step, captured)` stores what the
    call returned.
    """

    def __init__(self, store_dtype: torch.dtype | None = None):
        self.store_dtype = store_dtype  # None → the compute dtype of the layer
        self.cross_maps: dict[str, dict[int, torch.Tensor]] = {}
        self.self_maps: dict[str, dict[int, torch.Tensor]] = {}
        self.layer_queries: dict[str, int] = {}  # cross layer name → number of query tokens (h·w)
        self._cross_rules: list[tuple[frozenset | None, frozenset]] = []  # (query counts or None = all, steps)
        self._self_rule: tuple[int, frozenset] | None = None
        self.self_max_queries = 256
        self.xa_factors_BT: torch.Tensor | None = None
        self.self_factors_BT: torch.Tensor | None = None
        self._layout: Layout | None = None  # fixed at the first controlled call (one graph for the run)
        self._shapes: dict[str, tuple] = {}  # "x/<layer>" | "s/<layer>" → captured map shape (b rows)
        self._zeros: dict = {}  # placeholder maps / factors, allocated once
        self._active = {"x": frozenset(), "s": frozenset()}  # steps some factor injects (eager calls skip the rest)
        # learnable schedules ("xa" / "self" → learnable.ScheduleSpec): guidance optimises these factors
        self.learn: dict = {}

    # ---- capture set-up
    def capture_cross(self, steps, queries=None) -> "AttentionController":
        """Record conditional-half cross-attention probabilities at `steps`, on layers whose query count is in
        `queries` (e.g. {256} for the 16×16 layers; None = every cross layer)."""
        self._cross_rules.append((None if queries is None else frozenset(queries), _steps(steps)))
        self._layout = None
        return self

    def capture_self(self, steps, max_queries: int = 256) -> "AttentionController":
        """Record self-attention probabilities (whole batch) on layers with ≤ max_queries tokens (P2P uses 16×16)."""
        self._self_rule = (int(max_queries), _steps(steps))
        self.self_max_queries = int(max_queries)
        self._layout = None
        return self

    def stop_capture(self) -> "AttentionController":
        """No more maps are kept; the layout (and so the compiled graph) stays what it was."""
        self._cross_rules, self._self_rule = [], None
        return self

    # ---- injection set-up
    def set_injection(self, xa_factors_BT: torch.Tensor | None = None, self_factors_BT: torch.Tensor | None = None,
                      steps=None) -> "AttentionController":
        """Per-sample, per-step P2P factors (B_run, T), B_run a multiple of the stored batch. Every step injects
        w·[w > 0] (a step at 0 changes nothing); steps with a non-zero factor, and `steps` when given, must have
        stored maps on every layer (checked here, one host sync at set-up)."""
        self.xa_factors_BT, self.self_factors_BT = xa_factors_BT, self_factors_BT
        given = _steps(steps) if steps is not None else frozenset()
        self._active = {"x": _active_steps(xa_factors_BT) | (given if xa_factors_BT is not None else frozenset()),
                        "s": _active_steps(self_factors_BT) | (given if self_factors_BT is not None else frozenset())}
        if xa_factors_BT is not None:
            for st in sorted(self._active["x"]):
                missing = [n for n in self.layer_queries if st not in self.cross_maps.get(n, {})]
                if not self.layer_queries or missing:
                    raise ValueError(f"cross-attention injection at step {st} needs maps captured there "
                                     f"(missing for {missing or 'all layers'})")
        if self_factors_BT is not None:
            for st in sorted(_active_steps(self_factors_BT)):
                missing = [n for n, d in self.self_maps.items() if st not in d]
                if not self.self_maps or missing:
                    raise ValueError(f"self-attention injection at step {st} needs maps captured there "
                                     f"(missing for {missing or 'all layers'})")
        return self

    def clear_injection(self) -> "AttentionController":
        return self.set_injection(None, None)

    def free(self):
        self.cross_maps.clear()
        self.self_maps.clear()
        self.clear_injection()
        self._zeros.clear()
        self._layout, self._shapes = None, {}
        self.learn = {}

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
                per_step[s] = torch.einsum("bhqk,bkl->bhql", p, mix_bKK.to(p.dtype)).contiguous()
        return self

    def stored_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.cross_maps, self.self_maps)
                   for per_step in d.values() for t in per_step.values())

    # ---- per call (sampling.call_unet)
    def acts(self) -> bool:
        """Whether UNet calls need the controlled graph at all (capture rules, injection, or a layout already fixed
        by an earlier call of this run)."""
        return bool(self._cross_rules or self._self_rule is not None or self._layout is not None
                    or self.xa_factors_BT is not None or self.self_factors_BT is not None)

    def _fix_layout(self) -> Layout:
        if self._layout is None:
            qs = [q for q, _ in self._cross_rules]
            cross = None if not qs else ("all" if any(q is None for q in qs) else tuple(sorted(set().union(*qs))))
            self_q = self._self_rule[0] if self._self_rule is not None else 0
            self._layout = Layout(cross, self_q, _dtype_name(self.store_dtype))
        return self._layout

    def _probe(self, sd, x, t, emb, layout: Layout):
        """Shapes of every map the layout captures (and the query count of every cross layer), from one UNet call
        on fake tensors: no compute, no memory, and the placeholders exist before the first real call."""
        from torch._subclasses.fake_tensor import FakeTensorMode

        unet = sd.unet
        try:  # (eager even where blocks of the UNet are compiled: fake tensors must not reach a compiled region)
            with torch.no_grad(), torch.compiler.set_stance("force_eager"), \
                    FakeTensorMode(allow_non_fake_inputs=True) as mode:
                fx, ft, fe = (mode.from_tensor(a) for a in (x, t, emb))
                _, got = unet_forward(unet, fx, ft, fe, None, layout=layout._replace(cross="all"))
                shapes = {k: tuple(v.shape) for k, v in got.items()}
        finally:
            cache = getattr(unet, "_time_cache", None)  # SDXL's per-shape time ids: built again with real tensors
            if isinstance(cache, dict):
                cache.clear()
        for key, shape in shapes.items():
            if key.startswith("x/"):
                self.layer_queries.setdefault(key[2:], shape[2])
        self._shapes = {k: s for k, s in shapes.items() if k.startswith("s/")
                        or (layout.cross is not None and (layout.cross == "all" or s[2] in layout.cross))}

    def _zeros_like(self, key: str, shape: tuple, device, dtype) -> torch.Tensor:
        """A placeholder (zero map, zero factors), allocated once: the same tensor every call."""
        z = self._zeros.get(key)
        if z is None or tuple(z.shape) != tuple(shape) or z.device != device or z.dtype != dtype:
            z = self._zeros[key] = torch.zeros(shape, device=device, dtype=dtype)
        return z

    def _inputs(self, kind: str, shapes: dict, maps: dict, table, step: int, rows: int, device, dtype) -> dict:
        """The step's factors (rows,) and maps per layer (stored, or a zero map where none is stored)."""
        if table is None:
            w = self._zeros_like(kind + "w", (rows,), device, torch.float32)
        elif table.shape[0] != rows:
            raise ValueError(f"{kind}-attention factors have {table.shape[0]} rows for a UNet call on {rows} samples")
        else:
            w = table[:, step]
        got = {}
        for n, shape in shapes.items():
            m = maps.get(n, {}).get(step)
            got[n] = m if m is not None else self._zeros_like(f"{kind}/{n}", shape, device, dtype)
        return {kind + "w": w, kind + "maps": got}

    def control(self, sd, step: int, x_NCHW: torch.Tensor, t: torch.Tensor, emb_NLD: torch.Tensor,
                dense: bool = True):
        """(ctl tensors, layout) for the UNet call at `step` on these CFG rows, or None when nothing is controlled.

        dense (a compiled call site): the same inputs and layout at every step — the layout's captured layers (or,
        for a controller that never captured, those with stored maps), a zero map and factor where a step has
        none — so one graph serves the run. Not dense (an eager call site): only what this step does, as the
        reference's processors do (capture at the rules' steps, injection at steps with a non-zero factor); the
        values are the same, the zero work is skipped."""
        if not self.acts():
            return None
        layout = self._fix_layout()
        if layout.captures() and not self._shapes:
            self._probe(sd, x_NCHW, t, emb_NLD, layout)
        if not dense:
            return self._sparse_control(step, layout)
        rows = x_NCHW.shape[0] // 2
        dev = x_NCHW.device
        dtype = getattr(torch, layout.store_dtype) if layout.store_dtype else emb_NLD.dtype
        ctl = {}
        for kind, maps, table in (("x", self.cross_maps, self.xa_factors_BT), ("s", self.self_maps,
                                                                               self.self_factors_BT)):
            shapes = {k[2:]: s for k, s in self._shapes.items() if k[0] == kind} or \
                {n: tuple(next(iter(d.values())).shape) for n, d in maps.items() if d}
            if shapes and (table is not None or any(k[0] == kind for k in self._shapes)):
                ctl.update(self._inputs(kind, shapes, maps, table, step, rows, dev, dtype))
        if torch.is_grad_enabled():  # an adjoint's recompute keeps no maps: its graph captures nothing
            layout = _NO_CAPTURE._replace(store_dtype=layout.store_dtype)
        return ctl, layout

    def _sparse_control(self, step: int, layout: Layout):
        qs = [q for q, steps in self._cross_rules if step in steps]
        cross = None if not qs else ("all" if any(q is None for q in qs) else tuple(sorted(set().union(*qs))))
        self_q = self._self_rule[0] if (self._self_rule is not None and step in self._self_rule[1]) else 0
        lay = Layout(cross, self_q, layout.store_dtype)
        if torch.is_grad_enabled():
            lay = _NO_CAPTURE._replace(store_dtype=layout.store_dtype)
        ctl = {}
        for kind, maps, table in (("x", self.cross_maps, self.xa_factors_BT), ("s", self.self_maps,
                                                                               self.self_factors_BT)):
            if table is not None and step in self._active[kind]:
                ctl[kind + "w"] = table[:, step]
                ctl[kind + "maps"] = {n: d[step] for n, d in maps.items() if step in d}
        return (ctl, lay) if (ctl or lay.captures()) else None

    def keep(self, step: int, captured: dict) -> None:
        """Store the maps a controlled call returned that a capture rule asks for at this step."""
        for key, p in captured.items():
            name, Q = key[2:], p.shape[2]
            if key.startswith("x/"):
                self.layer_queries.setdefault(name, Q)
                if any(step in steps and (qs is None or Q in qs) for qs, steps in self._cross_rules):
                    self.cross_maps.setdefault(name, {})[step] = p
            elif self._self_rule is not None and step in self._self_rule[1] and Q <= self._self_rule[0]:
                self.self_maps.setdefault(name, {})[step] = p


# ------------------------------------------------------------------------------------------ processors

class DiginAttnProcessor:
    """diffusers attention processor: AttnProcessor2_0 semantics (SDPA with attn.scale) + the controlled part of
    `unet_forward`'s calls. `controller` only records which controller is attached (`attached_controller`); the
    control itself arrives with each call."""

    def __init__(self, controller: AttentionController | None, name: str, is_cross: bool, backend: str = "sdpa"):
        if backend not in ("sdpa", "xformers"):
            raise ValueError(f"attention backend {backend!r}: choose sdpa or xformers")
        self.controller, self.name, self.is_cross, self.backend = controller, name, is_cross, backend
        self.slot: dict | None = None  # this call's control (unet_forward), None between calls

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 digin: dict | None = None):
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
        slot = self.slot if digin is None else digin.get(self.name)  # (the kwarg: under block checkpointing)
        if slot is not None:  # attention control as data (unet_forward): the same code traced at every step
            out = control_layer(slot, self.is_cross, q, k, v, out, attn.scale, attention_mask)
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


def digin_processors(unet) -> list[DiginAttnProcessor]:
    """The processors of the UNet's attention layers (the layers are listed once and kept on the module, so a
    compiled call reads a plain list; the processors are read each call, so a swapped one is seen)."""
    from diffusers.models.attention_processor import Attention

    layers = getattr(unet, "_digin_attn", None)
    if layers is None:
        layers = unet._digin_attn = [m for m in unet.modules() if isinstance(m, Attention)]
    procs = [m.processor for m in layers]
    if not procs or not all(isinstance(p, DiginAttnProcessor) for p in procs):
        raise ValueError("attention control needs digin's processors on every attention layer (install_attention)")
    return procs


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
