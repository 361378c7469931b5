"""The config sections of `digin neurons`: the keys every mode takes (NeuronArgs) and one Config per mode, each
built from the shared sections (digin.stages.args) it runs with. `NeuronArgs.variant(overrides)` picks the mode's
Config, so a mode's required keys are required fields and a key of another mode is refused by name."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from digin.engine.edit import MaskBlendParams, P2PParams
from digin.engine.segment import SegmentationConfig
from digin.engine.objectives import NEURON_LOSSES
from digin.fields import ANY, COUNT, COUNT0, MISSING, NONNEG, Int, key, refuse, section
from digin.stages.args import (ClassifierArgs, ComputeArgs, GuidanceArgs, ModelArgs, ObjectiveArgs, StageIO,
                               WorkArgs)
from digin.stages.edits import EditArgs

REFERENCE_CLASSIFIER = "seresnet152d.ra2_in1k"
MODES = ("activations", "merge", "name", "search", "visualise", "counterfactuals", "spurious", "similar",
         "spurious_check")


def _cf_p2p():
    return P2PParams(do_p2p=True, xa_interpolation_schedule=["threshold_0.0_0.3"])


def _cf_blend():  # keep the object (foreground), let the rest change
    return MaskBlendParams(do_mask_blend=True, foreground_blend=True, initial_mask_blend_schedule=["threshold_0.3"])


def _cf_segmentation():
    return SegmentationConfig(sam_segmentation=False)


# ------------------------------------------------------------------------------------- one section per mode
@dataclass
class NeuronArgs(StageIO, ClassifierArgs):
    """Keys of every mode."""

    SECTION = "neurons (every mode)"
    TASK = "neurons"
    mode: str = key("activations", "|".join(MODES), choices=MODES, results=False)
    out: str = key(MISSING, "the neuron folder every mode reads from / writes into", results=False)
    classifier: str = key(REFERENCE_CLASSIFIER, "the classifier whose neurons are explained (timm name, hf:, ...)")
    layer: Optional[str] = key(None, "module whose output is the neuron layer; None = input of the final linear layer")
    neurons: list = key([], "neuron indices; [] = the reference list (seresnet152d) or all features", each=COUNT0)

    @classmethod
    def variant(cls, overrides: list[str]):
        """The Config of the `mode=` among the overrides (default activations)."""
        modes = [o.split("=", 1)[1] for o in overrides if o.startswith("mode=")]
        mode = modes[-1] if modes else "activations"
        if mode not in MODES:
            raise SystemExit(f"digin neurons: mode={mode!r} is not allowed (allowed: one of {', '.join(MODES)})")
        return MODE_CONFIGS[mode]

    @classmethod
    def key_elsewhere(cls, name: str) -> str | None:
        """`k is a key of mode=activations, not of mode=visualise`: for a key another mode takes."""
        own = cls.__dataclass_fields__
        modes = [m for m, c in MODE_CONFIGS.items() if name in c.__dataclass_fields__ and name not in own]
        here = cls.__dataclass_fields__["mode"].default
        return f"{name} is a key of neurons mode={'|'.join(modes)}, not of mode={here}" if modes else None


@dataclass
class ActivationsConfig(ComputeArgs, NeuronArgs):
    SECTION = "mode=activations (top-k activating images per neuron; merges when one rank)"
    mode: str = key("activations", "activations", choices=("activations",), results=False)
    images: str = key(MISSING, "image shard set", results=False)
    center_crop: bool = key(True, "the reference's Resize(1.25·res)+CenterCrop(res) before the classifier")
    k: int = key(20, "top images kept per neuron", rule=COUNT)
    activation_batch_size: int = key(128, "images per classifier forward", rule=COUNT, results=False)
    rank: Optional[int] = key(None, "this rank (default: RANK / SLURM_PROCID)", rule=COUNT0, results=False)
    world: Optional[int] = key(None, "number of ranks (default: WORLD_SIZE / SLURM_NTASKS)", rule=COUNT,
                               results=False)

    def check_relations(self, prefix: str = ""):
        if self.rank is not None and self.world is not None and self.rank >= self.world:
            refuse("rank", self.rank, f"an integer in [0, world-1={self.world - 1}]")


@dataclass
class MergeConfig(NeuronArgs):
    SECTION = "mode=merge (the ranks' top-k files into one, top images per chosen neuron)"
    mode: str = key("merge", "merge", choices=("merge",), results=False)
    images: Optional[str] = key(None, "image shard set (default: the one the activations read)", results=False)


@dataclass
class NameConfig(NeuronArgs):
    SECTION = "mode=name (words for each neuron from its top images)"
    mode: str = key("name", "name", choices=("name",), results=False)
    images: Optional[str] = key(None, "image shard set (default: the one the activations read)", results=False)
    name_backend: str = key("template", "template (class labels of the top images) | given (words=/words_file=) | "
                                        "vlm (digin.caption.ask_objects)", choices=("template", "given", "vlm"))
    num_images_to_label: int = key(5, "top images named per neuron", rule=COUNT)
    words: dict = key({}, "name_backend=given: neuron → [words] or {word: count}")
    words_file: Optional[str] = key(None, "name_backend=given: JSON file of the same")
    vlm_backend: str = key("hf", "name_backend=vlm: digin.caption.ask_objects(backend=...)")
    vlm_options: dict = key({}, "name_backend=vlm: its other arguments (model_path, device, dtype, ...)")


@dataclass
class SearchConfig(ComputeArgs, ModelArgs, NameConfig):
    SECTION = "mode=search (rank each neuron's candidate words by the activation of SD samples)"
    mode: str = key("search", "search", choices=("search",), results=False)
    seed: int = key(42, "start noise of the word samples", rule=Int(0, 2 ** 63 - 1))
    num_ddim_steps: int = key(20, "sampling steps", rule=Int(1, 1000))
    prompt_template: str = key("a photograph of a", 'prompts "<prompt_template> <word>"')
    min_word_count: int = key(1, "candidate words: named at least this often", rule=COUNT0)
    max_words: Optional[int] = key(None, "candidate words per neuron, most frequent first (None: all)", rule=COUNT)
    images_per_word: int = key(8, "SD samples per candidate word", rule=COUNT)
    search_guidance_scale: float = key(7.5, "guidance of the word samples (the SD pipeline's default, as the "
                                            "reference)", rule=NONNEG)
    sd_batch_size: int = key(8, "SD samples generated together", rule=COUNT, results=False)


@dataclass
class VisualiseConfig(WorkArgs, GuidanceArgs, SearchConfig):
    SECTION = "mode=visualise (DiG-IN maximisation of each neuron from its top word)"
    mode: str = key("visualise", "visualise", choices=("visualise",), results=False)
    num_images: int = key(10, "visualisations per neuron", rule=COUNT)
    wait_s: float = key(3600.0, "ranks > 0 wait this long for rank 0's word search", rule=NONNEG, results=False)
    target_class: int = key(0, "class of the *_plus_log_confidence losses", rule=COUNT0)
    loss: str = key("neuron_activation", "(neg_)neuron_activation | (neg_)neuron_activation_plus_log_confidence",
                    choices=NEURON_LOSSES)
    loss_weight: float = key(1.0, "weight of the loss", rule=ANY)


@dataclass
class NeuronEditArgs(EditArgs):
    """The edit of the counterfactual and spurious modes: a neuron loss, the object kept."""

    SECTION = "neuron edit (the loss on the neuron, the object's words, masks and blending)"
    loss: str = key("neuron_activation", "a neuron loss (digin.engine.objectives.LOSSES)", choices=NEURON_LOSSES)
    foreground_words: dict = key({}, "label → words of the object (adds to neurons.json's replacements)")
    segmentation: SegmentationConfig = section(_cf_segmentation, "attention masks only (no SAM)")
    p2p: P2PParams = section(_cf_p2p, "one cross-attention schedule (spurious: no Prompt-to-Prompt, only checked)")
    mask_blend: MaskBlendParams = section(_cf_blend, "keep the object, let the rest change")


@dataclass
class CounterfactualsConfig(WorkArgs, ComputeArgs, NeuronEditArgs, ObjectiveArgs, GuidanceArgs, ModelArgs,
                            NeuronArgs):
    SECTION = "mode=counterfactuals (edit real images until a neuron fires)"
    mode: str = key("counterfactuals", "counterfactuals", choices=("counterfactuals",), results=False)
    images: str = key(MISSING, "image shard set", results=False)
    inversions: str = key(MISSING, "inversion shard set (digin invert)", results=False)
    pairs: list = key([], "[[class, neuron], ...]; [] = the reference's 14 Madry-L2 pairs")
    num_images_per_pair: Optional[int] = key(None, "seeded subset of the class's images (None: all)", rule=COUNT)


@dataclass
class SpuriousConfig(WorkArgs, ComputeArgs, NeuronEditArgs, ObjectiveArgs, GuidanceArgs, ModelArgs, NeuronArgs):
    SECTION = "mode=spurious (txt2img per (class, neuron), the object kept, the rest optimised)"
    mode: str = key("spurious", "spurious", choices=("spurious",), results=False)
    pairs: list = key([], "[[class, neuron], ...]; [] = the reference's 14 pairs")
    pairs_file: Optional[str] = key(None, "JSON list [[class, neuron], ...] (in place of pairs=)")
    class_names: list = key([], "[] = ImageNet's (first synonym), as the reference's IDX2NAME")
    prompt_template: str = key("a photograph of a", 'prompts "<prompt_template> <label>"')
    num_images: int = key(10, "images per pair", rule=COUNT)


@dataclass
class SimilarConfig(ComputeArgs, NeuronArgs):
    SECTION = "mode=similar (every group neuron's activation on the group's visualisations)"
    mode: str = key("similar", "similar", choices=("similar",), results=False)
    target_neurons: list = key([], "[[n, ...], ...] or default group indices; [] = the reference's four groups")
    results: Optional[str] = key(None, "result shard set of the visualisations (default out/visualise)",
                                 results=False)
    activation_batch_size: int = key(128, "images per classifier forward", rule=COUNT, results=False)


@dataclass
class SpuriousCheckConfig(WorkArgs, NeuronArgs):
    SECTION = "mode=spurious_check (VLM yes/no: is the class object in the image?)"
    mode: str = key("spurious_check", "spurious_check", choices=("spurious_check",), results=False)
    images: Optional[str] = key(None, "image shard set (or results=)", results=False)
    results: Optional[str] = key(None, "result shard set (or images=)", results=False)
    question: str = key("Does this image contain a {label}? Please only answer with yes or no.",
                        "the question, {label} = the class name")
    check_members: list = key(["ours"], "results: which images to ask about (sd, ours)")
    class_id_field: Optional[int] = key(None, "class id = int(folder name.split('_')[field]) (Spurious ImageNet: 2)",
                                        rule=COUNT0)
    vlm_resolution: Optional[int] = key(None, "Resize(1.25·res)+CenterCrop(res) before the VLM; None: as stored",
                                        rule=Int(8, 8192))
    class_names: list = key([], "[] = ImageNet's (first synonym)")
    vlm_backend: str = key("hf", "digin.caption backend of the VLM")
    vlm_options: dict = key({}, "its other arguments (model_path, device, dtype, ...)")
    batch_size: Optional[int] = key(None, "items per VLM batch (None: 8 on CUDA, 4 on a CPU)", rule=COUNT,
                                    results=False)


MODE_CONFIGS = {"activations": ActivationsConfig, "merge": MergeConfig, "name": NameConfig, "search": SearchConfig,
                "visualise": VisualiseConfig, "counterfactuals": CounterfactualsConfig, "spurious": SpuriousConfig,
                "similar": SimilarConfig, "spurious_check": SpuriousCheckConfig}


