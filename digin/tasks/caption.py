r"""Caption every image of a shard set (the reference's open_flamingo_*.py,
cog_caption_imagenet.py): one caption per key, always containing the class label.

  digin caption inputs=/data/shards/imagenet-val out=/data/captions/imagenet-val backend=template
  digin caption inputs=... out=... backend=open_flamingo flamingo.lm_path=/models/mpt-7b \
      flamingo.checkpoint=/models/OpenFlamingo-9B-vitl-mpt7b/checkpoint.pt \
      flamingo.vision_pretrained=/models/clip/ViT-L-14-openai.pt flamingo.demo_images=/data/shards/imagenet-train
  digin caption inputs=... out=... backend=hf hf.model_path=/models/blip2-opt-2.7b
  digin caption inputs=... out=... backend=import import_dir=/data/imagenet_captions   # <idx>_prompt.txt files

The work plan is the selected image keys (`select=`, as `digin invert`: all, the UVCE table's images, a keys
file, ...); one output sample per image, same key:
  caption.txt        the caption (what `digin invert captions=...` reads, field `caption`)
  caption_info.json  {backend, fallback: null or why the dataset template replaced the caption, raw, label}
Fallback reasons: empty, label_missing (the label must appear as a word sequence, the rule P2P relies on),
import_missing (no <idx>_prompt.txt for this index), backend_error:... (only with on_error=fallback).
Killed jobs resume: committed units are skipped (digin/shards/runner.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from typing import Optional

from digin.caption.hf import CAPTION_INSTRUCTION
from digin.engine.presets import DTYPES, resolve_compute
from digin.fields import COUNT, COUNT0, MISSING, Int, key, section
from digin.shards.dist import device_for_local_rank
from digin.shards.runner import StageSpec
from digin.stages.args import SelectArgs, StageIO, WorkArgs, record
from digin.stages.caption import caption_source, make_process
from digin.stages.plans import dataset_of, image_stage_plan, load_inputs, run_or_show

MODEL_BACKENDS = ("open_flamingo", "hf")  # the backends that run a model on the pixels


@dataclass
class FlamingoArgs:
    lm_path: Optional[str] = key(None, "local LM folder (OpenFlamingo-9B: mpt-7b)")
    tokenizer_path: Optional[str] = key(None, "local tokenizer folder (default: lm_path)")
    vision: str = key("ViT-L-14", "open_clip model name or JSON model config")
    vision_pretrained: Optional[str] = key(None, "local open_clip weights file (ViT-L-14 openai)")
    checkpoint: Optional[str] = key(None, "OpenFlamingo checkpoint.pt / .safetensors")
    cross_attn_every_n_layers: int = key(4, "a gated cross-attention layer every n LM layers (the checkpoint's; "
                                                "9B: 4)", rule=COUNT)
    decoder_layers_attr_name: Optional[str] = key(None, "dotted name of the LM's block list, e.g. "
                                                           "transformer.blocks (default: found from the LM)")
    trust_remote_code: bool = key(False, "let the LM / tokenizer folder run its own code: only if you trust the folder")
    prompt: str = key("an image of a {label} ", "the reference's query prefix (trailing space included)")
    demos: Optional[str] = key(None, "demo set name or JSON; default: the dataset's set")
    demo_images: Optional[str] = key(None, "train-split shard set (or folder of <index>.png) holding the demos")
    num_demos: Optional[int] = key(None, "None: all (ImageNet 24, CUB 23, Cars 26, Food 20, Flowers 20)", rule=COUNT0)


@dataclass
class HFArgs:
    model_path: Optional[str] = key(None, "local transformers model folder (BLIP, BLIP-2, LLaVA-style, ...)")
    trust_remote_code: bool = key(False, "CogVLM-style models with custom code: only if you trust the folder")
    mode: str = key("auto", "prefix | instruct | auto (instruct when the processor has a chat template)")
    prompt: str = key("an image of a {label}", "mode=prefix: the forced caption start the model continues")
    instruction: str = key(CAPTION_INSTRUCTION, "mode=instruct: the question asked ({label}: the class name)")


@dataclass
class Config(WorkArgs, StageIO, SelectArgs):
    inputs: str = key(MISSING, "image shard set (digin shard output)", results=False)
    out: str = key(MISSING, "caption shard set folder", results=False)
    backend: str = key("template", "template | open_flamingo | hf | import",
                       choices=("template", "open_flamingo", "hf", "import"))
    dataset: Optional[str] = key(None, "picks template and demos; default: the shard set's source")
    template: Optional[str] = key(None, 'fallback template override, e.g. "a photo of a {label}"')
    import_dir: Optional[str] = key(None, "backend=import: folder of <idx>_prompt.txt files",
                                    only_if=("backend", ("import",)))
    resolution: int = key(224, "Resize(1.25·res)+CenterCrop(res) before the model (reference: 224)",
                          rule=Int(1, 8192), only_if=("backend", MODEL_BACKENDS))
    batch_size: int = key(8, "images captioned together", rule=COUNT, results=False)
    num_beams: int = key(3, "beam search width", rule=COUNT, only_if=("backend", MODEL_BACKENDS))
    max_new_tokens: int = key(20, "longest caption in tokens", rule=COUNT, only_if=("backend", MODEL_BACKENDS))
    dtype: str = key("fp32", "model weights: fp32 | bf16 | fp16", choices=DTYPES, only_if=("backend", MODEL_BACKENDS))
    on_error: str = key("raise", "raise | fallback (template caption, reason recorded)", choices=("raise", "fallback"),
                        results=False)
    flamingo: FlamingoArgs = section(FlamingoArgs, "backend=open_flamingo", only_if=("backend", ("open_flamingo",)))
    hf: HFArgs = section(HFArgs, "backend=hf", only_if=("backend", ("hf",)))


def build_spec(cfg: Config):
    """The stage from the config and the input manifests alone (no sample read, no model)."""
    inputs, incomplete = load_inputs({"images": cfg.inputs}, cfg.allow_incomplete)
    images = inputs[0][1]
    dataset = cfg.dataset or images.meta.get("source") or images.name
    needs_pixels = cfg.backend in MODEL_BACKENDS
    return StageSpec("caption", image_stage_plan("caption", cfg, inputs, dataset_of(cfg, images)),
                     record(cfg, "caption", dataset=dataset), inputs,
                     resolution=cfg.resolution if needs_pixels else None,
                     required=("image", "meta") if needs_pixels else ("meta",), incomplete=incomplete,
                     fields=None if needs_pixels else ("meta", "caption"))  # template / import: no image decode


def run(cfg: Config):
    spec = build_spec(cfg)
    dataset = spec.record["dataset"]
    device = torch.device(cfg.device) if cfg.device else None
    if device is None and not cfg.plan:
        device = device_for_local_rank()
    settings = resolve_compute("eager", device, batch_size=cfg.batch_size, dtype=cfg.dtype)

    def load():
        captioner, imported = caption_source(cfg, dataset, device)
        return make_process(cfg, dataset, captioner, imported)

    return run_or_show(cfg, spec, load, settings, device=device)
