"""Neuron pipeline (REFERENCE §6): `digin neurons mode=<mode> out=<neuron folder> ...`.

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
                    → result shards out/visualise (work list out/visualise_worklist; resumes, splits over ranks).
  mode=counterfactuals  images=<shards> inversions=<digin invert output> pairs=[[class, neuron], ...]
                    → result shards out/counterfactuals (see digin/neurons/counterfactuals.py).

Neurons: `neurons=[...]`, else the reference's 77 SE-ResNet-152d neurons (digin/data/neurons.json) when the
classifier is seresnet152d at its penultimate layer, else every feature. Pairs default to the reference's 14
Madry-L2 (class, neuron) pairs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from digin.engine.edit import MaskBlendParams, P2PParams
from digin.engine.segment import SegmentationConfig
from digin.tasks.common import (COMPUTE_FIELDS, CommonArgs, guidance_config, load_classifier_for, load_sd_for, noise_scale_fn,
                                pick_device, stage_compute, tracking_for, uses_clip_regularizer)

MODES = ("activations", "merge", "name", "search", "visualise", "counterfactuals")
REFERENCE_CLASSIFIER = "seresnet152d.ra2_in1k"


def _cf_p2p():
    return P2PParams(do_p2p=True, xa_interpolation_schedule=["threshold_0.0_0.3"])


def _cf_blend():  # keep the object (foreground), let the rest change
    return MaskBlendParams(do_mask_blend=True, foreground_blend=True, initial_mask_blend_schedule=["threshold_0.3"])


def _cf_segmentation():
    return SegmentationConfig(sam_segmentation=False)


@dataclass
class Config(CommonArgs):
    mode: str = "activations"  # activations | merge | name | search | visualise | counterfactuals
    model_path: str = ""  # SD model: needed by search, visualise and counterfactuals
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
    pairs: list = field(default_factory=list)  # [[class, neuron], ...]; [] = the reference's Madry-L2 pairs
    num_images_per_pair: Optional[int] = None  # seeded subset of the class's images; None = all
    foreground_words: dict = field(default_factory=dict)  # label → words (adds to neurons.json's replacements)
    segmentation: SegmentationConfig = field(default_factory=_cf_segmentation)
    p2p: P2PParams = field(default_factory=_cf_p2p)
    mask_blend: MaskBlendParams = field(default_factory=_cf_blend)


# --------------------------------------------------------------------------------------------- helpers

def _need(cfg: Config, *names):
    for n in names:
        if getattr(cfg, n) in (None, "", "???"):
            raise SystemExit(f"digin neurons mode={cfg.mode}: {n}=... is required")


def _plain(cfg: Config, keys) -> dict:
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    return {k: d[k] for k in keys}


def _hash(d: dict) -> str:
    from digin.shards.manifest import config_hash

    return config_hash(d)


def chosen_neurons(cfg: Config, num_features: int) -> list[int]:
    if cfg.neurons:
        bad = [n for n in cfg.neurons if not 0 <= int(n) < num_features]
        if bad:
            raise SystemExit(f"digin neurons: neurons {bad} out of range for {num_features} features")
        return [int(n) for n in cfg.neurons]
    if REFERENCE_CLASSIFIER.split(".")[0] in cfg.classifier and cfg.layer is None:
        from digin.neurons.counterfactuals import neurons_table

        ref = [int(n) for n in neurons_table()["seresnet152d_default_target_neurons"]]
        if all(n < num_features for n in ref):
            return ref
    return list(range(num_features))


def folder_neurons(cfg: Config, num_features: int) -> list[int]:
    """Neurons of a later mode: `neurons=` if given, else those the merge wrote top images for."""
    listed = Path(cfg.out) / "selected_neurons.json"
    if not cfg.neurons and listed.exists():
        return [int(n) for n in json.loads(listed.read_text())["neurons"]]
    return chosen_neurons(cfg, num_features)


def _classifier(cfg: Config, dev, cutouts: bool, dataset_classes=None):
    return load_classifier_for(cfg.classifier, cfg, dev, checkpoint=cfg.classifier_checkpoint, cutouts=cutouts,
                               feature_module=cfg.layer, dataset_classes=dataset_classes,
                               label_order=cfg.classifier_label_order)


# ------------------------------------------------------------------------------------------------ modes

def run_activations(cfg: Config) -> int:
    from digin.neurons.activations import RANK_FILE, save_topk, stream_topk
    from digin.shards.dist import rank_world
    from digin.shards.manifest import ShardSet
    from digin.shards.runner import check_inputs_complete

    _need(cfg, "images", "out")
    env_rank, env_world, _ = rank_world()
    rank = env_rank if cfg.rank is None else cfg.rank
    world = env_world if cfg.world is None else cfg.world
    ss = ShardSet.load(cfg.images)
    if check_inputs_complete([ss], cfg.allow_incomplete):  # refused before the output folder is made
        print(f"[neurons] rank {rank}: allow_incomplete=true: only the committed shards of {ss.dir} are read",
              flush=True)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    chash = _hash({"stage": "neurons_activations", "images": ss.meta.get("config_hash") or str(ss.dir),
                   "world": world, **_plain(cfg, ("classifier", "classifier_checkpoint", "layer", "k", "center_crop"))})
    path = out / RANK_FILE.format(rank=rank)
    if path.exists() and not cfg.force:
        from digin.neurons.activations import load_topk

        if load_topk(path)[1].get("config_hash") == chash:
            print(f"[neurons] rank {rank}: {path} already done", flush=True)
            return run_merge(cfg) if world == 1 else 0
        raise SystemExit(f"digin neurons: {path} was made with another config or world size (force=true to redo)")
    dev = pick_device(cfg)
    clf = _classifier(cfg, dev, cutouts=False)
    topk, count = stream_topk(ss, clf, cfg.k, cfg.activation_batch_size, rank=rank, world=world,
                              num_workers=cfg.num_workers, device=dev, center_crop=cfg.center_crop)
    if topk is None:  # this rank owns no image: an empty (-inf) table of the right width keeps merge simple
        import torch

        from digin.engine.topk import TopK

        with torch.no_grad():
            f = clf.features(torch.zeros(1, 3, clf.size, clf.size, device=dev))[1].shape[-1]
        topk = TopK(f, cfg.k)
    meta = {"rank": rank, "world": world, "count": count, "config_hash": chash, "images": str(ss.dir),
            "classifier": cfg.classifier, "layer": cfg.layer, "k": cfg.k, "num_features": topk.num_features}
    save_topk(path, topk, meta)
    print(f"[neurons] rank {rank}/{world}: {count} images → {path}", flush=True)
    return run_merge(cfg) if world == 1 else 0


def run_merge(cfg: Config) -> int:
    from digin.neurons.activations import MERGED_FILE, merge_rank_files, save_topk, top_images
    from digin.shards.manifest import ShardSet, write_json

    _need(cfg, "out")
    out = Path(cfg.out)
    topk, meta = merge_rank_files(out)
    save_topk(out / MERGED_FILE, topk, meta)
    ss = ShardSet.load(cfg.images or meta["images"])
    neurons = chosen_neurons(cfg, topk.num_features)
    for n in neurons:
        write_json(out / f"neuron_{n}_top_images.json", {"neuron": n, "images": top_images(topk, ss, n)})
    write_json(out / "selected_neurons.json", {"neurons": neurons, **{k: meta.get(k) for k in
                                                           ("classifier", "layer", "k", "count", "images")}})
    print(f"[neurons] merged {meta.get('world')} rank file(s), {meta['count']} images → {out / MERGED_FILE}; "
          f"top images of {len(neurons)} neurons", flush=True)
    return 0


def _load_topk_for(cfg: Config):
    from digin.neurons.activations import MERGED_FILE, load_topk

    path = Path(cfg.out) / MERGED_FILE
    if not path.exists():
        raise SystemExit(f"digin neurons mode={cfg.mode}: {path} not found; run mode=activations (and merge)")
    return load_topk(path)


def name_neurons(cfg: Config) -> dict:
    """neuron → {words: {word: count}, images: [keys], answers: [...]} for the chosen backend."""
    from digin.neurons import words as W

    if cfg.name_backend == "given":
        spec = cfg.words_file or cfg.words
        if not spec:
            raise SystemExit("digin neurons: name_backend=given needs words={neuron: [...]} or words_file=...")
        table = W.given_words(spec, cfg.neurons or None)
        return {n: {"words": c, "images": [], "answers": []} for n, c in table.items()}
    if cfg.name_backend not in ("template", "vlm"):
        raise SystemExit(f"digin neurons: name_backend must be template, given or vlm, got {cfg.name_backend!r}")
    from digin.neurons.activations import fetch_samples, key_of
    from digin.shards.manifest import ShardSet

    topk, meta = _load_topk_for(cfg)
    ss = ShardSet.load(cfg.images or meta["images"])
    neurons = folder_neurons(cfg, topk.num_features)
    top = {n: [i for i, _ in topk.result(n)][:cfg.num_images_to_label] for n in neurons}
    want = sorted({i for ids in top.values() for i in ids})
    samples = fetch_samples(ss, want)  # original images: the VLM does its own preprocessing
    answers = {}
    if cfg.name_backend == "vlm":
        images = [samples[i]["image"] for i in want if i in samples]
        answers = dict(zip([i for i in want if i in samples], W.vlm_answers(images, cfg.vlm_backend,
                                                                              cfg.vlm_options)))
    classes = ss.classes
    out = {}
    for n, ids in top.items():
        ids = [i for i in ids if i in samples]
        if cfg.name_backend == "template":
            labels = []
            for i in ids:
                m = samples[i].get("meta") or {}
                y = m.get("label")
                name = m.get("label_name") or (classes[y] if y is not None and 0 <= y < len(classes) else None)
                if name is not None:
                    labels.append(str(name).split(",")[0])
            out[n] = {"words": W.template_words(labels), "images": [key_of(ss, i) for i in ids], "answers": labels}
        else:
            parse = W.vlm_parser()
            lists = [parse(answers[i]) for i in ids]
            out[n] = {"words": W.count_words(lists), "images": [key_of(ss, i) for i in ids],
                      "answers": [answers[i] if isinstance(answers[i], str) else list(answers[i]) for i in ids]}
    return out


def run_name(cfg: Config) -> int:
    from digin.shards.manifest import write_json

    _need(cfg, "out")
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    table = name_neurons(cfg)
    write_json(Path(cfg.out) / "neuron_words.json", {"backend": cfg.name_backend,
                                                     "neurons": {str(n): v for n, v in sorted(table.items())}})
    print(f"[neurons] named {len(table)} neurons ({cfg.name_backend}) → {Path(cfg.out) / 'neuron_words.json'}")
    return 0


def _search_config(cfg: Config) -> dict:
    return _plain(cfg, ("model_path", "dtype", "resolution", "num_ddim_steps", "seed", "classifier",
                        "classifier_checkpoint", "layer", "prompt_template", "min_word_count", "max_words",
                        "images_per_word", "search_guidance_scale"))


def run_search(cfg: Config) -> dict:
    """Rank the candidate words of every named neuron; cached in out/word_search.json (same config → reused)."""
    from digin.neurons.search import rank_words, word_features
    from digin.neurons.words import candidate_words
    from digin.shards.manifest import write_json

    _need(cfg, "out", "model_path")
    out = Path(cfg.out)
    path, wpath = out / "word_search.json", out / "neuron_words.json"
    if not wpath.exists():
        if cfg.name_backend != "given":
            raise SystemExit(f"digin neurons mode={cfg.mode}: {wpath} not found; run mode=name first")
        run_name(cfg)
    named = {int(n): v["words"] for n, v in json.loads(wpath.read_text())["neurons"].items()}
    if cfg.neurons:
        named = {n: v for n, v in named.items() if n in {int(x) for x in cfg.neurons}}
    cands = {n: candidate_words(c, cfg.min_word_count, cfg.max_words) for n, c in named.items()}
    chash = _hash({**_search_config(cfg), "candidates": {str(n): ws for n, ws in sorted(cands.items())}})
    if path.exists() and not cfg.force:  # same config and words → reuse (visualise resumes on the same work list)
        old = json.loads(path.read_text())
        if old.get("config_hash") == chash:
            return {int(n): [tuple(x) for x in v] for n, v in old["neurons"].items()}
    unique = list(dict.fromkeys(w for ws in cands.values() for w in ws))
    dev = pick_device(cfg)
    sd = load_sd_for(cfg, dev)
    clf = _classifier(cfg, dev, cutouts=False)
    feats = word_features(sd, clf, unique, template=cfg.prompt_template, images_per_word=cfg.images_per_word,
                          seed=cfg.seed, resolution=cfg.resolution, num_ddim_steps=cfg.num_ddim_steps,
                          guidance_scale=cfg.search_guidance_scale, batch_size=cfg.sd_batch_size, device=dev)
    ranked = {n: rank_words(feats, ws, n) for n, ws in cands.items()}
    write_json(path, {"config_hash": chash, "config": _search_config(cfg),
                      "neurons": {str(n): [list(x) for x in v] for n, v in sorted(ranked.items())}})
    print(f"[neurons] word search: {len(unique)} words × {cfg.images_per_word} images for {len(ranked)} neurons "
          f"→ {path}", flush=True)
    return ranked


def run_visualise(cfg: Config) -> int:
    _need(cfg, "out", "model_path")
    from digin.neurons.search import make_visualise_process, visualise_items
    from digin.shards.dist import rank_world
    from digin.shards.runner import run_stage
    from digin.tasks.common import wait_for_worklist, write_worklist

    out = Path(cfg.out)
    if rank_world()[0] == 0:  # one writer: the search and the work list are made once, the other ranks wait
        ranked = run_search(cfg)
        items = visualise_items(ranked, cfg.prompt_template, cfg.num_images, cfg.target_class)
        if not items:
            raise SystemExit("digin neurons mode=visualise: no neuron has a candidate word")
        per_shard = cfg.batch_size * max(1, 16 // cfg.batch_size)  # whole batches per shard: no padded tails
        work = write_worklist(out / "visualise_worklist", "neurons_visualise", items, per_shard=per_shard)
    else:
        work = wait_for_worklist(out / "visualise_worklist", cfg.wait_s)
    dev = pick_device(cfg)
    sd = load_sd_for(cfg, dev)
    clf = _classifier(cfg, dev, cutouts=True)
    process = make_visualise_process(sd, clf, cfg, guidance_config(cfg), noise_scale_fn(cfg))
    stage = {"stage": "neurons_visualise", **_plain(cfg, (
        "model_path", "resolution", "guidance_scale", "num_ddim_steps", "optim_params",
        "augmentation_num_cutouts", "augmentation_noise_sd", "augmentation_noise_schedule", "seed",
        "classifier", "classifier_checkpoint", "layer", "loss", "loss_weight", "target_class", *COMPUTE_FIELDS))}
    summary = run_stage(work, out / "visualise", process, cfg.batch_size, stage, name="neurons",
                        required=("item",), num_workers=0, force=cfg.force, device=dev, progress=cfg.progress,
                        tracking=tracking_for(cfg))
    return summary.exit_code


def run_counterfactuals(cfg: Config) -> int:
    from digin.neurons.counterfactuals import default_pairs, make_process, neurons_per_key
    from digin.shards.manifest import ShardSet
    from digin.shards.reader import iter_samples
    from digin.shards.runner import run_stage

    _need(cfg, "images", "inversions", "out", "model_path")
    if cfg.loss not in ("neuron_activation", "neg_neuron_activation", "neuron_activation_plus_log_confidence",
                        "neg_neuron_activation_plus_log_confidence"):
        raise SystemExit(f"digin neurons: counterfactuals need a neuron loss, got {cfg.loss!r}")
    images, invs = ShardSet.load(cfg.images), ShardSet.load(cfg.inversions)
    classes = images.classes or []
    if not classes:
        raise SystemExit(f"digin neurons: {cfg.images} records no class names")
    pairs = [(int(c), int(n)) for c, n in cfg.pairs] if cfg.pairs else default_pairs()
    keys_labels = {s["__key__"]: int(s["meta"]["label"]) for s in iter_samples(images, required=("meta",))}
    neurons_of = neurons_per_key(pairs, keys_labels, cfg.num_images_per_pair, cfg.seed)
    dev = pick_device(cfg)
    clf = _classifier(cfg, dev, cutouts=True, dataset_classes=classes)
    sd = load_sd_for(cfg, dev)
    process = make_process(sd, clf, cfg, classes, neurons_of, guidance_config(cfg), noise_scale_fn(cfg))
    stage = {"stage": "neurons_counterfactuals", "pairs": [list(p) for p in pairs], **_plain(cfg, (
        "model_path", "resolution", "center_crop", "guidance_scale", "num_ddim_steps", "optim_params",
        "augmentation_num_cutouts", "augmentation_noise_sd", "augmentation_noise_schedule", "seed",
        "classifier", "classifier_checkpoint", "classifier_label_order", "layer", "loss", "loss_weight",
        *COMPUTE_FIELDS,
        "regularizers", "regularizers_ws", "num_images_per_pair", "foreground_words", "segmentation", "p2p", "mask_blend"))}
    if uses_clip_regularizer(cfg):  # the CLIP tower changes the outputs
        stage.update(_plain(cfg, ("clip_regularizer_model", "clip_regularizer_weights")))
    summary = run_stage([images, invs], Path(cfg.out) / "counterfactuals", process, cfg.batch_size, stage,
                        name="neuron_cf", resolution=cfg.resolution, center_crop=cfg.center_crop,
                        required=("image", "meta", "inversion", "prompt"), num_workers=cfg.num_workers,
                        force=cfg.force, device=dev, progress=cfg.progress, tracking=tracking_for(cfg),
                        allow_incomplete=cfg.allow_incomplete)
    return summary.exit_code


def run(cfg: Config) -> int:
    if cfg.mode not in MODES:
        raise SystemExit(f"digin neurons: mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    if cfg.mode not in ("merge", "name"):  # modes that run models: resolve the compute preset before any writing
        stage_compute(cfg, pick_device(cfg))
    if cfg.mode == "search":
        run_search(cfg)
        return 0
    return {"activations": run_activations, "merge": run_merge, "name": run_name, "visualise": run_visualise,
            "counterfactuals": run_counterfactuals}[cfg.mode](cfg)
