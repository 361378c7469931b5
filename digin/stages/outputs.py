"""The output reference: every tar member each stage writes and every field of its JSON members, with meaning and
units. `digin <task> --outputs` prints a task's part, `python -m digin.stages.outputs` the whole page
(docs/outputs.md is that page; a test keeps them equal), and a test runs the stages on tiny models and checks their
actual outputs hold exactly these members and fields — so this table cannot drift from what is written.

Keys: a sample key is `<dataset>/<split>/<index>` (result items add `/t<target>`, `/n<neuron>`; diff and neuron
items are `diff/c<class>[/p<prompt>]/i<i>`, `neurons/n<neuron>/i<i>`). Inside a tar a member is named
`<key with '/' replaced by '~'>.<member>.<ext>` (`imagenet~val~00042.orig.png`); everywhere else (records, logs,
the gallery, eval rows) the key is written with '/'.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Member:
    ext: str
    meaning: str
    required: bool = True  # False: written only when it applies (see the meaning)


@dataclass
class StageOutputs:
    task: str
    folder: str  # where the shard set lies, relative to out=
    item: str  # what one sample is
    members: dict[str, Member]
    fields: dict[str, dict[str, str]] = field(default_factory=dict)  # JSON member → field → meaning
    optional_fields: dict[str, set] = field(default_factory=dict)  # JSON member → fields written only sometimes
    patterns: dict[str, dict[str, str]] = field(default_factory=dict)  # JSON member → field pattern → meaning


# ---------------------------------------------------------------------------------------------- shared fields
GUIDANCE_FIELDS = {
    "status": "ok | nonfinite (a loss or metric turned NaN/inf; its numbers are null) | no_improvement (no later "
              "iterate had a lower loss than iterate 0)",
    "best_iter": "the iterate `ours` is (the lowest logged total loss; 0 = sd)",
    "num_logged": "iterates logged: 1 + the SGD steps run (fewer when the sample stopped early or went non-finite)",
    "stopped_early": "the sample reached its early-stopping loss and stopped",
    "nonfinite": "status is nonfinite",
    "loss": "total loss of each logged iterate, without augmentation (loss + weighted regularisers), null when "
            "non-finite",
    "aug_loss": "the augmented (cutout) loss each SGD step optimised, one per step",
    "parts": "per iterate, each term of the total: the loss by its name (CE, conf, neuron_activation, ...) and each "
             "regulariser by its name (latent_background_l2, px_lpips, ...), unweighted",
    "confidences": "per iterate, each score the stage tracks (see <score>_sd / <score>_ours)",
}
GUIDANCE_PATTERNS = {
    "<score>_sd": "the score at iterate 0 (sd), e.g. conf_0_sd; scores: conf_<k> = classifier k's probability of "
                  "the target class (0..1), activation = the neuron's activation (the layer's units)",
    "<score>_ours": "the score at the best iterate (ours)",
}
RESULT_MEMBERS = {
    "sd": Member("png", "iterate 0: the edit before any gradient step (txt2img: the plain SD sample)", False),
    "ours": Member("png", "the best iterate (lowest logged loss)", False),
    "metrics": Member("json", "numbers of the optimisation, see the fields"),
    "latents": Member("safetensors", "z_T (C,h,w) and the per-step conditioning / null-text deltas (T,L,D) of the "
                      "best iterate, fp32: what reproduces `ours`", False),
    "sd_thumb": Member("jpg", "sd within 128 × 128 px (aspect kept): the gallery's thumbnail, written with sd", False),
    "ours_thumb": Member("jpg", "ours within 128 × 128 px: the gallery's thumbnail, written with ours", False),
}
NOTE_NONFINITE = ("sd, ours and latents are missing when no iterate was finite (status nonfinite); latents also when "
                  "they are not finite")
EDIT_MEMBERS = {
    "orig": Member("png", "the input image at resolution × resolution (Resize 1.25·res + CenterCrop)"),
    "recon": Member("png", "the edit's initial pass with the inverted z_T and null texts: the reconstruction"),
    "mask": Member("png", "the foreground mask (grey, 255 = foreground) from cross-attention (+ SAM-HQ)", False),
    "attention": Member("png", "the cross-attention map of each prompt word, side by side (grey)", False),
    "orig_thumb": Member("jpg", "orig within 128 × 128 px: the gallery's thumbnail (sets written before thumbnails "
                         "lack it)", False),
    "recon_thumb": Member("jpg", "recon within 128 × 128 px: the gallery's thumbnail (likewise)", False),
    **RESULT_MEMBERS,
}
EDIT_FIELDS = {
    **GUIDANCE_FIELDS,
    "prompt": "the caption the image was inverted with",
    "edited_prompt": "the prompt after the Prompt-to-Prompt word swap (= prompt for gradient-only / identity edits)",
    "schedule": "the searched schedules chosen for this item: [cross-attention interpolation, self-attention "
                "interpolation (null: none configured), mask blend]",
    "start": "the image's class index (the dataset's class order)",
    "attention_words": "the prompt words of the attention tiles, in order",
    "learned_schedules": "with optimize_mask_blend / optimize_*_interpolation_schedule: each learned schedule's "
                         "per-step factors (0..1, step 0 = noisiest) at the best iterate",
}

OUTPUTS: dict[str, StageOutputs] = {}


def _add(o: StageOutputs):
    OUTPUTS[o.task] = o


_add(StageOutputs("caption", ".", "image (same key as the image)", {
    "caption": Member("txt", "the caption, always holding the label (else the dataset's template)"),
    "caption_info": Member("json", "where the caption came from"),
}, {"caption_info": {
    "backend": "template | open_flamingo | hf | import", "fallback": "null, or why the template replaced the "
    "caption (empty, label_missing, import_missing, backend_error:...)", "raw": "the backend's own text (null for "
    "template)", "label": "the label the caption must hold"}}))

_add(StageOutputs("invert", ".", "image (same key as the image)", {
    "inversion": Member("safetensors", "z_T (C,h,w) and null_texts (T,L,D; step 0 = noisiest), fp32"),
    "metrics": Member("json", "reconstruction quality and the inversion's cost"),
    "prompt": Member("txt", "the prompt used: the caption, else the dataset's fallback template with the label"),
    "reconstruction": Member("png", "the inversion's reconstruction (save_reconstruction=true)", False),
}, {"metrics": {
    "method": "null_text | negative_prompt", "status": "ok | nonfinite (the sample is then rejected)",
    "prompt": "the prompt used", "num_ddim_steps": "T", "guidance_scale": "the CFG scale of the inversion",
    "psnr_inv_vs_orig": "PSNR (dB, images in [0,1]) of the inversion's reconstruction against the original",
    "psnr_inv_vs_vae": "PSNR (dB) of the reconstruction against the VAE round trip (the ceiling of any inversion)",
    "psnr_ddim_vs_orig": "PSNR (dB) of plain DDIM inversion's reconstruction against the original",
    "psnr_ddim_vs_vae": "PSNR (dB) of plain DDIM inversion's reconstruction against the VAE round trip",
    "psnr_vae_vs_orig": "PSNR (dB) of the VAE round trip against the original",
    "l2_inv_vs_orig": "L2 norm (pixels in [0,1], whole image) reconstruction − original",
    "l2_inv_vs_vae": "L2 norm reconstruction − VAE round trip", "l2_ddim_vs_orig": "L2 norm DDIM − original",
    "l2_ddim_vs_vae": "L2 norm DDIM − VAE round trip",
    "latent_mse_inv": "mean squared error of the null-text trajectory's final latent against the encoded image",
    "latent_mse_ddim": "the same for plain DDIM",
    "inner_steps": "null_text: Adam steps run at each timestep (≤ num_inner_steps; early stop)",
    "loss_per_step": "null_text: the inner loss at each timestep's last step",
    "final_loss": "null_text: the last timestep's loss", "unet_forward": "UNet calls made (forward)",
    "unet_backward": "UNet backward passes made"}},
    optional_fields={"metrics": {"inner_steps", "loss_per_step", "final_loss", "psnr_inv_vs_orig", "psnr_inv_vs_vae",
                                 "psnr_ddim_vs_orig", "psnr_ddim_vs_vae", "psnr_vae_vs_orig", "l2_inv_vs_orig",
                                 "l2_inv_vs_vae", "l2_ddim_vs_orig", "l2_ddim_vs_vae", "latent_mse_inv",
                                 "latent_mse_ddim"}}))

_add(StageOutputs("segment", ".", "inverted image (same key as the image)", {
    "orig": Member("png", "the input image at resolution × resolution"),
    "mask": Member("png", "the foreground mask the uvce / counterfactual stages use (grey, 255 = foreground)"),
    "attention": Member("png", "the cross-attention map of each prompt word, side by side"),
    "metrics": Member("json", "what the mask was made from"),
}, {"metrics": {"prompt": "the caption", "words": "the prompt words of the attention tiles",
                "foreground_words": "the words the mask is made of (the label, or foreground_words=)",
                "label": "the class name", "start": "the class index", "mask_area": "mean of the mask (0..1)"}}))

_add(StageOutputs("uvce", ".", "(image, target class) pair, key <image key>/t<target>", EDIT_MEMBERS, {
    "metrics": {**EDIT_FIELDS, "target": "the target class index", "start_label": "the start class name",
                "target_label": "the target class name",
                "start_conf_sd": "the classifier's probability of the start class at iterate 0 (0..1)",
                "start_conf_ours": "the same at the best iterate"}},
    optional_fields={"metrics": {"attention_words", "learned_schedules", "start_conf_sd", "start_conf_ours"}},
    patterns={"metrics": GUIDANCE_PATTERNS}))

_add(StageOutputs("neuron_cf", "counterfactuals", "(image, neuron) item, key <image key>/n<neuron>",
                  EDIT_MEMBERS, {"metrics": {
                      **EDIT_FIELDS, "task": "neuron_cf", "neuron": "the neuron (feature index)",
                      "start_label": "the class name (first synonym)", "i": "the image's dataset index",
                      "loss_name": "the neuron loss optimised"}},
                  optional_fields={"metrics": {"attention_words", "learned_schedules"}},
                  patterns={"metrics": GUIDANCE_PATTERNS}))

_add(StageOutputs("diff", "results", "(class, start prompt, i) item, key diff/c<class>[/p<prompt>]/i<i>",
                  RESULT_MEMBERS, {"metrics": {
                      **GUIDANCE_FIELDS, "class": "the target class index", "label": "its name", "i": "the image "
                      "number of this class (and prompt)", "prompt": "the start prompt", "start": "= class",
                      "group": "<class>_<label> (the gallery's group)", "loss_name": "the loss optimised (with "
                      "classifier2: the two-classifier conf unless log_conf / logits)",
                      "classifiers": "the classifier specs, in order (conf_0, conf_1)",
                      "prompt_index": "prompts=[...]: which start prompt",
                      "eval_conf_sd": "eval_classifier's probability of the class at iterate 0",
                      "eval_conf_ours": "the same at the best iterate"}},
                  optional_fields={"metrics": {"prompt_index", "eval_conf_sd", "eval_conf_ours"}},
                  patterns={"metrics": GUIDANCE_PATTERNS}))

_add(StageOutputs("neurons", "visualise", "(neuron, i) item, key neurons/n<neuron>/i<i>", RESULT_MEMBERS, {
    "metrics": {**GUIDANCE_FIELDS, "task": "neurons", "neuron": "the neuron (feature index)", "i": "the image number",
                "word": "the searched word the prompt names", "prompt": "<prompt_template> <word>",
                "class": "target_class (the *_plus_log_confidence losses)", "loss_name": "the loss optimised"}},
    patterns={"metrics": GUIDANCE_PATTERNS}))

_add(StageOutputs("neuron_spurious", "spurious", "(class, neuron, i) item, key spurious/c<class>_n<neuron>/i<i>", {
    **RESULT_MEMBERS,
    "mask": Member("png", "the foreground mask of the initial pass (grey, 255 = foreground: kept by the blend)", False),
    "attention": Member("png", "the cross-attention map of each prompt word in the initial pass, side by side",
                        False)}, {
    "metrics": {**GUIDANCE_FIELDS, "task": "neuron_spurious", "neuron": "the neuron (feature index)",
                "class": "the class the prompt names", "label": "its name (first synonym)", "i": "the image number of "
                "this pair (start noise keyed by class and i: every neuron of a class starts from the same images)",
                "prompt": "<prompt_template> <label>", "group": "<class>_neuron_<neuron> (the reference's folder)",
                "loss_name": "the neuron loss optimised", "foreground_words": "the words of the kept foreground (the "
                "label, or its replacement, e.g. fiddler crab → crab)",
                "schedule": "[cross-attention interpolation (null), self-attention interpolation (null), mask blend]",
                "attention_words": "the prompt words of the attention tiles, in order",
                "learned_schedules": EDIT_FIELDS["learned_schedules"]}},
    optional_fields={"metrics": {"attention_words", "learned_schedules"}},
    patterns={"metrics": GUIDANCE_PATTERNS}))

_add(StageOutputs("spurious_check", "spurious_check", "checked image: an image key, or <result key>/<sd|ours>", {
    "answer": Member("json", "the VLM's answer to the yes/no question"),
    "image": Member("jpg", "the checked image within 256 × 256 px (the gallery's copy)"),
}, {"answer": {
    "question": "the question asked (question= with the label filled in)", "answer": "the VLM's text",
    "yes": "the answer contains 'yes' (the reference's rule)", "class": "the class asked about (an image's label, "
    "or with class_id_field the id in its class folder name; a result's class, else target, else start)",
    "label": "its name", "member": "image (an image shard set) or the result's sd / ours",
    "source_key": "the image's or the result's key", "backend": "vlm_backend"}}))

NEURON_FILES = {
    "topk-rank<r>.safetensors": "activations mode, per rank: the top-k activations (values, sample ids) per neuron",
    "topk.safetensors": "merge: the top-k over every rank",
    "neuron_<n>_top_images.json": "merge: neuron n's top images {neuron, images: [{key, activation}]}",
    "selected_neurons.json": "merge: the neurons later modes work on, with the classifier, layer, k, image count",
    "neuron_words.json": "name: per neuron the words counted over its top images {words: {word: count}, images, "
                         "answers}",
    "word_search.json": "search: per neuron its candidate words ranked by the mean activation of 'a photograph of a "
                        "<word>' SD samples",
    "similar_neurons/<n1>_<n2>_....json": "similar: a group's activation matrix {group, images: [{key, neuron, i, "
                                          "word, activations (one per group neuron)}], activations, config_hash, "
                                          "results, classifier, layer, image}",
    "similar_neurons/<n1>_<n2>_....png": "similar: the group's grid, a row per neuron (its visualisations), under each "
                                         "image every group neuron's activation ('*': the image's own neuron)",
    "spurious_check.json": "spurious_check: {classes: {class: {label, yes, images, fraction}}, total: {yes, images, "
                           "fraction}, question, input}, written once every unit is committed",
}
EVAL_FILES = {
    "per_sample.jsonl": "one row per result: key, task, group; per classifier <name>/conf_{start,target}_{orig,sd,ours} "
                        "(probability 0..1), <name>/pred_{orig,sd,ours} (class index), <name>/flip (1 if ours is "
                        "predicted as the target); l1_{sd,ours} / l2_{sd,ours}: L1 / L2 norm of the difference to orig "
                        "(pixels in [0,1], summed over the region), lpips_{sd,ours} (LPIPS-alex, 0..~1); masked: "
                        "background (distances over 1 − mask) or none (whole image)",
    "summary.json": "per task and per task/group: n and the mean of every numeric column; fid_ours_orig per task "
                    "(with inception_weights); notes; the compute settings",
    "summary.md": "the same as two tables",
}


def task_text(task: str) -> str:
    """The reference of one task (what `digin <task> --outputs` prints)."""
    if task == "neurons":
        lines = ["digin neurons: files in out= — " + "; ".join(f"{k}: {v}" for k, v in NEURON_FILES.items()), ""]
        return "\n".join(lines + [_stage_text(OUTPUTS[t]) + "\n" for t in ("neurons", "neuron_cf", "neuron_spurious")]
                         + [_stage_text(OUTPUTS["spurious_check"])])
    if task == "eval":
        return "digin eval: files in out=\n" + "\n".join(f"  {k}: {v}" for k, v in EVAL_FILES.items())
    if task in OUTPUTS:
        return _stage_text(OUTPUTS[task])
    return f"digin {task}: writes no result shards (see `digin {task} --help`)"


def _stage_text(o: StageOutputs) -> str:
    lines = [f"{o.task}: shard set <out>/{o.folder} — one sample per {o.item}", "  members:"]
    for name, m in o.members.items():
        lines.append(f"    {name}.{m.ext}{'' if m.required else ' (when it applies)'}: {m.meaning}")
    if any(not m.required for m in o.members.values()) and "metrics" in o.members and o.task != "caption":
        lines.append(f"    ({NOTE_NONFINITE})")
    for member, fields in o.fields.items():
        lines.append(f"  {member}.json fields:")
        optional = o.optional_fields.get(member, set())
        for k, v in fields.items():
            lines.append(f"    {k}{' (when it applies)' if k in optional else ''}: {v}")
        for k, v in o.patterns.get(member, {}).items():
            lines.append(f"    {k}: {v}")
    return "\n".join(lines)


def page() -> str:
    head = (__doc__ or "").split("\n\n", 1)[1].strip()
    parts = ["# digin outputs", "", "Generated by `python -m digin.stages.outputs` from digin/stages/outputs.py "
             "(`digin <task> --outputs` prints one task); a test keeps this page equal to it and checks real "
             "outputs against it.", "", head, ""]
    for task in ("caption", "invert", "segment", "uvce", "diff", "neurons", "eval"):
        parts += [f"## digin {task}", "", "```text", task_text(task), "```", ""]
    return "\n".join(parts)


def check_sample(task: str, sample: dict) -> list[str]:
    """What in one written sample (member name → decoded value, JSON as dicts) is not in the reference, or missing
    from it: [] when the sample matches."""
    import re

    o = OUTPUTS[task]
    problems = []
    names = {k for k in sample if not k.startswith("__")}
    for extra in sorted(names - set(o.members)):
        problems.append(f"member {extra} is not documented")
    for name, m in o.members.items():
        if m.required and name not in names:
            problems.append(f"member {name} is missing")
    for member, fields in o.fields.items():
        value = sample.get(member)
        if not isinstance(value, dict):
            continue
        optional = o.optional_fields.get(member, set())
        pats = [re.compile("^" + re.escape(p).replace(re.escape("<score>"), r"[a-z_]+[0-9]*") + "$")
                for p in o.patterns.get(member, {})]
        for k in sorted(value):
            if k not in fields and not any(p.match(k) for p in pats):
                problems.append(f"{member}.{k} is not documented")
        for k in fields:
            if k not in value and k not in optional:
                problems.append(f"{member}.{k} is missing")
    return problems


if __name__ == "__main__":
    print(page())
