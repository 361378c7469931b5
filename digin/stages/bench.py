"""The benchmark's pieces: random-weight model sets, the timed workloads (the engine functions every stage
calls, prepared through engine/prepare.py), per-call timings composed into seconds per image, FLOP counts, the
environment of a row (versions, TF32 switches, how every call site ran) and the cost rows."""
from __future__ import annotations

import gc
import platform
import time

import torch

from digin.engine.classifiers import ImageClassifier
from digin.engine.compile import Compiled, since, snapshot
from digin.engine.edit import MaskBlendParams, P2PParams, prepare_edit
from digin.engine.guidance import GuidanceConfig, OptimParams, block_checkpointing, optimise
from digin.engine.inversion import invert
from digin.engine.models import SDModel, build_tiny_sd, resolve_dtype, write_tiny_tokenizer
from digin.engine.objectives import Objective
from digin.engine.prepare import prepare_classifier, prepare_sd
from digin.engine.presets import resolve_compute, tf32_flags
from digin.engine.sampling import call_unet, decode_latents, denoise
from digin.engine.schedule import make_ddim_schedule
from digin.engine.sdxl import build_sdxl_shaped, build_tiny_sdxl
from digin.engine.segment import SegmentationConfig
from digin.engine.shapes import SD15_SCHEDULER, SD15_TEXT, SD15_UNET, SD15_VAE
from digin.stages.costs import Workload, cost_rows as rows_for, flop_counter

# Workload settings per model set: UVCE guidance and DiG-IN null-text inversion; a few steps on the tiny sets.
_FULL = dict(ddim_steps=20, sgd_steps=20, loss_steps=3, num_cutouts=16, inner_steps=10, guidance_scale=3.0,
             search_candidates=6)
_TINY = dict(ddim_steps=3, sgd_steps=1, loss_steps=2, num_cutouts=2, inner_steps=1, guidance_scale=3.0,
             search_candidates=6)
PRESETS = {"sd15": _FULL, "sdxl512": _FULL, "tiny": _TINY, "tiny-sdxl": _TINY}
WORKLOADS = ("guidance", "uvce", "inversion", "generation", "calls", "cost", "plan")
# reference: the reference's compute path; fast: the fast preset; fast-eager: the fast preset without compiling
MODES = ("reference", "fast-eager", "fast")


# ------------------------------------------------------------------------------------------- models

def build_sd15(device, dtype):
    """SD-1.5-shaped SDModel with random weights (character-level tokenizer; speed does not depend on it)."""
    import tempfile

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with tempfile.TemporaryDirectory() as tmp:
        tok = write_tiny_tokenizer(tmp)
    with torch.device(device):
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok.get_vocab()), bos_token_id=tok.bos_token_id,
                                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **SD15_TEXT))
    return SDModel(tok, te, unet, vae, dict(SD15_SCHEDULER), source="bench:sd15").to(dtype=dtype).freeze()


def build_sd(models: str, device, dtype):
    if models == "sd15":
        return build_sd15(device, dtype)
    if models == "sdxl512":
        return build_sdxl_shaped(device, dtype, resolution=512)
    if models == "tiny-sdxl":
        return build_tiny_sdxl(seed=0).to(device=device, dtype=dtype).freeze()
    return build_tiny_sd(seed=0).to(device=device, dtype=dtype).freeze()


def build_classifier(models: str, device, dtype, num_cutouts: int):
    """The engine's ImageClassifier around ViT-B/16-384 (timm, pretrained=False) or a tiny ViT."""
    tiny = models.startswith("tiny")
    with torch.device(device):
        if tiny:
            from timm.models.vision_transformer import VisionTransformer

            model, size = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                            num_classes=10), 16
        else:
            import timm

            model, size = timm.create_model("vit_base_patch16_384", pretrained=False), 384
    return ImageClassifier(model.to(dtype=dtype), size=size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                           num_cutouts=num_cutouts, noise_sd=0.005, name="bench").to(device)


# ---------------------------------------------------------------------------------------- workloads

