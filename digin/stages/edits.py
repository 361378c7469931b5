"""The img2img editing stage shared by UVCEs and neuron counterfactuals.

A work item is one (image, target) pair (digin.stages.plans): its payload `item` {start, target | neuron} and the
joined image + inversion samples (`image`, `meta`, `inversion` {z_T, null_texts}, `prompt` or `caption`). The
items of a batch are optimised together in fixed-size chunks (tail padded), each chunk through `prepare_edit`
(initial pass, masks, P2P, blend, schedule search) and `optimise`. Output per item (key `<image key>/t<target>`,
or `/n<neuron>`): `orig`, `mask`, `attention` (per-word cross-attention maps), `recon` (initial pass = null-text
reconstruction), `sd`, `ours`, `metrics`, `latents`. Images whose prompt lacks the foreground words are skipped
(`label_not_in_caption`; P2P and the masks need them), as the reference skips them (its KeyError when the label is
not in the caption).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from digin.engine.edit import MaskBlendParams, P2PParams, prepare_edit
from digin.engine.guidance import optimise
from digin.engine.objectives import Objective
from digin.engine.segment import SegmentationConfig
from digin.fields import section
from digin.stages.batching import fixed_chunks
from digin.stages.models import guidance_config, noise_scale_fn, regularizer_models
from digin.stages.results import mask_uint8, result_fields, thumbnail_fields, to_uint8, word_tiles


@dataclass
class EditArgs:
    """The edit set-up's sections (each task gives its own defaults)."""

    SECTION = "edit (Prompt-to-Prompt, mask blending, the foreground mask)"
    segmentation: SegmentationConfig = section(SegmentationConfig, "the foreground mask")
    p2p: P2PParams = section(P2PParams, "Prompt-to-Prompt")
    mask_blend: MaskBlendParams = section(MaskBlendParams, "mask blending")


@dataclass
class EditKind:
    """What differs between UVCEs and neuron counterfactuals."""

    target_of: Callable  # item payload → its target (class or neuron)
    objective_target: Callable  # (start, target) → row of the Objective's targets (int or [class, neuron])
    replacement: Callable  # (start_words: str, start, target) → (source, target) words for P2P
    extra_metrics: Callable  # (sample, start, target) → dict added to the metrics
    evaluate: Callable | None = None  # (res, starts, targets) → {name: (B,) tensor} added to the metrics
    skip: Callable | None = None  # (samples, images (B,3,H,W)) → {row: reason} of items passed over (failure mode)


def prompt_has_words(prompt: str, words: list[str]) -> bool:
    toks = prompt.lower().split()
    return all(w.lower() in toks for w in words)


