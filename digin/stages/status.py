"""The body of `digin status` (digin/tasks/status.py): where a running or finished stage stands, from its output
folder alone — the manifest's plan, the commit records, every rank's JSONL log and lock."""
from __future__ import annotations

import json
import time
from pathlib import Path

from digin.shards.liveness import gone_on_this_host
from digin.shards.manifest import ShardSet
from digin.shards.progress import CommitCounter, duration_text, rate_text
from digin.shards.runlock import parse_lock


def _last_events(folder: Path) -> dict[int, dict]:
    """rank → its newest log's summary of events: last event, last progress, counts, start, end."""
    out: dict[int, dict] = {}
    for p in sorted((folder / "logs").glob("rank*.jsonl")):
        try:
            rank = int(p.name[4:8])
        except ValueError:
            continue
        info = {"log": str(p), "started": None, "last_t": None, "progress": None, "summary": None, "nonfinite": 0,
                "no_improvement": 0, "rejects": 0, "mtime": p.stat().st_mtime}
        for line in p.open(errors="replace"):
            try:
                e = json.loads(line)
            except ValueError:
                continue  # a line being written
            kind = e.get("event")
            info["last_t"] = e.get("t", info["last_t"])
            if kind == "start":
                info["started"] = e.get("t")
            elif kind in ("progress", "heartbeat"):
                info["progress" if kind == "progress" else "heartbeat"] = e
            elif kind == "summary":
                info["summary"] = e
            elif kind in ("nonfinite", "no_improvement"):
                info[kind] += 1
            elif kind == "reject":
                info["rejects"] += 1
        prev = out.get(rank)
        if prev is None or (info["started"] or 0) >= (prev["started"] or 0):
            out[rank] = info
    return out


def _lock_state(folder: Path, rank: int) -> str | None:
    """held | gone (its pid is not running on this host) | None (no lock)."""
    p = folder / "locks" / f"rank-{rank:06d}.lock"
    try:
        holder = parse_lock(p.read_bytes())
    except FileNotFoundError:
        return None
    if holder is None:
        return "held"
    return "gone" if gone_on_this_host(holder.get("host"), holder.get("pid")) else "held"


def stage_status(folder, stall_s: float = 600.0) -> dict:
    folder = Path(folder)
    ss = ShardSet.load(folder)
    plan = ss.meta.get("plan") or {}
    units, written, rejected = CommitCounter(folder).totals()
    items = int(plan.get("items") or 0)
    now = time.time()
    ranks = {}
    for rank, info in sorted(_last_events(folder).items()):
        lock = _lock_state(folder, rank)
        age = now - info["last_t"] if info["last_t"] else None
        if info["summary"] is not None and lock is None:
            state = "interrupted" if info["summary"].get("interrupted") else "finished"
        elif lock == "gone" or (lock is None and info["summary"] is None):
            state = "dead"
        elif age is not None and age > stall_s:
            state = "stalled"
        else:
            state = "running"
        prog = info["progress"] or {}
        ranks[rank] = {"state": state, "last_event_s_ago": round(age, 1) if age is not None else None,
                       "done": prog.get("done"), "rate_per_s": prog.get("rate_per_s"), "nonfinite": info["nonfinite"],
                       "no_improvement": info["no_improvement"], "rejects": info["rejects"], "log": info["log"]}
    live_rate = sum((r["rate_per_s"] or 0.0) for r in ranks.values() if r["state"] == "running")
    left = max(items - written - rejected, 0)
    return {"out": str(folder), "stage": ss.name, "units_done": units, "units": ss.meta.get("num_shards"),
            "items_done": written + rejected, "items": items, "written": written, "rejected_or_skipped": rejected,
            "eta_s": round(left / live_rate, 1) if live_rate > 0 and left else (0.0 if not left else None),
            "nonfinite": sum(r["nonfinite"] for r in ranks.values()),
            "no_improvement": sum(r["no_improvement"] for r in ranks.values()), "ranks": ranks,
            "complete": bool(ss.meta.get("num_shards")) and units >= ss.meta["num_shards"]}


def status_text(s: dict) -> str:
    pct = 100.0 * s["items_done"] / max(s["items"], 1)
    lines = [f"{s['stage']} in {s['out']}: {'complete' if s['complete'] else 'not complete'}",
             f"  units {s['units_done']}/{s['units']}, items {s['items_done']}/{s['items']} ({pct:.1f}%): written "
             f"{s['written']}, rejected or skipped {s['rejected_or_skipped']}; non-finite {s['nonfinite']}, no "
             f"improvement {s['no_improvement']}; ETA {duration_text(s['eta_s'])}"]
    for rank, r in s["ranks"].items():
        rate = rate_text(r["done"] or 0, (r["done"] or 0) / r["rate_per_s"]) if r["rate_per_s"] else "-"
        lines.append(f"  rank {rank}: {r['state']}, last event {duration_text(r['last_event_s_ago'])} ago, "
                     f"{r['done'] if r['done'] is not None else '-'} items at {rate}")
    stuck = [str(k) for k, r in s["ranks"].items() if r["state"] in ("stalled", "dead")]
    if stuck:
        lines.append(f"  ranks {', '.join(stuck)} are stalled or dead: their units are redone by a rerun (or taken "
                     "over after their lease with schedule=dynamic)")
    return "\n".join(lines)


def show_status(out, as_json: bool = False, stall_s: float = 600.0) -> int:
    """Print the status of the stage in `out` (or of the one stage folder below it): 0, or 1 for no stage here."""
    folder = Path(out)
    if not (folder / "manifest.json").exists():
        found = sorted(p.parent for p in folder.glob("*/manifest.json")) if folder.is_dir() else []
        if len(found) == 1:
            folder = found[0]  # a task folder holding one stage (e.g. digin diff's results/)
        else:
            hint = f"; stages below it: {', '.join(map(str, found))}" if found else ""
            print(f"digin status: no stage output (manifest.json) in {folder}{hint}", flush=True)
            return 1
    s = stage_status(folder, stall_s)
    print(json.dumps(s, sort_keys=True) if as_json else status_text(s), flush=True)
    return 0
