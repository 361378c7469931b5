"""Where a running or finished stage stands, on one screen, from its output folder alone:

  digin status out=/runs/uvce-imagenet
  digin status out=/runs/diff/results json=true

Reads the manifest (the plan: items, units), the commit records (units and items done, rejected / skipped) and
every rank's JSONL log (its last progress or heartbeat event, rate, non-finite and no-improvement results) and
lock (is the rank's process still there). A rank is `running` when its lock is held and its log moved in the last
`stall_s` seconds, `stalled` when its lock is held but its log is silent longer than that, `dead` when its lock
names a process that is gone on this host, `finished` when its log ends with a summary. ETA: the items left over the
rate of the ranks still running. Meant for a login node while a Slurm job runs; exit code 0 (1 for no stage here).
"""
from __future__ import annotations

from dataclasses import dataclass

from digin.fields import RATE, key
from digin.stages.status import show_status


@dataclass
class Config:
    out: str = key("???", "a stage's output folder (the one holding manifest.json, commits/, logs/)", results=False)
    json: bool = key(False, "one JSON object instead of the screen", results=False)
    stall_s: float = key(600.0, "a held lock whose rank has logged nothing for this long is reported stalled",
                                rule=RATE)


def run(cfg: Config) -> int:
    return show_status(cfg.out, as_json=cfg.json, stall_s=cfg.stall_s)