@dataclass
class EditProcess:
    """process(batch) for run_stage: (image, target) items → optimised fixed-size chunks → one record per item."""

    sd: object
    clf: object
    edit: EditArgs
    objective_args: object  # ObjectiveArgs section
    guidance: object  # GuidanceArgs section
    classes: list
    words_of: Callable  # class label → foreground words
    kind: EditKind
    gcfg: object
    noise_fn: Callable | None

    def __call__(self, batch) -> list[dict]:
        dev = batch.device
        images = batch.images.to(dev).float() / 255.0
        outs: list = [None] * batch.n_real
        skipped = self.kind.skip(batch.samples[:batch.n_real], images[:batch.n_real]) if self.kind.skip else {}
        rows = []
        for j in range(batch.n_real):
            s = batch.samples[j]
            if isinstance(s.get("caption"), str):
                s["prompt"] = s["caption"]
            start = int(s["item"]["start"])
            if j in skipped:
                outs[j] = {"__skip__": skipped[j]}
            elif not prompt_has_words(s["prompt"], self.words_of(self.classes[start])):
                outs[j] = {"__skip__": "label_not_in_caption"}
            else:
                rows.append((j, s, images[j], start, int(self.kind.target_of(s["item"]))))
        # The engine batch is the runner's current batch size: after a CUDA OOM the runner halves it and redoes
        # these items, and the chunks must shrink with it.
        for chunk, n in fixed_chunks(rows, len(batch)) if rows else []:
            for r, o in zip(chunk[:n], self.run_rows(chunk, n, dev)):
                outs[r[0]] = o
        return outs

    def objective(self, starts: list, tgts: list, keys: list, dev):
        o = self.objective_args
        targets = torch.tensor([self.kind.objective_target(s, t) for s, t in zip(starts, tgts)])
        return Objective(o.loss, [self.clf], targets, keys, loss_weight=o.loss_weight,
                         regularizers=list(o.regularizers), regularizers_ws=list(o.regularizers_ws),
                         noise_scale_fn=self.noise_fn, **regularizer_models(o, dev))

    def run_rows(self, rows, n_real, dev) -> list[dict]:
        """rows: (position, sample, image (3,H,W), start, target), padded to the batch size → per-item records."""
        edit, g, sd, kind = self.edit, self.guidance, self.sd, self.kind
        z = torch.stack([r[1]["inversion"]["z_T"] for r in rows]).to(dev)
        null = torch.stack([r[1]["inversion"]["null_texts"] for r in rows]).to(dev)
        imgs = torch.stack([r[2] for r in rows]).to(dev)
        starts = [r[3] for r in rows]
        tgts = [r[4] for r in rows]
        prompts = [r[1]["prompt"] for r in rows]
        keys = [r[1]["__key__"] for r in rows]  # the item key: per-item random streams
        fg = [self.words_of(self.classes[s]) for s in starts]
        repl = [kind.replacement(" ".join(w), s, t) for w, s, t in zip(fg, starts, tgts)]
        obj = self.objective(starts, tgts, keys, dev)
        setup = prepare_edit(sd, obj, z_T=z, uncond=null, prompts=prompts, foreground_words=fg,
                             guidance_scale=g.guidance_scale, num_ddim_steps=g.num_ddim_steps,
                             replacements=repl if edit.p2p.do_p2p else None, images=imgs, p2p=edit.p2p,
                             blend=edit.mask_blend, segmentation=edit.segmentation, solver=g.solver,
                             guidance_rescale=g.guidance_rescale)
        try:
            res = optimise(sd, setup.objective, z_T=z, cond=setup.cond, uncond=null, cfg=self.gcfg, blend=setup.blend,
                           controller=setup.controller)
        finally:
            setup.close(sd)
        evals = kind.evaluate(res, starts, tgts) if kind.evaluate is not None else {}
        size = imgs.shape[-1]
        outs = []
        for b in range(n_real):
            words = setup.word_maps[b] if setup.word_maps else None
            extra = {"prompt": prompts[b], "edited_prompt": setup.prompts[b], "schedule": list(setup.chosen[b]),
                     **kind.extra_metrics(rows[b][1], starts[b], tgts[b]),
                     **{k: float(v[b]) for k, v in evals.items()}}
            if words:
                extra["attention_words"] = list(words)
            if res.schedules:  # learned edit schedules (optimize_mask_blend / optimize_*_interpolation_schedule)
                extra["learned_schedules"] = {k: v[b].detach().float().cpu().tolist() for k, v in res.schedules.items()}
            fields = {"orig": to_uint8(rows[b][2]), "recon": to_uint8(setup.initial_images[b])}
            if setup.px_mask is not None:
                fields["mask"] = mask_uint8(setup.px_mask[b])
            if words:  # per-word cross-attention maps of the original prompt, side by side
                fields["attention"] = word_tiles(words, size)
            fields.update(result_fields(res, b, extra_metrics=extra))
            fields.update(thumbnail_fields(fields))  # orig / recon thumbnails: the gallery never decodes them
            outs.append(fields)
        return outs


def make_edit_process(sd, clf, edit: EditArgs, objective, guidance, settings, classes: list[str],
                      words_of: Callable, kind: EditKind) -> EditProcess:
    """process(batch) for run_stage from the edit, objective (ObjectiveArgs) and guidance (GuidanceArgs) sections
    and the resolved compute settings. words_of(label) → foreground words of a class label."""
    regularizer_models(objective, sd.device)  # fail before the stage starts (e.g. no CLIP weights file), then cached
    return EditProcess(sd, clf, edit, objective, guidance, classes, words_of, kind, guidance_config(guidance, settings),
                       noise_scale_fn(guidance))
