"""Throughput benchmark: `digin bench` (or `python bench/bench.py`) — one JSON row per measurement.

Builds SD-1.5-shaped UNet/VAE/text encoder and a ViT-B/16-384 classifier with random weights (weights do not
change speed; on CPU the tiny preset), then times after warm-up, through the public engine functions:
  guidance   — engine.guidance.optimise with UVCE settings (20 DDIM × 20 SGD steps, loss on the last 3 x̂0,
               classifier on 16 cutouts of the decoded image);
  inversion  — engine.inversion.invert, null-text (20 steps × 10 inner Adam steps, no early exit);
  generation — engine.sampling.denoise + VAE decode (20 steps, CFG, no grad).
Modes: `reference` = the reference's compute path (fp32, batch 1, UNet/VAE block checkpointing, eager,
kernels off); `fast` = ours (bf16 weights, batch `batch`, per-step checkpointing, torch.compile of UNet /
VAE decoder / classifier, fused kernels). Fast mode runs once per attention backend (sdpa, xformers).
Each row: device, versions, workload, mode, batch, s/image, images/hour, peak GiB, compile time, FLOPs per
image (torch.utils.flop_counter, eager, same settings) and achieved TFLOP/s; then one `speedup` row per
workload (fast images/hour ÷ reference images/hour). Tests never assert timings.
"""
from __future__ import annotations

import gc
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

# SD-1.5 architecture (diffusers defaults of the runwayml/stable-diffusion-v1-5 configs), written out so that
# no hub access is needed.
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, act_fn="silu",
                 center_input_sample=False, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
                 mid_block_scale_factor=1, norm_eps=1e-5)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                act_fn="silu", norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
SD15_SCHEDULER = dict(_class_name="DDIMScheduler", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                      beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                      timestep_spacing="leading", prediction_type="epsilon")

# Workload settings per preset: UVCE guidance and DiG-IN null-text inversion on sd15, a few steps on tiny.
PRESETS = {
    "sd15": dict(ddim_steps=20, sgd_steps=20, loss_steps=3, num_cutouts=16, inner_steps=10, guidance_scale=3.0),
    "tiny": dict(ddim_steps=3, sgd_steps=1, loss_steps=2, num_cutouts=2, inner_steps=1, guidance_scale=3.0),
}
WORKLOADS = ("guidance", "inversion", "generation")
MODES = ("reference", "fast")


@dataclass
class Config:
    models: str = "auto"  # auto (sd15 on CUDA, tiny on CPU) | sd15 | tiny  (`preset=` is the CLI's YAML preset)
    workloads: list = field(default_factory=lambda: list(WORKLOADS))
    modes: list = field(default_factory=lambda: list(MODES))
    batch: int = 8  # fast mode's batch (reference mode is always batch 1)
    attention: list = field(default_factory=lambda: ["sdpa", "xformers"])  # fast mode backends compared
    dtype: str = "bf16"  # fast mode weight dtype
    checkpoint: str = "step"  # fast mode guidance checkpointing: step | none
    compile: bool = True
    compile_backend: str = "inductor"  # aot_eager for quick CPU runs
    cudagraphs: bool = False  # reduce-overhead CUDA graph trees for the compiled modules (try on GPU)
    warmup: int = 1
    iters: int = 2
    count_flops: bool = True
    device: str = "auto"
    seed: int = 0
    out: str | None = None  # append the JSON rows to this file too
    # overrides of the preset's workload settings (None: preset value)
    ddim_steps: int | None = None
    sgd_steps: int | None = None
    loss_steps: int | None = None
    num_cutouts: int | None = None
    inner_steps: int | None = None


# ------------------------------------------------------------------------------------------- models

def build_sd15(device, dtype):
    """SD-1.5-shaped SDModel with random weights (character-level tokenizer; speed does not depend on it)."""
    import tempfile

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from digin.engine.models import SDModel, write_tiny_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok = write_tiny_tokenizer(tmp)
    with torch.device(device):
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok.get_vocab()), bos_token_id=tok.bos_token_id,
                                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **SD15_TEXT))
    return SDModel(tok, te, unet, vae, dict(SD15_SCHEDULER), source="bench:sd15").to(dtype=dtype).freeze()


