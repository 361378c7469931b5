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

from dataclasses import asdict, dataclass, field
from typing import Optional

from digin.caption.hf import CAPTION_INSTRUCTION
from digin.stages.args import SelectArgs, WorkArgs
from digin.stages.caption import caption_source, make_process


@dataclass
class FlamingoArgs:
    lm_path: Optional[str] = None           # local LM folder (OpenFlamingo-9B: mpt-7b)
    tokenizer_path: Optional[str] = None    # default: lm_path
    vision: str = "ViT-L-14"                # open_clip model name or JSON model config
    vision_pretrained: Optional[str] = None  # local open_clip weights file (ViT-L-14 openai)
    checkpoint: Optional[str] = None        # OpenFlamingo checkpoint.pt / .safetensors
    cross_attn_every_n_layers: int = 4      # 9B: 4
    decoder_layers_attr_name: Optional[str] = None  # default: found from the LM
    trust_remote_code: bool = False
    prompt: str = "an image of a {label} "  # the reference's query prefix (trailing space included)
    demos: Optional[str] = None             # demo set name or JSON; default: the dataset's set
    demo_images: Optional[str] = None       # train-split shard set (or folder of <index>.png) holding the demos
    num_demos: Optional[int] = None         # None: all (ImageNet 24, CUB 23, Cars 26, Food 20, Flowers 20)


@dataclass
class HFArgs:
    model_path: Optional[str] = None        # local transformers model folder (BLIP, BLIP-2, LLaVA-style, ...)
    trust_remote_code: bool = False         # CogVLM-style models with custom code: only if you trust the folder
    mode: str = "auto"                      # prefix | instruct | auto (instruct when the processor has a chat template)
    prompt: str = "an image of a {label}"
    instruction: str = CAPTION_INSTRUCTION


@dataclass
class Config(SelectArgs, WorkArgs):
    inputs: str = "???"                     # image shard set (digin shard output)
    out: str = "???"                        # caption shard set folder
    backend: str = "template"               # template | open_flamingo | hf | import
    dataset: Optional[str] = None           # picks template and demos; default: the shard set's source
    template: Optional[str] = None          # fallback template override, e.g. "a photo of a {label}"
    import_dir: Optional[str] = None        # backend=import: folder of <idx>_prompt.txt files
    resolution: int = 224                   # Resize(1.25·res)+CenterCrop(res) before the model (reference: 224)
    batch_size: int = 8
    num_beams: int = 3
    max_new_tokens: int = 20
    dtype: str = "fp32"                     # model weights: fp32 | bf16 | fp16
    on_error: str = "raise"                 # raise | fallback (template caption, reason recorded)
    flamingo: FlamingoArgs = field(default_factory=FlamingoArgs)
    hf: HFArgs = field(default_factory=HFArgs)
    device: Optional[str] = None            # default: cuda:<local rank> if available, else cpu
    num_workers: int = 0
    force: bool = False
    allow_incomplete: bool = False          # plan over the committed shards of an incomplete input only
    progress: bool = True


def stage_config(cfg: Config, dataset: str) -> dict:
    """What changes the captions (recorded in the manifest; resuming with other settings is refused)."""
    c = {"stage": "caption", "backend": cfg.backend, "dataset": dataset, "template": cfg.template}
    if cfg.backend == "import":
        c["import_dir"] = cfg.import_dir
    if cfg.backend in ("open_flamingo", "hf"):
        c.update(resolution=cfg.resolution, num_beams=cfg.num_beams, max_new_tokens=cfg.max_new_tokens,
                 dtype=cfg.dtype)
        c[cfg.backend] = asdict(cfg.flamingo if cfg.backend == "open_flamingo" else cfg.hf)
    return c


def build_spec(cfg: Config):
    """The stage from the config and the input manifests alone (no sample read, no model)."""
    from digin.errors import ConfigError
    from digin.shards.runner import StageSpec
    from digin.stages.plans import dataset_of, image_stage_plan, load_inputs

    if cfg.backend not in ("template", "open_flamingo", "hf", "import"):
        raise ConfigError(f"backend={cfg.backend!r}: one of template, open_flamingo, hf, import")
    if cfg.on_error not in ("raise", "fallback"):
        raise ConfigError(f"on_error={cfg.on_error!r}: one of raise, fallback")
    inputs, incomplete = load_inputs({"images": cfg.inputs}, cfg.allow_incomplete)
    images = inputs[0][1]
    dataset = cfg.dataset or images.meta.get("source") or images.name
    needs_pixels = cfg.backend in ("open_flamingo", "hf")
    return StageSpec("caption", image_stage_plan("caption", cfg, inputs, dataset_of(cfg, images)),
                     stage_config(cfg, dataset), inputs, resolution=cfg.resolution if needs_pixels else None,
                     required=("image", "meta") if needs_pixels else ("meta",), incomplete=incomplete,
                     fields=None if needs_pixels else ("meta", "caption"))  # template / import: no image decode


def run(cfg: Config):
    import torch

    from digin.stages.plans import run_or_show

    spec = build_spec(cfg)
    dataset = spec.record["dataset"]
    device = torch.device(cfg.device) if cfg.device else None
    if device is None and not cfg.plan:
        from digin.shards.dist import device_for_local_rank

        device = device_for_local_rank()

    def load():
        captioner, imported = caption_source(cfg, dataset, device)
        return make_process(cfg, dataset, captioner, imported)

    return run_or_show(cfg, spec, load, device=device)