def make_workload(name: str, sd, clf, settings: dict, batch: int, checkpoint: str, seed: int):
    """→ a no-argument function running the workload once on `batch` samples (inputs built here, fixed)."""
    dev = sd.device
    gen = torch.Generator().manual_seed(seed)
    lat = sd.unet.config.sample_size
    res = lat * sd.latent_factor
    z_T = torch.randn(batch, sd.latent_channels, lat, lat, generator=gen).to(dev)
    prompts = ["a photograph of a bench"] * batch
    cond, uncond = sd.encode_text(prompts), sd.encode_text([""] * batch)
    T = settings["ddim_steps"]
    if name == "guidance":
        targets = torch.randint(0, 10, (batch,), generator=gen).to(dev)
        objective = Objective("CE", [clf], targets, [f"bench/{b}" for b in range(batch)])
        gcfg = GuidanceConfig(guidance_scale=settings["guidance_scale"], num_ddim_steps=T, checkpoint=checkpoint,
                              optim_params=OptimParams(sgd_steps=settings["sgd_steps"],
                                                       loss_steps=settings["loss_steps"]))
        return lambda: optimise(sd, objective, z_T=z_T, cond=cond, uncond=uncond, cfg=gcfg)
    if name == "uvce":
        return uvce_workload(sd, clf, settings, batch, checkpoint, gen, z_T, prompts, uncond)
    if name == "inversion":
        images = torch.rand(batch, 3, res, res, generator=gen).to(dev)
        return lambda: invert(sd, images, prompts, num_steps=T, guidance_scale=settings["guidance_scale"],
                              num_inner_steps=settings["inner_steps"], compute_metrics=False, early_exit=False)
    if name == "generation":
        sched = make_ddim_schedule(sd.scheduler_config, T).to(dev)

        @torch.no_grad()
        def generate():
            _, x0 = denoise(sd, sched, z_T, cond, uncond, settings["guidance_scale"])
            return decode_latents(sd, x0)

        return generate
    raise ValueError(f"unknown workload {name!r}; choose from {WORKLOADS}")


def uvce_workload(sd, clf, settings: dict, batch: int, checkpoint: str, gen, z_T, prompts, uncond):
    """The `digin uvce` stage's per-image work on a batch of real images (random ones): the initial pass with
    cross-attention capture, foreground masks, Prompt-to-Prompt re-indexing (bench → chair), the reference's default
    schedule search (3 xa × 2 blend candidates), mask blending, the background regularisers and the classifier on
    its cutouts, then the guidance loop with the controller injecting — stages/edits.py's calls, minus the I/O."""
    dev, T = sd.device, settings["ddim_steps"]
    res = sd.unet.config.sample_size * sd.latent_factor
    images = torch.rand(batch, 3, res, res, generator=gen).to(dev)
    null_BTLD = uncond.unsqueeze(1).expand(-1, T, -1, -1).contiguous()  # per-step null texts, as inverted
    targets = torch.randint(0, 10, (batch,), generator=gen).to(dev)
    objective = Objective("CE", [clf], targets, [f"bench/{b}" for b in range(batch)],
                          regularizers=["latent_background_l2", "px_background_l2"], regularizers_ws=[25.0, 250.0])
    gcfg = GuidanceConfig(guidance_scale=settings["guidance_scale"], num_ddim_steps=T, checkpoint=checkpoint,
                          optim_params=OptimParams(sgd_steps=settings["sgd_steps"], loss_steps=settings["loss_steps"]))
    blend = MaskBlendParams(do_mask_blend=True, foreground_blend=False, initial_mask_blend_schedule=["none",
                                                                                                     "threshold_0.3"])

    def run():
        setup = prepare_edit(sd, objective, z_T=z_T, uncond=null_BTLD, prompts=prompts,
                             foreground_words=[["bench"]] * batch, guidance_scale=settings["guidance_scale"],
                             num_ddim_steps=T, replacements=[("bench", "chair")] * batch, images=images,
                             p2p=P2PParams(), blend=blend, segmentation=SegmentationConfig(sam_segmentation=False))
        try:
            return optimise(sd, setup.objective, z_T=z_T, cond=setup.cond, uncond=null_BTLD, cfg=gcfg,
                            blend=setup.blend, controller=setup.controller)
        finally:
            setup.close(sd)

    return run


