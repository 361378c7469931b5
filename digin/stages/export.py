"""Result records → the reference's folder layout (the task's docstring lists it per task): relative paths per
image and the files written."""
from __future__ import annotations

from pathlib import Path

from digin.stages.gallery.records import ResultRecord

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
