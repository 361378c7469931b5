"""Device-independent costs of the engine's workloads: FLOPs per image (recompute included), the no-recompute
floor, bytes saved for backward per sample at the peak of one SGD iteration, and the largest batch that fits a
GPU's memory — counted on meta tensors (no weights, no compute: seconds on a CPU).

Per-call costs are measured by running the real modules (diffusers UNet / VAE decoder, the timm / torchvision
classifier) forward + input-gradient backward on the meta device under a counting dispatch mode (torch's per-op
FLOP formulas) with saved-tensor hooks (storage-deduplicated; weights excluded). Attention is counted as the fused
(flash / memory-efficient) kernel runs it — it stores q, k, v, the output and one fp32 statistic per row, and its
backward recomputes the scores — not as the CPU math fallback that materialises the full attention matrix.

The per-iteration composition follows engine/guidance.py:
  fast (checkpoint=step):  T·U_fwd (no-grad chain) + T·(U_fwd + U_bwd) (recompute + VJP per step)
                           + L·(D_fwd + D_bwd) + L·(C_fwd + C_bwd) + C1_fwd (logged non-augmented loss)
  reference (block):       the same over one autograd graph with diffusers' block checkpointing of UNet and VAE
                           (their recompute measured directly) and the classifier's own checkpointing when it has it
  floor:                   T·(U_fwd + U_bwd) + L·(D_fwd + D_bwd) + L·(C_fwd + C_bwd) + C1_fwd: no recompute at all
  + one evaluation iterate per image: T·U_fwd + D_fwd + C1_fwd.
Null-text inversion: VAE encode + T conditional calls (DDIM inversion) + per step (ε_c + inner·(ε_u fwd + bwd)
+ advance), one row each; no recompute in any mode.
UVCE (the `digin uvce` stage per image, engine/edit.py + guidance): the controlled UNet call (attention control as
data: capture + Prompt-to-Prompt injection on every cross layer, counted on the real processors) in every chain,
  initial pass:  T·U^c_fwd + D_fwd + E_fwd (decode the reconstruction, encode the real image for the regularisers)
  search:        N·(T·U^c_fwd + D_fwd + C1_fwd) (N = xa × blend candidates, each a no-grad chain + its loss)
  + the guidance iterations and the evaluation above with U^c in place of U;
and per sample the stored cross-attention maps (every cross layer at the P2P steps, the mask layers at the mask
steps) on top of the saved bytes.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from digin.engine import shapes
from digin.engine.attention import Layout, unet_forward, use_backend
from digin.engine.p2p import interpolation_schedule
from digin.engine.segment import mask_steps

GIB = 2 ** 30


# ------------------------------------------------------------------------------------------ counting

def flop_counter():
    """A dispatch mode counting FLOPs with torch.utils.flop_counter's per-op formulas (`.flops`). A plain dispatch
    mode rather than FlopCounterMode: the latter's module tracker installs backward hooks that break
    `torch.autograd.grad` on leaf tensors. The fused-attention stand-in below adds its own FLOPs to every active
    counter."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class FlopCount(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.flops = 0

        def __enter__(self):
            _ACTIVE.append(self)
            return super().__enter__()

        def __exit__(self, *exc):
            _ACTIVE.remove(self)
            return super().__exit__(*exc)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.flops += int(formula(*args, **kwargs, out_val=out))
            return out

    return FlopCount()


_ACTIVE: list = []


class _FusedAttention(torch.autograd.Function):
    """What a flash / memory-efficient kernel computes and keeps, on meta tensors."""

    @staticmethod
    def forward(ctx, q, k, v):
        from torch.utils.flop_counter import sdpa_flop_count

        out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
        stats = q.new_empty(q.shape[:-1], dtype=torch.float32)  # per-row log-sum-exp
        ctx.save_for_backward(q, k, v, out, stats)
        for c in _ACTIVE:
            c.flops += sdpa_flop_count(q.shape, k.shape, v.shape)
        return out

    @staticmethod
    def backward(ctx, g):
        from torch.utils.flop_counter import sdpa_backward_flop_count

        q, k, v, _, _ = ctx.saved_tensors
        for c in _ACTIVE:
            c.flops += sdpa_backward_flop_count(g.shape, q.shape, k.shape, v.shape)
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _fused_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return _FusedAttention.apply(q, k, v)


@contextlib.contextmanager
def fused_attention_accounting():
    """F.scaled_dot_product_attention → the fused-kernel stand-in (diffusers, timm and digin all call it)."""
    old = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _fused_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = old


