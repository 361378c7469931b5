"""The segmentation stage's process: the edit set-up's initial pass of each inverted image gives its foreground
mask and per-word cross-attention maps; nothing is optimised."""
from __future__ import annotations

import torch

from digin.engine.edit import MaskBlendParams, prepare_edit
from digin.stages.results import mask_uint8, to_uint8, word_tiles


class _MaskOnly:
    """The edit set-up asks an objective for masks; here nothing is optimised."""

    needs_masks = True


def make_process(sd, sampling, segmentation, foreground_words: dict, classes: list[str]):
    """The mask process from a SamplingArgs section and the segmentation section."""

    def process(batch):
        dev = batch.device
        images = batch.images.to(dev).float() / 255.0
        prompts = [s["prompt"] for s in batch.samples]
        labels = [classes[int(s["meta"]["label"])] for s in batch.samples]
        fg = [foreground_words.get(lab, lab).split() for lab in labels]
        z = torch.stack([s["inversion"]["z_T"] for s in batch.samples]).to(dev)
        null = torch.stack([s["inversion"]["null_texts"] for s in batch.samples]).to(dev)
        setup = prepare_edit(sd, _MaskOnly(), z_T=z, uncond=null, prompts=prompts, foreground_words=fg,
                             guidance_scale=sampling.guidance_scale, num_ddim_steps=sampling.num_ddim_steps,
                             images=images,
                             blend=MaskBlendParams(do_mask_blend=True, initial_mask_blend_schedule=["none"]),
                             segmentation=segmentation, solver=sampling.solver,
                             guidance_rescale=sampling.guidance_rescale)
        setup.close(sd)
        outs = []
        for b in range(batch.n_real):
            words = setup.word_maps[b]
            outs.append({"orig": to_uint8(images[b]), "mask": mask_uint8(setup.px_mask[b]),
                         "attention": word_tiles(words, images.shape[-1]),
                         "metrics": {"prompt": prompts[b], "words": list(words), "foreground_words": fg[b],
                                     "label": labels[b], "start": int(batch.samples[b]["meta"]["label"]),
                                     "mask_area": float(setup.px_mask[b].mean())}})
        return outs

    return process
