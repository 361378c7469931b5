"""`digin export results=[...] out=<folder>`: write result shards as the reference's folder layout (REFERENCE §1.2,
§1.3, §6, §8.1), so existing scripts and eyes that know that layout can use digin outputs.

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

from dataclasses import dataclass, field
from pathlib import Path

from digin.gallery.records import ResultRecord, ShardFields

IMAGE_SUFFIX = {"orig": "", "sd": "_sd", "ours": "_ours"}


def _label(text) -> str:
    return str(text).replace("/", "_").replace("\\", "_").strip() or "_"


def _key_index(key: str) -> int:
    for part in reversed(key.split("/")):
        if part.isdigit():
            return int(part)
    raise ValueError(f"no numeric part in key {key!r}: put 'index' into the metrics")


def _need(m: dict, *names):
    for n in names:
        if m.get(n) is not None:
            return m[n]
    raise KeyError(f"record metrics need one of {names}")


def export_relpaths(rec: ResultRecord, task: str | None = None) -> dict[str, str]:
    """Image name (orig/sd/ours) -> relative path in the reference layout, for the images the record has."""
    m, task = rec.metrics, task or rec.task
    if task == "uvce":
        idx = m.get("index", None)
        idx = _key_index(rec.key) if idx is None else int(idx)
        start, target = int(_need(m, "start")), int(_need(m, "target"))
        folder = f"{start}_{_label(_need(m, 'start_label'))}"
        stem = {"orig": f"{idx}", "sd": f"{idx}_{target}_{_label(_need(m, 'target_label'))}_sd",
                "ours": f"{idx}_{target}_{_label(_need(m, 'target_label'))}_ours"}
    elif task == "diff":
        c, i = int(_need(m, "class", "start")), int(_need(m, "i"))
        folder = f"{c}_{c}_{_label(_need(m, 'label', 'start_label'))}"
        stem = {"sd": f"{i}_sd", "ours": f"{i}_ours"}
    elif task == "neurons":
        folder = f"neuron_{int(_need(m, 'neuron'))}"
        i = int(_need(m, "i"))
        stem = {"sd": f"{i}_sd", "ours": f"{i}_ours"}
    elif task == "neuron_cf":
        idx = m.get("index", None)
        idx = _key_index(rec.key) if idx is None else int(idx)
        c, n = int(_need(m, "start", "class")), int(_need(m, "neuron"))
        folder = f"{c}_{_label(_need(m, 'start_label', 'label'))}_neuron_{n}"
        stem = {"orig": f"{idx}", "sd": f"{idx}_sd", "ours": f"{idx}_ours"}
    else:
        raise ValueError(f"no reference layout for task {task!r} (uvce, diff, neurons, neuron_cf)")
    return {name: f"{folder}/{s}.png" for name, s in stem.items() if name in rec.images}


def export_records(records, out, task: str | None = None, overwrite: bool = False) -> list[Path]:
    """Write every record's images. The original of an image is shared by all its target pairs and written
    once; two records mapping different pixels to one file is an error, and so is an existing file unless
    `overwrite`."""
    out = Path(out)
    written: dict[Path, tuple[str, bytes]] = {}
    for rec in records:
        for name, rel in export_relpaths(rec, task).items():
            path = out / rel
            data = rec.image_png(name)
            if path in written:
                if written[path][1] != data:
                    raise ValueError(f"{rec.key} and {written[path][0]} both export to {rel} with different pixels")
                continue
            if path.exists() and not overwrite:
                raise FileExistsError(f"{path} exists (pass overwrite=true)")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            written[path] = (rec.key, data)
    return list(written)


@dataclass
class Config:
    results: list[str] = field(default_factory=list)  # result shard set folders
    out: str = "export"
    task: str | None = None  # layout to use (default: each record's task)
    overwrite: bool = False
    fields: ShardFields = field(default_factory=ShardFields)


def run(cfg: Config):
    from digin.gallery.records import records_from_shards

    if not cfg.results:
        raise SystemExit("digin export: give results=[<result shard folder>, ...]")
    records = [r for folder in cfg.results for r in records_from_shards(folder, cfg.fields, cfg.task)]
    paths = export_records(records, cfg.out, cfg.task, cfg.overwrite)
    print(f"export: {len(records)} samples, {len(paths)} files -> {cfg.out}")
    return paths
