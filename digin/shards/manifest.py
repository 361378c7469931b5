"""Shard-set manifests: one `manifest.json` per folder plus one commit record per shard.

Layout of a shard set folder:
  manifest.json            global: format, kind, name, classes, source, config (+ config_hash), num_shards
  commits/NNNNNN.json      per shard: index, file, count, bytes, sha256, first_key, last_key, keys, rejects,
                           config_hash. Written last (temp -> fsync -> rename -> fsync dir): the commit point.
  <name>-NNNNNN.tar        the shard itself
A converted dataset also lists its records under manifest["shards"]. A shard without a record does not exist.
An indexed webdataset set (`digin shard source=webdataset`, manifest["webdataset"]) has no tars of its own: each
record's `url` names a foreign tar, `source_keys` the tar's own sample keys, `keys` digin's.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from digin.errors import UserError
from digin.shards.iocount import count_read
from digin.shards.liveness import gone_on_this_host, this_host

FORMAT = "digin-shards/1"
MANIFEST = "manifest.json"
COMMITS = "commits"


class ShardError(UserError, RuntimeError):
    """A shard that does not match its manifest (truncated, altered, wrong count/keys, unreadable)."""


class ConfigMismatch(UserError, RuntimeError):
    """Resuming a stage with a different resolved config (pass force=True to override)."""


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def config_hash(config: dict) -> str:
    return hashlib.sha256(canonical_json(config)).hexdigest()[:16]


def config_differences(old, new, prefix: str = "", limit: int = 8) -> list[str]:
    """Dotted keys whose values differ between two stored configs ('key: old → new'; added/removed keys say so),
    so a refused resume tells the user what changed (e.g. a key a newer digin added with its default)."""
    out: list[str] = []
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            name = f"{prefix}{k}"
            if k not in old:
                out.append(f"{name}: (absent) → {new[k]!r}")
            elif k not in new:
                out.append(f"{name}: {old[k]!r} → (absent)")
            else:
                out += config_differences(old[k], new[k], name + ".", limit)
            if len(out) >= limit:
                break
    elif old != new:
        out.append(f"{prefix.rstrip('.')}: {old!r} → {new!r}")
    return out[:limit]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


TMP_TAG = ".tmp."
TMP_MAX_AGE_S = 3600.0  # a temporary copy of a small JSON file this old has no live writer on any host


def _write_tmp(path: Path, data: bytes) -> Path:
    """`data` in `<path>.tmp.<host>.<pid>`, fsynced. The host and pid in the temporary name let a later run tell a
    leftover of a killed writer from a file being written right now."""
    tmp = path.with_name(f"{path.name}{TMP_TAG}{this_host()}.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def atomic_write_bytes(path, data: bytes):
    """Write to a temporary copy, fsync, rename over `path`, fsync the folder."""
    path = Path(path)
    os.replace(_write_tmp(path, data), path)
    fsync_dir(path.parent)


def _tmp_writer(tmp_name: str, base: str) -> tuple[str | None, int | None]:
    """(host, pid) of the writer of `<base>.tmp.<host>.<pid>` (older digin wrote `<base>.tmp.<pid>`: host None)."""
    rest = tmp_name[len(base) + len(TMP_TAG):]
    host, _, pid = rest.rpartition(".")
    return (host or None), (int(pid) if pid.isdigit() else None)


def remove_stale_tmp(path) -> list[Path]:
    """Remove the temporary copies of `path` (`<name>.tmp.*`) that a killed writer left: those whose writer pid
    is gone on this host, and those older than TMP_MAX_AGE_S (a live writer renames its copy within moments).
    Returns what was removed."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f"{path.name}{TMP_TAG}*"):
        host, pid = _tmp_writer(tmp.name, path.name)
        try:
            old = time.time() - tmp.stat().st_mtime > TMP_MAX_AGE_S
        except FileNotFoundError:
            continue  # renamed by its writer meanwhile
        if old or gone_on_this_host(host, pid):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def write_json(path, obj):
    if Path(path).name == MANIFEST:  # rare writes: the moment to drop copies a killed writer left (any writer)
        remove_stale_tmp(path)
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=False).encode("utf-8") + b"\n")


def commit_path(folder, index: int) -> Path:
    return Path(folder) / COMMITS / f"{index:06d}.json"


