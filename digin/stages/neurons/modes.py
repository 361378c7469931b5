"""The modes of `digin neurons` (the task's docstring describes them): top-k activations per rank, their merge,
naming, word search, visualisation and counterfactuals. Each takes the task's config."""
from __future__ import annotations

import json
from pathlib import Path

from digin.errors import ConfigError
from digin.fields import section_of
from digin.shards.dist import rank_world
from digin.shards.manifest import ShardSet, config_hash, write_json
from digin.shards.runner import StageSpec, check_inputs_complete
from digin.stages.args import GuidanceArgs, ModelArgs, record
from digin.stages.models import load_classifier_for, load_sd_for, pick_device

from digin.stages.neurons import words as W
from digin.stages.neurons.activations import (MERGED_FILE, RANK_FILE, fetch_samples, key_of, load_topk,
                                              merge_rank_files, save_topk, stream_topk, top_images)
from digin.stages.neurons.args import REFERENCE_CLASSIFIER, SearchConfig  # noqa: F401  (REFERENCE_CLASSIFIER: API)
from digin.stages.neurons.counterfactuals import default_pairs, make_process, neurons_table
from digin.stages.neurons.search import make_visualise_process, rank_words, visualise_items, word_features
from digin.stages.neurons.topk import TopK
from digin.stages.neurons.words import candidate_words
from digin.stages.plans import counterfactual_plan, listed_plan, load_inputs, run_or_show


# --------------------------------------------------------------------------------------------- helpers

def _hash(d: dict) -> str:
    return config_hash(d)


def chosen_neurons(cfg, num_features: int) -> list[int]:
    if cfg.neurons:
        bad = [n for n in cfg.neurons if not 0 <= int(n) < num_features]
        if bad:
            raise SystemExit(f"digin neurons: neurons {bad} out of range for {num_features} features")
        return [int(n) for n in cfg.neurons]
    if REFERENCE_CLASSIFIER.split(".")[0] in cfg.classifier and cfg.layer is None:
        ref = [int(n) for n in neurons_table()["seresnet152d_default_target_neurons"]]
        if all(n < num_features for n in ref):
            return ref
    return list(range(num_features))


def folder_neurons(cfg, num_features: int) -> list[int]:
    """Neurons of a later mode: `neurons=` if given, else those the merge wrote top images for."""
    listed = Path(cfg.out) / "selected_neurons.json"
    if not cfg.neurons and listed.exists():
        return [int(n) for n in json.loads(listed.read_text())["neurons"]]
    return chosen_neurons(cfg, num_features)


def _classifier(cfg, dev, settings, cutouts: bool, dataset_classes=None):
    """The mode's classifier at its neuron layer; views (cutouts, noise) from the mode's GuidanceArgs keys, or the
    section's defaults for the modes without them."""
    views = cfg if isinstance(cfg, GuidanceArgs) else GuidanceArgs()
    return load_classifier_for(cfg.classifier, dev, settings, views, cutouts=cutouts,
                               checkpoint=cfg.classifier_checkpoint, random_weights=cfg.random_weights,
                               feature_module=cfg.layer, dataset_classes=dataset_classes,
                               label_order=cfg.classifier_label_order)


# ------------------------------------------------------------------------------------------------ modes

def run_activations(cfg, settings) -> int:
    env_rank, env_world, _ = rank_world()
    rank = env_rank if cfg.rank is None else cfg.rank
    world = env_world if cfg.world is None else cfg.world
    ss = ShardSet.load(cfg.images)
    if check_inputs_complete([ss], cfg.allow_incomplete):  # refused before the output folder is made
        print(f"[neurons] rank {rank}: allow_incomplete=true: only the committed shards of {ss.dir} are read",
              flush=True)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    chash = _hash({"images": ss.meta.get("config_hash") or str(ss.dir), "world": world,
                   **record(cfg, "neurons_activations", settings)})
    path = out / RANK_FILE.format(rank=rank)
    if path.exists() and not cfg.force:
        if load_topk(path)[1].get("config_hash") == chash:
            print(f"[neurons] rank {rank}: {path} already done", flush=True)
            return run_merge(cfg) if world == 1 else 0
        raise SystemExit(f"digin neurons: {path} was made with another config or world size (force=true to redo)")
    dev = pick_device(cfg.device)
    clf = _classifier(cfg, dev, settings, cutouts=False)
    topk, count = stream_topk(ss, clf, cfg.k, cfg.activation_batch_size, rank=rank, world=world,
                              num_workers=cfg.num_workers, device=dev, center_crop=cfg.center_crop)
    if topk is None:  # this rank owns no image: an empty (-inf) table of the right width keeps merge simple
        topk = TopK(feature_count(clf, dev), cfg.k)
    meta = {"rank": rank, "world": world, "count": count, "config_hash": chash, "images": str(ss.dir),
            "classifier": cfg.classifier, "layer": cfg.layer, "k": cfg.k, "num_features": topk.num_features}
    save_topk(path, topk, meta)
    print(f"[neurons] rank {rank}/{world}: {count} images → {path}", flush=True)
    return run_merge(cfg) if world == 1 else 0


