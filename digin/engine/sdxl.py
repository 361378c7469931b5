"""SDXL behind the SD-1.x interface (the Euler solver and guidance rescale live in schedule.py).

Packing (so the engine, inversion, P2P and masks run unchanged): `SDXLModel.encode_text` returns
(B, L+1, D) — rows 0..L-1 the concatenated penultimate hidden states of both text encoders (D = 768 + 1280
for SDXL), row L the pooled projection of text encoder 2 zero-padded to D. `SDXLUNet` (what `sd.unet` is)
unpacks that last row into `added_cond_kwargs` with the time ids and forwards the L word rows as
`encoder_hidden_states`, so cross-attention still sees the tokenizer's 77 positions (P2P token indices and
cross-attention masks are the SD-1.x ones) and a per-step conditioning delta also moves the pooled embedding
(the reference's OptimParamsXL `add` delta, for free).

Euler (schedule.py): diffusers' EulerDiscreteScheduler (s_churn = 0) is DDIM written in x̄ = x/√ᾱ: its `scale_model_input`
x̄/√(σ²+1) is exactly the DDIM latent x_t, and x̄ + (σ' − σ)·ε is the DDIM update between ᾱ = 1/(σ²+1) and
ᾱ' = 1/(σ'²+1). So `make_euler_schedule` returns a `DDIMSchedule` whose tables are Euler's (interpolated σ,
final σ = 0 → ᾱ = 1) and the engine's `ddim_step` runs the Euler chain with no new step function. Start:
diffusers draws x̄_T = n·init_noise_sigma, i.e. x_T = n·`euler_init_scale(...)`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .models import (SINGLE_FILE_CONFIGS, SDModel, _quiet_loaders, _refuse_remote_code, _single_file_config,
                     resolve_dtype, write_tiny_tokenizer)

# ------------------------------------------------------------------------------------- UNet wrapper

class SDXLUNet(torch.nn.Module):
    """UNet2DConditionModel taking the packed (B, L+1, D) conditioning; everything else is delegated.

    Time ids per diffusers' SDXL pipeline: (original H, W, crop top, left, target H, W) with original = target =
    the image size of the current latent (latent size × VAE factor) and crop 0, unless `time_ids` is set.
    """

    def __init__(self, unet: torch.nn.Module, pooled_dim: int, latent_factor: int, time_ids: tuple | None = None):
        super().__init__()
        self.unet = unet
        self.pooled_dim = int(pooled_dim)
        self.latent_factor = int(latent_factor)
        self.time_ids = None if time_ids is None else tuple(float(v) for v in time_ids)
        self._time_cache: dict = {}
        n_ids = 6
        want = unet.config.addition_time_embed_dim * n_ids + self.pooled_dim
        have = unet.add_embedding.linear_1.in_features
        if want != have:
            raise ValueError(f"SDXL UNet expects {have} added-embedding features, the text encoder gives "
                             f"{want} (requires_aesthetics_score / refiner UNets are not supported)")

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["unet"], name)

    # explicit delegation of what P2P / capture / checkpointing use (named_modules keys get a prefix here)
    @property
    def attn_processors(self):
        return self.unet.attn_processors

    def set_attn_processor(self, processor):
        if isinstance(processor, dict):
            processor = {k.removeprefix("unet."): v for k, v in processor.items()}
        return self.unet.set_attn_processor(processor)

    def enable_gradient_checkpointing(self):
        return self.unet.enable_gradient_checkpointing()

    def disable_gradient_checkpointing(self):
        return self.unet.disable_gradient_checkpointing()

    def time_ids_for(self, h: int, w: int, device, dtype) -> torch.Tensor:
        key = (h, w, str(device), dtype)
        if key not in self._time_cache:  # built once per shape: no host→device copy in the hot loop
            H, W = h * self.latent_factor, w * self.latent_factor
            ids = self.time_ids or (H, W, 0, 0, H, W)
            self._time_cache[key] = torch.tensor([ids], dtype=dtype, device=device)
        return self._time_cache[key]

    def forward(self, sample, timestep, encoder_hidden_states, cross_attention_kwargs=None, return_dict=True,
                added_cond_kwargs=None, **kw):
        words_BLD = encoder_hidden_states[:, :-1]
        pooled_BP = encoder_hidden_states[:, -1, :self.pooled_dim]
        B = sample.shape[0]
        ids_B6 = self.time_ids_for(sample.shape[-2], sample.shape[-1], sample.device, words_BLD.dtype).expand(B, -1)
        added = {"text_embeds": pooled_BP, "time_ids": ids_B6}
        if added_cond_kwargs:
            added.update(added_cond_kwargs)
        return self.unet(sample, timestep, encoder_hidden_states=words_BLD,
                         cross_attention_kwargs=cross_attention_kwargs, added_cond_kwargs=added,
                         return_dict=return_dict, **kw)


# ------------------------------------------------------------------------------------- model

@dataclass
class SDXLModel(SDModel):
    """SDModel interface for SDXL: `unet` is an SDXLUNet, `encode_text` returns packed (B, L+1, D)."""

    tokenizer_2: object = None
    text_encoder_2: torch.nn.Module | None = None
    force_zeros_for_empty_prompt: bool = True

    def _parts(self):
        return (self.text_encoder, self.text_encoder_2, self.unet, self.vae)

    @property
    def family(self) -> str:
        return "sdxl"

    @property
    def pooled_dim(self) -> int:
        return self.unet.pooled_dim

    @property
    def vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def to(self, device=None, dtype=None) -> "SDXLModel":
        for m in self._parts():
            m_dtype = dtype
            if m is self.vae and dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
                m_dtype = torch.float32  # the SDXL VAE overflows in fp16 (diffusers' force_upcast)
            if m_dtype is not None and next(m.parameters()).dtype != m_dtype:
                m.to(device=device, dtype=m_dtype)
            else:
                m.to(device=device)
        self.unet._time_cache.clear()
        return self

    def freeze(self) -> "SDXLModel":
        for m in self._parts():
            m.eval()
            m.requires_grad_(False)
        return self

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """(B, L+1, D) fp32 packed conditioning. With force_zeros_for_empty_prompt (diffusers' SDXL default for
        the unconditional branch) an empty prompt is all zeros, pooled row included."""
        prompts = list(prompts)
        words, pooled = [], None
        for tok, te in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(self.device)
            out = te(ids, output_hidden_states=True)
            if pooled is None and out[0].dim() == 2:  # CLIPTextModelWithProjection's text_embeds
                pooled = out[0]
            words.append(out.hidden_states[-2])
        words_BLD = torch.cat(words, dim=-1).float()
        D = words_BLD.shape[-1]
        pooled_row = torch.nn.functional.pad(pooled.float(), (0, D - pooled.shape[-1])).unsqueeze(1)
        packed = torch.cat([words_BLD, pooled_row], dim=1)
        if self.force_zeros_for_empty_prompt:
            empty = torch.tensor([p == "" for p in prompts], device=packed.device).view(-1, 1, 1)
            packed = torch.where(empty, torch.zeros_like(packed), packed)
        return packed

    def _latent_stats(self, like: torch.Tensor):
        cfg = self.vae.config
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        if mean is None or std is None:
            return None
        C = like.shape[1]
        return (torch.tensor(mean, device=like.device, dtype=like.dtype).view(1, C, 1, 1),
                torch.tensor(std, device=like.device, dtype=like.dtype).view(1, C, 1, 1))

    def decode(self, z_BCHW: torch.Tensor) -> torch.Tensor:
        """x̂0 latent → image in [0, 1], fp32 (VAE in fp32 when fp16 would overflow; latents_mean/std if set)."""
        stats = self._latent_stats(z_BCHW)
        z = z_BCHW / self.vae_scale if stats is None else z_BCHW * stats[1] / self.vae_scale + stats[0]
        img = self.vae.decode(z.to(self.vae_dtype), return_dict=False)[0].float()
        return (img / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_image(self, img_BCHW: torch.Tensor) -> torch.Tensor:
        x = (img_BCHW * 2 - 1).to(self.device, self.vae_dtype)
        z = self.vae.encode(x).latent_dist.mean.float()
        stats = self._latent_stats(z)
        return z * self.vae_scale if stats is None else (z - stats[0]) * self.vae_scale / stats[1]


# ------------------------------------------------------------------------------------- loading

def _wrap(tok, tok2, te, te2, unet, vae, sched: dict, force_zeros: bool, source: str) -> SDXLModel:
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    wrapped = SDXLUNet(unet, pooled_dim=te2.config.projection_dim, latent_factor=factor)
    return SDXLModel(tok, te, wrapped, vae, dict(sched), source=source, tokenizer_2=tok2, text_encoder_2=te2,
                     force_zeros_for_empty_prompt=force_zeros)


def load_sdxl(model_path: str | os.PathLike, dtype="fp32", device="cpu", model_config: str | None = None) -> SDXLModel:
    """SDXL from a local diffusers folder (tokenizer, tokenizer_2, text_encoder, text_encoder_2, unet, vae,
    scheduler) or a single .safetensors file plus `model_config` (a local SDXL folder without weights). Offline."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if str(model_path) == "tiny-sdxl":
        return build_tiny_sdxl().to(device=device, dtype=resolve_dtype(dtype)).freeze()
    path, dt = Path(model_path), resolve_dtype(dtype)
    if path.is_dir():
        if not ((path / "unet").is_dir() and (path / "text_encoder_2").is_dir()):
            raise FileNotFoundError(f"{path} is not a diffusers SDXL folder (needs unet/ and text_encoder_2/)")
        _refuse_remote_code(path)
        _quiet_loaders()
        kw = dict(local_files_only=True, use_safetensors=True, torch_dtype=dt)
        tok = CLIPTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
        tok2 = CLIPTokenizer.from_pretrained(path / "tokenizer_2", local_files_only=True)
        te = CLIPTextModel.from_pretrained(path / "text_encoder", **kw)
        te2 = CLIPTextModelWithProjection.from_pretrained(path / "text_encoder_2", **kw)
        unet = UNet2DConditionModel.from_pretrained(path / "unet", **kw)
        vae = AutoencoderKL.from_pretrained(path / "vae", **kw)
        sched_file = path / "scheduler" / "scheduler_config.json"
        sched = json.loads(sched_file.read_text()) if sched_file.exists() else {}
        idx = path / "model_index.json"
        force_zeros = json.loads(idx.read_text()).get("force_zeros_for_empty_prompt", True) if idx.exists() else True
    elif path.is_file():
        if path.suffix not in (".safetensors", ".ckpt"):
            raise ValueError(f"{path}: single-file checkpoints must be .safetensors (or .ckpt)")
        from diffusers import StableDiffusionXLPipeline

        # a local folder only: diffusers would look any other name up on the hub
        cfg = _single_file_config(path, model_config, SINGLE_FILE_CONFIGS + ("text_encoder_2/config.json",
                                                                             "tokenizer_2", "model_index.json"))
        pipe = StableDiffusionXLPipeline.from_single_file(str(path), config=str(cfg), local_files_only=True)
        tok, tok2, te, te2 = pipe.tokenizer, pipe.tokenizer_2, pipe.text_encoder, pipe.text_encoder_2
        unet, vae, sched = pipe.unet, pipe.vae, dict(pipe.scheduler.config)
        force_zeros = bool(pipe.config.get("force_zeros_for_empty_prompt", True))
    else:
        raise FileNotFoundError(f"model_path {path} does not exist (use a local folder, a file, or 'tiny-sdxl')")
    sd = _wrap(tok, tok2, te, te2, unet, vae, sched, force_zeros, str(path))
    return sd.to(device=device, dtype=dt).freeze()


