"""Load Stable Diffusion components (local folder or single file, offline) and the tiny preset.

`SDModel` bundles tokenizer, text encoder, UNet and VAE with the few operations the engine needs:
text encoding, VAE encode (posterior mean × scaling) and decode; the UNet is called through
`engine.sampling.call_unet` (compiled once `engine.prepare.prepare_sd` has run).
Weights live in `dtype` (bf16/fp16/fp32); everything that comes out of these helpers is fp32 so the
optimised variables and the DDIM latent chain stay fp32.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16, "fp64": torch.float64}


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype)]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}") from None


@dataclass
class SDModel:
    tokenizer: object
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler_config: dict = field(default_factory=dict)
    source: str = ""
    # compiled call sites + compute settings, set by engine.prepare.prepare_sd (None: plain eager calls)
    runtime: object = field(default=None, repr=False, compare=False)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    @property
    def vae_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def max_tokens(self) -> int:
        return int(self.tokenizer.model_max_length)

    def to(self, device=None, dtype=None) -> "SDModel":
        for m in (self.text_encoder, self.unet, self.vae):
            if dtype is not None and next(m.parameters()).dtype != dtype:
                m.to(device=device, dtype=dtype)
            else:
                m.to(device=device)
        return self

    def freeze(self) -> "SDModel":
        for m in (self.text_encoder, self.unet, self.vae):
            m.eval()
            m.requires_grad_(False)
        return self

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_tokens, truncation=True,
                             return_tensors="pt").input_ids
        return ids

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """(B, L, D) fp32 hidden states of the text encoder's last layer (SD-1.x conditioning)."""
        ids = self.tokenize(prompts).to(self.device)
        return self.text_encoder(ids)[0].float()

    def decode(self, z_BCHW: torch.Tensor) -> torch.Tensor:
        """x̂0 latent → image in [0, 1], fp32."""
        img = self.vae.decode((z_BCHW / self.vae_scale).to(self.dtype), return_dict=False)[0].float()
        return (img / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_image(self, img_BCHW: torch.Tensor) -> torch.Tensor:
        """Image in [0, 1] → posterior mean × scaling factor, fp32."""
        x = (img_BCHW * 2 - 1).to(self.device, self.dtype)
        dist = self.vae.encode(x).latent_dist
        return dist.mean.float() * self.vae_scale


# --------------------------------------------------------------------------------------------- loading

def _quiet_loaders():
    """No per-file progress bars from transformers/diffusers in cluster logs."""
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        dlog.disable_progress_bar()
    except Exception:  # older versions: cosmetic only
        pass


def _refuse_remote_code(folder: Path):
    for cfg in folder.rglob("config.json"):
        try:
            data = json.loads(cfg.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "auto_map" in data:
            raise ValueError(f"{cfg} asks for remote code (auto_map); digin never runs model-supplied code")


def load_sd(model_path: str | os.PathLike, dtype="fp32", device="cpu", model_config: str | None = None) -> SDModel:
    """Load SD tokenizer/text encoder/UNet/VAE from a local diffusers folder or a single-file checkpoint.

    Offline only: nothing is fetched from a hub. A single `.safetensors`/`.ckpt` file needs `model_config`,
    a local diffusers folder (e.g. an SD-1.5 folder without weights) describing the architecture.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if str(model_path) == "tiny":
        return build_tiny_sd().to(device=device, dtype=resolve_dtype(dtype)).freeze()
    path = Path(model_path)
    dt = resolve_dtype(dtype)
    if path.is_dir():
        if not (path / "unet").is_dir():
            raise FileNotFoundError(f"{path} is not a diffusers Stable Diffusion folder (no unet/ subfolder)")
        _refuse_remote_code(path)
        _quiet_loaders()
        kw = dict(local_files_only=True, use_safetensors=True, torch_dtype=dt)
        tok = CLIPTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
        te = CLIPTextModel.from_pretrained(path / "text_encoder", **kw)
        unet = UNet2DConditionModel.from_pretrained(path / "unet", **kw)
        vae = AutoencoderKL.from_pretrained(path / "vae", **kw)
        sched_file = path / "scheduler" / "scheduler_config.json"
        sched = json.loads(sched_file.read_text()) if sched_file.exists() else {}
    elif path.is_file():
        tok, te, unet, vae, sched = _load_single_file(path, model_config)
    else:
        raise FileNotFoundError(f"model_path {path} does not exist (use a local folder, a file, or 'tiny')")
    sd = SDModel(tok, te, unet, vae, dict(sched), source=str(path))
    return sd.to(device=device, dtype=dt).freeze()


# Key prefixes of an original (LDM/CompVis) SD checkpoint, per component.
LDM_PREFIXES = {"UNet": ("model.diffusion_model.",), "VAE": ("first_stage_model.", "vae."),
                "text encoder": ("cond_stage_model.",)}
SINGLE_FILE_CONFIGS = ("unet/config.json", "vae/config.json", "text_encoder/config.json", "tokenizer",
                       "scheduler/scheduler_config.json")


def _single_file_config(path: Path, model_config, needs=SINGLE_FILE_CONFIGS) -> Path:
    """The local diffusers folder describing a single file's architecture; never handed to the hub."""
    if model_config is None:
        raise ValueError(f"{path}: a single-file checkpoint needs model_config=<local diffusers folder> "
                         "(no hub access to look the architecture up)")
    cfg = Path(model_config)
    if not cfg.is_dir():
        raise FileNotFoundError(f"{path}: model_config {cfg} is not a local folder (hub ids are never looked up; "
                                "pass a diffusers Stable Diffusion folder, weights optional)")
    missing = [need for need in needs if not (cfg / need).exists()]
    if missing:
        raise FileNotFoundError(f"{path}: model_config {cfg} lacks {', '.join(missing)}")
    _refuse_remote_code(cfg)
    return cfg


def _check_ldm_layout(path: Path, keys):
    for part, prefixes in LDM_PREFIXES.items():
        if not any(k.startswith(prefixes) for k in keys):
            raise ValueError(f"{path}: no {part} weights (no key starts with {' or '.join(prefixes)}); "
                             "not an original LDM/CompVis Stable Diffusion checkpoint")


def _load_single_file(path: Path, model_config):
    """Tokenizer, text encoder, UNet, VAE and scheduler config from one LDM checkpoint + a local config folder.
    Component by component, so model_index.json is not needed (digin's save_sd writes a minimal one)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm, load_single_file_checkpoint
    from transformers import CLIPTextModel, CLIPTokenizer

    if path.suffix not in (".safetensors", ".ckpt"):
        raise ValueError(f"{path}: single-file checkpoints must be .safetensors (or .ckpt)")
    cfg = _single_file_config(path, model_config)
    _quiet_loaders()
    ckpt = load_single_file_checkpoint(str(path), local_files_only=True)
    _check_ldm_layout(path, ckpt.keys())
    kw = dict(config=str(cfg), local_files_only=True)
    unet = UNet2DConditionModel.from_single_file(ckpt, subfolder="unet", **kw)
    vae = AutoencoderKL.from_single_file(ckpt, subfolder="vae", **kw)
    te = create_diffusers_clip_model_from_ldm(CLIPTextModel, ckpt, subfolder="text_encoder", **kw)
    tok = CLIPTokenizer.from_pretrained(cfg / "tokenizer", local_files_only=True)
    sched = json.loads((cfg / "scheduler" / "scheduler_config.json").read_text())
    return tok, te, unet, vae, sched


# ------------------------------------------------------------------------------------------ tiny preset

def _byte_unicode() -> list[str]:
    """The GPT-2/CLIP byte→unicode table, so the tiny BPE vocabulary covers every byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tiny_tokenizer(folder: str | os.PathLike, words: list[str] = (), max_length: int = 77):
    """A character-level CLIP BPE tokenizer (plus whole-word tokens for `words`), written to `folder`."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_unicode()
    vocab_list = chars + [c + "</w>" for c in chars]
    merges = []
    for w in words:  # merge each listed word into one token, left to right
        cur = w[0]
        for k, ch in enumerate(w[1:]):
            last = k == len(w) - 2
            merges.append(f"{cur} {ch + '</w>' if last else ch}")
            cur = cur + ch
            tok = cur + ("</w>" if last else "")
            if tok not in vocab_list:
                vocab_list.append(tok)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + ("\n" if merges else ""))
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    tok.save_pretrained(folder)
    return tok


TINY_SD = dict(
    resolution=32,  # pixels; VAE factor 2 → 16×16 latents
    unet=dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
              cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8),
    vae=dict(in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
             down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
             up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8, sample_size=32,
             scaling_factor=0.18215),
    text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=77),
)


def build_tiny_sd(seed: int = 0, folder: str | os.PathLike | None = None, prediction_type: str = "epsilon",
                  words: list[str] = ()) -> SDModel:
    """Tiny SD-1.x-shaped model with random (seeded) weights; the same classes users load."""
    import tempfile

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tmp = None
    if folder is None:
        tmp = tempfile.TemporaryDirectory()
        tok_dir = Path(tmp.name)
    else:
        tok_dir = Path(folder) / "tokenizer"
    tok = write_tiny_tokenizer(tok_dir, words)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_SD["unet"])
    vae = AutoencoderKL(**TINY_SD["vae"])
    cfg = CLIPTextConfig(vocab_size=len(tok.get_vocab()), bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **TINY_SD["text"])
    te = CLIPTextModel(cfg)
    sched = dict(_class_name="DDIMScheduler", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                 beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                 timestep_spacing="leading", prediction_type=prediction_type)
    sd = SDModel(tok, te, unet, vae, sched, source="tiny").freeze()
    if folder is not None:
        save_sd(sd, folder)
    if tmp is not None:
        tmp.cleanup()
    return sd


def save_sd(sd: SDModel, folder: str | os.PathLike):
    folder = Path(folder)
    sd.tokenizer.save_pretrained(folder / "tokenizer")
    sd.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    sd.unet.save_pretrained(folder / "unet", safe_serialization=True)
    sd.vae.save_pretrained(folder / "vae", safe_serialization=True)
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(sd.scheduler_config, indent=1))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
