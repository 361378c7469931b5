"""Word search and DiG-IN neuron maximisation (the reference's imagenet_cog_neuron_visualisation_stage2.py).

Word search: for every candidate word, `images_per_word` plain SD samples of "<template> <word>" (no gradients),
scored by the neuron's mean activation (no augmentation); words are ranked per neuron. All (word, j) samples
of all neurons are generated once per unique word, in fixed-shape chunks, so a word shared by several
neurons costs one generation. Visualisation: per (neuron, i) start noise, prompt "<template> <top word>",
loss `neuron_activation` (or any neuron loss) through `guidance.optimise`.
"""
from __future__ import annotations

import torch

from digin.engine.guidance import optimise
from digin.engine.objectives import Objective
from digin.engine.sampling import decode_latents, denoise
from digin.engine.schedule import make_ddim_schedule
from digin.stages.batching import fixed_chunks, latent_shape, start_noise
from digin.stages.models import guidance_config, noise_scale_fn
from digin.stages.results import result_fields


def word_prompt(template: str, word: str) -> str:
    return f"{template.strip()} {word}"


def search_key(word: str, j: int) -> str:
    """Seed key of the j-th search image of a word (same noise for a word whichever neuron asks)."""
    return f"word_search|{word}|{j}"


@torch.no_grad()
def word_features(sd, clf, words: list[str], *, template: str, images_per_word: int, seed: int, resolution: int,
                  num_ddim_steps: int, guidance_scale: float, batch_size: int, device) -> dict[str, torch.Tensor]:
    """word → mean feature vector (F,) over its `images_per_word` generated images (CPU, fp32)."""
    sched = make_ddim_schedule(sd.scheduler_config, num_ddim_steps).to(device)
    items = [(w, j) for w in words for j in range(images_per_word)]
    shape = latent_shape(sd, resolution)
    sums: dict[str, torch.Tensor] = {}
    uncond = None
    for chunk, n in fixed_chunks(items, batch_size) if items else []:
        z = start_noise([search_key(w, j) for w, j in chunk], seed, shape, device)
        cond = sd.encode_text([word_prompt(template, w) for w, _ in chunk])
        if uncond is None:
            uncond = sd.encode_text([""]).expand(len(chunk), -1, -1)
        _, x0 = denoise(sd, sched, z, cond, uncond, guidance_scale)
        _, feats_BNF = clf.features(decode_latents(sd, x0))
        feats = feats_BNF[:n, 0].float().cpu()
        for (w, _), f in zip(chunk[:n], feats):
            sums[w] = sums[w] + f if w in sums else f.clone()
    return {w: s / images_per_word for w, s in sums.items()}


def rank_words(word_feats: dict[str, torch.Tensor], words: list[str], neuron: int) -> list[tuple[str, float]]:
    """[(word, mean activation of `neuron`)], highest first (ties: word order given)."""
    scored = [(w, float(word_feats[w][neuron])) for w in words if w in word_feats]
    return sorted(scored, key=lambda wa: -wa[1])


def visualise_items(ranked: dict[int, list], template: str, num_images: int, target_class: int = 0) -> list:
    """Work-list items (key, item) for every (neuron, i) with a top word."""
    items = []
    for n in sorted(ranked):
        if not ranked[n]:
            continue
        word = ranked[n][0][0]
        for i in range(num_images):
            items.append((f"neurons/n{n}/i{i}", {"neuron": int(n), "i": i, "word": word,
                                                 "prompt": word_prompt(template, word), "class": int(target_class)}))
    return items


def make_visualise_process(sd, clf, cfg, settings):
    """runner.run_stage process over a visualise work list → per (neuron, i): sd / ours / metrics / latents. `cfg`:
    the VisualiseConfig (its GuidanceArgs keys, loss, seed, resolution); `settings`: the resolved compute."""
    gcfg, noise_fn = guidance_config(cfg, settings), noise_scale_fn(cfg)

    def process(batch):
        dev = batch.device
        items = [s["item"] for s in batch.samples]  # padded to the batch size by the runner
        keys = list(batch.keys)
        z = start_noise(keys, cfg.seed, latent_shape(sd, cfg.resolution), dev)
        cond = sd.encode_text([it["prompt"] for it in items])
        uncond = sd.encode_text([""] * len(items))
        targets = torch.tensor([[it["class"], it["neuron"]] for it in items])
        obj = Objective(cfg.loss, [clf], targets, keys, loss_weight=cfg.loss_weight, noise_scale_fn=noise_fn)
        res = optimise(sd, obj, z_T=z, cond=cond, uncond=uncond, cfg=gcfg)
        outs = []
        for b in range(batch.n_real):
            it = items[b]
            extra = {"task": "neurons", "neuron": it["neuron"], "i": it["i"], "word": it["word"],
                     "prompt": it["prompt"], "class": it["class"], "loss_name": cfg.loss}
            outs.append(result_fields(res, b, extra_metrics=extra))
        return outs

    return process
