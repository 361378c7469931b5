"""The caption stage's pieces: the captioner of the configured backend (or the imported caption files) and the
process that captions a batch, every caption holding its label."""
from __future__ import annotations

from dataclasses import asdict

from digin.caption import caption_images, enforce_label, label_of, template_for
from digin.caption.backends import load_captioner
from digin.caption.importer import key_index, read_prompt_files
from digin.caption.templates import DEMO_SETS


def captioner_kwargs(cfg, dataset: str, device) -> dict:
    kw = dict(device=device, dtype=cfg.dtype, dataset=dataset, template=cfg.template, num_beams=cfg.num_beams,
              max_new_tokens=cfg.max_new_tokens, resolution=cfg.resolution)
    if cfg.backend == "open_flamingo":
        f = asdict(cfg.flamingo)
        if f["num_demos"] != 0:
            f["demos"] = f["demos"] or DEMO_SETS.get(dataset.lower())
            if not f["demo_images"]:
                raise SystemExit("digin caption: open_flamingo is few-shot: set flamingo.demo_images to the train "
                                 "split (shard set or folder of <index>.png), or flamingo.num_demos=0")
        else:
            f["demos"] = None
        kw.update(f)
    elif cfg.backend == "hf":
        kw.update(asdict(cfg.hf))
    return kw


def make_process(cfg, dataset: str, captioner=None, imported: dict | None = None):
    template = template_for(dataset, cfg.template)

    def process(batch):
        labels = [label_of(s) for s in batch.samples]
        if imported is not None:
            outs = []
            for key, lab in zip(batch.keys[:batch.n_real], labels):
                raw = imported.get(key_index(key))
                final, reason = enforce_label(raw, lab, template)
                outs.append({"caption": final, "caption_info": {
                    "backend": "import", "fallback": "import_missing" if raw is None else reason, "raw": raw,
                    "label": lab}})
            return outs
        res = caption_images(batch.images, labels, captioner=captioner, dataset=dataset, template=cfg.template,
                             on_error=cfg.on_error)  # the whole padded batch: fixed shapes
        return [{"caption": c, "caption_info": info} for c, info in res[:batch.n_real]]

    return process


def caption_source(cfg, dataset: str, device) -> tuple:
    """(captioner, imported captions by index): one of them, for the configured backend."""
    if cfg.backend == "import":
        if not cfg.import_dir:
            raise SystemExit("digin caption: backend=import needs import_dir (folder of <idx>_prompt.txt files)")
        return None, read_prompt_files(cfg.import_dir)

    kw = captioner_kwargs(cfg, dataset, device)
    return load_captioner(cfg.backend, **kw), None
