"""Keyed shard sets: every commit record lists its samples' byte spans, so a stage reads a sample by key with one
seek instead of reading the whole shard.

A commit record (and an indexed foreign tar's record) carries, parallel to `keys`:
  spans          [[offset, size], ...]  the sample's tar members (headers + padded data) in the shard file
  sample_sha256  [hex, ...]             sha256 of those bytes (first 32 hex digits): a by-key read is checked
  labels         [int | null, ...]      the sample's class (`meta.label`), when the samples carry one
so a stage plans its work from the records alone (keys and labels, no sample read) and joins its inputs by key.
Sets written before records had spans stay readable: their shards are indexed on first use (each process reads a
needed shard whole once, checked against its sha256, and keeps the spans in memory), or once for all with
`digin index inputs=<folder>` (rewrites the commit records with spans and labels).

Local files are read with a seek per sample; other URLs (`pipe:` commands, object stores) cannot seek, so a
needed foreign tar is streamed whole once per work unit and checked against its record's sha256.
"""
from __future__ import annotations

import os
from urllib.parse import urlparse

from digin.shards.decode import decode_member
from digin.shards.iocount import count_read
from digin.shards.manifest import ShardError, ShardSet, sha256_bytes
from digin.shards.reader import group_shard_members, iter_shard, sample_from_group
from digin.shards.spans import END_OF_ARCHIVE, SAMPLE_HASH_HEX, tar_spans

def _legacy_spans(ss: ShardSet, index: int, check_hash: bool) -> tuple[list, list]:
    """(spans, sample hashes) of a record written before records had them: the shard is read whole (checked
    against its record), once per process."""
    cache = ss.__dict__.setdefault("_legacy_spans", {})
    if index not in cache:
        data = ss.read_verified(index, check_hash)
        count_read("shards", len(data))
        naming = "webdataset" if "webdataset" in ss.meta else "digin"
        spans = tar_spans(data, naming)
        hashes = [sha256_bytes(data[o:o + n])[:SAMPLE_HASH_HEX] for o, n in spans]
        cache[index] = (spans, hashes)
    return cache[index]


def record_spans(ss: ShardSet, index: int, check_hash: bool = True) -> tuple[list, list]:
    """(spans, sample hashes) of a committed shard: from its record, else indexed on first use."""
    rec = ss.records[index]
    if isinstance(rec.get("spans"), list) and isinstance(rec.get("sample_sha256"), list):
        return rec["spans"], rec["sample_sha256"]
    return _legacy_spans(ss, index, check_hash)


def index_record(ss: ShardSet, index: int) -> dict:
    """The record of a committed shard with `spans`, `sample_sha256` and (when its samples carry one) `labels`
    added: what `digin index` writes for a set made before records had them. Reads the shard whole."""
    rec = dict(ss.records[index])
    spans, hashes = _legacy_spans(ss, index, True)
    if len(spans) != rec["count"]:
        raise ShardError(f"shard {ss.where(index)}: {len(spans)} samples, record says {rec['count']}")
    rec["spans"], rec["sample_sha256"] = [list(s) for s in spans], hashes
    if not isinstance(rec.get("labels"), list):
        labels = [None] * rec["count"]
        for s in iter_shard(ss, index, decode=_meta_only):
            m = s.get("meta")
            if isinstance(m, dict) and isinstance(m.get("label"), int) and not isinstance(m.get("label"), bool):
                labels[s["__pos__"]] = m["label"]
        if any(y is not None for y in labels):
            rec["labels"] = labels
    return rec


def _meta_only(ext, data, resolution=None, center_crop=True):
    from digin.shards.decode import decode_json

    return decode_json(data) if ext == "json" else None


# ---------------------------------------------------------------------------------------------- key index
class KeyIndex:
    """Where each committed key of a shard set lies (shard index, position), and its label, from the records
    alone (an indexed foreign tar's refused samples are keys too: a stage reading them rejects them with their
    reason, so every input key stays accounted for). A key in two shards is refused (it would be processed
    twice)."""

    def __init__(self, ss: ShardSet, shards=None):
        self.ss = ss
        self.where: dict[str, tuple[int, int]] = {}
        self.label: dict[str, int | None] = {}
        for i in (ss.indices() if shards is None else shards):
            rec = ss.records[i]
            keys = rec.get("keys") or []
            labels = rec.get("labels") if isinstance(rec.get("labels"), list) else None
            for pos, k in enumerate(keys):
                if k in self.where:
                    raise ShardError(f"{ss.dir}: key {k!r} is in shard {self.where[k][0]} and in shard {i}, so it "
                                     "would be processed twice; convert the input again (digin shard) or remove "
                                     "one of them")
                self.where[k] = (i, pos)
                self.label[k] = labels[pos] if labels is not None and pos < len(labels) else None

    def __contains__(self, key) -> bool:
        return key in self.where

    def __len__(self) -> int:
        return len(self.where)

    def keys(self) -> list[str]:
        return list(self.where)

    def labels(self) -> dict[str, int]:
        """key → label; keys whose records carry no label are read for it (sets made before records had labels;
        `digin index` avoids this)."""
        missing = [k for k, y in self.label.items() if y is None and not _labelled(self.ss, self.where[k][0])]
        if missing and not getattr(self, "_read_labels", False):
            self._read_labels = True
            shards = sorted({self.where[k][0] for k in missing})
            for i in shards:
                for s in iter_shard(self.ss, i, decode=_meta_only):
                    m = s.get("meta")
                    if s["__key__"] in self.label and isinstance(m, dict) and isinstance(m.get("label"), int):
                        self.label[s["__key__"]] = int(m["label"])
        return {k: y for k, y in self.label.items() if y is not None}