@dataclass
class CallCost:
    fwd: int  # FLOPs of the forward
    bwd: int  # FLOPs of the input-gradient backward (recompute of checkpointed blocks included)
    saved: int  # bytes saved for backward by the forward (weights excluded)


def measure(fn_forward, inputs: list[torch.Tensor], params: list[torch.Tensor]) -> CallCost:
    """Run `fn_forward(*inputs)` (meta tensors) with grad, then backward to the inputs; count FLOPs and saved bytes."""
    weight_storages = {p.untyped_storage()._cdata for p in params}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st._cdata not in weight_storages:
            seen[st._cdata] = max(seen.get(st._cdata, 0), st.nbytes())
        return t

    leaves = [x.detach().requires_grad_(True) for x in inputs]
    with fused_attention_accounting(), flop_counter() as count:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn_forward(*leaves)
        fwd = count.flops
        out_t = out if isinstance(out, torch.Tensor) else out[0]
        torch.autograd.grad(out_t, leaves, torch.empty_like(out_t), allow_unused=True)
    return CallCost(fwd=fwd, bwd=count.flops - fwd, saved=sum(seen.values()))


def measure_nograd(fn_forward, inputs) -> int:
    """FLOPs of a forward without grad (meta tensors)."""
    with torch.no_grad(), fused_attention_accounting(), flop_counter() as count:
        fn_forward(*inputs)
    return count.flops


# ------------------------------------------------------------------------------------------ models

def _params_bytes(*modules, dtype=torch.bfloat16) -> int:
    size = torch.tensor([], dtype=dtype).element_size()
    return sum(p.numel() * size for m in modules for p in m.parameters())


def _meta_modules(unet_cfg: dict, vae_cfg: dict, text_cfg: dict, classifier: str, dtype, sdxl: bool):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_cfg).to(dtype).eval().requires_grad_(False)
        vae = AutoencoderKL(**vae_cfg).to(dtype).eval().requires_grad_(False)
        clf, size = build_meta_classifier(classifier, dtype)
    text_params = text_encoder_params(text_cfg, sdxl)
    return unet, vae, clf, size, text_params


def build_meta_classifier(name: str, dtype):
    """(model on meta, input size): `vit_base_patch16_384` (timm, the UVCE default), or `tiny` (tests)."""
    if name == "tiny":
        from timm.models.vision_transformer import VisionTransformer

        with torch.device("meta"):
            m = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
        return m.to(dtype).eval().requires_grad_(False), 16
    import timm

    with torch.device("meta"):
        m = timm.create_model(name, pretrained=False)
    return m.to(dtype).eval().requires_grad_(False), int(m.default_cfg["input_size"][-1])


def text_encoder_params(text_cfg: dict, sdxl: bool) -> int:
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        n = sum(p.numel() for p in CLIPTextModel(CLIPTextConfig(vocab_size=49408, **text_cfg)).parameters())
    return n * (3 if sdxl else 1)  # SDXL's second (bigCLIP) text encoder ≈ 2× the first; weights only


@dataclass
class Workload:
    """UVCE-style guidance settings (the bench's sd15 preset)."""

    ddim_steps: int = 20
    sgd_steps: int = 20
    loss_steps: int = 3
    num_cutouts: int = 16
    inner_steps: int = 10  # null-text inversion
    resolution: int = 512
    search_candidates: int = 6  # UVCE schedule search: 3 xa × 2 blend schedules (the reference's UVCE defaults)
    p2p_schedule: str = "threshold_0.0_0.5"  # the longest xa schedule searched: its steps store maps


def _unet_call(unet, L: int, D: int, sdxl: bool, pooled: int, rows: int):
    h = unet.config.sample_size

    def f(x, emb):
        t = torch.zeros((), dtype=torch.long, device="meta")
        kw = {}
        if sdxl:
            kw["added_cond_kwargs"] = {"text_embeds": x.new_empty(rows, pooled), "time_ids": x.new_empty(rows, 6)}
        return unet(x, t, encoder_hidden_states=emb, return_dict=False, **kw)[0]

    def inputs(dtype):
        return [torch.empty(rows, unet.config.in_channels, h, h, device="meta", dtype=dtype),
                torch.empty(rows, L, D, device="meta", dtype=dtype)]

    return f, inputs