def save_sdxl(sd: SDXLModel, folder: str | os.PathLike):
    folder = Path(folder)
    sd.tokenizer.save_pretrained(folder / "tokenizer")
    sd.tokenizer_2.save_pretrained(folder / "tokenizer_2")
    sd.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    sd.text_encoder_2.save_pretrained(folder / "text_encoder_2", safe_serialization=True)
    sd.unet.unet.save_pretrained(folder / "unet", safe_serialization=True)
    sd.vae.save_pretrained(folder / "vae", safe_serialization=True)
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(sd.scheduler_config, indent=1))
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": sd.force_zeros_for_empty_prompt}))


# ------------------------------------------------------------------------------------- tiny preset

TINY_SDXL = dict(
    resolution=32,  # pixels; VAE factor 2 → 16×16 latents
    unet=dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),  # SDXL: no attention at full resolution
              up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
              cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8, use_linear_projection=True,
              addition_embed_type="text_time", addition_time_embed_dim=8,
              projection_class_embeddings_input_dim=6 * 8 + 32),
    vae=dict(in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
             down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
             up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8, sample_size=32,
             scaling_factor=0.13025, force_upcast=True),
    text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=77),
    text_2=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, projection_dim=32),
    scheduler=dict(_class_name="EulerDiscreteScheduler", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                   beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                   timestep_spacing="leading", interpolation_type="linear", use_karras_sigmas=False),
)


