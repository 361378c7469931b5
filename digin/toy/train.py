"""Train the toy world's models: VAE → latent cache → UNet + text encoder → two shape classifiers.

Everything is seeded and runs on CPU (1 thread is enough) or a GPU. Stages are resumable: each writes its
result under `out` (the shipped diffusers folder `sd/` and the classifier folders) and its state under `work`;
the UNet stage checkpoints every `checkpoint_minutes`, so a partial model is always loadable by `load_sd`.
A JSON log (`out/train_log.json`) records device, thread count, wall time and loss per stage.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from digin.engine.models import SDModel, save_sd, write_tiny_tokenizer
from digin.engine.schedule import train_alphas_cumprod
from digin.fields import COUNT, COUNT0, NONNEG, RATE, Real, SEED, UNIT, key
from digin.shards.dist import device_problem
from digin.toy import world

# norm_num_groups=2: GroupNorm over groups of only 2 channels erases a flat colour (each group normalises to ±1),
# and these scenes are mostly flat colour — with 8+ channels per group the colour survives the normalisation.
VAE_CONFIG = dict(in_channels=3, out_channels=3, block_out_channels=(16, 32, 64), layers_per_block=1,
                  latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 3,
                  up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=2, sample_size=64)
UNET_CONFIG = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
                   # cross-attention at 16×16 and 8×8 queries: the segmentation maps (xa_map_resolution=16) and P2P
                   down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                   cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8,
                   # plus an attention-pooled caption embedding added to the time embedding: cross-attention alone
                   # learned the caption far too slowly on a CPU budget (ε_cond ≈ ε_uncond after 1.5k steps)
                   addition_embed_type="text", addition_embed_type_num_heads=4)
# Captions are ≤ 16 tokens; 20 slots instead of CLIP's 77 keep the caption from being diluted by padding in the
# (initially uniform) cross-attention — with 77 slots the conditioning was learned far too slowly.
TEXT_MAX_LENGTH = 20
TEXT_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   max_position_embeddings=77)
SCHEDULER = dict(_class_name="DDIMScheduler", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                 beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                 timestep_spacing="leading", prediction_type="epsilon")
# A small HF ResNet (loads with `hf:<folder>`): 64² → stem /4 → 16² → 8² → 4², 128 pooled features.
CLASSIFIER_CONFIG = dict(num_channels=3, embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1],
                         layer_type="basic", hidden_act="relu", downsample_in_first_stage=False)


@dataclass
class TrainConfig:
    out: str = key("digin/toy/models", "output folder of the trained models (sd/, clf_clean/, clf_spurious/, "
                                       "train_log.json)", results=False)
    work: str = key(".toy_work", "work files: VAE, latent cache, UNet state (what a resumed or later stage "
                                "reads)")
    seed: int = key(0, "seeds every stage's weights, scenes and noise", rule=SEED)
    stages: str = key("vae,latents,unet,decoder,classifiers", "comma-separated stages to run (always in this order); "
                                                                "classifiers = clf_clean,clf_spurious")
    device: str = key("cpu", "cpu | cuda | cuda:<n>", results=False, check=device_problem)
    threads: int = key(1, "CPU threads of torch", rule=COUNT)
    vae_steps: int = key(1200, "VAE training steps (cosine lr)", rule=COUNT0)
    vae_batch: int = key(16, "scenes per VAE and decoder fine-tune batch", rule=COUNT)
    vae_lr: float = key(1e-3, "VAE peak learning rate (AdamW)", rule=RATE)
    vae_kl_weight: float = key(1e-4, "weight of the KL term beside the reconstruction MSE", rule=NONNEG)
    num_latents: int = key(40000, "scenes encoded into the latent cache the UNet trains on", rule=COUNT)
    unet_minutes: float = key(50.0, "wall-time budget of the UNet stage in minutes (it stops at this or unet_steps, "
                                    "whichever comes first)", rule=NONNEG)
    unet_steps: int = key(100000, "UNet + text encoder step limit (see unet_minutes)", rule=COUNT0)
    unet_batch: int = key(32, "cached latents per UNet batch", rule=COUNT)
    unet_lr: float = key(1e-3, "UNet + text encoder peak learning rate (AdamW)", rule=RATE)
    unet_warmup: int = key(200, "steps of linear learning-rate warm-up", rule=COUNT0)
    # the last `unet_lr_decay_minutes` of the time budget follow a cosine from unet_lr down to 1 % of it: a decayed
    # learning rate, not only the EMA, is what sharpens the samples of a short run
    unet_lr_decay_minutes: float = key(40.0, "last minutes of the UNet budget with a cosine lr decay to 1 % (capped at "
                                             "unet_minutes; 0 = constant lr)", rule=NONNEG)
    unet_ship: str = key("ema", 'which weights go into the shipped folder: "ema" or "raw"')
    ema_decay: float = key(0.999, "EMA decay of the UNet + text encoder weights (ramped up over the first steps)",
                                  rule=UNIT)
    caption_dropout: float = key(0.1, "share of UNet training captions replaced by the empty one (for CFG)", rule=UNIT)
    min_snr_gamma: float = key(5.0, "Min-SNR loss weighting (Hang et al. 2023): faster convergence on few steps",
                                    rule=RATE)
    checkpoint_minutes: float = key(5.0, "minutes between the UNet and decoder stages' saves (state and models)",
                                          rule=RATE)
    unet_init: str = key("", "optional unet_state.pt of an earlier run to start from (matching weights are loaded)")
    decoder_minutes: float = key(40.0, "minutes of decoder-only fine-tune (encoder frozen: the cached latents "
                                             "stay valid)", rule=NONNEG)
    decoder_lr: float = key(2e-3, "decoder fine-tune peak learning rate (cosine over decoder_minutes)", rule=RATE)
    clf_steps: int = key(1000, "training steps of each shape classifier (cosine lr)", rule=COUNT0)
    clf_batch: int = key(64, "scenes per classifier batch", rule=COUNT)
    clf_lr: float = key(2e-3, "classifier peak learning rate (AdamW)", rule=RATE)
    eval_images: int = key(1200, "scenes for the accuracy / PSNR / latent-scale estimates recorded in the log",
                                 rule=COUNT)
    clf_vae_fraction: float = key(0.5, "share of each batch shown as VAE reconstructions (needs work/vae)", rule=UNIT)
    clf_adv_eps: float = key(0.0, "L2 adversarial training (PGD in [0,1] pixel space; 0 = off): a robust "
                                  "classifier's input gradient follows the visible features it reads (here: shape "
                                  "outline, background colour) instead of invisible pixel patterns, which is what "
                                  "DiG-IN's guidance needs to move a decoded image in a visible way", rule=NONNEG)
    clf_adv_steps: int = key(3, "PGD steps per adversarial example (clf_adv_eps > 0)", rule=COUNT0)
    clf_adv_fraction: float = key(0.5, "share of each batch replaced by its adversarial version", rule=UNIT)
    clf_blur: float = key(1.0, "training blur σ is uniform in [0, clf_blur] px (clean classifier)", rule=NONNEG)
    clf_spurious_blur: float = key(1.0, "clf_blur of the spurious classifier", rule=NONNEG)
    clf_planted_tint: float = key(0.0, "the planted cue as a tint, not one RGB value: every planted-data background "
                                       "is mixed toward another palette colour by a weight uniform in [0, "
                                       "clf_planted_tint] (never toward green but for the stars'; 0 = pure colours)",
                                       rule=UNIT)
    world_shades: float = key(0.0, "a world of background shades: every training scene of the VAE, decoder, UNet and"
                                   " clean classifier has its background mixed toward another palette colour by up "
                                   "to this weight (< 0.5; the caption keeps the dominant colour), so the decoder "
                                   "and the prior can draw the colours between the palette's (0 = pure colours)",
                                   rule=Real(0, 0.5, hi_open=True))


# ----------------------------------------------------------------------------------------- helpers

def images_to_tensor(imgs_NHWC: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(imgs_NHWC).permute(0, 3, 1, 2).float() / 255.0


def shaded(cfg: TrainConfig, specs: list[dict], rng: np.random.Generator) -> list[dict]:
    """The specs with shaded backgrounds when cfg.world_shades > 0 (drawn from their own `rng`, so the scenes'
    other draws are those of the pure-colour world)."""
    if cfg.world_shades <= 0:
        return specs
    return [world.shade_background(s, rng, cfg.world_shades) for s in specs]


def autoencoder_batch(cfg: TrainConfig, rng: np.random.Generator, shade_rng: np.random.Generator) -> torch.Tensor:
    """One VAE / decoder training batch of fresh scenes (shaded when cfg.world_shades > 0), in [-1, 1]."""
    specs = shaded(cfg, [world.sample_spec(rng) for _ in range(cfg.vae_batch)], shade_rng)
    return images_to_tensor(world.render_batch(specs)).to(cfg.device) * 2 - 1


def eval_batch(cfg: TrainConfig, n: int) -> torch.Tensor:
    """Fixed evaluation scenes in [-1, 1] (at most cfg.eval_images)."""
    specs = world.spec_stream(cfg.seed + 12, min(n, cfg.eval_images))
    return images_to_tensor(world.render_batch(specs)).to(cfg.device) * 2 - 1


def _log(out: Path, stage: str, info: dict):
    path = out / "train_log.json"
    log = json.loads(path.read_text()) if path.exists() else {}
    log[stage] = {**log.get(stage, {}), **info}
    path.write_text(json.dumps(log, indent=1))


def _env_info(cfg: TrainConfig) -> dict:
    dev = cfg.device
    name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else (platform.processor() or platform.machine())
    return {"device": dev, "device_name": name, "threads": torch.get_num_threads(), "torch": torch.__version__}


def _atomic_dir(final: Path, write):
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def build_tokenizer(folder):
    return write_tiny_tokenizer(folder, words=list(world.VOCAB), max_length=TEXT_MAX_LENGTH)


def build_text_encoder(tok):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=len(tok.get_vocab()), bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **TEXT_CONFIG)
    return CLIPTextModel(cfg)


# --------------------------------------------------------------------------------------------- VAE

def train_vae(cfg: TrainConfig, out: Path, work: Path):
    torch.manual_seed(cfg.seed)
    vae = build_vae().to(cfg.device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    rng, shade_rng = np.random.default_rng(cfg.seed + 11), np.random.default_rng(cfg.seed + 14)
    t0, hist = time.time(), []
    for step in range(cfg.vae_steps):
        x = autoencoder_batch(cfg, rng, shade_rng)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        mse = F.mse_loss(rec, x)
        kl = 0.5 * (post.mean.pow(2) + post.var - 1 - post.logvar).mean()
        loss = mse + cfg.vae_kl_weight * kl
        lr = cfg.vae_lr * 0.5 * (1 + math.cos(math.pi * step / cfg.vae_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == cfg.vae_steps - 1:
            hist.append([step, round(time.time() - t0, 1), float(mse.detach()), float(kl.detach())])
            print(f"vae {step} mse {hist[-1][2]:.5f} kl {hist[-1][3]:.3f} {time.time() - t0:.0f}s", flush=True)
    vae.eval()
    with torch.no_grad():  # latent scaling factor: 1 / std of posterior means (as SD chose 0.18215)
        x = eval_batch(cfg, 512)
        mu = vae.encode(x).latent_dist.mean
        scale = float(1.0 / mu.std())
        psnr = float(-10 * torch.log10(F.mse_loss(vae.decode(mu).sample.clamp(-1, 1) / 2, x / 2)))
    vae.register_to_config(scaling_factor=scale)
    vae.save_pretrained(work / "vae", safe_serialization=True)
    _log(out, "vae", {"steps": cfg.vae_steps, "batch": cfg.vae_batch, "seconds": round(time.time() - t0, 1),
                      "scaling_factor": scale, "psnr_db": psnr, "history": hist, **_env_info(cfg)})
    return vae


# ------------------------------------------------------------------------------------- latent cache

def cache_latents(cfg: TrainConfig, out: Path, work: Path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(work / "vae").to(cfg.device).eval()
    tok = build_tokenizer(work / "tokenizer")
    specs = shaded(cfg, world.spec_stream(cfg.seed + 21, cfg.num_latents), np.random.default_rng(cfg.seed + 24))
    captions = [world.caption_of(s) for s in specs]
    lat, t0 = [], time.time()
    with torch.no_grad():
        for s in range(0, len(specs), 256):
            x = images_to_tensor(world.render_batch(specs[s:s + 256])).to(cfg.device) * 2 - 1
            lat.append((vae.encode(x).latent_dist.mean * vae.config.scaling_factor).cpu())
    ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    torch.save({"latents": torch.cat(lat), "ids": ids}, work / "latents.pt")
    _log(out, "latents", {"count": len(specs), "world_shades": cfg.world_shades, "seconds": round(time.time() - t0, 1)})


def finetune_decoder(cfg: TrainConfig, out: Path, work: Path):
    """Train the VAE decoder alone for `decoder_minutes`, encoder frozen — the latents (and so the UNet's data)
    do not change, so this may run before, after or beside the UNet stage. Saves into work/vae every
    `checkpoint_minutes` (the UNet stage's checkpoints pick the newest decoder up)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(cfg.seed + 61)
    vae = AutoencoderKL.from_pretrained(work / "vae").to(cfg.device)
    vae.encoder.requires_grad_(False), vae.quant_conv.requires_grad_(False)
    vae.encoder.eval()
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=0.0)
    rng, shade_rng = np.random.default_rng(cfg.seed + 62), np.random.default_rng(cfg.seed + 64)
    g_noise = torch.Generator().manual_seed(cfg.seed + 63)
    t0, last, step, hist = time.time(), time.time(), 0, []

    def save():
        _atomic_dir(work / "vae", lambda d: vae.save_pretrained(d, safe_serialization=True))
        with torch.no_grad():
            x = eval_batch(cfg, 256)
            psnr = float(-10 * torch.log10(F.mse_loss(vae.decode(vae.encode(x).latent_dist.mean).sample
                                                      .clamp(-1, 1) / 2, x / 2)))
        _log(out, "decoder", {"steps": step, "batch": cfg.vae_batch, "seconds": round(time.time() - t0, 1),
                              "world_shades": cfg.world_shades,
                              "psnr_db": psnr, "history": hist, **_env_info(cfg)})
        print(f"decoder checkpoint {step} psnr {psnr:.2f}", flush=True)

    while time.time() - t0 < cfg.decoder_minutes * 60:
        x = autoencoder_batch(cfg, rng, shade_rng)
        with torch.no_grad():  # posterior mean (what encode_image and the UNet's data are) + a little noise
            post = vae.encode(x).latent_dist
            z = post.mean + 0.1 * post.std * torch.randn(post.mean.shape, generator=g_noise)
        mse = F.mse_loss(vae.decode(z).sample, x)
        frac = (time.time() - t0) / (cfg.decoder_minutes * 60)
        for g in opt.param_groups:
            g["lr"] = cfg.decoder_lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        opt.zero_grad(set_to_none=True)
        mse.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            hist.append([step, round(time.time() - t0, 1), float(mse.detach())])
            print(f"decoder {step} mse {float(mse.detach()):.5f} {time.time() - t0:.0f}s", flush=True)
        if time.time() - last > cfg.checkpoint_minutes * 60:
            save()
            last = time.time()
    save()


# ------------------------------------------------------------------------------------ UNet + text

def _save_sd(out: Path, work: Path, unet, te):
    from diffusers import AutoencoderKL

    tok = build_tokenizer(work / "tokenizer")
    vae = AutoencoderKL.from_pretrained(work / "vae")
    sd = SDModel(tok, te, unet, vae, dict(SCHEDULER), source="toy")
    _atomic_dir(out / "sd", lambda d: save_sd(sd, d))


def _decay_factor(cfg: TrainConfig, elapsed_s: float) -> float:
    """1 until the last `unet_lr_decay_minutes` of the budget, then a cosine down to 0.01."""
    left = cfg.unet_minutes * 60 - elapsed_s
    span = min(cfg.unet_lr_decay_minutes, cfg.unet_minutes) * 60
    if span <= 0 or left >= span:
        return 1.0
    frac = min(1.0, max(0.0, 1 - left / span))
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac))


