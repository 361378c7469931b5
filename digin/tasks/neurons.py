"""Neuron pipeline (the reference's imagenet_cog_neuron_*.py): `digin neurons mode=<mode> out=<neuron folder> ...`.

  mode=activations  images=<shards> classifier=seresnet152d.ra2_in1k [layer=<module>] k=20
                    every rank (torchrun / srun) streams its shards into a per-neuron top-k and writes
                    out/topk-rank<r>.safetensors; with one rank the merge follows at once.
  mode=merge        out/topk-rank*.safetensors → out/topk.safetensors + out/neuron_<n>_top_images.json
                    ({neuron, images: [{key, activation, id}]}) for the chosen neurons.
  mode=name         words for each neuron's top `num_images_to_label` images → out/neuron_words.json;
                    name_backend=template (class labels of the top images) | given (words=… / words_file=…)
                    | vlm (digin.caption.ask_objects, see digin/neurons/words.py).
  mode=search       candidate words (count ≥ min_word_count) → `images_per_word` SD samples each of
                    "<prompt_template> <word>", mean activation → out/word_search.json (ranked words per neuron).
  mode=visualise    (runs the search first if out/word_search.json is missing) DiG-IN maximisation of each neuron
                    from per-(neuron, i) start noise with "<prompt_template> <top word>", loss `loss`
                    → result shards out/visualise (a work plan of (neuron, i) items; resumes, splits over ranks).
  mode=counterfactuals  images=<shards> inversions=<digin invert output> pairs=[[class, neuron], ...]
                    → result shards out/counterfactuals (see digin/neurons/counterfactuals.py).
  mode=spurious     (imagenet_neuron_activation.py) txt2img "<prompt_template> <label>" per (class, neuron) pair
                    and i < num_images, loss `loss` on the neuron, foreground mask blend 'threshold_0.3' (keeps the
                    object, optimises the rest: the neuron's spurious feature) → result shards out/spurious, keys
                    spurious/c<class>_n<neuron>/i<i>. pairs=[[class, neuron], ...] or pairs_file=<JSON list>;
                    labels from class_names=[...] (default: ImageNet). See digin/neurons/spurious.py.
  mode=similar      (imagenet_cog_compare_similar_neurons.py) for each group of target_neurons=[[n, ...], ...]
                    (default: the reference's four groups; an integer picks a default group) every group neuron's
                    activation on every `ours` image of the group's visualisations (results=, default
                    out/visualise) → out/similar_neurons/<n1>_<n2>_....png (grid) + .json (activation matrix).
  mode=spurious_check  (cog_spurious_imagenet.py) VLM yes/no `question` for every image of images=<shards> or
                    every checked member (check_members) of results=<result shards> → shard set
                    out/spurious_check (answer.json + image.jpg) and out/spurious_check.json (per-class and total
                    yes-fractions); vlm_backend / vlm_options as for name_backend=vlm (tests: a tiny BLIP).

Neurons: `neurons=[...]`, else the reference's 77 SE-ResNet-152d neurons (digin/data/neurons.json) when the
classifier is seresnet152d at its penultimate layer, else every feature. Pairs (counterfactuals, spurious) default
to the reference's 14 Madry-L2 (class, neuron) pairs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from digin.engine.edit import MaskBlendParams, P2PParams
from digin.engine.segment import SegmentationConfig
from digin.neurons import modes as M
from digin.neurons.modes import REFERENCE_CLASSIFIER
from digin.stages.args import CommonArgs
from digin.stages.models import pick_device, stage_compute

MODES = ("activations", "merge", "name", "search", "visualise", "counterfactuals", "spurious", "similar",
         "spurious_check")


def _cf_p2p():
    return P2PParams(do_p2p=True, xa_interpolation_schedule=["threshold_0.0_0.3"])


def _cf_blend():  # keep the object (foreground), let the rest change
    return MaskBlendParams(do_mask_blend=True, foreground_blend=True, initial_mask_blend_schedule=["threshold_0.3"])


def _cf_segmentation():
    return SegmentationConfig(sam_segmentation=False)


@dataclass
class Config(CommonArgs):
    mode: str = "activations"  # activations|merge|name|search|visualise|counterfactuals|spurious|similar|spurious_check
    model_path: str = ""  # SD model: needed by search, visualise, counterfactuals and spurious
    out: str = "???"  # the neuron folder every mode reads from / writes into
    images: Optional[str] = None  # image shard set (activations, name, counterfactuals)
    inversions: Optional[str] = None  # inversion shard set (counterfactuals)
    classifier: str = REFERENCE_CLASSIFIER
    classifier_checkpoint: Optional[str] = None
    layer: Optional[str] = None  # module whose output is the neuron layer; None = input of the final linear layer
    neurons: list = field(default_factory=list)  # [] = reference list (seresnet152d) or all features
    # activations
    k: int = 20
    activation_batch_size: int = 128
    rank: Optional[int] = None  # default: RANK / SLURM_PROCID
    world: Optional[int] = None  # default: WORLD_SIZE / SLURM_NTASKS
    # naming
    name_backend: str = "template"  # template | given | vlm
    num_images_to_label: int = 5
    words: dict = field(default_factory=dict)  # given backend: neuron → [words] or {word: count}
    words_file: Optional[str] = None  # given backend: JSON file of the same
    vlm_backend: str = "hf"  # digin.caption.ask_objects(backend=...)
    vlm_options: dict = field(default_factory=dict)  # its other arguments: model_path, device, dtype, ...
    # word search + visualisation (stage 2)
    prompt_template: str = "a photograph of a"
    min_word_count: int = 1
    max_words: Optional[int] = None  # per neuron, most frequent first
    images_per_word: int = 8
    search_guidance_scale: float = 7.5  # the reference searches with the SD pipeline's default
    sd_batch_size: int = 8
    num_images: int = 10  # visualisations per neuron
    wait_s: float = 3600.0  # ranks > 0 wait this long for rank 0's word search + work list
    target_class: int = 0  # class used by *_plus_log_confidence losses in visualise
    loss: str = "neuron_activation"  # (neg_)neuron_activation | (neg_)neuron_activation_plus_log_confidence
    loss_weight: float = 1.0
    regularizers: list = field(default_factory=list)
    regularizers_ws: list = field(default_factory=list)
    # counterfactuals
    pairs: list = field(default_factory=list)  # [[class, neuron], ...] (also spurious); [] = the reference's 14
    num_images_per_pair: Optional[int] = None  # seeded subset of the class's images; None = all
    foreground_words: dict = field(default_factory=dict)  # label → words (adds to neurons.json's replacements)
    # spurious (txt2img pairs; also num_images, prompt_template, pairs, mask_blend, segmentation)
    pairs_file: Optional[str] = None  # JSON list [[class, neuron], ...] (in place of pairs=)
    class_names: list = field(default_factory=list)  # [] = ImageNet's (first synonym), as the reference's IDX2NAME
    # similar (neuron groups side by side)
    target_neurons: list = field(default_factory=list)  # [[n, ...], ...] or default group indices; [] = all four
    results: Optional[str] = None  # result shard set: similar (default out/visualise), spurious_check
    # spurious_check (VLM yes/no; also vlm_backend, vlm_options, images, results, class_names)
    question: str = "Does this image contain a {label}? Please only answer with yes or no."
    check_members: list = field(default_factory=lambda: ["ours"])  # results: which images to ask about (sd, ours)
    class_id_field: Optional[int] = None  # class id = int(folder name.split('_')[field]) (Spurious ImageNet: 2)
    vlm_resolution: Optional[int] = None  # Resize(1.25·res)+CenterCrop(res) before the VLM; None: as stored
    segmentation: SegmentationConfig = field(default_factory=_cf_segmentation)
    p2p: P2PParams = field(default_factory=_cf_p2p)
    mask_blend: MaskBlendParams = field(default_factory=_cf_blend)


def run(cfg: Config) -> int:
    if cfg.mode not in MODES:
        raise SystemExit(f"digin neurons: mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    if cfg.mode not in ("merge", "name", "spurious_check"):  # modes that run SD / classifiers: compute preset first
        stage_compute(cfg, pick_device(cfg))
    if cfg.mode == "search":
        M.run_search(cfg)
        return 0
    if cfg.mode in ("spurious", "similar", "spurious_check"):
        from digin.neurons import similar, spurious, vlm_check

        return {"spurious": spurious.run_spurious, "similar": similar.run_similar,
                "spurious_check": vlm_check.run_spurious_check}[cfg.mode](cfg)
    return {"activations": M.run_activations, "merge": M.run_merge, "name": M.run_name,
            "visualise": M.run_visualise, "counterfactuals": M.run_counterfactuals}[cfg.mode](cfg)
