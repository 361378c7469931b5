"""schedule=dynamic: ranks claim work units through claim records with a lease, so fast GPUs take more units and a
dead rank's unit is taken over after its lease runs out.

`<out>/claims/NNNNNN.e<k>.json` is unit NNNNNN's claim of epoch k: {unit, epoch, plan, holder, beat}. It is
created only if absent (temporary file + link(2), digin.shards.manifest.create_once), so of two ranks claiming the
same unit one wins. The holder rewrites it every `heartbeat_s` with `beat` + 1. Another rank declares it expired
when `beat` has not changed for `lease_s` seconds of the *observer's own* monotonic clock (mtimes are no shared
clock on NFS / GPFS), or at once when its holder is provably gone (its pid on this host is not running, or it
belongs to an earlier run of this requeued Slurm job); it then claims epoch k+1. The claim is only an efficiency
lock: a stalled holder that wakes up after its unit was retaken still holds a valid attempt, and "committed once"
is enforced by the commit record, which is created exclusively too (first attempt wins, the other discards its
own attempt-named tar). Units have deterministic content, so which attempt wins does not matter.

File systems: claims need link(2) or O_EXCL create to be atomic across nodes (local disks, NFSv3+, Lustre, GPFS,
BeeGFS); the lease must exceed the file system's attribute-cache delay (NFS up to 60 s): the default 300 s does.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

from digin.shards.manifest import COMMITS, ConfigMismatch, atomic_write_bytes, create_once
from digin.shards.runlock import stale_reason

CLAIMS = "claims"
CLAIM_RE = re.compile(r"^(\d{6,})\.e(\d+)\.json$")
COMMIT_RE = re.compile(r"^(\d{6,})\.json$")


def claim_path(out: Path, unit: int, epoch: int) -> Path:
    return Path(out) / CLAIMS / f"{unit:06d}.e{epoch}.json"


class ClaimBoard:
    """This rank's view of the claims of one output folder: claims the next unit, beats for the units it holds,
    takes over expired ones."""

    def __init__(self, out, plan_hash: str, num_units: int, holder: dict, lease_s: float = 300.0,
                 heartbeat_s: float = 30.0, poll_s: float | None = None, event=None, clock=time.monotonic):
        if not lease_s > 0 or not heartbeat_s > 0 or heartbeat_s * 2 > lease_s:
            raise ValueError(f"lease_s={lease_s} must be > 0 and at least twice heartbeat_s={heartbeat_s}")
        self.out, self.plan, self.num_units, self.holder = Path(out), plan_hash, num_units, holder
        self.lease_s, self.heartbeat_s = lease_s, heartbeat_s
        self.poll_s = poll_s if poll_s is not None else min(10.0, lease_s / 10)
        self.event = event or (lambda kind, **f: None)
        self.clock = clock
        self.held: dict[int, dict] = {}  # unit → our claim record
        self.seen: dict[tuple[int, int], tuple] = {}  # (unit, epoch) → (beat signature, first seen at)
        self.retaken = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        (self.out / CLAIMS).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------------------ state on disk
    def committed(self) -> set[int]:
        try:
            return {int(m.group(1)) for n in os.listdir(self.out / COMMITS) if (m := COMMIT_RE.match(n))}
        except FileNotFoundError:
            return set()

    def _claims(self) -> dict[int, tuple[int, Path]]:
        """unit → (highest epoch, its file)."""
        top: dict[int, tuple[int, Path]] = {}
        for n in os.listdir(self.out / CLAIMS):
            m = CLAIM_RE.match(n)
            if m:
                u, e = int(m.group(1)), int(m.group(2))
                if u not in top or e > top[u][0]:
                    top[u] = (e, self.out / CLAIMS / n)
        return top

    def _read(self, path: Path):
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None, None
        try:
            rec = json.loads(raw)
        except ValueError:
            rec = None
        if isinstance(rec, dict) and rec.get("plan") not in (None, self.plan):
            raise ConfigMismatch(f"{path} claims unit {rec.get('unit')} for another work plan ({rec.get('plan')}, "
                                 f"this run's is {self.plan}); a run of a different plan is using this folder: "
                                 "use another output folder")
        return raw, rec

    def _expired(self, unit: int, epoch: int, path: Path) -> bool:
        raw, rec = self._read(path)
        if raw is None:
            return False  # released meanwhile: the next scan sees it free
        if isinstance(rec, dict) and isinstance(rec.get("holder"), dict) and isinstance(rec["holder"].get("pid"), int):
            if stale_reason(rec["holder"], self.holder) is not None:
                return True
        sig = (rec.get("beat") if isinstance(rec, dict) else raw)
        now = self.clock()
        old = self.seen.get((unit, epoch))
        if old is None or old[0] != sig:
            self.seen[(unit, epoch)] = (sig, now)
            return False
        return now - old[1] >= self.lease_s

    # ------------------------------------------------------------------------------------------ claiming
    def _record(self, unit: int, epoch: int, beat: int) -> bytes:
        rec = {"unit": unit, "epoch": epoch, "plan": self.plan, "holder": self.holder, "beat": beat}
        return (json.dumps(rec, sort_keys=True) + "\n").encode()

    def _try(self, unit: int, epoch: int) -> bool:
        if not create_once(claim_path(self.out, unit, epoch), self._record(unit, epoch, 0)):
            return False
        with self._lock:
            self.held[unit] = {"epoch": epoch, "beat": 0}
        return True

    def claim_next(self, should_stop=lambda: False, skip=()) -> tuple[int, int] | None:
        """(unit, epoch) of a unit this rank now holds, in unit order; waits while every uncommitted unit is held
        by a live claim; None once every unit is committed (or held by this rank, or in `skip`), or should_stop()."""
        waited_since = None
        while not should_stop():
            done = self.committed()
            claims = self._claims()
            pending = [u for u in range(self.num_units) if u not in done and u not in self.held and u not in skip]
            if not pending:
                return None
            for u in pending:
                top = claims.get(u)
                if top is None:
                    if self._try(u, 0):
                        return u, 0
                    continue
                epoch, path = top
                if self._expired(u, epoch, path) and self._try(u, epoch + 1):
                    self.retaken += 1
                    self.event("claim_retaken", unit=u, epoch=epoch + 1, expired_epoch=epoch)
                    return u, epoch + 1
            if waited_since is None:
                waited_since = self.clock()
                self.event("claims_wait", held_by_others=len(pending))
            time.sleep(self.poll_s)
        return None

    def lost(self, unit: int) -> bool:
        """Another rank took this unit over (a higher epoch exists): a cheap check before committing."""
        mine = self.held.get(unit)
        top = self._claims().get(unit)
        return mine is None or (top is not None and top[0] > mine["epoch"])

    def release(self, unit: int) -> None:
        with self._lock:
            mine = self.held.pop(unit, None)
        if mine is not None:
            claim_path(self.out, unit, mine["epoch"]).unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------ heartbeat
    def beat(self) -> None:
        with self._lock:
            held = {u: dict(c) for u, c in self.held.items()}
        for u, c in held.items():
            c["beat"] += 1
            path = claim_path(self.out, u, c["epoch"])
            if not path.exists():
                continue  # released meanwhile
            atomic_write_bytes(path, self._record(u, c["epoch"], c["beat"]))
            with self._lock:
                if u in self.held:
                    self.held[u]["beat"] = c["beat"]

    def __enter__(self):
        def loop():
            while not self._stop.wait(self.heartbeat_s):
                try:
                    self.beat()
                except OSError as e:  # a full disk or a lost mount: the lease may run out; commits stay safe
                    self.event("heartbeat_failed", error=str(e)[:200])

        self._thread = threading.Thread(target=loop, name="digin-claims-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for u in list(self.held):
            self.release(u)