def build_classifier(preset: str, device, dtype):
    """ViT-B/16-384 (timm, pretrained=False) or a tiny ViT → (model, input size, mean, std)."""
    import timm

    if preset == "sd15":
        with torch.device(device):
            model = timm.create_model("vit_base_patch16_384", pretrained=False)
        size = 384
    else:
        from timm.models.vision_transformer import VisionTransformer

        with torch.device(device):
            model = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
        size = 16
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return model.to(dtype=dtype).eval().requires_grad_(False), size, mean, std


class CutoutCE:
    """Cross-entropy of a target class, averaged over cutouts (augmented) or on the resized image (not).

    The engine's objective interface: `obj(img, z, salt) -> (total_B, parts)`, `obj.confidences(img)`.
    Cutouts go through kernels.fused_cutouts (the eager reference when kernels are off)."""

    def __init__(self, classifier, size, mean, std, num_cutouts, target_B, noise_sd=0.005, cut_power=0.3):
        self.classifier, self.size, self.num_cutouts = classifier, size, num_cutouts
        self.mean, self.std, self.target_B = mean, std, target_B
        self.noise_sd, self.cut_power = noise_sd, cut_power
        self.dtype = next(classifier.parameters()).dtype

    def _logits(self, img_BCHW, salt):
        import torch.nn.functional as F

        from digin.kernels import fused_cutouts, random_boxes

        B, dev = img_BCHW.shape[0], img_BCHW.device
        if salt is None:
            x = F.interpolate(img_BCHW, size=(self.size, self.size), mode="bilinear", align_corners=False)
            m = torch.tensor(self.mean, device=dev).view(1, 3, 1, 1)
            s = torch.tensor(self.std, device=dev).view(1, 3, 1, 1)
            return self.classifier(((x - m) / s).to(self.dtype)).float().unsqueeze(1)
        gen = torch.Generator().manual_seed(hash(tuple(salt)) % (2 ** 31))
        boxes = random_boxes(B, self.num_cutouts, img_BCHW.shape[-1], self.size, self.cut_power, gen, dev)
        noise = self.noise_sd * torch.randn(B, self.num_cutouts, 3, self.size, self.size, generator=gen).to(dev)
        cut = fused_cutouts(img_BCHW, boxes, self.size, self.mean, self.std, noise, out_dtype=self.dtype)
        return self.classifier(cut.flatten(0, 1)).float().view(B, self.num_cutouts, -1)

    def __call__(self, img_BCHW, z, salt):
        logp = self._logits(img_BCHW, salt).log_softmax(-1)
        ce_B = -logp.gather(-1, self.target_B.view(-1, 1, 1).expand(-1, logp.shape[1], 1)).mean((1, 2))
        return ce_B, {"ce": ce_B}

    @torch.no_grad()
    def confidences(self, img_BCHW):
        p = self._logits(img_BCHW, None).softmax(-1)[:, 0]
        return {"target": p.gather(1, self.target_B.view(-1, 1))[:, 0]}


# ---------------------------------------------------------------------------------------- workloads

