"""`run_stage(spec, how)`: run a stage's work plan (digin.shards.plan) unit by unit, joining each item's input
samples by key, and commit output shard j = unit j exactly once.

What a stage is (`StageSpec`: name, inputs, plan, the config it records, process) is separate from how it runs
(`RunOptions`: out, batch size, workers, force, progress, error budget, schedule, tracking). Every task builds its
spec once and calls run_stage; `plan=true` prints the same spec's plan instead (digin.stages.plans).

Exactly once: a unit belongs to rank j % world (schedule=static) or to the rank that claims it (schedule=dynamic,
digin.shards.claims); output shard j is written to a partial file, fsynced, renamed and recorded by its commit
record, and skipped by any later run, so a killed job resumes with nothing lost or duplicated. Batches are filled
across unit boundaries (fixed shapes, the tail padded), and a sample's result never depends on its batch, so
results are byte-identical whatever the world size, unit size or schedule.
No collectives: ranks never talk to each other. A lock file per rank (output/locks/rank-NNNNNN.lock, see
runlock.py) keeps two live runs of one rank, or two static runs with different world sizes, out of the same output
folder, and an error budget (too many consecutive rejects, or too large a reject share) stops a run whose input is
broken. Refused before anything is written: an output folder that is, contains or lies inside an input folder; a
config or plan other than the one the folder was started with (the config: unless force).
"""
from __future__ import annotations

import json
import math
import os
import secrets
import signal
import sys
import threading
import time
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from digin.errors import ConfigError, UserError
from digin.quiet import attach_log, detach_log
from digin.shards.claims import ClaimBoard
from digin.shards.damage import settle_output
from digin.shards.dist import device_for_local_rank, rank_world
from digin.shards.environment import run_environment
from digin.shards.interrupt import Interrupted, urgent
from digin.shards.iocount import io_counters
from digin.shards.keyed import KeyIndex, read_keys
from digin.shards.lineage import image_set_of, join_lineage
from digin.shards.manifest import (FORMAT, MANIFEST, CommitExists, ConfigMismatch, ShardError, ShardSet,
                                   config_differences, config_hash, remove_stale_tmp, write_json)
from digin.shards.plan import Plan
from digin.shards.progress import StageProgress
from digin.shards.runlock import RunLock, RunLocked  # noqa: F401  (RunLocked: part of this module's API)
from digin.shards.tracking import WandbTracker, require_wandb, scalar_rows
from digin.shards.writer import ShardWriter, remove_orphan_partial

EXIT_OK, EXIT_FAILED, EXIT_REQUEUE = 0, 1, 75  # 75 = EX_TEMPFAIL: the batch script requeues on it
SCHEDULES = ("static", "dynamic")
PLAN_FILE = "plan.json"
MISSING_JOIN = "missing_in_input"  # reject reason prefix of an item whose input lacks its key (known from manifests)


@dataclass
class StageSpec:
    """What a stage is. `inputs`: [(role, shard set)], the first is the primary one (its images are decoded at
    `resolution`; its class names are the output's); items join their input samples by key (Item.joins). A
    field `f` of the k-th input that clashes with an earlier input's becomes `f_k`."""

    name: str
    plan: Plan
    record: dict  # the resolved config that changes results (its hash is in the manifest)
    inputs: list = field(default_factory=list)
    process: Callable | None = None  # process(batch) -> one output per real sample (see run_stage)
    resolution: int | None = None
    center_crop: bool = True
    required: tuple = ()
    classes: list | None = None
    incomplete: dict = field(default_factory=dict)  # allow_incomplete: input folder → uncommitted shard indices
    fields: tuple | None = None  # the input fields process needs (None: all); the others are not decoded
    allow_foreign_join: bool = False  # join inputs derived from different image sets on purpose (digin.shards.lineage)

    def input_sets(self) -> list[ShardSet]:
        return [ss for _, ss in self.inputs]

    @classmethod
    def every_key(cls, name: str, inputs, record: dict, process=None, items_per_shard: int | None = None,
                  keys=None, allow_incomplete: bool = False, **kw) -> "StageSpec":
        """One item per committed key of the first input (or per key of `keys`), joined by key with every input:
        inputs = [(role, shard set or folder), ...] (a bare shard set or folder is role "input"). An input whose
        manifest lists uncommitted shards is refused (IncompleteInput) unless allow_incomplete: then the plan holds
        the keys every input has now."""
        # local: `missing_joins` is also a local name in this module
        from digin.shards.plan import drop_not_yet_present, join_items, missing_joins

        pairs = [x if isinstance(x, tuple) else ("input" if i == 0 else f"input{i}", x)
                 for i, x in enumerate(inputs if isinstance(inputs, (list, tuple)) else [inputs])]
        pairs = [(r, x if isinstance(x, ShardSet) else ShardSet.load(x)) for r, x in pairs]
        incomplete = check_inputs_complete([ss for _, ss in pairs], allow_incomplete)
        indexes = {r: KeyIndex(ss) for r, ss in pairs}
        present = {r: set(ki.where) for r, ki in indexes.items()}
        keys = indexes[pairs[0][0]].keys() if keys is None else list(keys)
        items = join_items(keys, [r for r, _ in pairs])
        counts = {"keys": len(items)}
        if incomplete:
            items, counts["waiting_for_inputs"] = drop_not_yet_present(items, present)
        plan = Plan(name, items, items_per_shard, counts=counts, missing=missing_joins(items, present))
        return cls(name, plan, record, pairs, process, incomplete=incomplete, **kw)


