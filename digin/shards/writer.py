"""Atomic shard writer: stream to `<file>.partial`, fsync, rename, fsync dir, then write the commit record.

The tar itself is written by webdataset's TarWriter (digin.shards.tario) on a file object that hashes and counts
the bytes on their way to disk; the commit protocol around it is digin's."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from digin.errors import UserError
from digin.shards.encode import encode_value
from digin.shards.spans import SpanHashes, label_of_fields
from digin.shards.manifest import fsync_dir, write_commit, write_commit_once
from digin.shards.naming import check_key, encode_key, member_name
from digin.shards.tario import open_tar_writer, write_sample

PARTIAL = ".partial"


class PartialExists(UserError, FileExistsError):
    """Another writer has the shard's partial file open: two writers of one shard must never share it."""


def remove_orphan_partial(folder, file_name: str):
    """Delete `<file>.partial` left by a killed writer. Only for a caller that owns the shard (a run lock, or
    the single writer of a work list): a live writer's partial must not be pulled from under it."""
    (Path(folder) / (file_name + PARTIAL)).unlink(missing_ok=True)


class _HashingFile:
    """File wrapper that hashes and counts what is written, the whole file and each sample's span (no second read
    of the shard to commit it)."""

    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0
        self.spans = SpanHashes()

    def write(self, b):
        if self.f is None:  # discarded: the tar stream's last flush goes nowhere
            return len(b)
        self.h.update(b)
        self.spans.feed(self.n, b)
        self.n += len(b)
        return self.f.write(b)

    def tell(self):
        return self.n


def _open_partial(path: Path, index: int, folder):
    """The one place the partial file is created — exclusively: a second writer of this shard fails here instead of
    writing into the same file."""
    try:
        return open(path, "xb")
    except FileExistsError:
        raise PartialExists(f"{path} exists: another process is writing shard {index} of {folder} "
                            "(or a killed one left it; a resume of the stage that owns it removes it)") from None


class ShardWriter:
    """Writes shard `index` of a shard set; nothing is visible to readers until `commit()` returns."""

    def __init__(self, folder, index: int, file_name: str, extra: dict | None = None, once: bool = False):
        """once: the commit record is created only if none exists (CommitExists otherwise, and this attempt's tar is
        removed): for a work unit that two attempts may run (schedule=dynamic). `file_name` must then be unique to
        the attempt, since the loser deletes its own file."""
        self.folder, self.index, self.file_name, self.once = Path(folder), index, file_name, once
        self.final = self.folder / file_name
        self.partial = self.folder / (file_name + PARTIAL)
        self.extra = dict(extra or {})
        self.keys: list[str] = []
        self.spans: list[list[int]] = []
        self.labels: list = []
        self._seen: set[str] = set()
        self._raw = _open_partial(self.partial, index, self.folder)
        self._hf = _HashingFile(self._raw)
        self._tar = open_tar_writer(self._hf)

    def add(self, key: str, fields: dict):
        """fields: name -> value (PIL.Image/uint8 array -> png, dict -> json, str -> txt, tensor dict ->
        safetensors) or name -> (ext, bytes) for pre-encoded payloads (kept byte-for-byte)."""
        check_key(key)
        if key in self._seen:
            raise ValueError(f"duplicate key {key!r} in shard {self.index}")
        members = {}
        for name, v in fields.items():
            try:
                ext, data = v if isinstance(v, tuple) else encode_value(v)
            except (ValueError, TypeError) as e:  # name the field (NaN in a JSON dict, a float array, ...)
                raise type(e)(f"field {name!r} of {key}: {e}") from None
            member_name(key, name, ext)  # checks the field name and extension
            members[f"{name}.{ext}"] = data
        start = self._tar.tarstream.offset  # logical offsets = file offsets (plain tar, no compression)
        self._hf.spans.begin(start)
        write_sample(self._tar, encode_key(key), members)  # members in sorted order: independent of dict order
        end = self._tar.tarstream.offset
        self._hf.spans.end(end)
        self.spans.append([start, end - start])
        self.labels.append(label_of_fields(fields))
        self.keys.append(key)
        self._seen.add(key)

    def commit(self, rejects: list | None = None) -> dict:
        self._tar.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self.partial, self.final)
        fsync_dir(self.folder)
        record = {
            "index": self.index, "file": self.file_name, "count": len(self.keys), "bytes": self._hf.n,
            "sha256": self._hf.h.hexdigest(), "first_key": self.keys[0] if self.keys else None,
            "last_key": self.keys[-1] if self.keys else None, "keys": list(self.keys),
            "spans": self.spans, "sample_sha256": self._hf.spans.finish(), "labels": list(self.labels),
            "rejects": list(rejects or []), **self.extra,
        }
        if self.once:
            try:
                write_commit_once(self.folder, record)
            except BaseException:
                self.final.unlink(missing_ok=True)  # this attempt's file: another attempt's record names its own
                raise
        else:
            write_commit(self.folder, record)
        return record

    def discard(self):
        self._hf.f = None  # what the tar stream still flushes on close goes nowhere
        try:
            self._tar.close()
        finally:
            try:
                self._raw.close()
            finally:
                self.partial.unlink(missing_ok=True)


def write_shard(folder, index: int, file_name: str, samples, extra: dict | None = None, rejects=()) -> dict:
    """Write and commit one whole shard from (key, fields) pairs; a failure leaves nothing behind."""
    w = ShardWriter(folder, index, file_name, extra)
    try:
        for key, fields in samples:
            w.add(key, fields)
        return w.commit(list(rejects))
    except BaseException:
        w.discard()
        raise