def model_costs(unet, vae, clf, clf_size: int, *, sdxl: bool, pooled: int, L: int, D: int, w: Workload,
                dtype) -> dict:
    """Per-call CallCosts: UNet CFG (2 rows) and single (1 row), with and without block checkpointing; VAE decode
    (with and without); classifier on N cutouts (with and without its checkpointing); 1-view classifier fwd;
    VAE encode fwd."""
    params = [p for m in (unet, vae, clf) for p in m.parameters()]
    cfg_f, cfg_in = _unet_call(unet, L, D, sdxl, pooled, 2)
    one_f, one_in = _unet_call(unet, L, D, sdxl, pooled, 1)
    h = unet.config.sample_size
    lat = torch.empty(1, vae.config.latent_channels, h, h, device="meta", dtype=dtype)
    img = torch.empty(1, 3, w.resolution, w.resolution, device="meta", dtype=dtype)
    cut = torch.empty(w.num_cutouts, 3, clf_size, clf_size, device="meta", dtype=dtype)
    one = torch.empty(1, 3, clf_size, clf_size, device="meta", dtype=dtype)

    def decode(z):
        return vae.decode(z, return_dict=False)[0]

    def classify(x):
        return clf(x)

    out = {"latent_bytes": 4 * lat.numel(), "unet_cfg": measure(cfg_f, cfg_in(dtype), params), "unet_one": measure(one_f, one_in(dtype), params),
           "decode": measure(decode, [lat], params), "classifier": measure(classify, [cut], params),
           "classifier_view_fwd": measure_nograd(classify, [one]),
           "encode_fwd": measure_nograd(lambda x: vae.encode(x).latent_dist.mean, [img])}
    unet.enable_gradient_checkpointing()
    vae.enable_gradient_checkpointing()
    try:
        out["unet_cfg_block"] = measure(cfg_f, cfg_in(dtype), params)
        out["decode_block"] = measure(decode, [lat], params)
    finally:
        unet.disable_gradient_checkpointing()
        vae.disable_gradient_checkpointing()
    if hasattr(clf, "set_grad_checkpointing"):  # the reference checkpoints timm classifiers under cutouts
        clf.set_grad_checkpointing(True)
        try:
            out["classifier_block"] = measure(classify, [cut], params)
        finally:
            clf.set_grad_checkpointing(False)
    else:
        out["classifier_block"] = out["classifier"]
    return out


def controlled_unet_costs(unet, L: int, D: int, dtype, mask_q: int) -> dict:
    """The UNet call as the UVCE stage runs it (engine/attention.py on the real processors, meta tensors): no grad with
    capture + injection on every cross layer, with grad (injection only, also under block checkpointing), and the
    bytes of one step's stored cross maps (all layers / the mask layers)."""
    use_backend(unet, "sdpa")
    h = unet.config.sample_size
    x = torch.empty(2, unet.config.in_channels, h, h, device="meta", dtype=dtype)
    emb = torch.empty(2, L, D, device="meta", dtype=dtype)
    t = torch.zeros((), dtype=torch.long, device="meta")
    with torch.no_grad():
        _, caps = unet_forward(unet, x, t, emb, None, layout=Layout("all", 0, None))
    maps = {k[2:]: torch.empty(v.shape, device="meta", dtype=dtype) for k, v in caps.items()}
    ctl = {"xw": torch.empty(1, device="meta"), "xmaps": maps}
    el = torch.tensor([], dtype=dtype).element_size()
    step_bytes = sum(m.numel() * el for m in maps.values())
    mask_bytes = sum(m.numel() * el for m in maps.values() if m.shape[2] == mask_q)
    params = list(unet.parameters())

    def capture_inject(xx, ee):
        return unet_forward(unet, xx, t, ee, ctl, layout=Layout("all", 0, None))[0]

    def inject(xx, ee):
        return unet_forward(unet, xx, t, ee, ctl, layout=Layout(None, 0, None))[0]

    out = {"unet_ctl_fwd": measure_nograd(capture_inject, [x, emb]), "unet_ctl": measure(inject, [x, emb], params),
           "map_step_bytes": step_bytes, "map_mask_bytes": mask_bytes}
    unet.enable_gradient_checkpointing()
    try:
        out["unet_ctl_block"] = measure(inject, [x, emb], params)
    finally:
        unet.disable_gradient_checkpointing()
    return out