@dataclass
class RunOptions:
    """How a stage runs (none of it changes results)."""

    out: str | Path
    batch_size: int = 1
    workers: int = 0  # threads reading and decoding the next units while the current batch runs
    force: bool = False
    progress: bool = True
    progress_s: float = 30.0  # a progress line (and a `progress` log event) this often; heartbeats at twice that
    schedule: str = "static"  # static: unit j → rank j % world | dynamic: ranks claim units (leases)
    lease_s: float = 300.0  # dynamic: a claim whose heartbeat stopped this long is taken over
    heartbeat_s: float = 30.0
    rank: int | None = None
    world: int | None = None
    device: object = None
    tracking: dict | None = None
    raise_on_failure: bool = True
    check_hash: bool = True
    max_consecutive_rejects: int | None = 100
    max_reject_share: float | None = 0.001
    reject_share_min_samples: int = 1000
    # how the model call sites ran so far (compiled / eager calls, graphs, fallbacks: engine.compile), asked at each
    # commit and at the end; the shard layer cannot import the engine, so the stage hands it in
    call_sites: Callable[[], dict] | None = None


@dataclass
class Batch:
    """What `process` receives. Length B = current batch size; entries with mask False are padding (copies of
    the last real sample) so shapes stay fixed. `images`: uint8 (B, 3, res, res) when `resolution` is set."""

    keys: list[str]
    mask: "torch.Tensor"  # (B,) bool, True = real sample  # noqa: F821
    samples: list[dict]
    images: "torch.Tensor | None"  # noqa: F821
    shard: int
    n_real: int
    device: "torch.device"  # noqa: F821

    def __len__(self):
        return len(self.keys)


@dataclass
class StageSummary:
    processed: int = 0
    rejected: int = 0
    not_selected: int = 0  # samples the process passed over on purpose ({"__skip__": reason}), not failures
    skipped_shards: int = 0
    skipped_samples: int = 0
    committed_shards: int = 0
    failed_shards: list = field(default_factory=list)
    oom_retries: int = 0
    missing_joins: int = 0  # of the rejected: items whose input lacks their key (known when the plan was made)
    lost_units: int = 0  # schedule=dynamic: units this rank ran but another attempt committed first
    retaken_units: int = 0  # schedule=dynamic: units this rank took over after their holder's lease ran out
    io: dict = field(default_factory=dict)  # bytes read by kind (digin.shards.iocount)
    call_sites: dict = field(default_factory=dict)  # RunOptions.call_sites() at the end of the run
    nonfinite: int = 0  # results written with status "nonfinite" (a loss or metric turned NaN/inf)
    no_improvement: int = 0  # results written with status "no_improvement" (the loss only rose)
    final_batch_size: int = 0
    interrupted: bool = False
    error_budget_exceeded: str = ""  # why the run stopped early because of too many rejects ("" = it did not)
    log_path: str = ""

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_REQUEUE
        return EXIT_FAILED if self.failed_shards or self.error_budget_exceeded else EXIT_OK

    def line(self, rank: int) -> str:
        return (f"rank {rank}: processed {self.processed}, rejected {self.rejected}"
                + (f" ({self.missing_joins} lacking an input key)" if self.missing_joins else "")
                + (f", not selected {self.not_selected}" if self.not_selected else "") + ", skipped (already done) "
                f"{self.skipped_samples} items in {self.skipped_shards} units, committed {self.committed_shards} "
                f"units, failed {len(self.failed_shards)} units, OOM retries {self.oom_retries}"
                + (f", retaken {self.retaken_units}" if self.retaken_units else "")
                + (f", lost to another attempt {self.lost_units}" if self.lost_units else "")
                + (f", non-finite results {self.nonfinite}" if self.nonfinite else "")
                + (f", no improvement {self.no_improvement}" if self.no_improvement else "")
                + (", INTERRUPTED (open units discarded)" if self.interrupted else "")
                + (", ERROR BUDGET EXCEEDED (open units discarded)" if self.error_budget_exceeded else "")
                + f"; log {self.log_path}")


class StageFailed(UserError, RuntimeError):
    """Units failed (their input shards failed their checks), or the error budget was exceeded; committed units
    stay."""


class IncompleteInput(UserError, RuntimeError):
    """An input's manifest lists shards that are not committed (pass allow_incomplete=True to go on without them)."""


def result_statuses(output: dict) -> list[str]:
    """The `status` of every result in a sample's output (its JSON fields that carry one, e.g. t<k>_metrics)."""
    return [v["status"] for v in output.values() if isinstance(v, dict) and isinstance(v.get("status"), str)]


def is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and "out of memory" in msg and "illegal" not in msg