def build_tiny_sdxl(seed: int = 0, folder: str | os.PathLike | None = None, prediction_type: str = "epsilon",
                    words: list[str] = (), timestep_spacing: str = "leading") -> SDXLModel:
    """Tiny SDXL-shaped model (two text encoders, text_time added embedding) with seeded random weights."""
    import tempfile

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tmp = tempfile.TemporaryDirectory() if folder is None else None
    root = Path(tmp.name if tmp is not None else folder)
    tok = write_tiny_tokenizer(root / "tokenizer", words)
    tok2 = write_tiny_tokenizer(root / "tokenizer_2", words)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_SDXL["unet"])
    vae = AutoencoderKL(**TINY_SDXL["vae"])
    ids = dict(vocab_size=len(tok.get_vocab()), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    te = CLIPTextModel(CLIPTextConfig(**ids, **TINY_SDXL["text"]))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**ids, **TINY_SDXL["text_2"]))
    sched = dict(TINY_SDXL["scheduler"], prediction_type=prediction_type, timestep_spacing=timestep_spacing)
    sd = _wrap(tok, tok2, te, te2, unet, vae, sched, True, "tiny-sdxl").freeze()
    if folder is not None:
        save_sdxl(sd, folder)
    if tmp is not None:
        tmp.cleanup()
    return sd