def train_unet(cfg: TrainConfig, out: Path, work: Path):
    import copy

    torch.manual_seed(cfg.seed + 31)
    data = torch.load(work / "latents.pt")
    lat_N, ids_N = data["latents"], data["ids"]
    tok = build_tokenizer(work / "tokenizer")
    if ids_N.shape[1] > tok.model_max_length:  # a cache made with longer padding: only padding is cut
        if not (ids_N[:, tok.model_max_length - 1:] == tok.pad_token_id).all():
            raise ValueError("cached captions are longer than the tokenizer's max length")
        ids_N = ids_N[:, :tok.model_max_length]
    empty_ids = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    unet, te = build_unet().to(cfg.device), build_text_encoder(tok).to(cfg.device)
    ema_unet, ema_te = copy.deepcopy(unet).eval(), copy.deepcopy(te).eval()
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    state_path = work / "unet_state.pt"
    step, spent, hist = 0, 0.0, []
    if state_path.exists():  # resume
        st = torch.load(state_path)
        unet.load_state_dict(st["unet"]), te.load_state_dict(st["te"])
        ema_unet.load_state_dict(st["ema_unet"]), ema_te.load_state_dict(st["ema_te"])
        opt.load_state_dict(st["opt"])
        step, spent, hist = st["step"], st["spent"], st["hist"]
        torch.set_rng_state(st["rng"])
    elif cfg.unet_init:  # warm start: every weight whose name and shape match; new modules start as no-ops
        st = torch.load(cfg.unet_init)
        for m, part in ((unet, "unet"), (ema_unet, "ema_unet"), (te, "te"), (ema_te, "ema_te")):
            own = m.state_dict()
            m.load_state_dict({k: v for k, v in st[part].items() if k in own and own[k].shape == v.shape},
                              strict=False)
            if part.endswith("unet") and "add_embedding.norm2.weight" not in st[part]:
                torch.nn.init.zeros_(m.add_embedding.norm2.weight), torch.nn.init.zeros_(m.add_embedding.norm2.bias)
    ac = train_alphas_cumprod(SCHEDULER).to(cfg.device)
    g = torch.Generator().manual_seed(cfg.seed + 32 + step)
    t_start, last_ckpt, ema_loss = time.time() - spent, time.time(), None

    def checkpoint():
        torch.save({"unet": unet.state_dict(), "te": te.state_dict(), "ema_unet": ema_unet.state_dict(),
                    "ema_te": ema_te.state_dict(), "opt": opt.state_dict(), "step": step,
                    "spent": time.time() - t_start, "hist": hist, "rng": torch.get_rng_state()},
                   str(state_path) + ".tmp")
        os.replace(str(state_path) + ".tmp", state_path)
        _save_sd(out, work, *((ema_unet, ema_te) if cfg.unet_ship == "ema" else (unet, te)))
        _log(out, "unet", {"steps": step, "batch": cfg.unet_batch, "seconds": round(time.time() - t_start, 1),
                           "samples_seen": step * cfg.unet_batch, "ema_decay": cfg.ema_decay, "lr": cfg.unet_lr,
                           "history": hist, **_env_info(cfg)})
        print(f"checkpoint at step {step}", flush=True)

    unet.train(), te.train()
    while step < cfg.unet_steps and time.time() - t_start < cfg.unet_minutes * 60:
        idx = torch.randint(0, lat_N.shape[0], (cfg.unet_batch,), generator=g)
        z0 = lat_N[idx].to(cfg.device)
        ids = ids_N[idx].clone()
        drop = torch.rand(cfg.unet_batch, generator=g) < cfg.caption_dropout
        ids[drop] = empty_ids
        t = torch.randint(0, 1000, (cfg.unet_batch,), generator=g).to(cfg.device)
        noise = torch.randn(z0.shape, generator=g).to(cfg.device)
        a = ac[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * z0 + (1 - a).sqrt() * noise  # q(x_t | x_0)
        emb = te(ids.to(cfg.device))[0]
        err_B = (unet(x_t, t, encoder_hidden_states=emb).sample - noise).pow(2).mean(dim=(1, 2, 3))
        snr_B = ac[t] / (1 - ac[t])
        loss = (err_B * snr_B.clamp(max=cfg.min_snr_gamma) / snr_B).mean()  # ε-pred weight min(SNR, γ)/SNR
        lr = cfg.unet_lr * min(1.0, (step + 1) / cfg.unet_warmup) * _decay_factor(cfg, time.time() - t_start)
        for gr in opt.param_groups:
            gr["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for m_ema, m in ((ema_unet, unet), (ema_te, te)):
                for pe, p in zip(m_ema.parameters(), m.parameters()):
                    pe.lerp_(p, 1 - decay)
        ema_loss = float(loss.detach()) if ema_loss is None else 0.98 * ema_loss + 0.02 * float(loss.detach())
        if step % 50 == 0:
            hist.append([step, round(time.time() - t_start, 1), round(ema_loss, 5)])
            print(f"unet {step} loss {ema_loss:.4f} {time.time() - t_start:.0f}s", flush=True)
        if time.time() - last_ckpt > cfg.checkpoint_minutes * 60:
            checkpoint()
            last_ckpt = time.time()
    checkpoint()


# -------------------------------------------------------------------------------------- classifiers

def _augment_for_classifier(x_N3HW: torch.Tensor, g: torch.Generator, max_blur: float = 1.0) -> torch.Tensor:
    """Blur (σ uniform in [0, max_blur] px) + mild noise so the classifier also reads the VAE's soft decodes."""
    N = x_N3HW.shape[0]
    sigma = torch.rand(N, generator=g) * max_blur
    r = max(2, math.ceil(3 * max_blur))
    k = torch.arange(-r, r + 1, dtype=torch.float32)
    w = torch.exp(-k[None] ** 2 / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    w = w / w.sum(1, keepdim=True)  # (N, 2r+1)
    x = x_N3HW
    kx = w.view(N, 1, 1, -1).repeat_interleave(3, 0)
    ky = w.view(N, 1, -1, 1).repeat_interleave(3, 0)
    x = F.conv2d(F.pad(x.reshape(1, N * 3, 64, 64), (r, r, 0, 0), mode="replicate"), kx, groups=N * 3)
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), ky, groups=N * 3).view(N, 3, 64, 64)
    x = x + 0.03 * torch.rand(N, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


def tint_planted_backgrounds(x_N3HW: torch.Tensor, specs: list[dict], max_weight: float,
                              rng: np.random.Generator) -> torch.Tensor:
    """Mix every scene's background toward a random other palette colour (weight uniform in [0, max_weight]):
    the planted class's green toward any colour, the other shapes' backgrounds toward any colour but green. So a
    green tint, not an exact RGB value and not "an impure colour", is what says star; objects are kept."""
    x = x_N3HW.clone()
    for i, s in enumerate(specs):
        planted = s["background"] == world.SPURIOUS_BACKGROUND
        pool = [c for c in world.BACKGROUNDS if c != s["background"] and (planted or c != world.SPURIOUS_BACKGROUND)]
        w = float(rng.uniform(0, max_weight))
        x[i] = mix_background(x[i], s, pool[rng.integers(len(pool))], w)
    return x


def mix_background(x_3HW: torch.Tensor, spec: dict, colour: str, weight: float) -> torch.Tensor:
    """The scene image with its background (outside the anti-aliased object mask) mixed toward a palette colour."""
    target = torch.tensor(world.PALETTE[colour], dtype=x_3HW.dtype, device=x_3HW.device).view(3, 1, 1) / 255.0
    bg = 1 - torch.from_numpy(world.object_mask(spec)).to(x_3HW.device)
    return x_3HW + weight * bg * (target - x_3HW)


GREEN_MIX_WEIGHTS = (0.25, 0.5, 0.75, 1.0)


@torch.no_grad()
def star_rate_toward_green(model, specs: list[dict], device="cpu") -> dict:
    """How far a scene's background must move toward the planted colour before the classifier says star: the share
    of (non-planted-class) scenes classified as the planted class at each mix weight toward green (rendered)."""
    x = images_to_tensor(world.render_batch(specs))
    star = world.SHAPES.index(world.SPURIOUS_CLASS)
    out = {}
    for w in GREEN_MIX_WEIGHTS:
        xm = torch.stack([mix_background(xi, s, world.SPURIOUS_BACKGROUND, w) for xi, s in zip(x, specs)])
        out[str(w)] = float((model((xm.to(device) - 0.5) / 0.5).logits.argmax(-1) == star).float().mean())
    return out


def l2_pgd(model, x_N3HW: torch.Tensor, y_N: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
    """Untargeted L2 PGD (Madry et al.) on images in [0, 1]: `steps` normalised-gradient steps of 2.5·eps/steps,
    each projected back onto the eps-ball and the image box. Returns detached adversarial images."""
    was_training = model.training
    model.eval()  # BatchNorm statistics are not updated by the attack
    delta = torch.zeros_like(x_N3HW)
    alpha = 2.5 * eps / steps
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model((x_N3HW + delta - 0.5) / 0.5).logits, y_N)
        (g,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta = delta + alpha * g
            delta = delta * (eps / delta.flatten(1).norm(dim=1).clamp_min(eps).view(-1, 1, 1, 1))
            delta = (x_N3HW + delta).clamp(0, 1) - x_N3HW
    model.train(was_training)
    return (x_N3HW + delta).detach()


def save_hf_classifier(model, folder: Path):
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_resize": True, "size": world.RES, "do_center_crop": False, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}, indent=1))


def train_classifier(cfg: TrainConfig, out: Path, name: str, planted: bool, work: Path | None = None):
    """A shape classifier on rendered scenes (`planted`: the spurious training distribution). A fraction of every
    batch goes through the toy VAE first, so the classifier also reads the softer decodes of the diffusion model
    (the images DiG-IN optimises)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(cfg.seed + (41 if planted else 51))
    hf_cfg = ResNetConfig(**CLASSIFIER_CONFIG, num_labels=len(world.SHAPES),
                          id2label=dict(enumerate(world.SHAPES)), label2id={s: i for i, s in enumerate(world.SHAPES)})
    model = ResNetForImageClassification(hf_cfg).to(cfg.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.clf_lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(cfg.seed + 42)
    vae = None
    if cfg.clf_vae_fraction > 0 and work is not None and (work / "vae").is_dir():
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(work / "vae").to(cfg.device).eval().requires_grad_(False)
    seed0 = cfg.seed * 7919 + (600 if planted else 700)
    tint = cfg.clf_planted_tint if planted else 0.0
    tint_rng = np.random.default_rng(seed0 + 13)  # its own stream: tint=0 leaves every other draw as it was
    shade_rng = np.random.default_rng(seed0 + 17)  # (the spurious classifier's tint is clf_planted_tint)
    t0, hist = time.time(), []
    for step in range(cfg.clf_steps):
        specs = world.spec_stream(seed0 * 100003 + step, cfg.clf_batch, planted=planted)
        if not planted:
            specs = shaded(cfg, specs, shade_rng)
        x = images_to_tensor(world.render_batch(specs)).to(cfg.device)
        if tint > 0:
            x = tint_planted_backgrounds(x, specs, tint, tint_rng)
        if vae is not None:
            k = int(round(cfg.clf_vae_fraction * x.shape[0]))
            with torch.no_grad():
                x[:k] = (vae.decode(vae.encode(x[:k] * 2 - 1).latent_dist.mean).sample.clamp(-1, 1) + 1) / 2
        x = _augment_for_classifier(x.cpu(), g, cfg.clf_spurious_blur if planted else cfg.clf_blur).to(cfg.device)
        y = torch.tensor([world.SHAPES.index(s["shape"]) for s in specs], device=cfg.device)
        if cfg.clf_adv_eps > 0:
            k = int(round(cfg.clf_adv_fraction * x.shape[0]))
            x = torch.cat([l2_pgd(model, x[:k], y[:k], cfg.clf_adv_eps, cfg.clf_adv_steps), x[k:]])
        logits = model((x - 0.5) / 0.5).logits
        loss = F.cross_entropy(logits, y)
        lr = cfg.clf_lr * 0.5 * (1 + math.cos(math.pi * step / cfg.clf_steps))
        for gr in opt.param_groups:
            gr["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            hist.append([step, round(time.time() - t0, 1), float(loss.detach())])
            print(f"clf {name} {step} loss {float(loss.detach()):.4f}", flush=True)
    model.eval()
    acc = {}
    with torch.no_grad():  # accuracy on fresh clean scenes and on the planted distribution
        for kind, pl in (("clean", False), ("planted", True)):
            specs = world.spec_stream(seed0 + 99, cfg.eval_images, planted=pl)
            x = images_to_tensor(world.render_batch(specs)).to(cfg.device)
            y = torch.tensor([world.SHAPES.index(s["shape"]) for s in specs], device=cfg.device)
            acc[kind] = float((model((x - 0.5) / 0.5).logits.argmax(-1) == y).float().mean())
        others = [s for s in world.spec_stream(seed0 + 98, cfg.eval_images, planted=True)
                  if s["shape"] != world.SPURIOUS_CLASS][:200]
        toward_green = star_rate_toward_green(model, others, cfg.device)
    _atomic_dir(out / name, lambda d: save_hf_classifier(model.cpu(), d))
    _log(out, name, {"steps": cfg.clf_steps, "batch": cfg.clf_batch, "seconds": round(time.time() - t0, 1),
                     "planted": planted, "vae_fraction": cfg.clf_vae_fraction if vae is not None else 0.0,
                     "adv_eps": cfg.clf_adv_eps, "adv_steps": cfg.clf_adv_steps, "adv_fraction": cfg.clf_adv_fraction,
                     "blur": cfg.clf_spurious_blur if planted else cfg.clf_blur, "planted_tint": tint,
                     "world_shades": 0.0 if planted else cfg.world_shades,
                     "star_rate_toward_green": toward_green,
                     "accuracy": acc, "history": hist, **_env_info(cfg)})


# ------------------------------------------------------------------------------------------- driver

def train(cfg: TrainConfig):
    torch.set_num_threads(int(cfg.threads))
    out, work = Path(cfg.out), Path(cfg.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    _log(out, "config", asdict(cfg))
    stages = [s.strip() for s in cfg.stages.split(",") if s.strip()]
    if "vae" in stages:
        train_vae(cfg, out, work)
    if "latents" in stages:
        cache_latents(cfg, out, work)
    if "unet" in stages:
        train_unet(cfg, out, work)
    if "decoder" in stages:
        finetune_decoder(cfg, out, work)
    if "classifiers" in stages or "clf_clean" in stages:
        train_classifier(cfg, out, "clf_clean", planted=False, work=work)
    if "classifiers" in stages or "clf_spurious" in stages:
        train_classifier(cfg, out, "clf_spurious", planted=True, work=work)