def count_flops(fn) -> int:
    """FLOPs of one call (real tensors), with torch.utils.flop_counter's per-op formulas (matmul/conv/attention)."""
    with flop_counter() as count:
        fn()
    return count.flops


def workload_flops(workload, sd, clf, settings, checkpoint, seed) -> int:
    """FLOPs per image (eager: the model's runtime is set aside while counting). Guidance is affine in the SGD step
    count K (K identical steps + one evaluation), so it is counted at K = 1 and 2 and extrapolated."""
    runtime, sd.runtime = sd.runtime, None
    call, clf.model_call = clf.model_call, None
    try:
        def at(s):
            return count_flops(make_workload(workload, sd, clf, s, 1, checkpoint, seed))

        K = settings.get("sgd_steps", 1)
        if workload not in ("guidance", "uvce") or K <= 2:
            return at(settings)
        f1, f2 = at({**settings, "sgd_steps": 1}), at({**settings, "sgd_steps": 2})
        return f1 + (K - 1) * (f2 - f1)
    finally:
        sd.runtime, clf.model_call = runtime, call


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_workload(fn, dev, warmup: int, iters: int) -> dict:
    """Warm-up calls (the first one compiles), then `iters` timed calls; peak memory over the timed calls."""
    first = None
    for w in range(max(warmup, 1)):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        first = time.perf_counter() - t0 if w == 0 else first
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(max(iters, 1)):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    steady = sorted(times)[len(times) // 2]
    peak = torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else None
    return dict(steady_s=steady, first_s=first, peak_gib=peak, times_s=times)


# ------------------------------------------------------------------------------------------- the run

def environment(dev) -> dict:
    import diffusers

    try:
        import triton
        triton_v = triton.__version__
    except ImportError:
        triton_v = None
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.processor() or 'unknown'})"
    return dict(device=name, torch=torch.__version__, diffusers=diffusers.__version__, triton=triton_v,
                cuda=torch.version.cuda, python=platform.python_version())


def mode_settings(mode: str, cfg, attention: str, dev):
    """The ComputeSettings a mode runs with: the reference preset (its own tf32 unless `reference_tf32`), or the
    fast preset with this run's overrides (fast-eager: the same without compiling)."""
    if mode == "reference":
        return resolve_compute("reference", dev, tf32=getattr(cfg, "reference_tf32", None))
    if mode in ("fast", "fast-eager"):
        return resolve_compute("fast", dev, batch_size=cfg.batch, dtype=cfg.dtype, checkpoint=cfg.checkpoint,
                               compile=False if mode == "fast-eager" else cfg.compile,
                               compile_backend=cfg.compile_backend, cudagraphs=cfg.cudagraphs, kernels=cfg.kernels,
                               attention=attention, tf32=getattr(cfg, "tf32", None),
                               strict_compile=getattr(cfg, "strict_compile", None),
                               compile_scope=getattr(cfg, "compile_scope", None))
    raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")


def _recompiles() -> int:
    """Dynamo's recompile count so far (frames compiled again after a guard failure)."""
    try:
        from torch._dynamo.utils import counters

        return int(sum(counters["recompiles"].values())) if "recompiles" in counters else 0
    except Exception:
        return -1


def _settings_fields(s) -> dict:
    return dict(batch=s.batch_size, dtype=str(resolve_dtype(s.dtype)).replace("torch.", ""), checkpoint=s.checkpoint,
                kernels=s.kernels, compiled=s.compile, compile_backend=s.compile_backend if s.compile else None,
                compile_scope=s.compile_scope if s.compile else None,
                cudagraphs=bool(s.compile and s.cudagraphs), tf32=s.tf32, **tf32_flags())


