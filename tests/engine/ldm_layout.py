"""Test helper: write a diffusers Stable Diffusion model as one original LDM/CompVis single-file checkpoint.

The inverse of what diffusers does when it loads a single file (diffusers/loaders/single_file_utils.py), so the
tests can build the `v1-5-pruned-emaonly.safetensors` layout users have on clusters without downloading one:
  model.diffusion_model.*       UNet (input_blocks / middle_block / output_blocks, ResBlock in_layers/out_layers)
  first_stage_model.*           VAE (encoder.down.i.block.j, mid.block_1/attn_1, decoder.up reversed; the VAE
                                attention q/k/v/proj_out are 1×1 conv weights, diffusers keeps them linear)
  cond_stage_model.transformer.text_model.*   SD-1 text encoder (HF CLIP names)
  cond_stage_model.model.*      SD-2 text encoder (OpenCLIP names, fused q/k/v in_proj)
Naming only; the layer arithmetic follows the diffusers config of the model being written.
"""
from __future__ import annotations

import os

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
OPEN_CLIP_PREFIX = "cond_stage_model.model."

# diffusers ResnetBlock2D (UNet) → LDM ResBlock
UNET_RESNET_PARTS = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
                     "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
UNET_TOP_LEVEL = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                  "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
# diffusers VAE attention → LDM AttnBlock (whose weights are 1×1 convs)
VAE_ATTENTION_PARTS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
# HF CLIP encoder layer → OpenCLIP residual block (q/k/v are fused separately)
OPEN_CLIP_LAYER_PARTS = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc",
                         "mlp.fc2": "mlp.c_proj", "self_attn.out_proj": "attn.out_proj"}


def _split_module(key: str, module_map: dict[str, str]) -> tuple[str, str] | None:
    """(new name of the longest mapped module prefix of `key`, the rest of `key`), or None when none matches."""
    for old in sorted(module_map, key=len, reverse=True):
        if key.startswith(old + "."):
            return module_map[old], key[len(old) + 1:]
    return None


def _rename_parts(key: str, parts: dict[str, str]) -> str:
    """Rename the sub-module at the start of `key` ("norm1.weight" → "in_layers.0.weight")."""
    split = _split_module(key, parts)
    return f"{split[0]}.{split[1]}" if split else key


# --------------------------------------------------------------------------------------------------- UNet

