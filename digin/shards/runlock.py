"""The run lock of an output folder: one live run per (output, rank), and one world size per output at a time.

`output/locks/rank-NNNNNN.lock` is created with O_EXCL and records its holder (host, pid, rank, world size, Slurm
job and restart count, torchelastic run and restart count). A lock is taken over only when its holder is provably
gone: its pid is not running on this host, or it belongs to an earlier run of this same Slurm job (or torchelastic
run) that was requeued or restarted, which ends every task of the earlier run; or the file is corrupt. A holder whose
pid is alive on this host is never taken over, whatever its restart count says (a requeued run can start on the
node where the old one is still ending; taking its lock would delete its open partial files under it).
DIGIN_BREAK_LOCK=1 forces a take-over. Shard i belongs to rank i % world, so a run with another world size would
write shards that a live run also owns: it is refused while any rank lock with another world size is live.
"""
from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from digin.errors import UserError
from digin.shards.liveness import gone_on_this_host, pid_alive, this_host
from digin.shards.manifest import fsync_dir

LOCKS = "locks"
BREAK_LOCK_ENV = "DIGIN_BREAK_LOCK"


class RunLocked(UserError, RuntimeError):
    """Another live run holds this output folder's lock for our rank, or runs it with another world size."""


def _env_count(name: str) -> int | None:
    v = os.environ.get(name, "")
    return int(v) if v.isdigit() else None


def lock_record(rank: int, world: int, schedule: str = "static") -> dict:
    return {"host": this_host(), "pid": os.getpid(), "rank": rank, "world": world, "schedule": schedule,
            "slurm_job_id": os.environ.get("SLURM_JOB_ID") or None,
            "slurm_restart_count": _env_count("SLURM_RESTART_COUNT") or 0,
            "torchelastic_run_id": os.environ.get("TORCHELASTIC_RUN_ID") or None,
            "torchelastic_restart_count": _env_count("TORCHELASTIC_RESTART_COUNT"),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def parse_lock(raw: bytes | None) -> dict | None:
    """The holder record, or None when the file is unreadable or not a valid record (a crash mid-write)."""
    try:
        holder = json.loads(raw) if raw else None
    except ValueError:
        return None
    if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int) or holder["pid"] <= 0:
        return None
    return holder


def _earlier_run(holder: dict, me: dict, job: str, count: str) -> bool:
    """Same job id, and the holder's restart count is known and lower than ours."""
    theirs, mine = holder.get(count), me.get(count)
    return (bool(me.get(job)) and holder.get(job) == me[job] and isinstance(theirs, int) and isinstance(mine, int)
            and theirs < mine)


def alive_on_this_host(holder: dict) -> bool:
    """The holder's pid runs on this host: it may be writing right now."""
    return holder.get("host") == this_host() and pid_alive(holder["pid"])


def stale_reason(holder: dict | None, me: dict) -> str | None:
    """Why the holder provably cannot be running any more, or None when it may still be."""
    if holder is None:
        return "the lock file is unreadable or corrupt"
    if gone_on_this_host(holder.get("host"), holder["pid"]):
        return f"its pid {holder['pid']} on this host is gone"
    if alive_on_this_host(holder):
        return None  # alive here: no restart count proves it gone
    if _earlier_run(holder, me, "slurm_job_id", "slurm_restart_count"):
        return (f"it belongs to run {holder['slurm_restart_count']} of this same Slurm job {me['slurm_job_id']}, "
                f"which was requeued (this is run {me['slurm_restart_count']}): Slurm ended the earlier run's tasks")
    if _earlier_run(holder, me, "torchelastic_run_id", "torchelastic_restart_count"):
        return (f"it belongs to restart {holder['torchelastic_restart_count']} of this torchelastic run "
                f"{me['torchelastic_run_id']} (this is restart {me['torchelastic_restart_count']}): the agent "
                "stopped the earlier workers")
    return None


def describe(holder: dict | None) -> str:
    if holder is None:
        return "unreadable"
    return (f"host {holder.get('host')}, pid {holder.get('pid')}, rank {holder.get('rank')}/world "
            f"{holder.get('world')}, Slurm job {holder.get('slurm_job_id')}, started {holder.get('started')}")


