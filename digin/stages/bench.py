"""The benchmark's pieces: random-weight model sets, the timed workloads (the engine functions every stage
calls, prepared through engine/prepare.py), FLOP counts, the environment of a row and the cost rows."""
from __future__ import annotations

import gc
import platform
import time

import torch

# Workload settings per model set: UVCE guidance and DiG-IN null-text inversion; a few steps on the tiny sets.
_FULL = dict(ddim_steps=20, sgd_steps=20, loss_steps=3, num_cutouts=16, inner_steps=10, guidance_scale=3.0)
_TINY = dict(ddim_steps=3, sgd_steps=1, loss_steps=2, num_cutouts=2, inner_steps=1, guidance_scale=3.0)
PRESETS = {"sd15": _FULL, "sdxl512": _FULL, "tiny": _TINY, "tiny-sdxl": _TINY}
WORKLOADS = ("guidance", "inversion", "generation", "cost", "plan")
MODES = ("reference", "fast")



# ------------------------------------------------------------------------------------------- models

def build_sd15(device, dtype):
    """SD-1.5-shaped SDModel with random weights (character-level tokenizer; speed does not depend on it)."""
    import tempfile

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from digin.engine.models import SDModel, write_tiny_tokenizer
    from digin.engine.shapes import SD15_SCHEDULER, SD15_TEXT, SD15_UNET, SD15_VAE

    with tempfile.TemporaryDirectory() as tmp:
        tok = write_tiny_tokenizer(tmp)
    with torch.device(device):
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok.get_vocab()), bos_token_id=tok.bos_token_id,
                                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **SD15_TEXT))
    return SDModel(tok, te, unet, vae, dict(SD15_SCHEDULER), source="bench:sd15").to(dtype=dtype).freeze()


def build_sd(models: str, device, dtype):
    from digin.engine.models import build_tiny_sd
    from digin.engine.sdxl import build_sdxl_shaped, build_tiny_sdxl

    if models == "sd15":
        return build_sd15(device, dtype)
    if models == "sdxl512":
        return build_sdxl_shaped(device, dtype, resolution=512)
    if models == "tiny-sdxl":
        return build_tiny_sdxl(seed=0).to(device=device, dtype=dtype).freeze()
    return build_tiny_sd(seed=0).to(device=device, dtype=dtype).freeze()


def build_classifier(models: str, device, dtype, num_cutouts: int):
    """The engine's ImageClassifier around ViT-B/16-384 (timm, pretrained=False) or a tiny ViT."""
    from digin.engine.classifiers import ImageClassifier

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
        from digin.engine.guidance import GuidanceConfig, OptimParams, optimise
        from digin.engine.objectives import Objective

        targets = torch.randint(0, 10, (batch,), generator=gen).to(dev)
        objective = Objective("CE", [clf], targets, [f"bench/{b}" for b in range(batch)])
        gcfg = GuidanceConfig(guidance_scale=settings["guidance_scale"], num_ddim_steps=T, checkpoint=checkpoint,
                              optim_params=OptimParams(sgd_steps=settings["sgd_steps"],
                                                       loss_steps=settings["loss_steps"]))
        return lambda: optimise(sd, objective, z_T=z_T, cond=cond, uncond=uncond, cfg=gcfg)
    if name == "inversion":
        from digin.engine.inversion import invert

        images = torch.rand(batch, 3, res, res, generator=gen).to(dev)
        return lambda: invert(sd, images, prompts, num_steps=T, guidance_scale=settings["guidance_scale"],
                              num_inner_steps=settings["inner_steps"], compute_metrics=False, early_exit=False)
    if name == "generation":
        from digin.engine.sampling import decode_latents, denoise
        from digin.engine.schedule import make_ddim_schedule

        sched = make_ddim_schedule(sd.scheduler_config, T).to(dev)

        @torch.no_grad()
        def generate():
            _, x0 = denoise(sd, sched, z_T, cond, uncond, settings["guidance_scale"])
            return decode_latents(sd, x0)

        return generate
    raise ValueError(f"unknown workload {name!r}; choose from {WORKLOADS}")


