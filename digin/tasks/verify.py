"""Check committed shard sets on disk: records, sizes, sha256, duplicate keys, stray and leftover files.

  digin verify path=/data/shards/imagenet-val
  digin verify path=/runs/diff deep=true          # every shard set below the folder; also open each tar
  digin verify path=/runs/uvce json=true > report.json

Prints one line per problem (kind, path, detail) and a summary; exit code 0 when clean, 1 otherwise.
check_hash=false skips the sha256 pass (sizes and records only); deep=true also groups the tar members and
compares count and keys with the record, and checks that JSON, safetensors headers and image headers parse.
Nothing is repaired. A resume of the stage redoes shards whose tar is missing or has the wrong size; for a
sha256 or deep finding, delete that tar and resume.
"""
from __future__ import annotations

import json as _json
from dataclasses import dataclass
from digin.fields import key
from digin.stages.verify import verify_tree


@dataclass
class Config:
    path: str = key("???", "a shard-set folder, or a folder holding several (a task output)")
    check_hash: bool = key(True, "re-hash every committed tar (reads all data)")
    deep: bool = key(False, "also open each tar: member groups, count, keys, JSON / safetensors / image headers")
    json: bool = key(False, "print the report as JSON instead of lines", results=False)
    progress: bool = key(True, "progress on stderr when there are many shards", results=False)


def run(cfg: Config) -> int:
    report = verify_tree(cfg.path, check_hash=cfg.check_hash, deep=cfg.deep, progress=cfg.progress)
    if cfg.json:
        print(_json.dumps(report.to_dict(), indent=1, sort_keys=True))
    else:
        for p in report.problems:
            print(f"{p['kind']}\t{p['path']}\t{p['detail']}")
        print(f"[verify] {report.summary_line()}", flush=True)
    return 0 if report.ok else 1