# ------------------------------------------------------------------------------------- full-size shapes (bench)

# stabilityai/stable-diffusion-xl-base-1.0 architecture, written out so that no hub access is needed.
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, norm_num_groups=32, act_fn="silu", flip_sin_to_cos=True,
                 freq_shift=0, norm_eps=1e-5)
SDXL_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu", norm_num_groups=32, sample_size=1024,
                scaling_factor=0.13025, force_upcast=True)
SDXL_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
SDXL_TEXT_2 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                   max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
SDXL_SCHEDULER = dict(_class_name="EulerDiscreteScheduler", num_train_timesteps=1000, beta_start=0.00085,
                      beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                      steps_offset=1, timestep_spacing="leading", interpolation_type="linear",
                      prediction_type="epsilon", use_karras_sigmas=False)


def build_sdxl_shaped(device="cpu", dtype=torch.float32, resolution: int = 512) -> SDXLModel:
    """SDXL-base-shaped SDXLModel with random weights (character-level tokenizers) at `resolution` px
    (512: the reference's SDXL-512 / Turbo / Playground-512 shapes). For throughput benchmarks only."""
    import tempfile

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with tempfile.TemporaryDirectory() as tmp:
        tok = write_tiny_tokenizer(Path(tmp) / "a")
        tok2 = write_tiny_tokenizer(Path(tmp) / "b")
    ids = dict(vocab_size=len(tok.get_vocab()), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    with torch.device(device):
        unet = UNet2DConditionModel(**dict(SDXL_UNET, sample_size=resolution // 8))
        vae = AutoencoderKL(**SDXL_VAE)
        te = CLIPTextModel(CLIPTextConfig(**ids, **SDXL_TEXT))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**ids, **SDXL_TEXT_2))
    sd = _wrap(tok, tok2, te, te2, unet, vae, dict(SDXL_SCHEDULER), True, f"bench:sdxl{resolution}")
    return sd.to(dtype=resolve_dtype(dtype)).freeze()
