"""Shard-set manifests: one `manifest.json` per folder plus one commit record per shard.

Layout of a shard set folder:
  manifest.json            global: format, kind, name, classes, source, config (+ config_hash), num_shards
  commits/NNNNNN.json      per shard: index, file, count, bytes, sha256, first_key, last_key, keys, rejects,
                           config_hash. Written last (temp -> fsync -> rename -> fsync dir): the commit point.
  <name>-NNNNNN.tar        the shard itself
A converted dataset also lists its records under manifest["shards"]. A shard without a record does not exist.
A record that does not parse or lacks its fields (a disk error, a non-atomic copy) is damaged: `ShardSet.load`
refuses the set in one line naming the file and the fix (DamagedRecord), or with `damaged="skip"` leaves that shard
out and lists it in `ShardSet.damaged`; `digin verify` reports the same records as bad_record.
An indexed webdataset set (`digin shard source=webdataset`, manifest["webdataset"]) has no tars of its own: each
record's `url` names a foreign tar, `source_keys` the tar's own sample keys, `keys` digin's.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from digin.errors import UserError
from digin.shards.iocount import count_read
from digin.shards.liveness import gone_on_this_host, this_host
from digin.shards.tario import TarFormatError, read_url, tar_extent

FORMAT = "digin-shards/1"
MANIFEST = "manifest.json"
COMMITS = "commits"


class ShardError(UserError, RuntimeError):
    """A shard that does not match its manifest (truncated, altered, wrong count/keys, unreadable)."""


class DamagedRecord(ShardError):
    """A manifest or commit record that does not parse or lacks its fields: one line naming the file and the fix."""


class ConfigMismatch(UserError, RuntimeError):
    """Resuming a stage with a different resolved config (pass force=True to override)."""


COMMIT_NAME_RE = re.compile(r"^(\d{6,})\.json$")  # commit_path(): f"{index:06d}.json"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Field -> type every commit record has (ShardWriter.commit always writes them): readers and `digin verify` agree
# that a record without them commits nothing.
RECORD_FIELDS = {"index": int, "file": str, "count": int, "bytes": int, "sha256": str, "keys": list}


def record_problem(rec) -> str | None:
    """Why a commit record cannot be trusted, or None."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    missing = [f for f in RECORD_FIELDS if f not in rec]
    if missing:
        return f"lacks field(s) {', '.join(missing)}"
    wrong = [f for f, t in RECORD_FIELDS.items() if not isinstance(rec[f], t) or isinstance(rec[f], bool)]
    if wrong:
        return f"field(s) of the wrong type: {', '.join(wrong)}"
    if min(rec["index"], rec["count"], rec["bytes"]) < 0:
        return "negative index, count or bytes"
    if not SHA256_RE.match(rec["sha256"]):
        return f"sha256 {rec['sha256'][:80]!r} is not 64 lowercase hex digits"
    name = rec["file"]
    if name in ("", ".", "..") or os.path.basename(name) != name or "\\" in name or name.startswith("."):
        return f"file {name[:80]!r} is not a plain file name inside the folder"
    if not all(isinstance(k, str) for k in rec["keys"]):
        return "keys must be strings"
    if len(rec["keys"]) != rec["count"]:
        return f"count {rec['count']} but {len(rec['keys'])} keys"
    return None


def read_record(path: Path) -> tuple[dict | None, str | None]:
    """(record, None), or (None, why it is damaged) for one commit record file."""
    try:
        raw = path.read_bytes()
        count_read("manifest", len(raw))
        rec = json.loads(raw)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # (an I/O error on one record: that record only)
        return None, f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    m = COMMIT_NAME_RE.match(path.name)
    problem = record_problem(rec)
    if not problem and m and rec["index"] != int(m.group(1)):
        problem = f"index {rec['index']} but the file name says {int(m.group(1))}"
    return (None, problem) if problem else (rec, None)


def damaged_message(path: Path, index: int, why: str) -> str:
    """The one line a damaged commit record gets everywhere: the file, what is wrong, what to do."""
    folder = path.parent.parent
    return (f"{path}: damaged commit record ({why}), so shard {index} of {folder} counts as not committed; delete this "
            f"file and run the command that writes {folder} again to redo it (digin verify path={folder} lists "
            "every damaged record)")