def run_merge(cfg) -> int:
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


def _load_topk_for(cfg):
    path = Path(cfg.out) / MERGED_FILE
    if not path.exists():
        raise SystemExit(f"digin neurons mode={cfg.mode}: {path} not found; run mode=activations (and merge)")
    return load_topk(path)


def name_neurons(cfg) -> dict:
    """neuron → {words: {word: count}, images: [keys], answers: [...]} for the chosen backend."""
    if cfg.name_backend == "given":
        spec = cfg.words_file or cfg.words
        if not spec:
            raise SystemExit("digin neurons: name_backend=given needs words={neuron: [...]} or words_file=...")
        table = W.given_words(spec, cfg.neurons or None)
        return {n: {"words": c, "images": [], "answers": []} for n, c in table.items()}

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


def run_name(cfg) -> int:
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    table = name_neurons(cfg)
    write_json(Path(cfg.out) / "neuron_words.json", {"backend": cfg.name_backend,
                                                     "neurons": {str(n): v for n, v in sorted(table.items())}})
    print(f"[neurons] named {len(table)} neurons ({cfg.name_backend}) → {Path(cfg.out) / 'neuron_words.json'}")
    return 0


def _search_config(cfg, settings) -> dict:
    """The search's record: the SearchConfig keys (also a visualise config's search part) that change the
    ranking, so mode=search and mode=visualise share one cached ranking."""
    return record(section_of(cfg, SearchConfig), "neurons_search", settings)


def _search_state(cfg, settings):
    """(path, config hash, candidate words, cached ranking or None) of the word search for this config."""
    out = Path(cfg.out)
    path, wpath = out / "word_search.json", out / "neuron_words.json"
    named = {int(n): v["words"] for n, v in json.loads(wpath.read_text())["neurons"].items()}
    if cfg.neurons:
        named = {n: v for n, v in named.items() if n in {int(x) for x in cfg.neurons}}
    cands = {n: candidate_words(c, cfg.min_word_count, cfg.max_words) for n, c in named.items()}
    chash = _hash({**_search_config(cfg, settings), "candidates": {str(n): ws for n, ws in sorted(cands.items())}})
    cached = None
    if path.exists() and not cfg.force:  # same config and words → reuse (visualise resumes on the same plan)
        old = json.loads(path.read_text())
        if old.get("config_hash") == chash:
            cached = {int(n): [tuple(x) for x in v] for n, v in old["neurons"].items()}
    return path, chash, cands, cached


def run_search(cfg, settings) -> dict:
    """Rank the candidate words of every named neuron; cached in out/word_search.json (same config → reused)."""
    wpath = Path(cfg.out) / "neuron_words.json"
    if not wpath.exists():
        if cfg.name_backend != "given":
            raise SystemExit(f"digin neurons mode={cfg.mode}: {wpath} not found; run mode=name first")
        run_name(cfg)
    path, chash, cands, cached = _search_state(cfg, settings)
    if cached is not None:
        return cached
    unique = list(dict.fromkeys(w for ws in cands.values() for w in ws))
    dev = pick_device(cfg.device)
    sd = load_sd_for(section_of(cfg, ModelArgs), dev, settings)
    clf = _classifier(cfg, dev, settings, cutouts=False)
    feats = word_features(sd, clf, unique, template=cfg.prompt_template, images_per_word=cfg.images_per_word,
                          seed=cfg.seed, resolution=cfg.resolution, num_ddim_steps=cfg.num_ddim_steps,
                          guidance_scale=cfg.search_guidance_scale, batch_size=cfg.sd_batch_size, device=dev)
    ranked = {n: rank_words(feats, ws, n) for n, ws in cands.items()}
    write_json(path, {"config_hash": chash, "config": _search_config(cfg, settings),
                      "neurons": {str(n): [list(x) for x in v] for n, v in sorted(ranked.items())}})
    print(f"[neurons] word search: {len(unique)} words × {cfg.images_per_word} images for {len(ranked)} neurons "
          f"→ {path}", flush=True)
    return ranked


