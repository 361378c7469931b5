"""timm classifiers: `timm:<name>` (and bare names, tags included: `vit_base_patch16_384.augreg_in21k_ft_in1k`;
`hf-hub:<org>/<name>` for a hub repo). Weights: `checkpoint=<file>`, else the pretrained weights from the local
caches (pretrained.py), else refused unless `allow_random`. Preprocessing from the model's own data config."""
from __future__ import annotations

from pathlib import Path

from .pretrained import cached_hf_file, refuse, timm_weights
from .weights import load_into


def _hub_repo_dir(repo_id: str, key: str) -> str:
    """`hf-hub:<repo>`: the repo's snapshot folder in the local hub cache (config.json and weights), for timm's
    `local-dir:` source; refused when the cache lacks either."""
    cfg, looked = cached_hf_file(repo_id, ("config.json",))
    weights, more = cached_hf_file(repo_id)
    if cfg is None or weights is None or Path(cfg).parent != Path(weights).parent:
        raise refuse(f"hf-hub:{repo_id}", key, looked + more)
    return str(Path(cfg).parent)


def build_timm(name: str, checkpoint, kw: dict, **_):
    import timm

    extra = {"num_classes": kw["num_classes"]} if "num_classes" in kw else {}
    extra.update(kw.get("model_kwargs", {}))
    key = kw.get("weights_key", "classifier_checkpoint")
    if checkpoint or kw.get("allow_random"):
        model = timm.create_model(name, pretrained=False, **extra)
        if checkpoint:
            load_into(model, checkpoint)
    elif name.startswith("hf-hub:"):
        model = timm.create_model(f"local-dir:{_hub_repo_dir(name[len('hf-hub:'):], key)}", pretrained=True, **extra)
    else:  # the named model's pretrained weights, from the local caches only
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": timm_weights(name, key)},
                                  **extra)
    cfg = timm.data.resolve_model_data_config(model)
    _, h, w = cfg["input_size"]
    if h != w:
        raise ValueError(f"timm model {name} has a non-square input size {(h, w)}")
    return model, dict(size=h, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
