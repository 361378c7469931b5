"""Any local transformers image-to-text / image-text-to-text model as captioner and VLM (BLIP, BLIP-2,
LLaVA-style chat models, ...). Local files only; remote code only when the config says trust_remote_code=true.

Prompting: `prefix` mode (captioners such as BLIP) forces "an image of a {label}" and appends the continuation;
`instruct` mode (chat VLMs, chosen automatically when the processor has a chat template) asks the reference's
CogAgent caption instruction and keeps the answer. Samples are batched per prompt length, so no row is ever
padded and a sample's caption does not depend on its batch."""
from __future__ import annotations

import numpy as np
import torch

from digin.caption.labels import clean_caption

CAPTION_INSTRUCTION = ("Caption the following image containing a {label} in a short single sentence. The answer "
                       "has to contain the object {label}. Keep the answer a short as possible.")
QUESTION_FORMAT = "Question: {question} Answer:"


def load_hf_model(path: str, trust_remote_code: bool = False, device="cpu", dtype=torch.float32):
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    cfg = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    kw = dict(local_files_only=True, trust_remote_code=trust_remote_code, dtype=dtype)
    if cfg.model_type == "vision-encoder-decoder":
        from transformers import VisionEncoderDecoderModel

        model = VisionEncoderDecoderModel.from_pretrained(path, **kw)
    else:
        try:
            model = AutoModelForImageTextToText.from_pretrained(path, **kw)
        except ValueError:
            if not trust_remote_code:
                raise
            from transformers import AutoModelForCausalLM  # remote-code VLMs register as causal LMs

            model = AutoModelForCausalLM.from_pretrained(path, **kw)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    return model.to(device).eval(), processor


def _prompt_strip_len(out_ids: torch.Tensor, in_ids: torch.Tensor) -> int:
    """How many leading output tokens echo the prompt: all of it (decoder-only VLMs), all but the first and last
    (BLIP swaps the first token for BOS and drops the final [SEP]), or none (encoder-decoder)."""
    L = in_ids.shape[-1]
    if out_ids.shape[-1] >= L and torch.equal(out_ids[..., :L], in_ids):
        return L
    if L >= 2 and out_ids.shape[-1] >= L - 1 and torch.equal(out_ids[..., 1:L - 1], in_ids[..., 1:L - 1]):
        return L - 1
    return 0


class HFCaptioner:
    name = "hf"

    def __init__(self, model, processor, device, mode: str = "auto", prompt: str = "an image of a {label}",
                 instruction: str = CAPTION_INSTRUCTION, question_format: str = QUESTION_FORMAT,
                 num_beams: int = 3, max_new_tokens: int = 20):
        self.model, self.proc, self.device = model, processor, device
        has_chat = bool(getattr(processor, "chat_template", None))
        self.mode = ("instruct" if has_chat else "prefix") if mode == "auto" else mode
        if self.mode not in ("prefix", "instruct"):
            raise ValueError(f"hf mode must be auto, prefix or instruct, got {mode!r}")
        self.chat = has_chat
        self.prompt, self.instruction, self.question_format = prompt, instruction, question_format
        self.num_beams, self.max_new_tokens = num_beams, max_new_tokens
        self.dtype = next(model.parameters()).dtype

    def _text(self, user_text: str) -> str:
        if not self.chat:
            return user_text
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]}]
        return self.proc.apply_chat_template(msgs, add_generation_prompt=True)

    @torch.no_grad()
    def generate(self, images_BCHW: torch.Tensor, texts: list[str]) -> list[str]:
        """Decoded continuation of each (image, text); rows with equal processed length run as one batch."""
        ims = [np.ascontiguousarray(im.permute(1, 2, 0).cpu().numpy()) for im in images_BCHW]
        enc = [self.proc(images=[im], text=[t], return_tensors="pt") for im, t in zip(ims, texts)]
        groups: dict[int, list[int]] = {}
        for i, e in enumerate(enc):
            groups.setdefault(int(e["input_ids"].shape[-1]), []).append(i)
        out: list[str] = [""] * len(texts)
        for rows in groups.values():
            batch = {k: torch.cat([enc[i][k] for i in rows]).to(self.device) for k in enc[rows[0]]}
            if "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
            ids = self.model.generate(**batch, num_beams=self.num_beams, max_new_tokens=self.max_new_tokens,
                                      do_sample=False)
            for j, i in enumerate(rows):
                n = _prompt_strip_len(ids[j], batch["input_ids"][j])
                out[i] = self.proc.decode(ids[j, n:], skip_special_tokens=True)
        return out

    def caption(self, images_BCHW: torch.Tensor, labels: list[str]) -> list[str]:
        if self.mode == "prefix":
            prefixes = [self.prompt.format(label=lab) for lab in labels]
            conts = self.generate(images_BCHW, [self._text(p) for p in prefixes])
            # the continuation is appended as a new word: a WordPiece "##x" or BPE piece must not glue onto the label
            return [clean_caption(p + " " + c.lstrip("#"), keep_prefix=p) for p, c in zip(prefixes, conts)]
        answers = self.generate(images_BCHW, [self._text(self.instruction.format(label=lab)) for lab in labels])
        return [clean_caption(a, cut_at_period=True) for a in answers]

    def ask(self, images_BCHW: torch.Tensor, question: str) -> list[str]:
        text = self._text(question if self.chat else self.question_format.format(question=question))
        return [a.strip() for a in self.generate(images_BCHW, [text] * len(images_BCHW))]