def write_commit(folder, record: dict):
    (Path(folder) / COMMITS).mkdir(parents=True, exist_ok=True)
    write_json(commit_path(folder, record["index"]), record)


class CommitExists(UserError, FileExistsError):
    """The shard already has a commit record: another attempt committed it first (its result is the same)."""


def create_once(path, data: bytes) -> bool:
    """Create `path` holding `data` only if it does not exist; False when it does. The complete content is written
    to a temporary file, fsynced, then hard-linked to its name, which fails when the name exists (link(2) never
    replaces, unlike rename): readers never see a half-written file. File systems without hard links fall back
    to an exclusive create (O_EXCL)."""
    path = Path(path)
    tmp = _write_tmp(path, data)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some FUSE / object-store mounts): exclusive create instead
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def write_commit_once(folder, record: dict) -> None:
    """Create the shard's commit record only if none exists (the commit point of a work unit that two attempts may
    run); CommitExists when another attempt committed first."""
    (Path(folder) / COMMITS).mkdir(parents=True, exist_ok=True)
    data = json.dumps(record, indent=1, sort_keys=True, allow_nan=False).encode("utf-8") + b"\n"
    if not create_once(commit_path(folder, record["index"]), data):
        raise CommitExists(f"{commit_path(folder, record['index'])} exists: shard {record['index']} was committed "
                           "by another attempt")


@dataclass
class ShardSet:
    """A committed shard set on disk: global metadata + per-shard records keyed by shard index."""

    dir: Path
    meta: dict
    records: dict[int, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, path) -> "ShardSet":
        path = Path(path)
        folder = path.parent if path.name == MANIFEST or path.is_file() else path
        mpath = folder / MANIFEST
        if not mpath.exists():
            raise FileNotFoundError(f"no {MANIFEST} in {folder}: not a shard set")
        raw = mpath.read_bytes()
        count_read("manifest", len(raw))
        meta = json.loads(raw)
        if meta.get("format") != FORMAT:
            raise ShardError(f"{mpath}: unknown format {meta.get('format')!r}")
        records = {int(r["index"]): r for r in meta.get("shards", [])}
        cdir = folder / COMMITS
        if cdir.is_dir():
            for p in sorted(cdir.glob("*.json")):
                raw = p.read_bytes()
                count_read("manifest", len(raw))
                r = json.loads(raw)
                records[int(r["index"])] = r
        return cls(folder, meta, dict(sorted(records.items())))

    @property
    def name(self) -> str:
        return self.meta.get("name", self.dir.name)

    @property
    def classes(self) -> list[str]:
        return self.meta.get("classes", [])

    def indices(self) -> list[int]:
        return list(self.records)

    def path(self, index: int) -> Path:
        return self.dir / self.records[index]["file"]

    def num_samples(self) -> int:
        return sum(r["count"] for r in self.records.values())

    def where(self, index: int) -> str:
        """The shard's location for messages: its path, or the URL of an indexed foreign webdataset tar."""
        return self.records[index].get("url") or str(self.path(index))

    def read_verified(self, index: int, check_hash: bool = True) -> bytes:
        """The shard's bytes, after checking size and sha256 against its record (ShardError names the shard).
        A record with a `url` (digin shard source=webdataset) is read from there through webdataset's gopen."""
        from digin.shards.tario import read_url

        rec = self.records[index]
        p = self.where(index)
        try:
            data = read_url(rec["url"]) if rec.get("url") else self.path(index).read_bytes()
        except OSError as e:
            raise ShardError(f"shard {p}: cannot read ({e})") from None
        if len(data) != rec["bytes"]:
            raise ShardError(f"shard {p}: {len(data)} bytes, manifest says {rec['bytes']} (truncated or altered)")
        if check_hash and sha256_bytes(data) != rec["sha256"]:
            raise ShardError(f"shard {p}: sha256 differs from the manifest (altered after commit)")
        return data

    def verify(self, check_hash: bool = True) -> list[str]:
        """Problems found over all committed shards (empty list = all good)."""
        problems = []
        for i in self.records:
            try:
                self.read_verified(i, check_hash)
            except ShardError as e:
                problems.append(str(e))
        expected = self.meta.get("num_shards")
        if expected is not None:
            missing = sorted(set(range(expected)) - set(self.records))
            if missing:
                problems.append(f"{self.dir}: {len(missing)} shard(s) not committed: {missing[:10]}")
        return problems