def wait_for_search(cfg, settings) -> dict:
    """Ranks > 0: the word search rank 0 runs (out/word_search.json with this config's hash)."""
    import time

    deadline = time.monotonic() + cfg.wait_s
    while True:
        try:
            cached = _search_state(cfg, settings)[3]
        except (FileNotFoundError, ValueError, KeyError):  # not written yet / being written
            cached = None
        if cached is not None:
            return cached
        if time.monotonic() > deadline:
            raise SystemExit(f"digin neurons: rank 0 did not write {Path(cfg.out) / 'word_search.json'} for this "
                             f"config within {cfg.wait_s:.0f} s (wait_s=)")
        time.sleep(2.0)


def visualise_spec(cfg, ranked: dict, settings):
    items = visualise_items(ranked, cfg.prompt_template, cfg.num_images, cfg.target_class)
    if not items:
        raise SystemExit("digin neurons mode=visualise: no neuron has a candidate word")
    stage = record(cfg, "neurons_visualise", settings)
    return StageSpec("neurons", listed_plan("neurons", cfg, items, {"neurons": len(ranked), "items": len(items)}),
                     stage, required=("item",))


def run_visualise(cfg, settings) -> int:
    if cfg.plan:  # no model: the plan needs the word search's result
        try:
            ranked = _search_state(cfg, settings)[3]
        except FileNotFoundError:
            ranked = None
        if ranked is None:
            raise SystemExit("digin neurons mode=visualise plan=true: the plan is made from the word search; run "
                             "mode=search first (it loads the SD model)")
    else:  # one writer: rank 0 runs the search, the other ranks wait for its result
        ranked = run_search(cfg, settings) if rank_world()[0] == 0 else wait_for_search(cfg, settings)
    dev = pick_device(cfg.device)
    spec = visualise_spec(cfg, ranked, settings)

    def load():
        sd = load_sd_for(section_of(cfg, ModelArgs), dev, settings)
        clf = _classifier(cfg, dev, settings, cutouts=True)
        return make_visualise_process(sd, clf, cfg, settings)

    return run_or_show(cfg, spec, load, settings, out=str(Path(cfg.out) / "visualise"), device=dev)


def counterfactual_spec(cfg, settings):
    inputs, incomplete = load_inputs({"images": cfg.images, "inversions": cfg.inversions}, cfg.allow_incomplete)
    classes = inputs[0][1].classes or []
    if not classes:
        raise ConfigError(f"images={cfg.images}: the shard set records no class names")
    pairs = [(int(c), int(n)) for c, n in cfg.pairs] if cfg.pairs else default_pairs()
    bad = [(c, n) for c, n in pairs if not 0 <= c < len(classes)]
    if bad:
        raise ConfigError(f"pairs: class {bad[0][0]} of pair {list(bad[0])} is outside the images' "
                          f"{len(classes)} classes (0..{len(classes) - 1})"
                          + ("; the default pairs are the reference's ImageNet Madry-L2 ones: give pairs=[[class, "
                             "neuron], ...]" if not cfg.pairs else ""))
    stage = record(cfg, "neurons_counterfactuals", settings, pairs=[list(p) for p in pairs])
    return StageSpec("neuron_cf", counterfactual_plan(cfg, inputs, pairs), stage, inputs, resolution=cfg.resolution,
                     center_crop=cfg.center_crop, required=("image", "meta", "inversion", "prompt"), classes=classes,
                     incomplete=incomplete), pairs


def feature_count(clf, dev) -> int:
    """Width of the classifier's neuron layer (one forward of a blank image)."""
    import torch

    with torch.no_grad():
        return clf.features(torch.zeros(1, 3, clf.size, clf.size, device=dev))[1].shape[-1]


def check_neurons(pairs, clf, dev) -> None:
    """Every pair's neuron must exist in the classifier's feature layer: checked once the classifier is loaded,
    before anything is written."""
    f = feature_count(clf, dev)
    bad = [(c, n) for c, n in pairs if not 0 <= n < f]
    if bad:
        raise ConfigError(f"pairs: neuron {bad[0][1]} of pair {list(bad[0])} is outside the classifier's {f} "
                          f"features (0..{f - 1}); give pairs=[[class, neuron], ...] for this classifier")


def run_counterfactuals(cfg, settings) -> int:
    dev = pick_device(cfg.device)
    spec, pairs = counterfactual_spec(cfg, settings)

    def load():
        clf = _classifier(cfg, dev, settings, cutouts=True, dataset_classes=spec.classes)
        check_neurons(pairs, clf, dev)
        sd = load_sd_for(section_of(cfg, ModelArgs), dev, settings)
        return make_process(sd, clf, cfg, spec.classes, settings)

    return run_or_show(cfg, spec, load, settings, out=str(Path(cfg.out) / "counterfactuals"), device=dev)
