"""Tiny randomly initialised captioners for the tests, saved in the same layouts the loaders read:
a Flamingo (tiny open_clip ViT + tiny GPT-NeoX, byte-level tokenizer) and a BLIP (tiny BERT WordPiece vocab)."""
from __future__ import annotations

import json
import string
from pathlib import Path

FLAMINGO_SPECIAL = ["<|endofchunk|>", "<image>"]


def byte_level_tokenizer(out_dir=None, extra_special=()):
    """GPT-2-style byte-level BPE with no merges (256 byte tokens + <|endoftext|>): encodes any text exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  unk_token="<|endoftext|>", model_max_length=2048)
    if extra_special:
        tok.add_special_tokens({"additional_special_tokens": list(extra_special)})
    if out_dir is not None:
        tok.save_pretrained(out_dir)
    return tok


def tiny_clip_config(image_size: int = 32) -> dict:
    return {"embed_dim": 16,
            "vision_cfg": {"image_size": image_size, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
            "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}


def save_tiny_flamingo(out, seed: int = 0, image_size: int = 32, hidden: int = 32, layers: int = 2,
                       cross_attn_every_n_layers: int = 1) -> Path:
    """out/lm (GPT-NeoX + tokenizer with the Flamingo special tokens), out/vision.json (open_clip model config),
    out/checkpoint.safetensors (the whole Flamingo state dict). Returns out."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from digin.caption.flamingo import build_flamingo, flamingo_tokenizer, open_clip_vision

    out = Path(out)
    (out / "lm").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    byte_level_tokenizer(out / "lm")
    tok = flamingo_tokenizer(out / "lm")
    cfg = GPTNeoXConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=2048, rotary_pct=1.0,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    GPTNeoXForCausalLM(cfg).save_pretrained(out / "lm")
    (out / "vision.json").write_text(json.dumps(tiny_clip_config(image_size)))
    model, _ = build_flamingo(open_clip_vision(str(out / "vision.json"), None),
                              GPTNeoXForCausalLM.from_pretrained(out / "lm", local_files_only=True), tok,
                              cross_attn_every_n_layers=cross_attn_every_n_layers)
    with torch.no_grad():  # the real gates start at 0 (image ignored); open them so images change the text
        for p_name, p in model.named_parameters():
            if p_name.endswith("_gate"):
                p.fill_(1.0)
    from safetensors.torch import save_file

    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
              str(out / "checkpoint.safetensors"))
    return out


def save_tiny_blip(out, seed: int = 0, image_size: int = 32, words=("an", "image", "of", "a", "the")) -> Path:
    """BlipForConditionalGeneration + BlipProcessor (BERT WordPiece over a-z, 0-9 and `words`) in `out`."""
    import torch
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    chars = list(string.ascii_lowercase + string.digits) + list(".,[]-'")
    vocab = special + chars + ["##" + c for c in chars] + [w for w in words if w not in chars]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(str(out / "vocab.txt"), do_lower_case=True, model_max_length=256)
    tok.bos_token = "[DEC]"
    proc = BlipProcessor(image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
                         tokenizer=tok)
    torch.manual_seed(seed)
    ids = {t: i for i, t in enumerate(vocab)}
    cfg = BlipConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=256,
                                      bos_token_id=ids["[DEC]"], eos_token_id=ids["[SEP]"],
                                      sep_token_id=ids["[SEP]"], pad_token_id=ids["[PAD]"]),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=image_size, patch_size=8),
                     projection_dim=32)
    BlipForConditionalGeneration(cfg).save_pretrained(out)
    proc.save_pretrained(out)
    return out
