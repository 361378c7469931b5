"""OpenFlamingo few-shot captioning (the reference's open_flamingo_imagenet.py and
open_flamingo_cub_cars_food.py) driven by our own batched beam search.

Why not `Flamingo.generate`: open-flamingo 2.0.1 pins torch 2.0.1 and its generate() goes through the
transformers-4 generation API, which transformers 5 changed. We keep open_flamingo's modules (vision encoder,
perceiver, gated cross-attention, the LM mixin) and decode ourselves: one prompt forward with a KV cache, then one
token per beam per step (digin.caption.beam). Demo images are encoded once per run, not once per batch.
A separate-environment subprocess worker (torch 2.0.1 + transformers 4.x running the reference generate()) is the
alternative if exact Hugging Face beam-search parity is ever needed; it is not implemented.

Install: `pip install --no-deps open-flamingo==2.0.1 einops einops-exts` (the `flamingo` extra; --no-deps keeps
our torch). Weights are local files only: the LM folder (e.g. MPT-7B), the open_clip vision tower (name +
weights file) and the OpenFlamingo checkpoint (.pt or .safetensors)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from digin.caption.beam import beam_search
from digin.caption.labels import clean_caption
from digin.extras import require

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
QUESTION_FORMAT = "<image>Question: {question} Short answer:"


def require_open_flamingo():
    require("flamingo", "the open_flamingo caption backend")


def open_clip_vision(name_or_json: str, pretrained: str | None):
    """open_clip model whose `.visual` returns (pooled, tokens). `name_or_json`: a registered model name
    (ViT-L-14) or a JSON model config file; `pretrained`: a local weights file (open_clip loads it) or None."""
    import open_clip

    name = name_or_json
    if str(name_or_json).endswith(".json"):
        open_clip.add_model_config(name_or_json)
        name = Path(name_or_json).stem
    if pretrained and not Path(pretrained).exists():
        raise FileNotFoundError(f"vision tower weights {pretrained} not found (local files only)")
    model = open_clip.create_model(name, pretrained=pretrained or None)
    model.visual.output_tokens = True
    return model


def flamingo_tokenizer(path, trust_remote_code: bool = False):
    """The LM tokenizer plus <|endofchunk|>, <image> and a pad token (as open_flamingo's factory), left padding."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    tok.add_special_tokens({"additional_special_tokens": ["<|endofchunk|>", "<image>"]})
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": "<PAD>"})
    tok.padding_side = "left"
    return tok


def find_decoder_layers(lm) -> str:
    """Dotted name of the ModuleList holding the LM's transformer blocks (gpt_neox.layers, transformer.blocks...)."""
    n = getattr(lm.config, "num_hidden_layers", None) or getattr(lm.config, "n_layers", None)
    for name, mod in lm.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n and name:
            return name
    raise ValueError(f"cannot find the decoder layer list of {type(lm).__name__}; set decoder_layers_attr_name")


def build_flamingo(clip_model, lm, tokenizer, cross_attn_every_n_layers: int = 4,
                   decoder_layers_attr_name: str | None = None):
    """open_flamingo.Flamingo around an open_clip model and a causal LM (no downloads). Returns (model, vis_dim)."""
    require_open_flamingo()
    from open_flamingo import Flamingo
    from open_flamingo.src.flamingo_lm import FlamingoLMMixin
    from open_flamingo.src.utils import extend_instance

    extend_instance(lm, FlamingoLMMixin)
    lm.set_decoder_layers_attr_name(decoder_layers_attr_name or find_decoder_layers(lm))
    if lm.get_input_embeddings().num_embeddings != len(tokenizer):
        lm.resize_token_embeddings(len(tokenizer))
    vis_dim = _vision_width(clip_model)
    model = Flamingo(clip_model, lm, tokenizer.convert_tokens_to_ids("<|endofchunk|>"),
                     tokenizer.convert_tokens_to_ids("<image>"), vis_dim=vis_dim,
                     cross_attn_every_n_layers=cross_attn_every_n_layers)
    model.requires_grad_(False)
    return model.eval(), vis_dim


def _vision_width(clip_model) -> int:
    v = clip_model.visual
    for attr in ("width", "embed_dim"):
        if isinstance(getattr(v, attr, None), int):
            return getattr(v, attr)
    return v.transformer.width


def load_state(path) -> dict:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:  # the released OpenFlamingo checkpoint.pt: tensors only, so weights_only loading is enough
        sd = torch.load(path, map_location="cpu", weights_only=True)
        sd = sd.get("model_state_dict", sd)
    return {k.removeprefix("module."): v for k, v in sd.items()}


class FlamingoCaptioner:
    """caption(images_BCHW uint8, labels) / ask(images, question) with a loaded Flamingo."""

    name = "open_flamingo"

    def __init__(self, model, tokenizer, device, dtype=torch.float32, demos=(), num_beams: int = 3,
                 max_new_tokens: int = 20, prompt: str = "an image of a {label} ", length_penalty: float = 1.0):
        self.model, self.tok, self.device, self.dtype = model.to(device=device, dtype=dtype), tokenizer, device, dtype
        self.num_beams, self.max_new_tokens, self.prompt = num_beams, max_new_tokens, prompt
        self.length_penalty = length_penalty
        v = model.vision_encoder
        size = getattr(v, "image_size", 224)
        self.image_size = size[0] if isinstance(size, (tuple, list)) else int(size)
        pcfg = getattr(v, "preprocess_cfg", None) or {}
        self.mean = torch.tensor(pcfg.get("mean", OPENAI_MEAN), device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(pcfg.get("std", OPENAI_STD), device=device).view(1, 3, 1, 1)
        self.demos = list(demos)  # [(uint8 HWC image, caption)]
        self._demo_media = None
        self.demo_text = "".join(f"<image>{c}.<|endofchunk|>" for _, c in self.demos)

    # ------------------------------------------------------------------ vision
    def pixels(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        x = images_BCHW.to(self.device).float() / 255.0
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True,
                              align_corners=False).clamp(0, 1)
        return ((x - self.mean) / self.std).to(self.dtype)

    @torch.no_grad()
    def encode_media(self, images_BCHW) -> torch.Tensor:
        """(B, n_latents, d): vision tokens → perceiver, one image per media slot."""
        tokens_BVD = self.model.vision_encoder(self.pixels(images_BCHW))[1]
        return self.model.perceiver(tokens_BVD[:, None, None])[:, 0]

    def demo_media(self) -> torch.Tensor | None:
        if self.demos and self._demo_media is None:
            ims = torch.stack([torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1) for im, _ in self.demos])
            self._demo_media = torch.cat([self.encode_media(ims[i:i + 8]) for i in range(0, len(ims), 8)])
        return self._demo_media

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def generate(self, prompts: list[str], media_BTnd: torch.Tensor) -> list[str]:
        """Continuations of `prompts` (each with T <image> tokens matching media_BTnd[b]) by beam search."""
        K, B = self.num_beams, len(prompts)
        enc = self.tok(prompts, padding="longest", return_tensors="pt", add_special_tokens=False)
        ids_NL = enc.input_ids.to(self.device).repeat_interleave(K, 0)
        mask_NL = enc.attention_mask.to(self.device).repeat_interleave(K, 0)
        pos_N1 = (mask_NL.cumsum(-1) - 1).clamp(min=0)  # left padding: positions count real tokens only
        lm = self.model.lang_encoder
        for layer in lm._get_decoder_layers():
            layer.condition_vis_x(media_BTnd.to(self.dtype).repeat_interleave(K, 0))
        lm._use_cached_vision_x = True  # later single-token steps attend to the last image of the prompt
        state = {"mask": mask_NL, "pos": pos_N1[:, -1:]}
        try:
            out = lm(input_ids=ids_NL, attention_mask=mask_NL, position_ids=pos_N1, use_cache=True,
                     logits_to_keep=1)
            state["cache"] = out.cache if hasattr(out, "cache") else out.past_key_values

            def step(tok_N, rows_N):
                state["cache"].reorder_cache(rows_N)
                state["mask"] = torch.cat([state["mask"][rows_N], torch.ones_like(state["mask"][:, :1])], 1)
                state["pos"] = state["pos"][rows_N] + 1
                o = lm(input_ids=tok_N[:, None], attention_mask=state["mask"], position_ids=state["pos"],
                       cache=state["cache"], use_cache=True)
                return o.logits[:, -1]

            new_ids = beam_search(out.logits[:, -1], step, B, K, self.max_new_tokens,
                                  eos_id=self.model.eoc_token_id, pad_id=self.tok.pad_token_id,
                                  length_penalty=self.length_penalty)
        finally:
            lm.clear_conditioned_layers()
            lm._use_cached_vision_x = False
        return [self.tok.decode(ids, skip_special_tokens=True) for ids in new_ids]

    def caption(self, images_BCHW: torch.Tensor, labels: list[str]) -> list[str]:
        """Few-shot captions: demos "<image>{caption}.<|endofchunk|>" then "<image>an image of a {label} "; the
        text is prefix + continuation, cut at the first '.' after the prefix, as the reference's
        open_flamingo_*.py do."""
        query = self.encode_media(images_BCHW)[:, None]  # (B, 1, n, d)
        demo = self.demo_media()
        media = query if demo is None else torch.cat([demo[None].expand(len(labels), *demo.shape), query], 1)
        prefixes = [self.prompt.format(label=lab) for lab in labels]
        conts = self.generate([self.demo_text + "<image>" + p for p in prefixes], media)
        return [clean_caption(p + c, keep_prefix=p) for p, c in zip(prefixes, conts)]

    def ask(self, images_BCHW: torch.Tensor, question: str) -> list[str]:
        media = self.encode_media(images_BCHW)[:, None]
        conts = self.generate([QUESTION_FORMAT.format(question=question)] * media.shape[0], media)
        return [c.strip() for c in conts]


def load_flamingo_captioner(lm_path: str, vision: str = "ViT-L-14", vision_pretrained: str | None = None,
                            checkpoint: str | None = None, tokenizer_path: str | None = None,
                            cross_attn_every_n_layers: int = 4, decoder_layers_attr_name: str | None = None,
                            trust_remote_code: bool = False, device="cpu", dtype=torch.float32, demos=(),
                            **gen) -> FlamingoCaptioner:
    """Flamingo from local files: LM folder (+ tokenizer), open_clip tower and the OpenFlamingo checkpoint."""
    from transformers import AutoModelForCausalLM

    require_open_flamingo()
    tok = flamingo_tokenizer(tokenizer_path or lm_path, trust_remote_code=trust_remote_code)
    lm = AutoModelForCausalLM.from_pretrained(lm_path, local_files_only=True, trust_remote_code=trust_remote_code)
    model, _ = build_flamingo(open_clip_vision(vision, vision_pretrained), lm, tok, cross_attn_every_n_layers,
                              decoder_layers_attr_name)
    if checkpoint:
        sd = load_state(checkpoint)
        res = model.load_state_dict(sd, strict=False)
        if len(res.unexpected_keys) == len(sd):
            raise ValueError(f"{checkpoint}: none of its {len(sd)} tensors match this Flamingo "
                             f"(e.g. {res.unexpected_keys[:3]}); check cross_attn_every_n_layers and the LM")
    return FlamingoCaptioner(model, tok, device, dtype, demos=demos, **gen)