class RunLock:
    """Held by a run from before its first write into `output` until its end."""

    def __init__(self, output: Path, rank: int, world: int, schedule: str = "static"):
        self.path = Path(output) / LOCKS / f"rank-{rank:06d}.lock"
        self.output, self.rank, self.world, self.schedule = Path(output), rank, world, schedule
        self.record = lock_record(rank, world, schedule)
        self.data = (json.dumps(self.record, sort_keys=True) + "\n").encode()
        self.takeover: dict | None = None  # what was taken over, for the run log

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, self.data)
            os.fsync(fd)
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        fsync_dir(self.path.parent)
        return True

    def _read(self) -> bytes | None:
        """The lock's bytes; None when it exists but cannot be read; FileNotFoundError when it is gone."""
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            raise
        except OSError:
            return None

    @staticmethod
    def _breaking() -> bool:
        return os.environ.get(BREAK_LOCK_ENV) == "1"

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # the holder may release it between our create and our read: just try again
            if self._create():
                break
            try:
                raw = self._read()
            except FileNotFoundError:
                continue
            holder = parse_lock(raw)
            reason = stale_reason(holder, self.record)
            if reason is None and self._breaking():
                reason = f"{BREAK_LOCK_ENV}=1 is set"
            if reason is None:
                raise RunLocked(self._refusal(holder))
            self._take_over(raw, holder, reason)
            break
        else:
            raise RunLocked(f"{self.path}: another run of rank {self.rank} keeps creating and removing this lock; "
                            "refusing to start alongside it")
        try:
            self._refuse_other_world_sizes()
        except BaseException:
            self.release()
            raise
        return self

    def _refuse_other_world_sizes(self):
        """Checked after our own lock exists: of two runs starting together, at least the later one sees the other."""
        for p in sorted(self.path.parent.glob("rank-*.lock")):
            if p == self.path:
                continue
            try:
                holder = parse_lock(p.read_bytes())
            except OSError:
                continue
            theirs = holder.get("schedule", "static") if holder else None
            if holder is None or (theirs == self.schedule == "dynamic"):
                continue  # dynamic runs claim units: any number of ranks may join
            if theirs != self.schedule and stale_reason(holder, self.record) is None and not self._breaking():
                raise RunLocked(
                    f"{self.output} is being written by a run with schedule={theirs} ({p}: {describe(holder)}); "
                    f"this run has schedule={self.schedule}. Both would write the same units: wait for that run to "
                    f"end (or stop it); if it is really gone, delete its lock files or set {BREAK_LOCK_ENV}=1.")
            if holder.get("world") in (None, self.world):
                continue
            if stale_reason(holder, self.record) is None and not self._breaking():
                raise RunLocked(
                    f"{self.output} is being written by a run with world size {holder['world']} ({p}: "
                    f"{describe(holder)}); this run has world size {self.world}, and unit j belongs to rank "
                    f"j % world (schedule=static), so both would write the same units. Wait for that run to end (or stop it); if it "
                    f"is really gone, delete its lock files or set {BREAK_LOCK_ENV}=1.")

    def _take_over(self, raw: bytes | None, holder: dict | None, reason: str):
        # Unlink, then O_EXCL again: of two runs taking over the same stale lock at least one fails its create.
        try:
            if self._read() != raw:
                raise RunLocked(f"{self.path} changed while this run was taking it over (another run of rank "
                                f"{self.rank} is starting at the same time); refusing")
        except FileNotFoundError:
            pass
        self.path.unlink(missing_ok=True)
        if not self._create():
            raise RunLocked(f"{self.path} was taken by another run of rank {self.rank} while this one took the "
                            "stale lock over; refusing")
        self.takeover = {"lock": str(self.path), "reason": reason, "previous_holder": holder}
        print(f"[lock] taking over {self.path}: {reason} (was {describe(holder)})", file=sys.stderr, flush=True)

    def _refusal(self, holder: dict) -> str:
        return (f"{self.path} is held by another run of rank {self.rank} that may still be writing into "
                f"{self.output}: {describe(holder)}. Two runs of one rank must not share an output folder. "
                f"If that run is really gone (e.g. it crashed on another node), delete the lock file or set "
                f"{BREAK_LOCK_ENV}=1 to take the lock over.")

    def release(self):
        """Remove the lock, unless someone broke it and holds it now (then it is theirs)."""
        try:
            if self.path.read_bytes() == self.data:
                self.path.unlink()
        except FileNotFoundError:
            pass
