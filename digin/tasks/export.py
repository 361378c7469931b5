"""`digin export results=[...] out=<folder>`: write result shards as the reference's folder layout
(its imagenet_guided_generation.py, uvces_*.py, imagenet_cog_neuron_*.py, imagenet_neuron_counterfactuals.py), so
existing scripts and eyes that know that layout can use digin outputs.

Layout per task (labels as in the reference, with spaces kept and '/' replaced by '_'):
  uvce       {start}_{start_label}/{idx}.png                        original
             {start}_{start_label}/{idx}_{target}_{target_label}_sd.png / _ours.png
  diff       {c}_{c}_{label}/{i}_sd.png, {i}_ours.png                (classifier differences, guided generation)
  neurons    neuron_{n}/{i}_sd.png, {i}_ours.png                      (neuron visualisation, stage 2)
  neuron_cf  {c}_{label}_neuron_{n}/{idx}.png, {idx}_sd.png, {idx}_ours.png   (the reference writes no
             original png for neuron counterfactuals; we add `{idx}.png` so the export is self-contained)
Record fields used (metrics.json): start, target, start_label, target_label, index (uvce, neuron_cf), class/label/i
(diff; falls back to start/start_label), neuron, i (neurons). A missing index is read from the key: the last
all-digit part (`imagenet/val/00042/t7` -> 42).
"""
from __future__ import annotations

from dataclasses import dataclass

from digin.fields import key, section
from digin.stages.export import export_records
from digin.stages.gallery.records import ShardFields, records_from_shards

@dataclass
class Config:
    results: list[str] = key(help="result shard set folders", factory=list)
    out: str = key("export", "folder the PNGs are written into, in the reference's layout", results=False)
    task: str | None = key(None, "layout to use: uvce | diff | neurons | neuron_cf (default: each record's task)")
    overwrite: bool = key(False, "replace files already in out (otherwise an existing file is an error)")
    fields: ShardFields = section(ShardFields, "member names of the result shards")


def run(cfg: Config):
    if not cfg.results:
        raise SystemExit("digin export: give results=[<result shard folder>, ...]")
    records = [r for folder in cfg.results for r in records_from_shards(folder, cfg.fields, cfg.task)]
    paths = export_records(records, cfg.out, cfg.task, cfg.overwrite)
    print(f"export: {len(records)} samples, {len(paths)} files -> {cfg.out}")
    return paths