def count_flops(fn) -> int:
    """FLOPs of one call (real tensors), with torch.utils.flop_counter's per-op formulas (matmul/conv/attention)."""
    from digin.engine.costs import flop_counter

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
        if workload != "guidance" or K <= 2:
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
    """The ComputeSettings a mode runs with: the reference preset, or the fast preset with this run's overrides."""
    from digin.engine.presets import resolve_compute

    if mode == "reference":
        return resolve_compute("reference", dev)
    if mode == "fast":
        return resolve_compute("fast", dev, batch_size=cfg.batch, dtype=cfg.dtype, checkpoint=cfg.checkpoint,
                               compile=cfg.compile, compile_backend=cfg.compile_backend, cudagraphs=cfg.cudagraphs,
                               kernels=cfg.kernels, attention=attention)
    raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")


def _recompiles() -> int:
    """Dynamo's recompile count so far (frames compiled again after a guard failure)."""
    try:
        from torch._dynamo.utils import counters

        return int(sum(counters["recompiles"].values())) if "recompiles" in counters else 0
    except Exception:
        return -1


def bench_one(cfg, models: str, settings_w: dict, dev, workload: str, mode: str, attention: str) -> dict:
    from digin.engine.models import resolve_dtype
    from digin.engine.prepare import prepare_classifier, prepare_sd

    row = dict(workload=workload, mode=mode, attention=attention)
    sd = clf = None
    try:
        s = mode_settings(mode, cfg, attention, dev)
        row.update(batch=s.batch_size, dtype=str(resolve_dtype(s.dtype)).replace("torch.", ""),
                   checkpoint=s.checkpoint, kernels=s.kernels, compiled=s.compile,
                   compile_backend=s.compile_backend if s.compile else None, cudagraphs=bool(s.compile and s.cudagraphs))
        torch.manual_seed(cfg.seed)
        dtype = resolve_dtype(s.dtype)
        sd = prepare_sd(build_sd(models, dev, dtype), s)
        clf = prepare_classifier(build_classifier(models, dev, dtype, settings_w["num_cutouts"]), s)
        flops = None
        if cfg.count_flops:  # eager, batch 1, same settings: FLOPs per image actually executed (incl. recompute)
            flops = workload_flops(workload, sd, clf, settings_w, s.checkpoint, cfg.seed)
        fn = make_workload(workload, sd, clf, settings_w, s.batch_size, s.checkpoint, cfg.seed)
        before = _recompiles()
        t = time_workload(fn, dev, cfg.warmup, cfg.iters)
        s_img = t["steady_s"] / s.batch_size
        graphs = {**sd.runtime.compiled(), **({"classifier": clf.model_call.graphs}
                                              if hasattr(clf.model_call, "graphs") else {})}
        row.update(status="ok", s_per_image=s_img, images_per_hour=3600.0 / s_img, peak_gib=t["peak_gib"],
                   compile_s=max(t["first_s"] - t["steady_s"], 0.0) if s.compile else 0.0,
                   first_call_s=t["first_s"], steady_s=t["steady_s"], flop_per_image=flops,
                   tflops=(flops / s_img / 1e12) if flops else None,
                   recompiles=_recompiles() - before, graphs={k: len(v) for k, v in graphs.items()},
                   fell_back=sd.runtime.fell_back())
    except Exception as e:  # one failing configuration (no xformers, OOM) must not stop the others
        row.update(status=f"error: {type(e).__name__}: {str(e)[:300]}")
    finally:
        del sd, clf
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return row


def cost_rows(cfg, models: str) -> list[dict]:
    from digin.engine.costs import Workload, cost_rows as rows_for

    cm = cfg.cost_models or ("tiny" if models.startswith("tiny") else ("sdxl512" if models == "sdxl512" else "sd15"))
    w = {k: v for k, v in PRESETS.get(cm, _FULL).items() if k in Workload.__dataclass_fields__}
    w.update({k: getattr(cfg, k) for k in w if getattr(cfg, k, None) is not None})
    return [dict(kind="cost", status="ok", **r) for r in rows_for(cm, capacity_gib=cfg.capacity_gib, **w)]
