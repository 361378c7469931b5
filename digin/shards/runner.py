"""`run_stage`: read shard i of the input shard set(s), call `process(batch)`, write shard i of the output.

Exactly once: shard i belongs to rank i % world (and to one dataloader worker); output shard i is committed
atomically (see writer.py) and skipped by any later run, so a killed job resumes with nothing lost or duplicated.
No collectives: ranks never talk to each other.
A lock file per rank (output/locks/rank-NNNNNN.lock, see runlock.py) keeps two live runs of one rank, or two runs
with different world sizes, out of the same output folder, and an error budget (too many consecutive rejects, or too
large a reject share) stops a run whose input is broken. Refused before anything is written: an output folder that
is, contains or lies inside an input folder; an input whose manifest lists shards that are not committed (unless
allow_incomplete); a key in two input shards.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digin.errors import ConfigError, UserError
from digin.quiet import attach_log, detach_log
from digin.shards.dist import device_for_local_rank, rank_world
from digin.shards.environment import run_environment
from digin.shards.manifest import (FORMAT, MANIFEST, ConfigMismatch, ShardError, ShardSet, config_differences,
                                   config_hash, remove_stale_tmp, write_json)
from digin.shards.progress import Progress
from digin.shards.reader import assign_shards, iter_shard
from digin.shards.tracking import WandbTracker, require_wandb, scalar_rows
from digin.shards.runlock import RunLock, RunLocked  # noqa: F401  (RunLocked: part of this module's API)
from digin.shards.writer import ShardWriter, remove_orphan_partial

EXIT_OK, EXIT_FAILED, EXIT_REQUEUE = 0, 1, 75  # 75 = EX_TEMPFAIL: the batch script requeues on it


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
                + (f", not selected {self.not_selected}" if self.not_selected else "") + ", skipped (already done) "
                f"{self.skipped_samples} samples in {self.skipped_shards} shards, committed {self.committed_shards} "
                f"shards, failed {len(self.failed_shards)} shards, OOM retries {self.oom_retries}"
                + (f", non-finite results {self.nonfinite}" if self.nonfinite else "")
                + (f", no improvement {self.no_improvement}" if self.no_improvement else "")
                + (", INTERRUPTED (open shards discarded)" if self.interrupted else "")
                + (", ERROR BUDGET EXCEEDED (open shards discarded)" if self.error_budget_exceeded else "")
                + f"; log {self.log_path}")


class StageFailed(UserError, RuntimeError):
    """Input shards failed their checks, or the error budget was exceeded; committed shards stay."""


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


# ---------------------------------------------------------------------------------------------- input stream
def _join(primary: dict, others: list[tuple[str, dict]]) -> dict:
    """Add the fields of the same key from the other inputs; a clashing field `f` from input k becomes `f_k`."""
    out = dict(primary)
    for k, (name, by_key) in enumerate(others, start=1):
        s = by_key.get(primary["__key__"])
        if s is None:
            return {**primary, "__reject__": f"missing_in_input:{name}"}
        if "__reject__" in s:
            return {**primary, "__reject__": f"{name}:{s['__reject__']}"}
        for f, v in s.items():
            if not f.startswith("__"):
                out[f if f not in out else f"{f}_{k}"] = v
    return out


def _iterable_base():
    from torch.utils.data import IterableDataset

    return IterableDataset


class ChunkStream(_iterable_base()):
    """Iterable over chunks {shard, samples (<= chunk decoded samples), rejects, last, error} for the shards
    of this rank; under a DataLoader each worker takes its own subset of them."""

    def __init__(self, inputs: list[ShardSet], shards: list[int], chunk: int, resolution, required, check_hash,
                 center_crop: bool = True):
        self.inputs, self.shards, self.chunk, self.center_crop = inputs, shards, chunk, center_crop
        self.resolution, self.required, self.check_hash = resolution, tuple(required), check_hash

    def __iter__(self):
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        w, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        for index in self.shards[w::nw]:
            yield from self._shard_chunks(index)

    def _shard_chunks(self, index):
        samples, rejects = [], []
        try:
            others = []
            for ss in self.inputs[1:]:
                if index not in ss.records:
                    raise ShardError(f"input {ss.dir} has no committed shard {index} to join with")
                by_key = {s["__key__"]: s for s in iter_shard(ss, index, None, (), self.check_hash)}
                others.append((ss.name, by_key))
            for s in iter_shard(self.inputs[0], index, self.resolution, (), self.check_hash, self.center_crop):
                if "__reject__" not in s and others:
                    s = _join(s, others)
                missing = [f for f in self.required if f not in s]
                if "__reject__" not in s and missing:
                    s = {**s, "__reject__": f"missing_field:{','.join(missing)}"}
                if "__reject__" in s:
                    rejects.append({"key": s["__key__"], "reason": s["__reject__"], "pos": s["__pos__"]})
                    continue
                samples.append(s)
                if len(samples) == self.chunk:
                    yield {"shard": index, "samples": samples, "rejects": rejects, "last": False, "error": None}
                    samples, rejects = [], []
        except (ShardError, KeyError, OSError) as e:
            yield {"shard": index, "samples": [], "rejects": [], "last": True, "error": f"{type(e).__name__}: {e}"}
            return
        yield {"shard": index, "samples": samples, "rejects": rejects, "last": True, "error": None}


def _worker_init(_):
    # Workers leave SIGTERM/SIGUSR1 to the main process, which stops cleanly and then shuts them down.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(1)


def _chunks(stream: ChunkStream, num_workers: int):
    if num_workers <= 0:
        return iter(stream)
    from torch.utils.data import DataLoader

    return iter(DataLoader(stream, batch_size=None, num_workers=num_workers, worker_init_fn=_worker_init,
                           collate_fn=lambda x: x, prefetch_factor=2))


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
        attach_log(self.event)  # third-party warnings of this process (digin.quiet) land here, once each

    def event(self, kind: str, **fields):
        self._f.write(json.dumps({"t": round(time.time(), 3), "event": kind, **fields}, default=str) + "\n")
        self._f.flush()

    def close(self):
        detach_log(self.event)
        self._f.close()


def _prepare_output(output: Path, name: str, inputs: list[ShardSet], config: dict, force: bool, world: int,
                    incomplete: dict) -> dict:
    chash = config_hash({"config": config, "inputs": [ss.meta.get("config_hash") for ss in inputs]})
    meta = {"format": FORMAT, "kind": "stage", "name": name, "config": config, "config_hash": chash,
            "num_shards": inputs[0].meta.get("num_shards"), "classes": inputs[0].classes,
            "inputs": [{"dir": str(ss.dir), "name": ss.name, "config_hash": ss.meta.get("config_hash")}
                       for ss in inputs],
            "world_size": world}  # of the latest run; runs with another world size wait for it (runlock.py)
    if incomplete:  # allow_incomplete: what the inputs lacked when this run started
        meta["incomplete_inputs"] = incomplete
    output.mkdir(parents=True, exist_ok=True)
    mpath = output / MANIFEST
    remove_stale_tmp(mpath)  # a copy a killed run left between writing and renaming it
    if mpath.exists():
        old = json.loads(mpath.read_text())
        if old.get("config_hash") != chash:
            if not force:
                changed = config_differences(old.get("config"), config) or ["inputs changed"]
                raise ConfigMismatch(
                    f"{output} was started with config hash {old.get('config_hash')}, this run has {chash} "
                    f"({'; '.join(changed)}); refusing to mix outputs (use another output folder, or force=True)")
            meta["forced_over"] = sorted(set(old.get("forced_over", []) + [old.get("config_hash")]))
        elif old == meta:
            return meta
    write_json(mpath, meta)
    return meta


def _check_unique_keys(ss: ShardSet):
    """A key in two input shards would be processed twice: refuse at planning time (from the records only)."""
    seen: dict[str, int] = {}
    for i, rec in ss.records.items():
        for k in rec.get("keys") or ():
            if k in seen:
                raise ShardError(f"{ss.dir}: key {k!r} is in shard {seen[k]} and in shard {i}, so it would be "
                                 "processed twice; convert the input again (digin shard) or remove one of them")
            seen[k] = i


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
                              "resume it), or pass allow_incomplete=true to process the committed shards only")
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
def run_stage(inputs, output, process, batch_size: int, config: dict | None = None, *, name: str | None = None,
              resolution: int | None = None, required=(), num_workers: int = 0, force: bool = False,
              check_hash: bool = True, rank: int | None = None, world: int | None = None, device=None,
              progress: bool = True, raise_on_failure: bool = True, center_crop: bool = True,
              max_consecutive_rejects: int | None = 100, max_reject_share: float | None = 0.001,
              reject_share_min_samples: int = 1000, tracking: dict | None = None,
              allow_incomplete: bool = False) -> StageSummary:
    """Run `process` over every sample of the committed input shard set(s) this rank owns.

    inputs: shard-set folder (or ShardSet), or a list of them joined by shard index and key (fields of later
      inputs are added to each sample; a clashing field `f` from input k is renamed `f_k`).
    process(batch: Batch) -> list of outputs, one per real sample (len n_real, or len B with padding ignored);
      an output is a dict field -> value (PIL.Image or uint8 array -> png, dict -> json, str -> txt,
      dict[str, Tensor] -> safetensors), or None / {"__reject__": reason} to reject that sample, or
      {"__skip__": reason} for a sample the task does not select (e.g. no UVCE pair): it is recorded like a reject
      (reason "skip:<reason>", so every input key stays accounted for) but is no failure for the error budget.
    resolution / center_crop: images of the first input come as uint8 (B, 3, res, res) after the reference's
      Resize(1.25·res)+CenterCrop(res), or a plain resize to res×res when center_crop is False.
    config: the resolved stage config; its hash (with the inputs' hashes) is recorded, and resuming into the same
      output with a different one raises ConfigMismatch unless force=True.
    max_consecutive_rejects: error budget; the run aborts at the (max_consecutive_rejects + 1)-th rejected sample in
      a row (decode rejects of the input and rejects returned by `process`, in input order; a processed sample
      resets the count). None disables it.
    max_reject_share / reject_share_min_samples: error budget; once this run has seen at least
      reject_share_min_samples samples, it aborts as soon as rejected / seen > max_reject_share. None disables it.
      On an abort the open shards are discarded (as on SIGTERM), committed shards stay, the log gets an
      `error_budget_exceeded` event and StageFailed is raised (or, with raise_on_failure=False, the summary has
      error_budget_exceeded set and exit code EXIT_FAILED). Counts start at zero in every run (resume included).
    Run lock: the run holds output/locks/rank-NNNNNN.lock (host, pid, world size, Slurm job) from start to end; a
      second live run of the same rank, or a run with another world size while any rank lock is live, raises
      RunLocked and changes nothing. A lock whose holder is provably gone (its pid on this host is not running, it
      is from an earlier run of this requeued Slurm job, or it is corrupt) is taken over; DIGIN_BREAK_LOCK=1 forces
      that. The manifest records the world size of the latest run.
    Refused before anything is written (ConfigError / IncompleteInput / ShardError): an output that is, contains or
      lies inside an input folder (whatever `force` says); an input whose manifest lists shards that are not
      committed, unless allow_incomplete=True (then the shards committed in every input are processed, and the
      log and the output manifest's `incomplete_inputs` say what was missing); a key in two input shards.
    Results carrying a `status` (a JSON field with "status": nonfinite | no_improvement) are counted in the
      summary. An output that cannot be encoded (e.g. NaN in a JSON field) rejects that sample (`unwritable:`),
      not the run. Any other exception inside the run is logged with its traceback (event `error`) and re-raised
      with the log path as `digin_log`.
    tracking: {"project", "entity", "mode"} → per-rank wandb run (digin.shards.tracking); the numeric metrics of each
      shard's samples are logged when the shard commits. None (default): no tracking, wandb never imported.
    On a CUDA OOM the same samples are redone at half the batch size (kept for the rest of the run).
    SIGTERM/SIGUSR1: stop at the next batch boundary, discard open shards, return summary.interrupted=True
    (exit code EXIT_REQUEUE). Returns a StageSummary; raises StageFailed if an input shard failed its checks or
    the error budget was exceeded.
    """
    ins = [x if isinstance(x, ShardSet) else ShardSet.load(x) for x in
           (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
    output = Path(output)
    name = name or output.name
    env_rank, env_world, local_rank = rank_world()
    rank = env_rank if rank is None else rank
    world = env_world if world is None else world
    if not 0 <= rank < world:
        raise ConfigError(f"rank {rank} is outside 0..world-1 for world size {world}")
    budget = _ErrorBudget(max_consecutive_rejects, max_reject_share, reject_share_min_samples)
    # Refusals first: nothing is written (not even the lock) when one applies.
    refuse_output_in_inputs(output, ins)
    missing = check_inputs_complete(ins, allow_incomplete)
    _check_unique_keys(ins[0])
    device = device if device is not None else device_for_local_rank(local_rank)
    if tracking and tracking.get("project"):
        require_wandb()
    lock = RunLock(output, rank, world).acquire()  # before the manifest or any shard file is touched
    try:
        summary = _run_locked(ins, output, process, batch_size, dict(config or {}), name=name,
                              resolution=resolution, required=required, num_workers=num_workers, force=force,
                              check_hash=check_hash, rank=rank, world=world, device=device, progress=progress,
                              center_crop=center_crop, budget=budget, lock=lock, tracking=tracking,
                              incomplete=missing)
    finally:
        lock.release()
    problems = [summary.error_budget_exceeded] if summary.error_budget_exceeded else []
    if summary.failed_shards:
        problems.append(f"{len(summary.failed_shards)} input shard(s) failed: " +
                        "; ".join(f["error"] for f in summary.failed_shards[:5]))
    if problems and raise_on_failure:
        raise StageFailed(f"[{name}] rank {rank}: " + " | ".join(problems))
    return summary


def _shards_to_do(ins: list[ShardSet], out: ShardSet, output: Path, name: str, rank: int, world: int,
                  incomplete: dict, summary: StageSummary) -> list[int]:
    """This rank's shards not committed yet (committed ones are counted as skipped); leftovers of an earlier
    attempt at a shard to do are removed (the lock makes sure we own it)."""
    # allow_incomplete: only shards committed in every input (all of ins[0]'s otherwise: nothing is missing)
    available = [i for i in ins[0].indices() if all(i in ss.records for ss in ins[1:])] if incomplete else \
        ins[0].indices()
    todo = []
    for i in assign_shards(available, rank, world):
        if _is_committed(out, i):
            summary.skipped_shards += 1
            summary.skipped_samples += out.records[i]["count"] + len(out.records[i].get("rejects", []))
        else:
            todo.append(i)
            remove_orphan_partial(output, f"{name}-{i:06d}.tar")
            for tmp in (output / "commits").glob(f"{i:06d}.json.tmp.*"):
                tmp.unlink(missing_ok=True)
    return todo


class _StageRun:
    """One rank's pass over its shards: batches through `process` (halving the batch size on OOM), per-sample
    outputs into open shard writers, commits, and the log / summary / error budget / tracker bookkeeping."""

    def __init__(self, output: Path, name: str, rank: int, process, batch_size: int, resolution, device,
                 config_hash: str, budget: _ErrorBudget, log: _RunLog, tracker, summary: StageSummary):
        self.output, self.name, self.rank, self.process = output, name, rank, process
        self.bs, self.resolution, self.device, self.config_hash = batch_size, resolution, device, config_hash
        self.budget, self.log, self.tracker, self.summary = budget, log, tracker, summary
        self.open_shards: dict[int, dict] = {}

    def _say(self, message: str) -> None:
        print(f"[{self.name}] rank {self.rank}: {message}", file=sys.stderr, flush=True)

    def run_batch(self, samples: list[dict]) -> list:
        """process() on these samples padded to the current batch size; on OOM redo them at half the size."""
        import torch

        try:
            outs = self.process(make_batch(samples, self.bs, self.resolution, self.device))
        except Exception as e:
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

    def open_shard(self, i: int) -> dict:
        st = self.open_shards.get(i)
        if st is None:
            st = self.open_shards[i] = {"writer": ShardWriter(self.output, i, f"{self.name}-{i:06d}.tar",
                                                              {"config_hash": self.config_hash}),
                                        "rejects": [], "rows": []}
        return st

    def fail_shard(self, i: int, error: str) -> None:
        self.open_shards.pop(i)["writer"].discard()
        self.summary.failed_shards.append({"shard": i, "error": error})
        self.log.event("shard_failed", shard=i, error=error)
        self._say(f"input shard {i} failed: {error}")

    def record(self, i: int, st: dict, smp: dict, o) -> None:
        """One sample's output: written to its shard, or recorded as not selected / rejected."""
        summary = self.summary
        if o is not None and o.get("__skip__"):
            st["rejects"].append({"key": smp["__key__"], "reason": f"skip:{o['__skip__']}", "pos": smp["__pos__"]})
            summary.not_selected += 1
            return
        reason = ("process_returned_none" if o is None else o.get("__reject__"))
        if not reason and not o:
            raise ValueError(f"process returned an empty output for {smp['__key__']}")
        if not reason:
            try:
                st["writer"].add(smp["__key__"], o)  # encodes every field before writing any
            except (ValueError, TypeError) as e:  # e.g. NaN in a JSON field: this sample only
                reason = f"unwritable:{str(e)[:200]}"
        if reason:
            r = {"key": smp["__key__"], "reason": str(reason), "pos": smp["__pos__"]}
            st["rejects"].append(r)
            self.log.event("reject", shard=i, **r)
            summary.rejected += 1
            self.budget.reject(i, r)
            return
        for status in result_statuses(o):
            if status in ("nonfinite", "no_improvement"):
                setattr(summary, status, getattr(summary, status) + 1)
                self.log.event(status, shard=i, key=smp["__key__"])
        if self.tracker is not None:
            st["rows"] += scalar_rows(o)
        summary.processed += 1
        self.budget.ok()

    def commit(self, i: int) -> None:
        st = self.open_shards.pop(i)
        rec = st["writer"].commit(sorted(st["rejects"], key=lambda r: r["pos"]))
        self.summary.committed_shards += 1
        self.log.event("commit", shard=i, count=rec["count"], rejects=len(rec["rejects"]), sha256=rec["sha256"])
        if self.tracker is not None:
            self.tracker.shard_committed(i, st["rows"], rec["count"], len(rec["rejects"]))

    def chunk(self, chunk: dict, stopper, bar) -> None:
        """One chunk of an input shard: its decode rejects, its samples in batches, the commit after the last."""
        i = chunk["shard"]
        st = self.open_shard(i)
        if chunk["error"]:
            self.fail_shard(i, chunk["error"])
            return
        for r in chunk["rejects"]:
            st["rejects"].append(r)
            self.log.event("reject", shard=i, **r)
        self.summary.rejected += len(chunk["rejects"])
        bar.update(len(chunk["rejects"]))
        # decode rejects lie between this chunk's samples: count them in input order for the budget
        decode_rejects = deque(sorted(chunk["rejects"], key=lambda r: r["pos"]))
        samples, done = chunk["samples"], 0
        while done < len(samples) and not stopper.stop:
            part = samples[done:done + self.bs]
            done += len(part)
            for smp, o in zip(part, self.run_batch(part)):
                self.budget.reject_until(decode_rejects, i, smp["__pos__"])
                self.record(i, st, smp, o)
            bar.update(len(part))
        if stopper.stop:
            return
        self.budget.reject_until(decode_rejects, i, math.inf)  # rejects after the chunk's last sample
        if chunk["last"]:
            self.commit(i)


def _start_log(output: Path, name: str, rank: int, world: int, device, meta: dict, todo: list[int], lock: RunLock,
               incomplete: dict, ins: list[ShardSet], batch_size: int, summary: StageSummary) -> _RunLog:
    log = _RunLog(output / "logs", rank)
    summary.log_path = str(log.path)
    if lock.takeover:
        log.event("lock_takeover", **lock.takeover)
    log.event("start", rank=rank, world=world, device=str(device), config_hash=meta["config_hash"],
              todo=todo, skipped=summary.skipped_shards, batch_size=batch_size, lock=lock.record,
              env=run_environment(device))
    if incomplete:
        log.event("incomplete_inputs", missing=incomplete, allow_incomplete=True)
        print(f"[{name}] rank {rank}: allow_incomplete=true: {_incomplete_message(incomplete, ins)}; processing "
              "the committed shards only", file=sys.stderr, flush=True)
    return log


def _run_locked(ins: list[ShardSet], output: Path, process, batch_size: int, config: dict, *, name, resolution,
                required, num_workers, force, check_hash, rank, world, device, progress, center_crop,
                budget: _ErrorBudget, lock: RunLock, tracking: dict | None, incomplete: dict) -> StageSummary:
    """The body of run_stage, run while this rank holds the output's lock."""
    meta = _prepare_output(output, name, ins, config, force, world, incomplete)
    summary = StageSummary(final_batch_size=batch_size)
    todo = _shards_to_do(ins, ShardSet.load(output), output, name, rank, world, incomplete, summary)
    tracker = None  # made before the log file is opened: a failing wandb.init leaves nothing open
    if tracking and tracking.get("project"):
        tracker = WandbTracker(tracking["project"], name, output, rank, world, meta["config"],
                               entity=tracking.get("entity"), mode=tracking.get("mode"))
    log = _start_log(output, name, rank, world, device, meta, todo, lock, incomplete, ins, batch_size, summary)
    bar = Progress(sum(ins[0].records[i]["count"] for i in todo), f"{name} r{rank}", enabled=progress and rank == 0)
    run = _StageRun(output, name, rank, process, batch_size, resolution, device, meta["config_hash"], budget, log,
                    tracker, summary)
    try:
        with _Stopper() as stopper:
            stream = ChunkStream(ins, todo, batch_size, resolution, required, check_hash, center_crop)
            for chunk in _chunks(stream, num_workers):
                if stopper.stop:
                    break
                run.chunk(chunk, stopper, bar)
                if stopper.stop:
                    break
            if stopper.stop:
                summary.interrupted = True
                log.event("interrupted", signal=stopper.signum, discarded=sorted(run.open_shards))
    except _BudgetExceeded as e:  # like a graceful stop: open shards are discarded below, committed ones stay
        summary.error_budget_exceeded = str(e)
        log.event("error_budget_exceeded", **e.numbers, discarded=sorted(run.open_shards))
        print(f"[{name}] rank {rank}: {e}; discarding open shards {sorted(run.open_shards)}", file=sys.stderr,
              flush=True)
    except Exception as e:  # the traceback belongs in the rank's log (the CLI prints expected errors in one line)
        log.event("error", type=type(e).__name__, message=str(e)[:2000], discarded=sorted(run.open_shards),
                  traceback=traceback.format_exc())
        e.digin_log = str(log.path)
        raise
    finally:
        for st in run.open_shards.values():
            st["writer"].discard()
        run.open_shards.clear()
        summary.final_batch_size = run.bs
        bar.close()
        log.event("summary", **{k: v for k, v in summary.__dict__.items()})
        log.close()
        if tracker is not None:
            tracker.finish(summary.__dict__)
    print(f"[{name}] " + summary.line(rank), file=sys.stderr, flush=True)
    return summary
