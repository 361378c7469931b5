"""Progress people and machines can watch.

`Progress`: a bar for the shard tools (tqdm on a TTY, else a timestamped line every `every_s` seconds with rate and
ETA). `StageProgress`: a stage rank's progress — this rank's items and the whole set's (all ranks, from the commit
records), rate in the unit that reads (item/s or s/item), ETA, successes so far; a line every `every_s` on every
rank (tqdm on rank 0's TTY instead), a `progress` event in the rank's JSONL log each time, and a heartbeat at least
every `heartbeat_s` while a long batch runs (what it is doing: SGD iteration k/K when the engine reports it).
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def rate_text(n: float, seconds: float, unit: str = "item") -> str:
    """`3.2 item/s` or `41.0 s/item`: whichever reads as a number above 1."""
    if n <= 0 or seconds <= 0:
        return f"- {unit}/s"
    per_s = n / seconds
    return f"{per_s:.1f} {unit}/s" if per_s >= 1 else f"{seconds / n:.1f} s/{unit}"


def duration_text(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool = True, every_s: float = 30.0, file=None,
                 unit: str = "img"):
        self.total, self.desc, self.enabled, self.every_s, self.unit = total, desc, enabled, every_s, unit
        self.file = file or sys.stderr
        self.n, self.t0, self.t_last = 0, time.monotonic(), 0.0
        self._bar = None
        self._done = False
        if enabled and hasattr(self.file, "isatty") and self.file.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, file=self.file, unit=unit, dynamic_ncols=True)

    def update(self, n: int):
        self.n += n
        if not self.enabled or n == 0:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self.t_last >= self.every_s or (self.n >= self.total and not self._done):
            self._done = self.n >= self.total
            self.t_last = now
            spent = max(now - self.t0, 1e-9)
            pct = 100.0 * self.n / max(self.total, 1)
            eta = (self.total - self.n) * spent / self.n if self.n else None
            print(f"{utc_now()} [{self.desc}] {self.n}/{self.total} ({pct:.1f}%) {rate_text(self.n, spent, self.unit)}"
                  f", ETA {duration_text(eta)}", file=self.file, flush=True)

    def close(self):
        if self._bar is not None:
            self._bar.close()


# ---------------------------------------------------------------------------------------------- stages
_ACTIVITY: dict = {}  # what the running batch is doing now: {"what": "sgd", "k": 3, "of": 20} (set by the engine)


def report_activity(what: str, k: int, of: int) -> None:
    """Called by long loops inside a batch (the engine's SGD iterations) so heartbeats can say where they are."""
    _ACTIVITY.update(what=what, k=int(k), of=int(of), t=time.monotonic())


def clear_activity() -> None:
    _ACTIVITY.clear()


class CommitCounter:
    """Items committed in an output folder by every rank, from its commit records (records never change once
    written, so each is read once)."""

    def __init__(self, out: Path):
        self.dir = Path(out) / "commits"
        self.seen: dict[str, tuple[int, int]] = {}  # record file → (written, rejected)

    def totals(self) -> tuple[int, int, int]:
        """(units, items written, items rejected or skipped) committed so far."""
        try:
            names = [n for n in os.listdir(self.dir) if n.endswith(".json") and ".tmp" not in n]
        except FileNotFoundError:
            names = []
        for n in names:
            if n not in self.seen:
                try:
                    rec = json.loads((self.dir / n).read_text())
                    self.seen[n] = (int(rec.get("count", 0)), len(rec.get("rejects") or []))
                except (OSError, ValueError):
                    continue  # being replaced, or damaged (digin verify names it)
        return len(self.seen), sum(w for w, _ in self.seen.values()), sum(r for _, r in self.seen.values())


class StageProgress:
    """A rank's progress over a stage (see the module docstring). `items_total` is the whole plan's item count."""

    def __init__(self, name: str, rank: int, out: Path, items_total: int, units_total: int, mine: int | None,
                 event, enabled: bool = True, every_s: float = 30.0, heartbeat_s: float = 60.0, file=None):
        self.name, self.rank, self.items_total, self.units_total = name, rank, items_total, units_total
        self.mine = mine  # this rank's items (static), or None (dynamic: unknown in advance)
        self.event, self.enabled, self.every_s, self.heartbeat_s = event, enabled, every_s, heartbeat_s
        self.file = file or sys.stderr
        self.counter = CommitCounter(out)
        self.done = self.ok = self.rejected = 0
        self.t0 = time.monotonic()
        self.t_last = self.t0
        self.set_start = self.counter.totals()
        self.batch_since: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._bar = None
        if enabled and rank == 0 and hasattr(self.file, "isatty") and self.file.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=mine if mine is not None else items_total, desc=f"{name} r{rank}", file=self.file,
                             unit="item", dynamic_ncols=True)
        self._thread = threading.Thread(target=self._heartbeat_loop, name="digin-progress", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------ updates
    def batch_started(self) -> None:
        with self._lock:
            self.batch_since = time.monotonic()
        clear_activity()

    def items(self, n: int, ok: int = 0, rejected: int = 0) -> None:
        with self._lock:
            self.done += n
            self.ok += ok
            self.rejected += rejected
            self.batch_since = None
        if self._bar is not None:
            self._bar.update(n)
        if time.monotonic() - self.t_last >= self.every_s:
            self.line()

    def snapshot(self) -> dict:
        units, written, rejected = self.counter.totals()
        spent = time.monotonic() - self.t0
        set_done = written + rejected
        new_in_set = set_done - (self.set_start[1] + self.set_start[2])
        set_rate = new_in_set / spent if spent > 0 and new_in_set > 0 else None
        remaining = max(self.items_total - set_done, 0)
        eta = remaining / set_rate if set_rate else None
        return {"t": utc_now(), "rank": self.rank, "done": self.done, "ok": self.ok, "rejected": self.rejected,
                "mine": self.mine, "seconds": round(spent, 1), "rate_per_s": (self.done / spent) if spent else 0.0,
                "set_units_done": units, "set_units": self.units_total, "set_items_done": set_done,
                "set_items": self.items_total, "set_ok": written, "set_rate_per_s": set_rate,
                "eta_s": round(eta, 1) if eta is not None else None}

    def line(self, why: str = "progress") -> dict:
        s = self.snapshot()
        self.t_last = time.monotonic()
        self.event("progress", **s, why=why)
        if self.enabled and self._bar is None:
            mine = f"{s['done']}/{s['mine']}" if s["mine"] is not None else f"{s['done']}"
            print(f"{s['t']} [{self.name} r{self.rank}] set {s['set_items_done']}/{s['set_items']} items "
                  f"({100.0 * s['set_items_done'] / max(s['set_items'], 1):.1f}%, {s['set_units_done']}/"
                  f"{s['set_units']} units, ok {s['set_ok']}), ETA {duration_text(s['eta_s'])}; this rank {mine} at "
                  f"{rate_text(s['done'], s['seconds'])}, ok {s['ok']}, rejected {s['rejected']}",
                  file=self.file, flush=True)
        return s

    # ------------------------------------------------------------------------------------------ heartbeat
    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(max(0.05, min(self.heartbeat_s, self.every_s))):
            with self._lock:
                since = self.batch_since
            if since is None or time.monotonic() - since < self.heartbeat_s:
                continue
            act = dict(_ACTIVITY)
            doing = f", {act['what']} {act['k']}/{act['of']}" if act else ""
            self.event("heartbeat", t=utc_now(), rank=self.rank, batch_s=round(time.monotonic() - since, 1),
                       **{k: v for k, v in act.items() if k != "t"})
            if self.enabled and self._bar is None:
                print(f"{utc_now()} [{self.name} r{self.rank}] working on a batch for "
                      f"{duration_text(time.monotonic() - since)}{doing}", file=self.file, flush=True)

    def close(self) -> dict:
        self._stop.set()
        self._thread.join(timeout=2)
        if self._bar is not None:
            self._bar.close()
        return self.line("end")