def make_workload(name: str, sd, clf_parts, settings: dict, batch: int, checkpoint: str, seed: int):
    """→ a no-argument function running the workload once on `batch` samples (inputs built here, fixed)."""
    dev = sd.device
    gen = torch.Generator().manual_seed(seed)
    lat = sd.unet.config.sample_size
    res = lat * sd.latent_factor
    z_T = torch.randn(batch, sd.latent_channels, lat, lat, generator=gen).to(dev)
    cond = sd.encode_text(["a photograph of a bench"] * batch)
    uncond = sd.encode_text([""] * batch)
    T = settings["ddim_steps"]

    if name == "guidance":
        from digin.engine.guidance import GuidanceConfig, OptimParams, optimise

        clf, size, mean, std = clf_parts
        objective = CutoutCE(clf, size, mean, std, settings["num_cutouts"],
                             torch.randint(0, 10, (batch,), generator=gen).to(dev))
        gcfg = GuidanceConfig(guidance_scale=settings["guidance_scale"], num_ddim_steps=T, checkpoint=checkpoint,
                              optim_params=OptimParams(sgd_steps=settings["sgd_steps"],
                                                       loss_steps=settings["loss_steps"]))
        return lambda: optimise(sd, objective, z_T=z_T, cond=cond, uncond=uncond, cfg=gcfg)
    if name == "inversion":
        from digin.engine.inversion import invert

        images = torch.rand(batch, 3, res, res, generator=gen).to(dev)
        prompts = ["a photograph of a bench"] * batch
        return lambda: invert(sd, images, prompts, num_steps=T, guidance_scale=settings["guidance_scale"],
                              num_inner_steps=settings["inner_steps"], compute_metrics=False, early_exit=False)
    if name == "generation":
        from digin.engine.sampling import denoise
        from digin.engine.schedule import make_ddim_schedule

        sched = make_ddim_schedule(sd.scheduler_config, T).to(dev)

        @torch.no_grad()
        def generate():
            _, x0 = denoise(sd, sched, z_T, cond, uncond, settings["guidance_scale"])
            return sd.decode(x0)

        return generate
    raise ValueError(f"unknown workload {name!r}; choose from {WORKLOADS}")