def uvce_rows(c: dict, w: Workload, weights_bytes: int, capacity: int, sample_state: int) -> list[dict]:
    """The UVCE stage per image: initial pass, schedule search, guidance with the controlled UNet, evaluation; saved
    bytes per sample plus its stored attention maps."""
    T, K, L, N = w.ddim_steps, w.sgd_steps, w.loss_steps, w.search_candidates
    Uf, Ug, Ugb = c["unet_ctl_fwd"], c["unet_ctl"], c["unet_ctl_block"]
    D, Db, C, Cb, C1 = c["decode"], c["decode_block"], c["classifier"], c["classifier_block"], c["classifier_view_fwd"]
    initial = T * Uf + D.fwd + c["encode_fwd"]
    search = N * (T * Uf + D.fwd + C1)
    evaluate = T * Uf + D.fwd + C1
    losses = L * (D.fwd + D.bwd) + L * (C.fwd + C.bwd) + C1
    per_iter = {"floor": T * (Ug.fwd + Ug.bwd) + losses,
                "fast": T * Uf + T * (Ug.fwd + Ug.bwd) + losses,
                "reference": T * (Ugb.fwd + Ugb.bwd) + L * (Db.fwd + Db.bwd) + L * (Cb.fwd + Cb.bwd) + C1}
    p2p_steps = set(int(i) for i in interpolation_schedule(w.p2p_schedule, T).nonzero().flatten())
    mask_only = [i for i in mask_steps(T) if i not in p2p_steps]
    maps = len(p2p_steps) * c["map_step_bytes"] + len(mask_only) * c["map_mask_bytes"]
    latents = (T + L) * c["latent_bytes"]
    saved = {"floor": T * Ug.saved + L * (D.saved + C.saved),
             "fast": max(Ug.saved, D.saved + C.saved) + latents + c["map_step_bytes"],  # + one step of zero maps
             "reference": T * Ugb.saved + L * (Db.saved + Cb.saved)}
    rows = []
    for mode in ("reference", "fast", "floor"):
        flops = initial + search + K * per_iter[mode] + evaluate
        per_sample = saved[mode] + maps + sample_state
        rows.append(dict(mode=mode, flop_per_image=flops, tflop_per_image=flops / 1e12,
                         search_tflop_per_image=(initial + search) / 1e12, stored_maps_gib_per_sample=maps / GIB,
                         saved_gib_per_sample=(saved[mode] + maps) / GIB,
                         max_batch=max(0, int((capacity - weights_bytes) // per_sample))))
    return rows


def guidance_rows(c: dict, w: Workload, weights_bytes: int, capacity: int, sample_state: int) -> list[dict]:
    """FLOPs per image, bytes saved per sample at the peak of one SGD iteration, and the largest batch, for
    the reference preset, the fast preset and the no-recompute floor."""
    T, K, L = w.ddim_steps, w.sgd_steps, w.loss_steps
    U, D, C = c["unet_cfg"], c["decode"], c["classifier"]
    Ub, Db, Cb = c["unet_cfg_block"], c["decode_block"], c["classifier_block"]
    log_fwd, evaluate = c["classifier_view_fwd"], T * U.fwd + D.fwd + c["classifier_view_fwd"]
    per_iter = {
        "floor": T * (U.fwd + U.bwd) + L * (D.fwd + D.bwd) + L * (C.fwd + C.bwd) + log_fwd,
        "fast": T * U.fwd + T * (U.fwd + U.bwd) + L * (D.fwd + D.bwd) + L * (C.fwd + C.bwd) + log_fwd,
        "reference": T * (Ub.fwd + Ub.bwd) + L * (Db.fwd + Db.bwd) + L * (Cb.fwd + Cb.bwd) + log_fwd,
    }
    latents = (T + L) * c["latent_bytes"]  # per-step inputs + x̂0 kept for loss steps (fp32), tiny either way
    saved = {
        "floor": T * U.saved + L * (D.saved + C.saved),  # one graph over the whole iteration
        "fast": max(U.saved, D.saved + C.saved) + latents,  # one step's recompute, or one loss step's decode+loss
        "reference": T * Ub.saved + L * (Db.saved + Cb.saved),
    }
    rows = []
    for mode in ("reference", "fast", "floor"):
        flops = K * per_iter[mode] + evaluate
        per_sample = saved[mode] + sample_state
        rows.append(dict(mode=mode, flop_per_image=flops, tflop_per_image=flops / 1e12,
                         saved_gib_per_sample=saved[mode] / GIB,
                         max_batch=max(0, int((capacity - weights_bytes) // per_sample))))
    floor = rows[2]["flop_per_image"]
    for r in rows:
        r["ratio_to_floor"] = r["flop_per_image"] / floor
    return rows


def inversion_rows(c: dict, w: Workload, weights_bytes: int, capacity: int) -> list[dict]:
    T, n = w.ddim_steps, w.inner_steps
    U1 = c["unet_one"]
    flops = c["encode_fwd"] + T * U1.fwd + T * (2 * U1.fwd + n * (U1.fwd + U1.bwd))
    rows = []
    for mode in ("reference", "fast", "floor"):
        rows.append(dict(mode=mode, flop_per_image=flops, tflop_per_image=flops / 1e12,
                         saved_gib_per_sample=U1.saved / GIB, ratio_to_floor=1.0,
                         max_batch=max(0, int((capacity - weights_bytes) // max(U1.saved, 1)))))
    return rows


def sample_state_bytes(w: Workload, L: int, D: int, latent_hw: int) -> int:
    """Optimised variables per sample (z_T, per-step ΔC and Δ∅) with their Adam moments, gradients and the
    best-iterate copy, fp32."""
    variables = 4 * latent_hw * latent_hw + 2 * w.ddim_steps * L * D
    return 4 * variables * 5


def cost_rows(models: str = "sd15", classifier: str | None = None, capacity_gib: float = 139.0,
              **workload) -> list[dict]:
    """All cost rows for a model set: sd15 | sdxl512 | tiny. One dict per (workload, mode). `workload`: Workload
    fields other than the resolution (the model set's)."""
    sdxl = models in ("sdxl512", "tiny-sdxl")
    unet_cfg, vae_cfg, text_cfg, L, D, pooled = model_configs(models)
    w = Workload(resolution=unet_cfg["sample_size"] * 2 ** (len(vae_cfg["block_out_channels"]) - 1), **workload)
    clf_name = classifier or ("tiny" if models.startswith("tiny") else "vit_base_patch16_384")
    capacity = int(capacity_gib * GIB)
    out = []
    for mode_dtype, modes in ((torch.float32, ("reference",)), (torch.bfloat16, ("fast", "floor"))):
        unet, vae, clf, size, text_params = _meta_modules(unet_cfg, vae_cfg, text_cfg, clf_name, mode_dtype, sdxl)
        el = torch.tensor([], dtype=mode_dtype).element_size()
        weights = _params_bytes(unet, vae, clf, dtype=mode_dtype) + text_params * el
        c = model_costs(unet, vae, clf, size, sdxl=sdxl, pooled=pooled, L=L, D=D, w=w, dtype=mode_dtype)
        state = sample_state_bytes(w, L, D, unet.config.sample_size)
        g_rows = [r for r in guidance_rows(c, w, weights, capacity, state) if r["mode"] in modes]
        workload = "guidance" if not sdxl else "guidance_sdxl"
        out += [dict(workload=workload, models=models, weights_gib=weights / GIB, **r) for r in g_rows]
        if not sdxl:
            i_rows = [r for r in inversion_rows(c, w, weights, capacity) if r["mode"] in modes]
            out += [dict(workload="inversion", models=models, weights_gib=weights / GIB, **r) for r in i_rows]
            mask_q = (16 * unet.config.sample_size // 64) ** 2 if unet.config.sample_size >= 64 else 16 * 16
            c.update(controlled_unet_costs(unet, L, D, mode_dtype, mask_q))
            u_rows = [r for r in uvce_rows(c, w, weights, capacity, state) if r["mode"] in modes]
            out += [dict(workload="uvce", models=models, weights_gib=weights / GIB, **r) for r in u_rows]
    for wl in {r["workload"] for r in out}:
        floor = next(r["flop_per_image"] for r in out if r["workload"] == wl and r["mode"] == "floor")
        for r in out:
            if r["workload"] == wl:
                r["ratio_to_floor"] = r["flop_per_image"] / floor
    return out


def model_configs(models: str):
    """(unet, vae, text encoder configs, tokens L, conditioning width D, pooled width) of a model set."""
    if models == "sd15":
        return shapes.SD15_UNET, shapes.SD15_VAE, shapes.SD15_TEXT, 77, 768, 0
    if models == "sdxl512":
        return shapes.SDXL_UNET_512, shapes.SDXL_VAE, shapes.SDXL_TEXT, 77, 2048, 1280
    if models == "tiny":
        return shapes.TINY_UNET, shapes.TINY_VAE, shapes.TINY_TEXT, 77, 32, 0
    raise ValueError(f"cost rows: models must be sd15, sdxl512 or tiny, got {models!r}")