# ---------------------------------------------------------------------------------------------- loading units
class UnitLoader:
    """Reads the input samples of a unit's items by key (one seek each, digin.shards.keyed) and joins them: one
    sample dict per item (`__key__` = the item's output key, `item` = its payload, the joined inputs' fields), or a
    reject. Key indexes come from the commit records, built once per run."""

    def __init__(self, spec: StageSpec, check_hash: bool):
        self.spec, self.check_hash = spec, check_hash
        self.inputs = [(role, ss, KeyIndex(ss)) for role, ss in spec.inputs]

    def load(self, j: int) -> dict:
        items = self.spec.plan.unit_items(j)
        try:
            fetched = [self._fetch(n, role, ss, ki, items) for n, (role, ss, ki) in enumerate(self.inputs)]
        except (ShardError, KeyError, OSError) as e:
            return {"unit": j, "samples": [], "rejects": [], "count": len(items), "error": f"{type(e).__name__}: {e}"}
        samples, rejects = [], []
        for pos, it in enumerate(items):
            s = self._join(it, j, pos, fetched)
            if "__reject__" in s:
                r = {"key": it.key, "reason": s["__reject__"], "pos": pos}
                rejects.append(r)
            else:
                samples.append(s)
        return {"unit": j, "samples": samples, "rejects": rejects, "count": len(items), "error": None}

    def _fetch(self, n: int, role: str, ss: ShardSet, ki: KeyIndex, items) -> dict:
        want = {k: ki.where[k] for it in items for r, k in it.joins if r == role and k in ki}
        got = read_keys(ss, sorted(set(want.values())), self.spec.resolution if n == 0 else None, (),
                        self.check_hash, self.spec.center_crop, keep=self.spec.fields)
        return {k: got[loc] for k, loc in want.items()}

    def _join(self, it, j: int, pos: int, fetched: list[dict]) -> dict:
        out = {"__key__": it.key, "__shard__": j, "__pos__": pos}
        if it.data is not None:
            out["item"] = it.data
        joins = dict(it.joins)
        for n, (role, ss, _) in enumerate(self.inputs):
            k = joins.get(role)
            if k is None:
                continue
            s = fetched[n].get(k)
            if s is None:
                return {**out, "__reject__": f"{MISSING_JOIN}:{role}:{k}"}
            if "__reject__" in s:
                return {**out, "__reject__": s["__reject__"] if n == 0 else f"{ss.name}:{s['__reject__']}"}
            if n == 0:
                out["__input_key__"] = k
            for f, v in s.items():
                if not f.startswith("__"):
                    out[f if f not in out else f"{f}_{n}"] = v
        missing = [f for f in self.spec.required if f not in out]
        if missing:
            return {**out, "__reject__": f"missing_field:{','.join(missing)}"}
        return out


class UnitFeed:
    """Loaded units in the order the schedule hands them out, `workers` threads reading ahead."""

    def __init__(self, loader: UnitLoader, next_unit: Callable[[], int | None], workers: int):
        self.loader, self.next_unit, self.workers = loader, next_unit, max(0, int(workers))

    def __iter__(self):
        if self.workers == 0:
            while (j := self.next_unit()) is not None:
                yield self.loader.load(j)
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="digin-read") as pool:
            ahead: deque = deque()
            exhausted = False
            while True:
                while not exhausted and len(ahead) <= self.workers:
                    j = self.next_unit()
                    if j is None:
                        exhausted = True
                    else:
                        ahead.append(pool.submit(self.loader.load, j))
                if not ahead:
                    return
                yield ahead.popleft().result()


# ---------------------------------------------------------------------------------------------- batching
def make_batch(samples: list[dict], batch_size: int, resolution, device) -> Batch:
    import torch

    n = len(samples)
    padded = samples + [samples[-1]] * (batch_size - n)
    images = None
    if resolution and all("image" in s for s in samples):
        x_BHWC = torch.from_numpy(np.stack([s["image"] for s in padded]))
        images = x_BHWC.permute(0, 3, 1, 2).contiguous()
    mask = torch.zeros(batch_size, dtype=torch.bool)
    mask[:n] = True
    return Batch(keys=[s["__key__"] for s in padded], mask=mask, samples=padded, images=images,
                 shard=samples[0]["__shard__"], n_real=n, device=device)