def count_flops(fn) -> int:
    """FLOPs of one eager call, with torch.utils.flop_counter's per-op formulas (matmul/conv/attention).

    A plain dispatch mode rather than FlopCounterMode: the latter's module tracker installs backward hooks
    that break `torch.autograd.grad` on leaf tensors (null-text inversion)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class _Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                _Count.total += int(formula(*args, **kwargs, out_val=out))
            return out

    with _Count():
        fn()
    return _Count.total


def workload_flops(workload, sd, clf_parts, settings, checkpoint, seed) -> int:
    """FLOPs per image. Guidance is affine in the SGD step count K (K identical steps + one evaluation), so it
    is counted at K = 1 and 2 and extrapolated: an eager full-length run would cost minutes on a GPU."""
    def at(s):
        return count_flops(make_workload(workload, sd, clf_parts, s, 1, checkpoint, seed))

    K = settings.get("sgd_steps", 1)
    if workload != "guidance" or K <= 2:
        return at(settings)
    f1, f2 = at({**settings, "sgd_steps": 1}), at({**settings, "sgd_steps": 2})
    return f1 + (K - 1) * (f2 - f1)


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


def _mode_setup(mode: str, cfg: Config, attention: str):
    """→ (dtype, batch, checkpoint, kernels on, compile, attention) of a mode."""
    if mode == "reference":
        return torch.float32, 1, "block", False, False, "sdpa"
    if mode == "fast":
        from digin.engine.models import resolve_dtype

        return resolve_dtype(cfg.dtype), cfg.batch, cfg.checkpoint, True, cfg.compile, attention
    raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")


def _build(preset, dev, dtype):
    from digin.engine.models import build_tiny_sd

    if preset == "sd15":
        sd = build_sd15(dev, dtype)
    else:
        sd = build_tiny_sd(seed=0).to(device=dev, dtype=dtype).freeze()
    return sd, build_classifier(preset, dev, dtype)


def bench_one(cfg: Config, preset: str, settings: dict, dev, workload: str, mode: str, attention: str) -> dict:
    from digin.engine.attention import use_backend
    from digin.engine.compile import CompileConfig, compile_module, compile_sd
    from digin.kernels import set_kernels

    dtype, batch, ckpt, kernels_on, compiled, attention = _mode_setup(mode, cfg, attention)
    row = dict(workload=workload, mode=mode, batch=batch, attention=attention, dtype=str(dtype).replace("torch.", ""),
               checkpoint=ckpt, kernels=kernels_on, compiled=compiled,
               compile_backend=cfg.compile_backend if compiled else None, cudagraphs=bool(compiled and cfg.cudagraphs))
    old_kernels = set_kernels(kernels_on)
    sd = clf_parts = None
    try:
        torch.manual_seed(cfg.seed)
        sd, clf_parts = _build(preset, dev, dtype)
        use_backend(sd.unet, attention)
        if ckpt == "block":  # the reference also checkpoints the VAE's blocks
            sd.vae.enable_gradient_checkpointing()
        flops = None
        if cfg.count_flops:  # eager, batch 1, same settings: FLOPs per image actually executed (incl. recompute)
            flops = workload_flops(workload, sd, clf_parts, settings, ckpt, cfg.seed)
        if compiled:
            ccfg = CompileConfig(backend=cfg.compile_backend, cudagraphs=cfg.cudagraphs)
            compile_sd(sd, ccfg)
            compile_module(clf_parts[0], ccfg, "classifier")
        fn = make_workload(workload, sd, clf_parts, settings, batch, ckpt, cfg.seed)
        t = time_workload(fn, dev, cfg.warmup, cfg.iters)
        s_img = t["steady_s"] / batch
        row.update(status="ok", s_per_image=s_img, images_per_hour=3600.0 / s_img, peak_gib=t["peak_gib"],
                   compile_s=max(t["first_s"] - t["steady_s"], 0.0) if compiled else 0.0,
                   first_call_s=t["first_s"], steady_s=t["steady_s"], flop_per_image=flops,
                   tflops=(flops / s_img / 1e12) if flops else None)
    except Exception as e:  # one failing configuration (no xformers, OOM) must not stop the others
        row.update(status=f"error: {type(e).__name__}: {str(e)[:300]}")
    finally:
        set_kernels(old_kernels)
        del sd, clf_parts
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return row


def run(cfg: Config):
    dev = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    preset = cfg.models if cfg.models != "auto" else ("sd15" if dev.type == "cuda" else "tiny")
    if preset not in PRESETS:
        raise SystemExit(f"digin bench: models must be auto, sd15 or tiny, got {preset!r}")
    settings = dict(PRESETS[preset])
    settings.update({k: getattr(cfg, k) for k in settings if getattr(cfg, k, None) is not None})
    env = environment(dev)
    common = dict(env, models=preset, settings=settings)
    rows = []

    def emit(row):
        row = {**common, **row}
        rows.append(row)
        line = json.dumps(row, allow_nan=False, default=str)
        print(line, flush=True)
        if cfg.out:
            with open(cfg.out, "a") as f:
                f.write(line + "\n")

    for workload in cfg.workloads:
        by_mode = {}
        for mode in cfg.modes:
            backends = ["sdpa"] if mode == "reference" else list(cfg.attention)
            for attention in backends:
                if attention == "xformers" and not _xformers_usable(dev):
                    emit(dict(workload=workload, mode=mode, attention=attention,
                              status="skipped: xformers not installed or no CUDA"))
                    continue
                row = bench_one(cfg, preset, settings, dev, workload, mode, attention)
                emit(row)
                if row["status"] == "ok":
                    by_mode.setdefault(mode, []).append(row)
        if "reference" in by_mode and "fast" in by_mode:
            ref = by_mode["reference"][0]
            best = max(by_mode["fast"], key=lambda r: r["images_per_hour"])
            emit(dict(workload=workload, mode="speedup", attention=best["attention"], batch=best["batch"],
                      status="ok", speedup=best["images_per_hour"] / ref["images_per_hour"],
                      reference_images_per_hour=ref["images_per_hour"], fast_images_per_hour=best["images_per_hour"]))
    return 0 if all(r["status"] == "ok" or r["status"].startswith("skipped") for r in rows) else 1


def _xformers_usable(dev) -> bool:
    if dev.type != "cuda":
        return False
    try:
        import xformers.ops  # noqa: F401
    except Exception:
        return False
    return True


def main(argv=None):
    from digin.cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])