def compile_fields(sd, clf, before: dict | None = None) -> dict:
    """How every call site of the row ran: per site (compiled / eager / fell back and why, graphs, compile seconds,
    CUDA graphs, calls each way), the UNet calls that ran eagerly, and the fallbacks — what a speedup row checks."""
    sites = [c for c in (sd.runtime.unet, sd.runtime.decode, clf.model_call) if isinstance(c, Compiled)]
    rows = since(before or {}, sites)
    unet = next((r for r in rows if r["site"] == "unet"), None)
    return dict(sites={r["site"]: {k: r[k] for k in ("how", "graphs", "compile_s", "cudagraphs", "cudagraph_skips",
                                                      "calls_compiled", "calls_eager", "reason")} for r in rows},
                eager_unet_calls=unet["calls_eager"] if unet else None,
                unet_calls=(unet["calls_eager"] + unet["calls_compiled"]) if unet else None,
                compile_s_total=round(sum(r["compile_s"] for r in rows), 2),
                fell_back=[f"{r['site']}: {r['reason']}" for r in rows if r["fell_back"]])


def prepared_models(cfg, models: str, settings_w: dict, dev, mode: str, attention: str):
    """(settings, sd, clf) built with random weights and prepared for `mode` — the stages' one preparation path."""
    s = mode_settings(mode, cfg, attention, dev)
    torch.manual_seed(cfg.seed)
    dtype = resolve_dtype(s.dtype)
    sd = prepare_sd(build_sd(models, dev, dtype), s)
    clf = prepare_classifier(build_classifier(models, dev, dtype, settings_w["num_cutouts"]), s)
    return s, sd, clf


def _free(dev):
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def bench_one(cfg, models: str, settings_w: dict, dev, workload: str, mode: str, attention: str,
              predict: dict | None = None) -> dict:
    """One timed workload in one mode → its row. `predict`: {(workload, preset mode): cost row} for the peak-memory
    prediction (weights + batch × saved bytes per sample)."""
    row = dict(workload=workload, mode=mode, attention=attention)
    sd = clf = None
    try:
        s, sd, clf = prepared_models(cfg, models, settings_w, dev, mode, attention)
        row.update(_settings_fields(s))
        flops = None
        if cfg.count_flops:  # eager, batch 1, same settings: FLOPs per image actually executed (incl. recompute)
            flops = workload_flops(workload, sd, clf, settings_w, s.checkpoint, cfg.seed)
        fn = make_workload(workload, sd, clf, settings_w, s.batch_size, s.checkpoint, cfg.seed)
        before, calls0 = _recompiles(), snapshot()
        t = time_workload(fn, dev, cfg.warmup, cfg.iters)
        s_img = t["steady_s"] / s.batch_size
        graphs = {**sd.runtime.compiled(), **({"classifier": clf.model_call.graphs}
                                              if hasattr(clf.model_call, "graphs") else {})}
        row.update(status="ok", s_per_image=s_img, images_per_hour=3600.0 / s_img, peak_gib=t["peak_gib"],
                   compile_s=max(t["first_s"] - t["steady_s"], 0.0) if s.compile else 0.0,
                   first_call_s=t["first_s"], steady_s=t["steady_s"], flop_per_image=flops,
                   tflops=(flops / s_img / 1e12) if flops else None,
                   recompiles=_recompiles() - before, graphs={k: len(v) for k, v in graphs.items()},
                   **compile_fields(sd, clf, calls0))
        cost = (predict or {}).get((workload, "reference" if mode == "reference" else "fast"))
        if cost is not None:
            row["predicted_peak_gib"] = cost["weights_gib"] + s.batch_size * cost["saved_gib_per_sample"]
    except Exception as e:  # one failing configuration (no xformers, OOM) must not stop the others
        row.update(status=f"error: {type(e).__name__}: {str(e)[:300]}")
    finally:
        del sd, clf
        _free(dev)
    return row