def _unet_module_map(config) -> dict[str, str]:
    """diffusers UNet2DConditionModel block prefix → LDM UNetModel block prefix, from the block layout."""
    n_levels = len(config.block_out_channels)
    per_level = config.layers_per_block
    mapping = {}
    ldm_in = 1  # input_blocks.0 is conv_in
    for level in range(n_levels):
        for j in range(per_level):
            mapping[f"down_blocks.{level}.resnets.{j}"] = f"input_blocks.{ldm_in}.0"
            mapping[f"down_blocks.{level}.attentions.{j}"] = f"input_blocks.{ldm_in}.1"
            ldm_in += 1
        if level < n_levels - 1:  # the downsampler is an input block of its own
            mapping[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{ldm_in}.0.op"
            ldm_in += 1
    mapping.update({"mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
                    "mid_block.resnets.1": "middle_block.2"})
    ldm_out = 0
    for level, block_type in enumerate(config.up_block_types):
        has_attention = "CrossAttn" in block_type
        for j in range(per_level + 1):
            mapping[f"up_blocks.{level}.resnets.{j}"] = f"output_blocks.{ldm_out}.0"
            mapping[f"up_blocks.{level}.attentions.{j}"] = f"output_blocks.{ldm_out}.1"
            if j == per_level and level < n_levels - 1:  # upsampler follows the (attention of the) last layer
                slot = 2 if has_attention else 1
                mapping[f"up_blocks.{level}.upsamplers.0.conv"] = f"output_blocks.{ldm_out}.{slot}.conv"
            ldm_out += 1
    mapping.update(UNET_TOP_LEVEL)
    return mapping


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel weights under LDM names (`model.diffusion_model.` prefix)."""
    module_map = _unet_module_map(unet.config)
    out = {}
    for key, value in unet.state_dict().items():
        split = _split_module(key, module_map)
        if split is None:
            raise KeyError(f"UNet weight {key} has no LDM name (unsupported block layout)")
        block, rest = split
        if ".resnets." in key:
            rest = _rename_parts(rest, UNET_RESNET_PARTS)
        out[f"{UNET_PREFIX}{block}.{rest}"] = value
    return out


# ---------------------------------------------------------------------------------------------------- VAE

def _vae_module_map(config) -> dict[str, str]:
    """diffusers AutoencoderKL block prefix → LDM AutoencoderKL block prefix; the decoder's up list is reversed."""
    n_levels = len(config.block_out_channels)
    per_level = config.layers_per_block
    mapping = {}
    for level in range(n_levels):
        for j in range(per_level):
            mapping[f"encoder.down_blocks.{level}.resnets.{j}"] = f"encoder.down.{level}.block.{j}"
        mapping[f"encoder.down_blocks.{level}.downsamplers.0.conv"] = f"encoder.down.{level}.downsample.conv"
        ldm_level = n_levels - 1 - level
        for j in range(per_level + 1):
            mapping[f"decoder.up_blocks.{level}.resnets.{j}"] = f"decoder.up.{ldm_level}.block.{j}"
        mapping[f"decoder.up_blocks.{level}.upsamplers.0.conv"] = f"decoder.up.{ldm_level}.upsample.conv"
    for side in ("encoder", "decoder"):
        mapping[f"{side}.mid_block.resnets.0"] = f"{side}.mid.block_1"
        mapping[f"{side}.mid_block.resnets.1"] = f"{side}.mid.block_2"
        mapping[f"{side}.mid_block.attentions.0"] = f"{side}.mid.attn_1"
        mapping[f"{side}.conv_norm_out"] = f"{side}.norm_out"
    return mapping


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """AutoencoderKL weights under LDM names (`first_stage_model.` prefix), attention weights as 1×1 convs."""
    module_map = _vae_module_map(vae.config)
    out = {}
    for key, value in vae.state_dict().items():
        split = _split_module(key, module_map)
        if split is None:  # conv_in/conv_out/quant_conv/post_quant_conv keep their names
            out[VAE_PREFIX + key] = value
            continue
        block, rest = split
        if ".resnets." in key:
            rest = _rename_parts(rest, {"conv_shortcut": "nin_shortcut"})
        if ".attentions." in key:
            rest = _rename_parts(rest, VAE_ATTENTION_PARTS)
            if value.ndim == 2:  # LDM's AttnBlock uses Conv2d(C, C, 1)
                value = value[:, :, None, None]
        out[f"{VAE_PREFIX}{block}.{rest}"] = value
    return out


# ----------------------------------------------------------------------------------------------- text encoders

def _clip_names(text_encoder) -> dict[str, torch.Tensor]:
    """HF CLIP text weights without the `text_model.` wrapper (transformers ≥ 5.6 flattened CLIPTextModel)."""
    return {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}


def clip_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    """SD-1.x: HF CLIP names under `cond_stage_model.transformer.text_model.`, with the int64 `position_ids`
    buffer that the released SD-1.x files also carry."""
    out = {CLIP_PREFIX + k: v for k, v in _clip_names(text_encoder).items()}
    n_positions = text_encoder.config.max_position_embeddings
    out.setdefault(CLIP_PREFIX + "embeddings.position_ids", torch.arange(n_positions)[None])
    return out


def open_clip_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    """SD-2.x: the HF CLIP text encoder as an OpenCLIP text tower under `cond_stage_model.model.`."""
    weights = _clip_names(text_encoder)
    out = {"token_embedding.weight": weights.pop("embeddings.token_embedding.weight"),
           "positional_embedding": weights.pop("embeddings.position_embedding.weight"),
           "ln_final.weight": weights.pop("final_layer_norm.weight"),
           "ln_final.bias": weights.pop("final_layer_norm.bias")}
    for layer in range(text_encoder.config.num_hidden_layers):
        src, dst = f"encoder.layers.{layer}.", f"transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):  # OpenCLIP's nn.MultiheadAttention fuses q, k, v
            out[dst + f"attn.in_proj_{kind}"] = torch.cat(
                [weights.pop(src + f"self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")])
        for key in [k for k in weights if k.startswith(src)]:
            out[dst + _rename_parts(key[len(src):], OPEN_CLIP_LAYER_PARTS)] = weights.pop(key)
    if weights:
        raise KeyError(f"text encoder weights with no OpenCLIP name: {sorted(weights)}")
    width = text_encoder.config.hidden_size
    # real SD-2 files carry the CLIP projection (diffusers ignores it); its first dim is the q/k/v split width
    out["text_projection"] = torch.eye(width)
    return {OPEN_CLIP_PREFIX + k: v for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------- file

def ddpm_buffers(scheduler_config: dict) -> dict[str, torch.Tensor]:
    """The DDPM schedule buffers that original checkpoints also store (loaders must ignore them)."""
    n = int(scheduler_config.get("num_train_timesteps", 1000))
    start, end = scheduler_config.get("beta_start", 0.00085), scheduler_config.get("beta_end", 0.012)
    betas = torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float64) ** 2
    return {"betas": betas.float(), "alphas_cumprod": torch.cumprod(1 - betas, 0).float()}


def sd_to_ldm(sd, open_clip: bool = False) -> dict[str, torch.Tensor]:
    """One LDM-layout state dict for an SDModel (UNet + VAE + text encoder + schedule buffers)."""
    text = open_clip_to_ldm(sd.text_encoder) if open_clip else clip_to_ldm(sd.text_encoder)
    state = {**unet_to_ldm(sd.unet), **vae_to_ldm(sd.vae), **text, **ddpm_buffers(sd.scheduler_config)}
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def write_config_folder(sd, folder: str | os.PathLike):
    """A diffusers pipeline folder holding only configs and the tokenizer (model_index.json, */config.json),
    like the SD-1.5/2.1 config folders users pass as `model_config` next to a single file."""
    from pathlib import Path

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
                                   scheduler=DDIMScheduler.from_config(sd.scheduler_config), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    for weights in Path(folder).glob("*/*.safetensors"):  # the weights must come from the single file
        weights.unlink()
    return Path(folder)


def save_ldm_checkpoint(sd, path: str | os.PathLike, open_clip: bool = False) -> dict[str, torch.Tensor]:
    """Write `sd` as a single LDM-layout `.safetensors` file; returns the state dict written."""
    from safetensors.torch import save_file

    state = sd_to_ldm(sd, open_clip=open_clip)
    save_file(state, str(path))
    return state
