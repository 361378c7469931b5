"""Result records: one generated sample (original / sd / ours images + metrics) as the gallery, export and eval see it.

Result shards (written by the uvce / diff / neurons tasks) hold per-sample members; the defaults of `ShardFields`
name them: images `orig.png`, `recon.png`, `sd.png`, `ours.png`, optional `mask.png` / `attention.png`, and
`metrics.json` (a dict: start, target, start_label, target_label, index, neuron, group, task, confidences,
`loss_curve`, `status`, ...). Every name is configurable, so shards from another writer can be read without
renaming members. Records read from shards keep their images as the encoded bytes (`image_array` decodes).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digin.fields import key
from digin.shards.decode import IMAGE_EXTS, TENSOR_EXTS, decode_image, decode_member
from digin.shards.keyed import iter_shards_once
from digin.shards.manifest import ShardSet


@dataclass
class ResultRecord:
    key: str  # sample key, e.g. imagenet/val/00042/t7
    task: str  # uvce | diff | neurons | neuron_cf | ...
    group: str  # what a gallery page collects: class pair, class, neuron
    images: dict = field(default_factory=dict)  # name -> PNG bytes, file path or uint8 HWC array
    metrics: dict = field(default_factory=dict)
    loss_curve: list[float] | None = None
    aux_images: dict = field(default_factory=dict)  # masks, attention maps: shown below the main row
    source: str | None = None  # the result shard set folder it came from
    thumbs: dict = field(default_factory=dict)  # name -> the thumbnail the stage wrote (`<name>_thumb` JPEG bytes)
    # name -> an id of the image's bytes that never names other bytes ("<shard sha256>:<tar key>.<member>": a
    # committed shard is immutable), so the gallery names its copy without hashing it; None: hash the bytes
    origins: dict = field(default_factory=dict)

    def image_array(self, name: str) -> np.ndarray:
        return image_to_array(self.images.get(name, self.aux_images.get(name)))

    def image_png(self, name: str) -> bytes:
        return image_to_png(self.images.get(name, self.aux_images.get(name)))


def image_to_array(value) -> np.ndarray:
    """Encoded bytes or a path -> uint8 HWC RGB, decoded as the shard reader decodes images (a grey mask too);
    arrays pass through (HW masks stay HW)."""
    if value is None:
        raise KeyError("image missing")
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (str, Path)):
        value = Path(value).read_bytes()
    return decode_image(bytes(value))


def image_to_png(value) -> bytes:
    from PIL import Image

    if isinstance(value, (bytes, bytearray)) and bytes(value[:8]) == b"\x89PNG\r\n\x1a\n":
        return bytes(value)
    if isinstance(value, (str, Path)) and str(value).lower().endswith(".png"):
        return Path(value).read_bytes()
    arr = image_to_array(value)
    if arr.dtype != np.uint8:  # float masks in [0,1]
        arr = np.clip(np.round(arr.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr.squeeze()).save(buf, format="PNG")
    return buf.getvalue()


def default_group(metrics: dict) -> str:
    """Group of a record from its metrics: explicit 'group', else neuron, else start->target, else class."""
    if metrics.get("group") is not None:
        return str(metrics["group"])
    start, target = metrics.get("start"), metrics.get("target")
    if metrics.get("neuron") is not None:
        return f"{start}_neuron_{metrics['neuron']}" if start is not None else f"neuron_{metrics['neuron']}"
    if start is not None and target is not None:
        return f"{start}_to_{target}"
    return str(start if start is not None else "all")


@dataclass
class ShardFields:
    """Member names of a result shard (field part of `<key>.<field>.<ext>`)."""

    SECTION = "fields (member names of the result shards)"
    images: list[str] = key(["orig", "recon", "sd", "ours"], "image members shown side by side")
    aux_images: list[str] = key(["mask", "attention"], "extra image members (masks, attention maps)")
    metrics: str = key("metrics", "the JSON member with the metrics")
    loss_curve: str = key("loss_curve", "key inside the metrics dict")
    task: str = key("task", "key inside the metrics dict; falls back to the shard set's manifest name")


THUMB_SUFFIX = "_thumb"  # digin.stages.gallery.thumbs.SUFFIX: `<image>_thumb` is the stage's thumbnail of `<image>`


def record_from_sample(sample: dict, fields: ShardFields | None = None, task: str | None = None,
                       source: str | None = None, shard_id: str | None = None) -> ResultRecord:
    """A decoded shard sample (digin.shards.reader) -> ResultRecord. shard_id: the sha256 of the committed shard it
    was read from (names its images without hashing them)."""
    fields = fields or ShardFields()
    names = {**{n: n for n in fields.images + fields.aux_images}, **sample.get("__member__", {})}
    metrics = dict(sample.get(fields.metrics) or {})
    curve = metrics.pop(fields.loss_curve, None)
    if curve is None and isinstance(metrics.get("loss"), list):  # the guidance tasks' per-iteration total
        curve = [v for v in metrics["loss"] if v is not None]
    return ResultRecord(
        key=sample["__key__"],
        task=str(metrics.get(fields.task) or task or "results"),
        group=default_group(metrics),
        images={n: sample[n] for n in fields.images if n in sample},
        metrics=metrics,
        loss_curve=[float(v) for v in curve] if curve is not None else None,
        aux_images={n: sample[n] for n in fields.aux_images if n in sample},
        source=source,
        thumbs={n: sample[n + THUMB_SUFFIX] for n in fields.images
                if isinstance(sample.get(n + THUMB_SUFFIX), (bytes, bytearray)) and n in sample},
        origins={n: f"{shard_id}:{sample.get('__tar_key__', sample['__key__'])}.{names[n]}"
                 for n in fields.images + fields.aux_images if n in sample} if shard_id else {},
    )


def expand_targets(sample: dict) -> list[dict]:
    """A multi-target result sample (UVCE: one image, `pairs.json` listing targets, members `t<t>_sd`, `t<t>_ours`,
    `t<t>_metrics`) → one plain sample per target keyed `<image key>/t<t>`; other samples pass through."""
    info = sample.get("pairs")
    if not isinstance(info, dict) or "targets" not in info:
        return [sample]
    out = []
    shared = {k: v for k, v in sample.items() if not (k.startswith("t") and "_" in k and k[1:k.index("_")].isdigit())}
    shared.pop("pairs", None)
    for t in info["targets"]:
        s = dict(shared)
        s["__key__"], s["__tar_key__"], s["__member__"] = f"{sample['__key__']}/t{t}", sample["__key__"], {}
        for f in ("sd", "ours", "metrics", "latents", "sd_thumb", "ours_thumb"):
            if f"t{t}_{f}" in sample:
                s[f] = sample[f"t{t}_{f}"]
                s["__member__"][f] = f"t{t}_{f}"
        out.append(s)
    return out


def keep_encoded(ext: str, data: bytes, resolution=None, center_crop: bool = True):
    """Member decoder for result shards: images (and latents, which no reader of records needs) stay encoded
    bytes, so the gallery copies PNGs as written and decodes each image once, for its thumbnail; JSON and text
    are decoded by the safe decoder (pickle-like members are still refused there)."""
    if ext.lower() in IMAGE_EXTS or ext.lower() in TENSOR_EXTS:
        return bytes(data)
    return decode_member(ext, bytes(data), resolution, center_crop)


class KeepEncodedOnce:
    """keep_encoded for a stream of samples whose members repeat (a UVCE pair's orig, recon, mask and attention are
    the same bytes in every pair of its image): an encoded member equal to one of the last few of its extension and
    length comes back as that same bytes object (compared byte for byte), so it is copied out of the read buffer once
    and the gallery's store recognises it without comparing again."""

    RECENT = 8  # per (extension, length)

    def __init__(self):
        self.last: dict[tuple[str, int], list[bytes]] = {}

    def __call__(self, ext: str, data, resolution=None, center_crop: bool = True):
        if ext.lower() not in IMAGE_EXTS and ext.lower() not in TENSOR_EXTS:
            return keep_encoded(ext, data, resolution, center_crop)
        slot = (ext.lower(), len(data))
        recent = self.last.setdefault(slot, [])
        for prev in recent:
            if prev.startswith(data):
                return prev
        recent.insert(0, bytes(data))
        del recent[self.RECENT:]
        if len(self.last) > 1024:  # lengths seen once long ago
            self.last.pop(next(iter(self.last)))
        return recent[0]


