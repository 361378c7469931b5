"""Neuron pipeline (the reference's imagenet_cog_neuron_*.py): `digin neurons mode=<mode> out=<neuron folder> ...`.

  mode=activations  images=<shards> classifier=seresnet152d.ra2_in1k [layer=<module>] k=20
                    every rank (torchrun / srun) streams its shards into a per-neuron top-k and writes
                    out/topk-rank<r>.safetensors; with one rank the merge follows at once.
  mode=merge        out/topk-rank*.safetensors → out/topk.safetensors + out/neuron_<n>_top_images.json
                    ({neuron, images: [{key, activation, id}]}) for the chosen neurons.
  mode=name         words for each neuron's top `num_images_to_label` images → out/neuron_words.json;
                    name_backend=template (class labels of the top images) | given (words=… / words_file=…)
                    | vlm (digin.caption.ask_objects, see digin/stages/neurons/words.py).
  mode=search       candidate words (count ≥ min_word_count) → `images_per_word` SD samples each of
                    "<prompt_template> <word>", mean activation → out/word_search.json (ranked words per neuron).
  mode=visualise    (runs the search first if out/word_search.json is missing) DiG-IN maximisation of each neuron
                    from per-(neuron, i) start noise with "<prompt_template> <top word>", loss `loss`
                    → result shards out/visualise (a work plan of (neuron, i) items; resumes, splits over ranks).
  mode=counterfactuals  images=<shards> inversions=<digin invert output> pairs=[[class, neuron], ...]
                    → result shards out/counterfactuals (see digin/stages/neurons/counterfactuals.py).
  mode=spurious     (imagenet_neuron_activation.py) txt2img "<prompt_template> <label>" per (class, neuron) pair
                    and i < num_images, loss `loss` on the neuron, foreground mask blend 'threshold_0.3' (keeps the
                    object, optimises the rest: the neuron's spurious feature) → result shards out/spurious, keys
                    spurious/c<class>_n<neuron>/i<i>. pairs=[[class, neuron], ...] or pairs_file=<JSON list>;
                    labels from class_names=[...] (default: ImageNet). See digin/stages/neurons/spurious.py.
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

from digin.stages.args import ComputeArgs
from digin.stages.models import pick_device, stage_compute
from digin.stages.neurons import modes as M
from digin.stages.neurons import similar, spurious, vlm_check
from digin.stages.neurons.args import MODE_CONFIGS, MODES, NeuronArgs  # noqa: F401  (the modes' Configs)

Config = NeuronArgs  # the CLI builds the mode's Config (NeuronArgs.variant)


def run(cfg: NeuronArgs) -> int:
    settings = stage_compute(cfg, pick_device(cfg.device)) if isinstance(cfg, ComputeArgs) else None
    runs = {"activations": M.run_activations, "merge": M.run_merge, "name": M.run_name, "search": M.run_search,
            "visualise": M.run_visualise, "counterfactuals": M.run_counterfactuals,
            "spurious": spurious.run_spurious, "similar": similar.run_similar,
            "spurious_check": vlm_check.run_spurious_check}
    out = runs[cfg.mode](cfg, settings) if settings is not None else runs[cfg.mode](cfg)
    return 0 if cfg.mode == "search" else out