def speedup_row(workload: str, ref: dict | None, fast_rows: list[dict], kind: str = "speedup") -> dict:
    """fast ÷ reference images per hour — only when neither side fell back to eager (a 'fast' row running eager bf16
    is no evidence), else the row says why there is none."""
    base = dict(workload=workload, mode=kind)
    if ref is None or not fast_rows:
        return dict(base, status="no speedup: " + ("no reference row" if ref is None else "no fast row"))
    best = max(fast_rows, key=lambda r: r["images_per_hour"])
    why = [f"{side} fell back ({'; '.join(r['fell_back'])[:200]})" for side, r in (("reference", ref), ("fast", best))
           if r.get("fell_back")]
    if best.get("compiled") and best.get("eager_unet_calls"):
        why.append(f"fast ran {best['eager_unet_calls']} UNet calls eagerly")
    if why:
        return dict(base, status="no speedup: " + "; ".join(why), batch=best.get("batch"))
    return dict(base, status="ok", attention=best.get("attention"), batch=best.get("batch"),
                speedup=best["images_per_hour"] / ref["images_per_hour"],
                reference_images_per_hour=ref["images_per_hour"], fast_images_per_hour=best["images_per_hour"],
                reference_tf32=ref.get("tf32"), fast_mode=best.get("mode"))


def cost_rows(cfg, models: str) -> list[dict]:
    cm = cfg.cost_models or ("tiny" if models.startswith("tiny") else ("sdxl512" if models == "sdxl512" else "sd15"))
    w = {k: v for k, v in PRESETS.get(cm, _FULL).items() if k in Workload.__dataclass_fields__}
    w.update({k: getattr(cfg, k) for k in w if getattr(cfg, k, None) is not None})
    return [dict(kind="cost", status="ok", **r) for r in rows_for(cm, capacity_gib=cfg.capacity_gib, **w)]


# ------------------------------------------------------------------------------------------- per-call timings

# The call sites in the order they are timed: the four that decide guidance and UVCE first (a GPU check that runs out
# of time still has them), then those whose compiled time can be estimated from the eager ratio if it must.
CALLS = ("unet_cfg_nograd", "unet_cfg_fwdbwd", "vae_decode_fwdbwd", "classifier_cutouts_fwdbwd", "vae_decode_nograd",
         "classifier_view_nograd", "unet_half_nograd", "unet_half_fwdbwd", "vae_encode_nograd")
_SHARED: dict = {}  # (models, device) → (sd, clf): built once; each mode prepares them (dtype, runtime) in place


def shared_models(models: str, dev, num_cutouts: int):
    """The calls workload's models, built once per run in fp32 (random weights: every mode times the same
    architecture; the fast modes cast them to bf16 in place)."""
    key = (models, str(dev), num_cutouts)
    if key not in _SHARED:
        _SHARED.clear()
        _free(dev)
        _SHARED[key] = (build_sd(models, dev, torch.float32), build_classifier(models, dev, torch.float32, num_cutouts))
    return _SHARED[key]