def damaged_records(folder) -> dict[int, str]:
    """index -> damaged_message for every commit record of `folder` that does not parse or lacks its fields."""
    out = {}
    cdir = Path(folder) / COMMITS
    for p in sorted(cdir.glob("*.json")) if cdir.is_dir() else ():
        m = COMMIT_NAME_RE.match(p.name)
        _, why = read_record(p)
        if why and m:
            out[int(m.group(1))] = damaged_message(p, int(m.group(1)), why)
    return out


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


def read_manifest(mpath: Path) -> dict:
    """A shard set's manifest.json; DamagedRecord (one line, the fix) when it does not parse or is not one."""
    try:
        raw = mpath.read_bytes()
        count_read("manifest", len(raw))
        meta = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise DamagedRecord(f"{mpath}: damaged manifest ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                            "a stage output: run the same command again (it rewrites the manifest once its commit "
                            "records prove the same config and plan); a dataset: run its `digin shard` command "
                            "again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise ShardError(f"{mpath}: unknown format {fmt!r} (want {FORMAT!r})")
    return meta


@dataclass
class ShardSet:
    """A committed shard set on disk: global metadata + per-shard records keyed by shard index. `damaged`: shard
    index -> one-line message for each damaged commit record (ShardSet.load(..., damaged="skip") only)."""

    dir: Path
    meta: dict
    records: dict[int, dict] = field(default_factory=dict)
    damaged: dict[int, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path, damaged: str = "raise") -> "ShardSet":
        """The set in `path` (a folder or its manifest.json). A damaged commit record (it does not parse or lacks
        its fields) raises DamagedRecord naming it and the fix (damaged="raise"), or is left out and listed in
        `damaged` ("skip"). A converted dataset also lists its records in the manifest: those stand in for a
        damaged copy under commits/."""
        path = Path(path)
        folder = path.parent if path.name == MANIFEST or path.is_file() else path
        mpath = folder / MANIFEST
        if not mpath.exists():
            raise FileNotFoundError(f"no {MANIFEST} in {folder}: not a shard set")
        meta = read_manifest(mpath)
        records, bad = {}, {}
        for n, r in enumerate(meta.get("shards") or []):
            problem = record_problem(r)
            if problem:
                bad[r["index"] if isinstance(r, dict) and isinstance(r.get("index"), int) else -1 - n] = (
                    f"{mpath}: shards[{n}] is a damaged record ({problem}); convert the set again")
            else:
                records[r["index"]] = r
        cdir = folder / COMMITS
        for p in sorted(cdir.glob("*.json")) if cdir.is_dir() else ():
            m = COMMIT_NAME_RE.match(p.name)
            if not m:
                continue  # not a commit record name (digin verify reports it as a stray file)
            index = int(m.group(1))
            rec, why = read_record(p)
            if rec is not None:
                records[index] = rec
                bad.pop(index, None)
            elif index not in records:  # (a manifest copy of the record stands in for it)
                bad[index] = damaged_message(p, index, why)
        if bad and damaged == "raise":
            first = bad[min(bad)]
            raise DamagedRecord(first + (f" ({len(bad) - 1} more damaged record(s))" if len(bad) > 1 else ""))
        return cls(folder, meta, dict(sorted(records.items())), dict(sorted(bad.items())))

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

    def read_verified(self, index: int, check_hash: bool = True, check_tar: bool = True) -> bytes:
        """The shard's bytes, after checking size and sha256 against its record (ShardError names the shard) and that
        they are a complete tar (check_tar=False: the caller groups the members, which checks it too).
        A record with a `url` (digin shard source=webdataset) is read from there through webdataset's gopen."""
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
        if check_tar:
            _require_complete_tar(data, p)
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


def _require_complete_tar(data: bytes, where: str) -> None:
    """A whole shard read must be a complete tar (end-of-archive marker, every member header readable): a record of
    a cut tar (made before indexing refused them) is refused here too."""
    try:
        tar_extent(data)
    except TarFormatError as e:
        raise ShardError(f"shard {where}: {e}") from None
