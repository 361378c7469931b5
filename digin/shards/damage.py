"""What a resume does with damaged state in its output folder (a disk error, a non-atomic copy), before any unit runs.

- A commit record that does not parse or lacks its fields, whose unit has no tar file: it commits nothing that
  exists, so it is removed and the unit redone (one line on stderr). Provable: a commit record is written after its
  tar is renamed into place, and names it.
- A damaged record whose unit's tar exists: it may have committed that tar, so it is left alone; the run leaves the
  unit out (`ShardSet.load(..., damaged="skip")`) and reports it with the fix (delete the record, run again).
- A missing or damaged manifest.json beside commit records: rewritten only when every readable record carries this
  run's plan hash and config hash (force: the plan hash), else refused in one line (ConfigMismatch).
"""
from __future__ import annotations

import sys
from pathlib import Path

from digin.shards.manifest import (COMMITS, MANIFEST, ConfigMismatch, DamagedRecord, commit_path, damaged_records,
                                   read_manifest, read_record)


def _unit_tars(output: Path, stage: str, j: int) -> list[Path]:
    """Every tar an attempt at unit j may have committed (static: <stage>-NNNNNN.tar, dynamic: <stage>-NNNNNN.e*)."""
    return [p for p in output.glob(f"{stage}-{j:06d}.*") if p.name.endswith(".tar")]


def remove_unbacked_records(output: Path, stage: str) -> list[int]:
    """Remove the damaged commit records whose unit has no tar file; returns their units."""
    removed = []
    for j in damaged_records(output):
        path = commit_path(output, j)
        if not _unit_tars(output, stage, j) and path.exists():
            path.unlink()
            removed.append(j)
            print(f"[{stage}] {path}: removed a damaged commit record whose unit has no tar file (nothing committed "
                  f"is lost); unit {j} is redone", file=sys.stderr, flush=True)
    return removed


def _units(indices: list[int], limit: int = 8) -> str:
    return ", ".join(map(str, indices[:limit])) + (f", ... ({len(indices)} in all)" if len(indices) > limit else "")


def old_manifest(output: Path, stage: str, chash: str, plan_hash: str, force: bool) -> dict | None:
    """The output's previous manifest, or None when there is none to compare with (a new output, or a missing or
    damaged manifest that the commit records prove to be this run's: then rewritten)."""
    mpath = output / MANIFEST
    try:
        if mpath.exists():
            return read_manifest(mpath)
        what = f"{mpath} is missing"
    except DamagedRecord as e:
        what = str(e).split(";")[0]
    records = [r for p in sorted((output / COMMITS).glob("*.json")) if (r := read_record(p)[0]) is not None]
    if not records:
        return None
    other_plan = [r["index"] for r in records if r.get("plan_hash") != plan_hash]
    other_config = [r["index"] for r in records if r.get("config_hash") != chash]
    if other_plan or (other_config and not force):
        which = "work plan" if other_plan else "config"
        raise ConfigMismatch(f"{what}, and the commit records of unit(s) {_units(other_plan or other_config)} were "
                             f"written with another {which} than this run's: restore the manifest, or use another "
                             "output folder")
    print(f"[{stage}] {what}; rewritten: its {len(records)} commit record(s) carry this run's "
          f"{'plan (force: other configs kept as forced over)' if other_config else 'config and plan'}",
          file=sys.stderr, flush=True)
    if other_config:  # force: what _prepare_output records as forced over
        hashes = sorted({r.get("config_hash") for r in records if r.get("config_hash") != chash}, key=str)
        return {"plan": {"hash": plan_hash}, "config_hash": hashes[0], "forced_over": hashes}
    return None


def settle_output(output: Path, stage: str, chash: str, plan_hash: str, force: bool) -> dict | None:
    """remove_unbacked_records, then old_manifest (see the module docstring)."""
    remove_unbacked_records(output, stage)
    return old_manifest(output, stage, chash, plan_hash, force)