def call_fns(sd, clf, s, settings_w: dict, seed: int) -> dict:
    """name → a no-argument function making one call of the engine's call sites as a run makes it (the prepared
    runtime, grad to the inputs the engine differentiates; the reference's block checkpointing under
    checkpoint=block), on the mode's batch B: the CFG UNet call (2B rows) without and with grad, the inversion's B-row
    call (grad to the null text), the VAE decode without and with grad, the VAE encode, the classifier on B × N
    augmented cutouts with grad and on one view without."""
    dev, B = sd.device, s.batch_size
    g = torch.Generator().manual_seed(seed)
    lat = sd.unet.config.sample_size
    res = lat * sd.latent_factor
    x_2B = torch.randn(2 * B, sd.latent_channels, lat, lat, generator=g).to(dev)
    emb_2B = sd.encode_text(["a photograph of a bench"] * (2 * B))
    t = torch.tensor(500, device=dev)
    z_B = torch.randn(B, sd.latent_channels, lat, lat, generator=g).to(dev)
    img_B = torch.rand(B, 3, res, res, generator=g).to(dev)
    keys = [seed * 1000 + b for b in range(B)]

    def unet(rows, grad_x):
        def run():
            if not torch.is_grad_enabled():
                return call_unet(sd, x_2B[:rows], t, emb_2B[:rows])
            x = x_2B[:rows].detach().requires_grad_(grad_x)
            e = emb_2B[:rows].detach().requires_grad_(True)
            out = call_unet(sd, x, t, e)
            torch.autograd.grad(out.float().square().mean(), [x, e] if grad_x else [e])
        return run

    def decode_fwdbwd():
        z = z_B.detach().requires_grad_(True)
        torch.autograd.grad(decode_latents(sd, z).square().mean(), z)

    def classify_fwdbwd():
        img = img_B.detach().requires_grad_(True)
        torch.autograd.grad(clf(img, seeds=keys).logsumexp(-1).mean(), img)

    nograd = torch.no_grad()
    fns = {"unet_cfg_nograd": nograd(unet(2 * B, True)), "unet_cfg_fwdbwd": unet(2 * B, True),
           "unet_half_nograd": nograd(unet(B, False)), "unet_half_fwdbwd": unet(B, False),
           "vae_decode_nograd": nograd(lambda: decode_latents(sd, z_B)), "vae_decode_fwdbwd": decode_fwdbwd,
           "vae_encode_nograd": nograd(lambda: sd.encode_image(img_B)),
           "classifier_cutouts_fwdbwd": classify_fwdbwd, "classifier_view_nograd": nograd(lambda: clf(img_B))}
    return fns