class _Stopper:
    """SIGTERM/SIGUSR1 only set a flag (no I/O in the handler); the loop checks it between batches."""

    def __init__(self):
        self.stop, self.signum, self._old = False, None, {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.stop, self.signum = True, signum

    def __exit__(self, *exc):
        for sig, h in self._old.items():
            signal.signal(sig, h)


class _RunLog:
    def __init__(self, folder: Path, rank: int):
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.path = folder / f"rank{rank:04d}-{stamp}-{os.getpid()}.jsonl"
        self._f = open(self.path, "a")
        self.rank = rank
        self._lock = threading.Lock()  # the progress heartbeat and the claims' heartbeat write events too
        attach_log(self.event)  # third-party warnings of this process (digin.quiet) land here, once each

    def event(self, kind: str, **fields):
        line = json.dumps({"t": round(time.time(), 3), "event": kind, **fields}, default=str) + "\n"
        with self._lock:
            if not self._f.closed:
                self._f.write(line)
                self._f.flush()

    def close(self):
        detach_log(self.event)
        with self._lock:
            self._f.close()


def _prepare_output(output: Path, spec: StageSpec, force: bool, world: int) -> dict:
    """Write (or check) the output's manifest: config and plan hashes, the inputs it derives from and their common
    image set (digin.shards.lineage: inputs of different image sets are refused before anything is written), and
    what a damaged manifest or commit record needs (digin.shards.damage)."""
    ins = spec.input_sets()
    plan = spec.plan
    image_set, foreign = join_lineage(spec.inputs, getattr(spec, "allow_foreign_join", False))
    chash = config_hash({"config": spec.record, "inputs": [ss.meta.get("config_hash") for ss in ins]})
    classes = spec.classes if spec.classes is not None else (ins[0].classes if ins else [])
    meta = {"format": FORMAT, "kind": "stage", "name": spec.name, "config": spec.record, "config_hash": chash,
            "num_shards": plan.num_units, "classes": classes, "plan": plan.record(),
            "inputs": [{"dir": str(ss.dir), "name": ss.name, "role": role, "config_hash": ss.meta.get("config_hash"),
                        "plan_hash": (ss.meta.get("plan") or {}).get("hash"), "image_set": image_set_of(ss.meta)}
                       for role, ss in spec.inputs],
            "image_set": image_set,  # the root image set every input derives from (null: none, or unknown)
            "world_size": world}  # of the latest run; static runs with another world size wait for it (runlock.py)
    if foreign:  # DIGIN_ALLOW_FOREIGN_JOIN=1: a deliberate join of inputs from different image sets
        meta["foreign_join"] = foreign
    if spec.incomplete:  # allow_incomplete: what the inputs lacked when this run started
        meta["incomplete_inputs"] = spec.incomplete
    output.mkdir(parents=True, exist_ok=True)
    mpath = output / MANIFEST
    remove_stale_tmp(mpath)  # a copy a killed run left between writing and renaming it
    old = settle_output(output, spec.name, chash, plan.hash(), force)
    if old is not None:
        old_plan = (old.get("plan") or {}).get("hash")
        if old_plan is None and any((output / "commits").glob("*.json")):
            raise ConfigMismatch(
                f"{output} holds shards of an earlier digin, cut by input shard rather than by work plan; this "
                "version's units would not line up with them: finish it with that version, or use a new output folder")
        if old_plan is not None and old_plan != plan.hash():
            raise ConfigMismatch(
                f"{output} was started with another work plan ({_plan_change(old.get('plan'), plan.record())}); its "
                "committed units would not line up with this run's (force=true does not change this): use another "
                "output folder, or the selection / pairs / items_per_shard it was started with")
        if old.get("config_hash") != chash:
            if not force:
                changed = config_differences(old.get("config"), spec.record) or ["inputs changed"]
                raise ConfigMismatch(
                    f"{output} was started with config hash {old.get('config_hash')}, this run has {chash} "
                    f"({'; '.join(changed)}); refusing to mix outputs (use another output folder, or force=True)")
            meta["forced_over"] = sorted(set(old.get("forced_over", []) + [old.get("config_hash")]))
        elif old == meta:
            return meta
    write_json(mpath, meta)
    return meta


def _plan_change(old: dict | None, new: dict) -> str:
    old = old or {}
    parts = [f"{k} {old.get(k)} → {new.get(k)}" for k in ("items", "units", "items_per_shard") if old.get(k) != new.get(k)]
    return ", ".join(parts) or f"plan hash {old.get('hash')} → {new.get('hash')}: other items or payloads"


def _write_plan_listing(output: Path, plan: Plan) -> None:
    """plan.json (unit → keys), written once; every rank computes the same content."""
    path = output / PLAN_FILE
    try:
        if json.loads(path.read_text()).get("hash") == plan.hash():
            return
    except (FileNotFoundError, ValueError):
        pass
    write_json(path, plan.listing())


def refuse_output_in_inputs(output: Path, inputs: list[ShardSet]):
    """An output folder that is, contains or lies inside an input folder would overwrite the input's manifest or
    mix with its shards: refused whatever `force` says."""
    out = Path(output).resolve()
    for ss in inputs:
        src = ss.dir.resolve()
        how = "is" if out == src else "lies inside" if src in out.parents else "contains" if out in src.parents else ""
        if how:
            raise ConfigError(f"the output folder {output} {how} the input folder {ss.dir}; choose an output folder "
                              "outside every input (force=true does not change this)")


def missing_input_shards(inputs: list[ShardSet]) -> dict[str, list[int]]:
    """input folder → indices its manifest lists (num_shards) that have no commit record."""
    out = {}
    for ss in inputs:
        n = ss.meta.get("num_shards")
        missing = sorted(set(range(n)) - set(ss.records)) if isinstance(n, int) else []
        if missing:
            out[str(ss.dir)] = missing
    return out


def _shard_list(indices: list[int], limit: int = 10) -> str:
    return ", ".join(map(str, indices[:limit])) + (f", ... ({len(indices)} in all)" if len(indices) > limit else "")


def _incomplete_message(missing: dict, inputs: list[ShardSet]) -> str:
    sizes = {str(ss.dir): ss.meta.get("num_shards") for ss in inputs}
    return "; ".join(f"input {d} lists {sizes[d]} shards but shard(s) {_shard_list(m)} are not committed"
                     for d, m in missing.items())


def check_inputs_complete(inputs: list[ShardSet], allow_incomplete: bool) -> dict[str, list[int]]:
    """IncompleteInput naming the missing shards, unless allow_incomplete; returns them (empty: complete)."""
    missing = missing_input_shards(inputs)
    if missing and not allow_incomplete:
        raise IncompleteInput(_incomplete_message(missing, inputs) + "; let the stage that writes it finish (or "
                              "resume it), or pass allow_incomplete=true to plan over the committed shards only")
    return missing


def _is_committed(out: ShardSet, index: int) -> bool:
    rec = out.records.get(index)
    if rec is None:
        return False
    p = out.dir / rec["file"]
    return p.exists() and p.stat().st_size == rec["bytes"]


# ---------------------------------------------------------------------------------------------- error budget
class _BudgetExceeded(Exception):
    def __init__(self, message: str, numbers: dict):
        super().__init__(message)
        self.numbers = numbers


class _ErrorBudget:
    """Counts rejected samples in input order and raises _BudgetExceeded when a limit is crossed."""

    def __init__(self, max_consecutive: int | None, max_share: float | None, min_samples: int):
        if max_consecutive is not None and max_consecutive < 0:
            raise ValueError(f"max_consecutive_rejects must be >= 0 or None, got {max_consecutive}")
        if max_share is not None and not 0.0 <= max_share <= 1.0:
            raise ValueError(f"max_reject_share must be in [0, 1] or None, got {max_share}")
        if min_samples < 1:
            raise ValueError(f"reject_share_min_samples must be >= 1, got {min_samples}")
        self.max_consecutive, self.max_share, self.min_samples = max_consecutive, max_share, min_samples
        self.seen = self.rejected = self.consecutive = 0
        self.last_rejects: deque = deque(maxlen=5)

    def ok(self):
        self.seen += 1
        self.consecutive = 0
        self._check()

    def reject(self, shard: int, r: dict):
        self.seen += 1
        self.rejected += 1
        self.consecutive += 1
        self.last_rejects.append({"shard": shard, "key": r["key"], "reason": r["reason"]})
        self._check()

    def reject_until(self, pending: deque, shard: int, pos: float):
        """Count the decode rejects of `pending` (sorted by position) that come before input position `pos`."""
        while pending and pending[0]["pos"] < pos:
            self.reject(shard, pending.popleft())

    def _check(self):
        if self.max_consecutive is not None and self.consecutive > self.max_consecutive:
            self._exceeded(f"{self.consecutive} consecutive rejected samples (max_consecutive_rejects="
                           f"{self.max_consecutive})", "max_consecutive_rejects")
        if (self.max_share is not None and self.seen >= self.min_samples
                and self.rejected / self.seen > self.max_share):
            self._exceeded(f"{self.rejected} of {self.seen} samples rejected = {self.rejected / self.seen:.3%} "
                           f"(max_reject_share={self.max_share:.3%} once {self.min_samples} samples were seen)",
                           "max_reject_share")

    def _exceeded(self, what: str, limit: str):
        last = "; ".join(f"{r['key']} (shard {r['shard']}): {r['reason']}" for r in self.last_rejects)
        numbers = {"limit": limit, "seen": self.seen, "rejected": self.rejected, "consecutive": self.consecutive,
                   "max_consecutive_rejects": self.max_consecutive, "max_reject_share": self.max_share,
                   "reject_share_min_samples": self.min_samples, "last_rejects": list(self.last_rejects)}
        raise _BudgetExceeded(f"error budget exceeded: {what}; {self.rejected} rejected of {self.seen} samples "
                              f"seen by this run; last rejects: {last}", numbers)


# ---------------------------------------------------------------------------------------------- the stage
def run_stage(spec: StageSpec, how: RunOptions) -> StageSummary:
    """Run `spec.process` over the work plan's units this rank gets (see the module docstring).

    process(batch: Batch) -> list of outputs, one per real sample (len n_real, or len B with padding ignored); a
      sample is one plan item: `__key__` its output key, `item` its payload, plus the fields of its joined input
      samples (images of the primary input as uint8 (B, 3, res, res) in batch.images when `resolution` is set,
      after the reference's Resize(1.25·res)+CenterCrop(res), or a plain resize when center_crop is False).
      An output is a dict field -> value (PIL.Image or uint8 array -> png, dict -> json, str -> txt,
      dict[str, Tensor] -> safetensors), or None / {"__reject__": reason} to reject that item, or
      {"__skip__": reason} for an item the task passes over on purpose (recorded as reason "skip:<reason>", no
      failure for the error budget).
    An item whose input lacks its key is rejected (`missing_in_input:<role>:<key>`, known from the manifests when
      the plan was made); those rejects do not count against the error budget. A unit whose input shard fails its
      checks (truncated, altered) is not committed and the run ends with StageFailed; the other units go on.
    Error budget: the run aborts at the (max_consecutive_rejects + 1)-th rejected item in a row (decode rejects
      and rejects returned by `process`, in plan order; a processed item resets the count), or once it has seen
      reject_share_min_samples items and rejected / seen > max_reject_share (None disables either). On an abort
      the open units are discarded (as on SIGTERM), committed ones stay, the log gets an `error_budget_exceeded`
      event and StageFailed is raised (or, with raise_on_failure=False, the summary says so, exit code 1).
    Run lock, refusals: see the module docstring. Results carrying a `status` (nonfinite | no_improvement) are
      counted. An output that cannot be encoded (e.g. NaN in a JSON field) rejects that item (`unwritable:`).
      Any other exception is logged with its traceback (event `error`) and re-raised with the log path as
      `digin_log`. On a CUDA OOM the same samples are redone at half the batch size (kept for the rest of the
      run). SIGTERM/SIGUSR1: stop at the next batch boundary, discard open units, summary.interrupted (exit code
      EXIT_REQUEUE). tracking: {"project", "entity", "mode"} → a per-rank wandb run (digin.shards.tracking).
    """
    if how.schedule not in SCHEDULES:
        raise ConfigError(f"schedule={how.schedule!r}: one of {', '.join(SCHEDULES)}")
    if spec.process is None:
        raise ValueError(f"stage {spec.name}: no process to run (StageSpec.process is None)")
    output = Path(how.out)
    env_rank, env_world, local_rank = rank_world()
    rank = env_rank if how.rank is None else how.rank
    world = env_world if how.world is None else how.world
    if not 0 <= rank < world:
        raise ConfigError(f"rank {rank} is outside 0..world-1 for world size {world}")
    if how.batch_size < 1:
        raise ConfigError(f"batch_size={how.batch_size} must be >= 1")
    budget = _ErrorBudget(how.max_consecutive_rejects, how.max_reject_share, how.reject_share_min_samples)
    # Refusals first: nothing is written (not even the lock) when one applies.
    refuse_output_in_inputs(output, spec.input_sets())
    join_lineage(spec.inputs, spec.allow_foreign_join)  # inputs of different image sets: ForeignJoin
    device = how.device if how.device is not None else device_for_local_rank(local_rank)
    if how.tracking and how.tracking.get("project"):
        require_wandb()
    lock = RunLock(output, rank, world, how.schedule).acquire()  # before the manifest or any shard is touched
    try:
        summary = _run_locked(spec, how, output, rank, world, device, budget, lock)
    finally:
        lock.release()
    problems = [summary.error_budget_exceeded] if summary.error_budget_exceeded else []
    if summary.failed_shards:
        problems.append(f"{len(summary.failed_shards)} unit(s) failed: " +
                        "; ".join(f["error"] for f in summary.failed_shards[:5]))
    if problems and how.raise_on_failure:
        raise StageFailed(f"[{spec.name}] rank {rank}: " + " | ".join(problems))
    return summary


def unit_file(name: str, j: int) -> str:
    return f"{name}-{j:06d}.tar"


def _clean_unit_strays(output: Path, name: str, j: int, keep: str | None) -> None:
    """Files of earlier attempts at unit j other than `keep` (the committed one): only called once j is committed
    (a late attempt then fails its exclusive commit and discards its own file) or by j's only owner (static)."""
    for p in output.glob(f"{name}-{j:06d}.*"):
        if p.name != keep and (p.name.endswith(".tar") or p.name.endswith(".tar.partial")):
            p.unlink(missing_ok=True)
    for tmp in (output / "commits").glob(f"{j:06d}.json.tmp.*"):
        remove_stale_tmp(tmp.with_name(f"{j:06d}.json"))


class _Unit:
    """An open output unit: its writer, the rejects for its record, and what is left to process."""

    def __init__(self, j: int, writer: ShardWriter, rejects: list, remaining: int, epoch: int | None):
        self.j, self.writer, self.epoch, self.remaining = j, writer, epoch, remaining
        self.rejects = list(rejects)
        # decode rejects lie between the items: counted for the budget in plan order (missing joins are not)
        self.pending = deque(sorted((r for r in rejects if not r["reason"].startswith(MISSING_JOIN)),
                                    key=lambda r: r["pos"]))
        self.rows: list = []


class _StageRun:
    """One rank's pass over its units: batches through `process` (halving the batch size on OOM), per-item outputs
    into open unit writers, commits, and the log / summary / error budget / tracker bookkeeping."""

    def __init__(self, spec: StageSpec, how: RunOptions, output: Path, rank: int, device, config_hash: str,
                 budget: "_ErrorBudget", log: "_RunLog", tracker, summary: StageSummary, board=None):
        self.spec, self.how, self.output, self.rank, self.device = spec, how, output, rank, device
        self.name, self.process, self.bs = spec.name, spec.process, how.batch_size
        self.config_hash, self.budget, self.log, self.tracker, self.summary = config_hash, budget, log, tracker, summary
        self.board = board
        self.open_units: dict[int, _Unit] = {}
        self.order: deque = deque()  # open units in plan order: committed in this order (the budget counts so)

    def _say(self, message: str) -> None:
        print(f"[{self.name}] rank {self.rank}: {message}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------------------ units
    def open_unit(self, loaded: dict) -> _Unit | None:
        j = loaded["unit"]
        if loaded["error"]:
            self.summary.failed_shards.append({"shard": j, "error": loaded["error"]})
            self.log.event("shard_failed", shard=j, error=loaded["error"])
            self._say(f"unit {j} failed: {loaded['error']}")
            if self.board is not None:
                self.board.release(j)
            return None
        extra = {"config_hash": self.config_hash, "plan_hash": self.spec.plan.hash()}
        epoch = self.board.held[j]["epoch"] if self.board is not None else None
        if epoch is None:
            writer = ShardWriter(self.output, j, unit_file(self.name, j), extra)
        else:  # an attempt of its own: a late attempt of another rank must not touch this file
            writer = ShardWriter(self.output, j, f"{self.name}-{j:06d}.e{epoch}-{secrets.token_hex(4)}.tar", extra,
                                 once=True)
        u = self.open_units[j] = _Unit(j, writer, loaded["rejects"], len(loaded["samples"]), epoch)
        self.order.append(u)
        for r in loaded["rejects"]:
            self.log.event("reject", shard=j, **r)
        self.summary.rejected += len(loaded["rejects"])
        self.summary.missing_joins += sum(r["reason"].startswith(MISSING_JOIN) for r in loaded["rejects"])
        return u

    def finish_ready(self, everything: bool = False) -> None:
        """Commit the complete units at the front of the plan order (all complete ones when `everything`: a
        stopping run keeps what it finished)."""
        while self.order and self.order[0].remaining == 0:
            self.finish(self.order.popleft())
        if everything:
            for u in [u for u in self.order if u.remaining == 0]:
                self.order.remove(u)
                self.finish(u)

    def finish(self, u: _Unit) -> None:
        """All of the unit's items are recorded: count the decode rejects after its last item, then commit."""
        self.budget.reject_until(u.pending, u.j, math.inf)
        self.open_units.pop(u.j, None)
        if self.board is not None and self.board.lost(u.j):
            self._lost(u, "taken over by another rank after this rank's lease ran out")
            return
        if self.how.call_sites is not None:  # how its results were computed travels with them
            u.writer.extra["call_sites"] = self.how.call_sites()
        try:
            rec = u.writer.commit(sorted(u.rejects, key=lambda r: r["pos"]))
        except CommitExists:
            self._lost(u, "committed by another attempt first")
            return
        except FileNotFoundError as e:  # a late attempt whose partial a committer already cleaned up
            u.writer.discard()
            self._lost(u, f"its partial file was removed ({e})")
            return
        if self.board is not None:
            self.board.release(u.j)
            _clean_unit_strays(self.output, self.name, u.j, rec["file"])
        self.summary.committed_shards += 1
        self.log.event("commit", shard=u.j, count=rec["count"], rejects=len(rec["rejects"]), sha256=rec["sha256"],
                       file=rec["file"])
        if self.tracker is not None:
            self.tracker.shard_committed(u.j, u.rows, rec["count"], len(rec["rejects"]))

    def _lost(self, u: _Unit, why: str) -> None:
        u.writer.discard()
        if self.board is not None:
            self.board.release(u.j)
        self.summary.lost_units += 1
        self.log.event("unit_lost", shard=u.j, epoch=u.epoch, reason=why)

    # ------------------------------------------------------------------------------------------ batches
    def run_batch(self, samples: list[dict]) -> list:
        """process() on these samples padded to the current batch size; on OOM redo them at half the size."""
        import torch

        try:
            with urgent(f"a batch of unit {samples[0]['__shard__']}"):  # a stop signal ends even a long batch
                outs = self.process(make_batch(samples, self.bs, self.spec.resolution, self.device))
        except Exception as e:  # (Interrupted is no Exception: it leaves through _run_locked)
            if not is_oom(e) or self.bs == 1:
                raise
            old = self.bs
            self.bs = max(1, old // 2)
            self.summary.oom_retries += 1
            self.log.event("oom_retry", shard=samples[0]["__shard__"], keys=[s["__key__"] for s in samples],
                           from_batch_size=old, to_batch_size=self.bs, error=str(e)[:300])
            self._say(f"out of memory at batch size {old}; redoing these {len(samples)} samples at {self.bs}")
            del e
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            outs = []
            while len(outs) < len(samples):  # bs may shrink again inside: re-read it every step
                outs += self.run_batch(samples[len(outs):len(outs) + self.bs])
            return outs
        outs = list(outs)
        if len(outs) not in (len(samples), self.bs):
            raise ValueError(f"process returned {len(outs)} outputs for {len(samples)} real samples")
        return outs[:len(samples)]

    def batch(self, queue: deque, bar: StageProgress) -> None:
        """The next batch of queued items (across unit boundaries) through process; commits the units it completes."""
        take = [queue.popleft() for _ in range(min(self.bs, len(queue)))]
        bar.batch_started()
        outs = self.run_batch([s for _, s in take])
        ok = 0
        for (u, smp), o in zip(take, outs):
            self.finish_ready()  # earlier units' trailing rejects count before this item
            self.budget.reject_until(u.pending, u.j, smp["__pos__"])
            ok += self.record(u, smp, o)
            u.remaining -= 1
        self.finish_ready()
        bar.items(len(take), ok=ok, rejected=len(take) - ok)

    def record(self, u: _Unit, smp: dict, o) -> bool:
        """One item's output: written to its unit (True), or recorded as not selected / rejected (False)."""
        summary = self.summary
        if o is not None and o.get("__skip__"):
            u.rejects.append({"key": smp["__key__"], "reason": f"skip:{o['__skip__']}", "pos": smp["__pos__"]})
            summary.not_selected += 1
            return False
        reason = ("process_returned_none" if o is None else o.get("__reject__"))
        if not reason and not o:
            raise ValueError(f"process returned an empty output for {smp['__key__']}")
        if not reason:
            try:
                u.writer.add(smp["__key__"], o)  # encodes every field before writing any
            except (ValueError, TypeError) as e:  # e.g. NaN in a JSON field: this item only
                reason = f"unwritable:{str(e)[:200]}"
        if reason:
            r = {"key": smp["__key__"], "reason": str(reason), "pos": smp["__pos__"]}
            u.rejects.append(r)
            self.log.event("reject", shard=u.j, **r)
            summary.rejected += 1
            self.budget.reject(u.j, r)
            return False
        for status in result_statuses(o):
            if status in ("nonfinite", "no_improvement"):
                setattr(summary, status, getattr(summary, status) + 1)
                self.log.event(status, shard=u.j, key=smp["__key__"])
        if self.tracker is not None:
            u.rows += scalar_rows(o)
        summary.processed += 1
        self.budget.ok()
        return True

    def loop(self, feed, stopper, bar: StageProgress) -> None:
        queue: deque = deque()
        for loaded in feed:
            if stopper.stop:
                break
            u = self.open_unit(loaded)
            if u is None:
                continue
            bar.items(len(loaded["rejects"]), rejected=len(loaded["rejects"]))
            queue.extend((u, s) for s in loaded["samples"])
            self.finish_ready()  # a unit with nothing to process (every item rejected) commits in its turn
            while len(queue) >= self.bs and not stopper.stop:
                self.batch(queue, bar)
            if stopper.stop:
                break
        while queue and not stopper.stop:
            self.batch(queue, bar)
        self.finish_ready(everything=stopper.stop)


def _start_log(output: Path, spec: StageSpec, how: RunOptions, rank: int, world: int, device, meta: dict,
               todo, lock: RunLock, summary: StageSummary) -> "_RunLog":
    log = _RunLog(output / "logs", rank)
    summary.log_path = str(log.path)
    if lock.takeover:
        log.event("lock_takeover", **lock.takeover)
    log.event("start", rank=rank, world=world, device=str(device), config_hash=meta["config_hash"],
              plan=meta["plan"], schedule=how.schedule, todo=todo, skipped=summary.skipped_shards,
              batch_size=how.batch_size, lock=lock.record, io_before_first_batch=io_counters(),
              env=run_environment(device))
    if spec.incomplete:
        ins = spec.input_sets()
        log.event("incomplete_inputs", missing=spec.incomplete, allow_incomplete=True)
        print(f"[{spec.name}] rank {rank}: allow_incomplete=true: {_incomplete_message(spec.incomplete, ins)}; the "
              "plan covers the committed shards only", file=sys.stderr, flush=True)
    return log


def _static_todo(spec: StageSpec, output: Path, out_ss: ShardSet, rank: int, world: int,
                 summary: StageSummary) -> list[int]:
    """This rank's units (j % world == rank) not committed yet (committed ones are counted as skipped); leftovers
    of an earlier attempt at a unit to do are removed (the lock makes sure we own it)."""
    todo = []
    for j in range(rank, spec.plan.num_units, world):
        if j in out_ss.damaged:
            continue  # its damaged record may have committed its tar: reported (below), redone once removed
        if _is_committed(out_ss, j):
            summary.skipped_shards += 1
            summary.skipped_samples += out_ss.records[j]["count"] + len(out_ss.records[j].get("rejects", []))
        else:
            todo.append(j)
            remove_orphan_partial(output, unit_file(spec.name, j))
            for tmp in (output / "commits").glob(f"{j:06d}.json.tmp.*"):
                tmp.unlink(missing_ok=True)
    return todo


def _run_locked(spec: StageSpec, how: RunOptions, output: Path, rank: int, world: int, device,
                budget: "_ErrorBudget", lock: RunLock) -> StageSummary:
    """The body of run_stage, run while this rank holds the output's lock."""
    from contextlib import nullcontext

    plan = spec.plan
    meta = _prepare_output(output, spec, how.force, world)
    _write_plan_listing(output, plan)
    summary = StageSummary(final_batch_size=how.batch_size)
    out_ss = ShardSet.load(output, damaged="skip")  # damaged records: digin.shards.damage
    board = None
    if how.schedule == "static":
        todo = _static_todo(spec, output, out_ss, rank, world, summary)
        total = sum(len(plan.unit_items(j)) for j in todo)
    else:
        done = [j for j in range(plan.num_units) if _is_committed(out_ss, j)]
        summary.skipped_shards = len(done)
        summary.skipped_samples = sum(out_ss.records[j]["count"] + len(out_ss.records[j].get("rejects", []))
                                      for j in done)
        for j in done:
            _clean_unit_strays(output, spec.name, j, out_ss.records[j]["file"])
        todo = None
        total = sum(len(plan.unit_items(j)) for j in range(plan.num_units) if j not in set(done))
    summary.failed_shards += [{"shard": j, "error": why} for j, why in out_ss.damaged.items()
                              if j % world == rank or (how.schedule == "dynamic" and rank == 0)]
    tracker = None  # made before the log file is opened: a failing wandb.init leaves nothing open
    if how.tracking and how.tracking.get("project"):
        tracker = WandbTracker(how.tracking["project"], spec.name, output, rank, world, meta["config"],
                               entity=how.tracking.get("entity"), mode=how.tracking.get("mode"))
    log = _start_log(output, spec, how, rank, world, device, meta, todo, lock, summary)
    if how.schedule == "dynamic":
        board = ClaimBoard(output, plan.hash(), plan.num_units, lock.record, how.lease_s, how.heartbeat_s,
                           event=log.event)
    bar = StageProgress(spec.name, rank, output, len(plan.items), plan.num_units,
                        total if how.schedule == "static" else None, log.event, enabled=how.progress,
                        every_s=how.progress_s, heartbeat_s=2 * how.progress_s)
    run = _StageRun(spec, how, output, rank, device, meta["config_hash"], budget, log, tracker, summary, board)
    try:
        with _Stopper() as stopper, (board if board is not None else nullcontext()):
            if board is None:
                it = iter(todo)
                next_unit = lambda: next(it, None)  # noqa: E731
            else:
                def next_unit():
                    got = board.claim_next(should_stop=lambda: stopper.stop)
                    return None if got is None else got[0]
            run.loop(UnitFeed(UnitLoader(spec, how.check_hash), next_unit, how.workers), stopper, bar)
            if stopper.stop:
                summary.interrupted = True
                log.event("interrupted", signal=stopper.signum, discarded=sorted(run.open_units))
    except Interrupted as e:  # a signal during a long call (a compile, a batch): the same stop, sooner
        summary.interrupted = True
        log.event("interrupted", signal=e.signum, during=e.what, discarded=sorted(run.open_units))
    except _BudgetExceeded as e:  # like a graceful stop: open units are discarded below, committed ones stay
        summary.error_budget_exceeded = str(e)
        log.event("error_budget_exceeded", **e.numbers, discarded=sorted(run.open_units))
        print(f"[{spec.name}] rank {rank}: {e}; discarding open units {sorted(run.open_units)}", file=sys.stderr,
              flush=True)
    except Exception as e:  # the traceback belongs in the rank's log (the CLI prints expected errors in one line)
        log.event("error", type=type(e).__name__, message=str(e)[:2000], discarded=sorted(run.open_units),
                  traceback=traceback.format_exc())
        e.digin_log = str(log.path)
        raise
    finally:
        for u in list(run.open_units.values()):
            u.writer.discard()
        run.open_units.clear()
        run.order.clear()
        if board is not None:
            summary.retaken_units = board.retaken
        summary.final_batch_size = run.bs
        summary.io = io_counters()
        if how.call_sites is not None:
            summary.call_sites = how.call_sites()
            log.event("compile", **summary.call_sites)
        bar.close()
        log.event("summary", **{k: v for k, v in summary.__dict__.items()})
        log.close()
        if tracker is not None:
            tracker.finish(summary.__dict__)
    print(f"[{spec.name}] " + summary.line(rank), file=sys.stderr, flush=True)
    return summary