def task_of(ss) -> str:
    """Task name of a result shard set: its manifest's task, else its stage, else its name."""
    return ss.meta.get("task") or (ss.meta.get("config") or {}).get("stage") or ss.name


def iter_records(shard_dir, fields: ShardFields | None = None, task: str | None = None):
    """Stream the committed samples of a result shard set as ResultRecords, shard by shard (images as encoded
    bytes; rejects skipped; multi-target samples expanded to one record per target)."""
    ss = shard_dir if isinstance(shard_dir, ShardSet) else ShardSet.load(shard_dir)
    task, source = task or task_of(ss), str(ss.dir)
    for s in iter_shards_once(ss, decode=KeepEncodedOnce()):  # each shard read once, checked against its sha256
        if "__reject__" not in s:
            shard_id = ss.records[s["__shard__"]].get("sha256")
            yield from (record_from_sample(x, fields, task, source, shard_id) for x in expand_targets(s))


def records_from_shards(shard_dir, fields: ShardFields | None = None, task: str | None = None):
    """Every committed sample of a result shard set as ResultRecords (see iter_records)."""
    return list(iter_records(shard_dir, fields, task))


def input_counts(ss) -> dict:
    """What a stage did with its input samples, from the commit records: written, rejected (failures) and
    skipped (passed over on purpose, reason `skip:<why>`), with the reasons counted."""
    written = rejected = skipped = 0
    reasons: dict[str, int] = {}
    for rec in ss.records.values():
        written += int(rec.get("count", 0))
        for r in rec.get("rejects") or []:
            reason = str(r.get("reason", "?"))
            reasons[reason] = reasons.get(reason, 0) + 1
            if reason.startswith("skip:"):
                skipped += 1
            else:
                rejected += 1
    return {"written": written, "rejected": rejected, "skipped": skipped, "reasons": reasons}