def time_call(fn, dev, reps: int) -> dict:
    """First call (compiles, if it does) in wall seconds, then `reps` calls timed with CUDA events (wall clock on a
    CPU): the median in ms, and the peak memory of those calls."""
    t0 = time.perf_counter()
    fn()
    _sync(dev)
    first = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(max(reps, 1)):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    peak = torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else None
    return dict(first_s=first, ms=sorted(times)[len(times) // 2], peak_gib=peak)


def compose(ms: dict, w: dict, checkpoint: str, B: int) -> dict:
    """Seconds per image of guidance, UVCE and null-text inversion from per-call milliseconds (each call covers the
    mode's B samples) and the engine's call counts (stages/costs.py's composition): T DDIM steps, K SGD steps, L loss
    steps, N schedule candidates, `inner` inversion steps. checkpoint=step: a no-grad chain + a recompute per step;
    block/none: one graph with grad over the chain. UVCE's controlled UNet call is timed as the plain one (its
    capture + injection add ≈ 0.2 % of the FLOPs, engine/ATTENTION.md)."""
    T, K, L, n = w["ddim_steps"], w["sgd_steps"], w["loss_steps"], w["inner_steps"]
    N = w.get("search_candidates", 6)
    U0, Ufb = ms["unet_cfg_nograd"], ms["unet_cfg_fwdbwd"]
    D0, Dfb, E = ms["vae_decode_nograd"], ms["vae_decode_fwdbwd"], ms["vae_encode_nograd"]
    Cfb, C1 = ms["classifier_cutouts_fwdbwd"], ms["classifier_view_nograd"]
    H0, Hfb = ms["unet_half_nograd"], ms["unet_half_fwdbwd"]
    chain = T * U0 if checkpoint == "step" else 0.0
    per_iter = chain + T * Ufb + L * Dfb + L * Cfb + C1
    guidance = K * per_iter + T * U0 + D0 + C1
    uvce = guidance + (T * U0 + D0 + E) + N * (T * U0 + D0 + C1)
    inversion = E + T * H0 + T * (2 * H0 + n * Hfb)
    return {k: v / 1000.0 / B for k, v in (("guidance", guidance), ("uvce", uvce), ("inversion", inversion))}


def estimate_missing(ms: dict, eager_ms: dict | None) -> list[str]:
    """Fill calls that were not timed (a budget ran out) from a timed one of the same model and the eager fast mode's
    ratio between the two (same batch, same dtype); → the names estimated."""
    pairs = {"unet_half_nograd": "unet_cfg_nograd", "unet_half_fwdbwd": "unet_cfg_fwdbwd",
             "vae_decode_nograd": "vae_decode_fwdbwd", "vae_encode_nograd": "vae_decode_fwdbwd",
             "classifier_view_nograd": "classifier_cutouts_fwdbwd"}
    done = []
    for name, base in pairs.items():
        if name not in ms and base in ms and eager_ms and name in eager_ms and base in eager_ms:
            ms[name] = ms[base] * eager_ms[name] / eager_ms[base]
            done.append(name)
    return done


def bench_calls(cfg, models: str, settings_w: dict, dev, mode: str, emit, eager_ms: dict | None = None,
                deadline: float | None = None) -> dict | None:
    """Per-call timings of one mode, one row each as soon as it exists; then the composed seconds per image (one row
    per workload) and one short end-to-end optimise (K = 1) to cross-check the composition. Calls not reached by
    `deadline` (time.monotonic) are estimated from `eager_ms` (the fast-eager mode's timings) or left out. → {"ms":
    per-call ms, workload: composed row values} (None when a call failed)."""
    base = dict(kind="call", mode=mode, attention="sdpa")
    try:
        s = mode_settings(mode, cfg, "sdpa", dev)
        sd, clf = shared_models(models, dev, settings_w["num_cutouts"])
        prepare_sd(sd, s)
        prepare_classifier(clf, s)
        base.update(_settings_fields(s))
        calls0 = snapshot()
        ms = {}
        fns = call_fns(sd, clf, s, settings_w, cfg.seed)
        for name in CALLS:
            if deadline is not None and time.monotonic() > deadline:
                emit(dict(base, call=name, status="skipped: the time budget (budget_s) ran out"))
                continue
            with block_checkpointing(sd, s.checkpoint == "block" and name.endswith("fwdbwd")):
                t = time_call(fns[name], dev, cfg.reps)
            ms[name] = t["ms"]
            compile_s = max(t["first_s"] - t["ms"] / 1000, 0.0) if s.compile else 0.0
            emit(dict(base, call=name, status="ok", ms_per_call=t["ms"], ms_per_image=t["ms"] / s.batch_size,
                      first_call_s=t["first_s"], compile_s=compile_s, peak_gib=t["peak_gib"]))
        estimated = estimate_missing(ms, eager_ms)
        fields = compile_fields(sd, clf, calls0)
        out = {"ms": ms}
        if set(CALLS) - set(ms):
            emit(dict(base, kind="composed", status=f"skipped: calls not timed {sorted(set(CALLS) - set(ms))}"))
            return out
        for wl, sec in compose(ms, settings_w, s.checkpoint, s.batch_size).items():
            row = dict(s_per_image=sec, images_per_hour=3600 / sec, batch=s.batch_size, attention="sdpa", mode=mode,
                       compiled=s.compile, tf32=s.tf32, estimated_calls=estimated, **fields)
            out[wl] = row
            emit(dict(base, kind="composed", workload=wl, status="ok", **row))
        if deadline is not None and time.monotonic() > deadline:
            emit(dict(base, kind="e2e", workload="guidance", status="skipped: the time budget (budget_s) ran out"))
            return out
        # the cross-check: one short optimise (K = 1) end to end, against the composition at K = 1
        one = {**settings_w, "sgd_steps": 1}
        t = time_workload(make_workload("guidance", sd, clf, one, s.batch_size, s.checkpoint, cfg.seed), dev, 1, 1)
        want = compose(ms, one, s.checkpoint, s.batch_size)["guidance"]
        got = t["steady_s"] / s.batch_size
        emit(dict(base, kind="e2e", workload="guidance", status="ok", sgd_steps=1, s_per_image=got,
                  composed_s_per_image=want, measured_over_composed=got / want, peak_gib=t["peak_gib"],
                  **compile_fields(sd, clf, calls0)))
        return out
    except Exception as e:  # an OOM or a missing stack ends this mode, not the run
        emit(dict(base, status=f"error: {type(e).__name__}: {str(e)[:300]}"))
        return None
    finally:
        _free(dev)
