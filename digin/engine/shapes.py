"""Architectures of the model sets the benchmark and the cost rows use, written out so no hub access is needed.

SD-1.5: diffusers' defaults of the runwayml/stable-diffusion-v1-5 configs. SDXL at 512 px: the SDXL-base UNet
(engine/sdxl.py) with 64×64 latents (the reference's SDXL-512 / Turbo / Playground-512 shapes). Tiny: the test model.
"""
from __future__ import annotations

from .models import TINY_SD
from .sdxl import SDXL_TEXT, SDXL_UNET, SDXL_VAE  # noqa: F401 (the model-set table)

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

SDXL_UNET_512 = dict(SDXL_UNET, sample_size=64)
TINY_UNET, TINY_VAE, TINY_TEXT = TINY_SD["unet"], TINY_SD["vae"], TINY_SD["text"]