def _labelled(ss: ShardSet, index: int) -> bool:
    """Whether the record carries labels (then a None is a sample without one, e.g. a refused foreign sample)."""
    return isinstance(ss.records[index].get("labels"), list)


# ---------------------------------------------------------------------------------------------- reading
def is_local(url_or_path: str) -> bool:
    return urlparse(url_or_path).scheme in ("", "file")


def _local_path(where: str) -> str:
    return where[len("file://"):] if where.startswith("file://") else where[5:] if where.startswith("file:") else where


def read_groups(ss: ShardSet, index: int, positions, check_hash: bool = True) -> dict[int, list]:
    """{position: [group key, fields | reject reason]} for the given sample positions of committed shard `index`
    (the groups `reader.group_shard_members` makes). A local shard is opened once and each sample read with one seek,
    checked against its size and hash; a non-local URL is read whole once and checked against its sha256.
    ShardError names the shard and sample when bytes do not match their record."""
    rec = ss.records[index]
    where = ss.where(index)
    naming = "webdataset" if "webdataset" in ss.meta else "digin"
    positions = sorted(set(positions))
    spans, hashes = record_spans(ss, index, check_hash)
    if len(spans) != rec["count"] or len(hashes) != rec["count"]:
        raise ShardError(f"shard {where}: the record lists {len(spans)} spans for {rec['count']} samples")
    out: dict[int, list] = {}
    local = is_local(where)
    whole = None
    if not local:
        whole = ss.read_verified(index, check_hash)
        count_read("shards", len(whole))
    f = None
    try:
        if local:
            path = _local_path(where)
            try:
                f = open(path, "rb")
                size = os.fstat(f.fileno()).st_size
            except OSError as e:
                raise ShardError(f"shard {where}: cannot read ({e})") from None
            if size != rec["bytes"]:
                raise ShardError(f"shard {where}: {size} bytes, manifest says {rec['bytes']} (truncated or altered)")
        for pos in positions:
            off, n = spans[pos]
            if whole is not None:
                data = whole[off:off + n]
            else:
                f.seek(off)
                data = f.read(n)
                count_read("samples", len(data))
            if len(data) != n or (check_hash and sha256_bytes(data)[:SAMPLE_HASH_HEX] != hashes[pos]):
                raise ShardError(f"shard {where}: sample {pos} ({rec['keys'][pos]}) differs from its record "
                                 "(altered after commit)")
            groups = group_shard_members(data + END_OF_ARCHIVE, f"{where} (sample {pos})", naming)
            if len(groups) != 1:
                raise ShardError(f"shard {where}: sample {pos} spans {len(groups)} member groups (bad index)")
            out[pos] = groups[0]
    finally:
        if f is not None:
            f.close()
    return out


def read_keys(ss: ShardSet, wanted: list[tuple[int, int]], resolution=None, required=(), check_hash: bool = True,
              center_crop: bool = True, decode=decode_member, keep=None) -> dict[tuple[int, int], dict]:
    """{(shard, position): sample} for the given committed samples, each read by its span (one seek; see
    digin.shards.keyed), decoded like iter_shard's. `keep`: the only fields decoded (a digin set's other members,
    e.g. the image when a stage needs its label only, are not decoded at all). ShardError when a shard or sample
    differs from its record."""
    by_shard: dict[int, list[int]] = {}
    for i, pos in wanted:
        by_shard.setdefault(i, []).append(pos)
    out = {}
    for i, positions in by_shard.items():
        groups = read_groups(ss, i, positions, check_hash)
        foreign = "webdataset" in ss.meta
        keys = ss.records[i].get("source_keys" if foreign else "keys")
        for pos, (key, fields) in groups.items():
            if keys is not None and key != keys[pos]:
                raise ShardError(f"shard {ss.where(i)}: sample {pos} is {key!r}, the record says {keys[pos]!r}")
            if keep is not None and not foreign and isinstance(fields, dict):
                fields = {f: v for f, v in fields.items() if f in keep}
            out[(i, pos)] = sample_from_group(ss, i, pos, key, fields, resolution, required, center_crop, decode)
    return out
