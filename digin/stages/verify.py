"""Offline check of committed shard sets on disk (`digin verify`). Reports, never repairs.

For each shard-set folder (one holding `manifest.json`): every commit record parses and has its fields; every
committed tar exists with the recorded size and sha256; no sample key is in two shards; nothing else lies in the
folder (tars without a record, `.partial`/`.tmp` leftovers of an interrupted write, unknown files). `deep=True`
also opens each tar: member groups, count and keys must match the record, and JSON / safetensors headers /
image headers must parse (no tensor or pixel data is loaded).

A problem is {kind, path, detail}; the kinds are listed in KINDS.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from digin.shards.manifest import (COMMIT_NAME_RE, COMMITS, FORMAT, MANIFEST, ShardError, ShardSet, read_record,
                                   record_problem, sha256_bytes, sha256_file)
from digin.shards.members import member_problem
from digin.shards.progress import Progress
from digin.shards.reader import group_shard_members
from digin.shards.wdsindex import verify_foreign_shard
from digin.shards.writer import PARTIAL

KINDS = {
    "manifest": "manifest.json missing, unparsable or of an unknown format",
    "bad_record": "a commit record that does not parse, lacks fields, or contradicts another record",
    "missing": "a committed shard whose tar file is gone",
    "size": "a committed tar whose size differs from its record",
    "sha256": "a committed tar whose sha256 differs from its record",
    "unreadable": "a committed tar that cannot be read (I/O error)",
    "tar": "deep: a committed tar that is not a readable tar archive",
    "count": "deep: number of samples in the tar differs from the record",
    "keys": "deep: sample keys in the tar differ from the record",
    "member": "deep: a member that is refused or does not decode (bad name, duplicate, bad JSON/safetensors/image)",
    "duplicate_key": "a sample key committed in two shards (or twice in one record)",
    "config_hash": "a record written under another config than the manifest's (and not forced over)",
    "incomplete": "fewer committed shards than the manifest's num_shards",
    "plan": "a committed unit whose keys differ from the stage's work plan (plan.json), or a plan file that does not "
            "parse or belongs to another plan than the manifest's",
    "leftover": "a *.partial or *.tmp* file left by an interrupted write",
    "stray": "a file or folder the shard-set code never writes (includes tars without a commit record)",
    "not_found": "no shard set in or below the given path",
}

# What may lie in a shard-set folder besides the committed tars, from reading the code that writes there
# (ShardWriter, run_stage, convert, toy caption shards). Kept deliberately short: anything else
# is reported. A sub-folder with its own manifest.json is a nested shard set, checked on its own.
ALLOWED_FILES = frozenset({MANIFEST, "plan.json"})  # plan.json: a stage's work plan (unit → item keys)
ALLOWED_DIRS = frozenset({
    COMMITS,  # commits/NNNNNN.json, checked record by record
    "logs",   # run_stage's per-rank JSONL logs: not data, contents not checked
    "locks",  # run lock files (R9): not data, contents not checked
    "claims",  # schedule=dynamic claim records: not data, contents not checked
})
MANY_SHARDS = 20  # show progress from this many shards on


@dataclass
class VerifyReport:
    problems: list[dict] = field(default_factory=list)  # each {"kind", "path", "detail"}
    sets: list[str] = field(default_factory=list)  # shard-set folders checked
    shards: int = 0  # committed shards checked
    samples: int = 0  # samples in those shards (from the records)
    bytes: int = 0  # bytes read from disk (hashing / deep checks)
    seconds: float = 0.0

    def add(self, kind: str, path, detail: str):
        assert kind in KINDS, kind
        self.problems.append({"kind": kind, "path": str(path), "detail": detail})

    @property
    def ok(self) -> bool:
        return not self.problems

    def kinds(self) -> dict[str, int]:
        return dict(Counter(p["kind"] for p in self.problems))

    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / max(self.seconds, 1e-9)

    def to_dict(self) -> dict:
        return {"ok": self.ok, **asdict(self), "mb_per_s": round(self.mb_per_s(), 3), "kinds": self.kinds()}

    def summary_line(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds().items()))
        verdict = f"{len(self.problems)} problem(s) ({kinds})" if self.problems else "no problems"
        return (f"{len(self.sets)} shard set(s), {self.shards} shards, {self.samples} samples, "
                f"{self.bytes / 1e6:.1f} MB read in {self.seconds:.1f} s ({self.mb_per_s():.1f} MB/s): {verdict}")


# ---------------------------------------------------------------------------------------------- loading
def _is_leftover(name: str) -> bool:
    # ShardWriter streams to `<file>.partial`; atomic_write_bytes writes `<name>.tmp.<pid>` before renaming.
    return name.endswith(PARTIAL) or ".tmp" in name


@dataclass
class _Loaded:
    """A shard set whose records all passed `record_problem`, plus where each record came from."""

    ss: ShardSet
    source: dict[int, Path]  # index -> commit record file (or manifest.json for manifest-only records)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"{type(e).__name__}: {str(e)[:200]}"


def _load_manifest(folder: Path, report: VerifyReport) -> dict | None:
    mpath = folder / MANIFEST
    meta, err = _read_json(mpath)
    if err:
        report.add("manifest", mpath, f"cannot read: {err}")
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        report.add("manifest", mpath, f"unknown format {fmt!r} (want {FORMAT!r})")
        return None
    return meta


def _load_set(folder: Path, report: VerifyReport) -> _Loaded | None:
    """Parse the manifest and every commit record on its own (ShardSet.load stops at the first bad one)."""
    meta = _load_manifest(folder, report)
    if meta is None:
        return None
    records: dict[int, dict] = {}
    source: dict[int, Path] = {}
    mpath = folder / MANIFEST
    for n, rec in enumerate(meta.get("shards") or []):  # converted sets also list their records here
        problem = record_problem(rec)
        if problem:
            report.add("bad_record", mpath, f"shards[{n}]: {problem}")
            continue
        records[rec["index"]], source[rec["index"]] = rec, mpath
    cdir = folder / COMMITS
    for p in sorted(cdir.iterdir()) if cdir.is_dir() else ():
        if _is_leftover(p.name):
            report.add("leftover", p, "temporary commit record left by an interrupted write")
            continue
        m = COMMIT_NAME_RE.match(p.name)
        if not m or not p.is_file():
            report.add("stray", p, "not a commit record (commits/ holds only NNNNNN.json)")
            continue
        rec, problem = read_record(p)  # what the readers see: a damaged record commits nothing
        if problem:
            kept = int(m.group(1)) in records
            fallback = "the manifest's copy of it is used" if kept else "it counts as not committed"
            report.add("bad_record", p, f"{problem}; {fallback}: delete this record and run the command that writes "
                                        "the set again to redo that shard")
            continue
        if rec["index"] in records and records[rec["index"]] != rec:
            report.add("bad_record", p, "differs from the manifest's own record of this shard")
            continue
        records[rec["index"]], source[rec["index"]] = rec, p
    return _Loaded(ShardSet(folder, meta, dict(sorted(records.items()))), source)


# ---------------------------------------------------------------------------------------------- record checks
def _check_records(ld: _Loaded, report: VerifyReport):
    """Problems visible from the records alone: shared files, duplicate keys, foreign config, missing shards."""
    ss, meta = ld.ss, ld.ss.meta
    by_file: dict[str, int] = {}
    for i, rec in ss.records.items():
        if rec["file"] in by_file:
            report.add("bad_record", ld.source[i],
                       f"shard {i} names file {rec['file']}, as shard {by_file[rec['file']]} does")
        by_file.setdefault(rec["file"], i)
    _check_duplicate_keys(ld, report)
    _check_config_hashes(ld, report)
    _check_plan(ld, report)
    expected = meta.get("num_shards")
    if isinstance(expected, int):
        missing = sorted(set(range(expected)) - set(ss.records))
        if missing:
            report.add("incomplete", ss.dir, f"{len(missing)} of {expected} shards not committed: {missing[:10]}"
                                             + (" ..." if len(missing) > 10 else ""))


def _check_plan(ld: _Loaded, report: VerifyReport):
    """A stage's units against its plan.json: each record holds exactly its unit's keys (written, rejected or
    skipped), in plan order."""
    path = ld.ss.dir / "plan.json"
    want_hash = (ld.ss.meta.get("plan") or {}).get("hash")
    if not path.exists():
        return
    plan, err = _read_json(path)
    if err or not isinstance(plan, dict) or not isinstance(plan.get("units"), list):
        report.add("plan", path, err or "not a work plan (no unit list)")
        return
    if want_hash is not None and plan.get("hash") != want_hash:
        report.add("plan", path, f"plan {plan.get('hash')!r}, the manifest's is {want_hash!r}")
        return
    for i, rec in ld.ss.records.items():
        unit = plan["units"][i] if i < len(plan["units"]) else None
        got = sorted([*rec["keys"], *(r.get("key") for r in rec.get("rejects") or [])])
        if unit is None or got != sorted(unit.get("keys") or []):
            report.add("plan", ld.source[i], f"unit {i} holds {len(got)} keys that differ from its "
                                             f"{len(unit.get('keys') or []) if unit else 0} planned keys")


def _check_config_hashes(ld: _Loaded, report: VerifyReport):
    meta = ld.ss.meta
    current, forced = meta.get("config_hash"), meta.get("forced_over")
    if not isinstance(current, str):
        return
    # hashes a forced resume knowingly kept (runner._prepare_output records them in forced_over)
    allowed = {current, *(h for h in (forced if isinstance(forced, list) else []) if isinstance(h, str))}
    for i, rec in ld.ss.records.items():
        h = rec.get("config_hash")
        if h is not None and (not isinstance(h, str) or h not in allowed):
            report.add("config_hash", ld.source[i], f"shard {i} was written with config {h!r}, the manifest has "
                                                    f"{current!r}")


def _check_duplicate_keys(ld: _Loaded, report: VerifyReport):
    first: dict[str, int] = {}
    clashes: dict[tuple[int, int], list[str]] = {}  # (shard, earlier shard) -> keys; one problem per pair
    for i, rec in ld.ss.records.items():
        for k in rec["keys"]:
            if k in first:
                clashes.setdefault((i, first[k]), []).append(k)
            else:
                first[k] = i
    for (i, j), keys in clashes.items():
        where = "twice in this shard" if i == j else f"also in shard {j}"
        report.add("duplicate_key", ld.source[i], f"shard {i}: {len(keys)} key(s) {where}, e.g. {keys[0]!r}")


# ---------------------------------------------------------------------------------------------- file checks
def _check_shard(ss: ShardSet, index: int, check_hash: bool, deep: bool, report: VerifyReport) -> int:
    """Size, sha256 and (deep) contents of one committed tar; returns the bytes read."""
    rec, p = ss.records[index], ss.path(index)
    if rec.get("url"):  # an indexed foreign webdataset tar (digin shard source=webdataset)
        return verify_foreign_shard(ss, index, check_hash, deep, report.add)
    if not p.is_file():
        report.add("missing", p, f"shard {index} is committed but its tar file is missing")
        return 0
    size = p.stat().st_size
    if size != rec["bytes"]:
        report.add("size", p, f"shard {index}: {size} bytes, record says {rec['bytes']} (truncated or altered)")
        return 0
    if not (check_hash or deep):
        return 0
    try:
        data = p.read_bytes() if deep else None
        digest = (sha256_bytes(data) if deep else sha256_file(p)) if check_hash else None
    except OSError as e:
        report.add("unreadable", p, f"shard {index}: {e}")
        return 0
    if check_hash and digest != rec["sha256"]:
        report.add("sha256", p, f"shard {index}: sha256 {digest[:16]}… differs from the record's "
                                f"{rec['sha256'][:16]}… (altered after commit)")
        return size  # contents known bad: a deep pass would only restate it
    if deep:
        _check_members(ss, index, data, report)
    return size


def _check_members(ss: ShardSet, index: int, data: bytes, report: VerifyReport):
    rec, p = ss.records[index], ss.path(index)
    try:
        groups = group_shard_members(data, str(p))
    except ShardError as e:
        report.add("tar", p, str(e))
        return
    keys = [g[0] for g in groups]
    if len(keys) != rec["count"]:
        report.add("count", p, f"shard {index}: {len(keys)} samples in the tar, record says {rec['count']}")
    elif keys != rec["keys"]:
        at = next(n for n, (a, b) in enumerate(zip(keys, rec["keys"])) if a != b)
        report.add("keys", p, f"shard {index}: sample {at} is {keys[at]!r} in the tar, {rec['keys'][at]!r} "
                              "in the record")
    for key, fields in groups:
        if isinstance(fields, str):  # reader's reason: bad member name, duplicate field/key, ...
            report.add("member", p, f"shard {index} sample {key}: {fields}")
            continue
        for name, (ext, payload) in sorted(fields.items()):
            problem = member_problem(ext, payload)
            if problem:
                report.add("member", p, f"shard {index} sample {key} member {name}.{ext}: {problem}")


def _check_folder_files(ss: ShardSet, report: VerifyReport):
    """Everything at the top of the folder must be the manifest, an allowed folder, or a committed tar."""
    committed = {rec["file"] for rec in ss.records.values()}
    for p in sorted(ss.dir.iterdir()):
        name = p.name
        if name in committed or (name in ALLOWED_FILES and p.is_file()):
            continue
        if _is_leftover(name):
            report.add("leftover", p, "left by an interrupted write (a resume removes it)")
        elif p.is_dir():
            if name not in ALLOWED_DIRS and not (p / MANIFEST).is_file():
                report.add("stray", p, "unknown folder in a shard set")
        elif name.endswith(".tar"):
            report.add("stray", p, "tar file without a valid commit record (not part of the shard set)")
        else:
            report.add("stray", p, "unknown file in a shard set")


# ---------------------------------------------------------------------------------------------- entry points
def find_shard_sets(root) -> list[Path]:
    """Every folder in or below `root` that holds a manifest.json (not looking inside commits/logs/locks)."""
    root = Path(root)
    if root.name == MANIFEST and root.is_file():
        root = root.parent
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if MANIFEST in filenames:
            found.append(Path(dirpath))
            dirnames[:] = [d for d in dirnames if d not in ALLOWED_DIRS]
        dirnames.sort()
    return sorted(found)


def _verify_folders(folders: list[Path], check_hash: bool, deep: bool, progress: bool) -> VerifyReport:
    report, t0 = VerifyReport(sets=[str(f) for f in folders]), time.monotonic()
    loaded = [ld for ld in (_load_set(Path(f), report) for f in folders) if ld is not None]
    n_shards = sum(len(ld.ss.records) for ld in loaded)
    bar = Progress(sum(ld.ss.num_samples() for ld in loaded), "verify",
                   enabled=progress and n_shards >= MANY_SHARDS and (check_hash or deep))
    try:
        for ld in loaded:
            _check_records(ld, report)
            for i in ld.ss.records:
                report.bytes += _check_shard(ld.ss, i, check_hash, deep, report)
                report.shards += 1
                report.samples += ld.ss.records[i]["count"]
                bar.update(ld.ss.records[i]["count"])
            _check_folder_files(ld.ss, report)
    finally:
        bar.close()
    report.problems.sort(key=lambda p: (p["path"], p["kind"]))
    report.seconds = time.monotonic() - t0
    return report


def verify_shard_set(folder, check_hash: bool = True, deep: bool = False, progress: bool = False) -> VerifyReport:
    """Check one shard-set folder (see the module docstring); a folder without manifest.json is a problem."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        report = VerifyReport()
        report.add("manifest", folder / MANIFEST, "no manifest.json: not a shard set")
        return report
    return _verify_folders([folder], check_hash, deep, progress)


def verify_tree(root, check_hash: bool = True, deep: bool = False, progress: bool = False) -> VerifyReport:
    """Check every shard set in or below `root` (a task output folder holds one per stage)."""
    folders = find_shard_sets(root)
    if not folders:
        report = VerifyReport()
        report.add("not_found", root, "no manifest.json in or below this path")
        return report
    return _verify_folders(folders, check_hash, deep, progress)
