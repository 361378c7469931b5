"""`run_stage`: read shard i of the input shard set(s), call `process(batch)`, write shard i of the output.

Exactly once: shard i belongs to rank i % world (and to one dataloader worker); output shard i is committed
atomically (see writer.py) and skipped by any later run, so a killed job resumes with nothing lost or duplicated.
No collectives: ranks never talk to each other.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digin.shards.dist import device_for_local_rank, rank_world
from digin.shards.manifest import (FORMAT, MANIFEST, ConfigMismatch, ShardError, ShardSet, config_hash,
                                   write_json)
from digin.shards.progress import Progress
from digin.shards.reader import assign_shards, iter_shard
from digin.shards.writer import PARTIAL, ShardWriter

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
    skipped_shards: int = 0
    skipped_samples: int = 0
    committed_shards: int = 0
    failed_shards: list = field(default_factory=list)
    oom_retries: int = 0
    final_batch_size: int = 0
    interrupted: bool = False
    log_path: str = ""

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_REQUEUE
        return EXIT_FAILED if self.failed_shards else EXIT_OK

    def line(self, rank: int) -> str:
        return (f"rank {rank}: processed {self.processed}, rejected {self.rejected}, skipped (already done) "
                f"{self.skipped_samples} samples in {self.skipped_shards} shards, committed {self.committed_shards} "
                f"shards, failed {len(self.failed_shards)} shards, OOM retries {self.oom_retries}"
                + (", INTERRUPTED (open shards discarded)" if self.interrupted else "") + f"; log {self.log_path}")


class StageFailed(RuntimeError):
    pass


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

    def event(self, kind: str, **fields):
        self._f.write(json.dumps({"t": round(time.time(), 3), "event": kind, **fields}, default=str) + "\n")
        self._f.flush()

    def close(self):
        self._f.close()


def _prepare_output(output: Path, name: str, inputs: list[ShardSet], config: dict, force: bool) -> dict:
    chash = config_hash({"config": config, "inputs": [ss.meta.get("config_hash") for ss in inputs]})
    meta = {"format": FORMAT, "kind": "stage", "name": name, "config": config, "config_hash": chash,
            "num_shards": inputs[0].meta.get("num_shards"), "classes": inputs[0].classes,
            "inputs": [{"dir": str(ss.dir), "name": ss.name, "config_hash": ss.meta.get("config_hash")}
                       for ss in inputs]}
    output.mkdir(parents=True, exist_ok=True)
    mpath = output / MANIFEST
    if mpath.exists():
        old = json.loads(mpath.read_text())
        if old.get("config_hash") != chash:
            if not force:
                raise ConfigMismatch(
                    f"{output} was started with config hash {old.get('config_hash')}, this run has {chash}; "
                    "refusing to mix outputs (use another output folder, or force=True)")
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
                raise ShardError(f"{ss.dir}: key {k!r} is in shard {seen[k]} and in shard {i}")
            seen[k] = i


def _is_committed(out: ShardSet, index: int) -> bool:
    rec = out.records.get(index)
    if rec is None:
        return False
    p = out.dir / rec["file"]
    return p.exists() and p.stat().st_size == rec["bytes"]


# ---------------------------------------------------------------------------------------------- the stage
def run_stage(inputs, output, process, batch_size: int, config: dict | None = None, *, name: str | None = None,
              resolution: int | None = None, required=(), num_workers: int = 0, force: bool = False,
              check_hash: bool = True, rank: int | None = None, world: int | None = None, device=None,
              progress: bool = True, raise_on_failure: bool = True, center_crop: bool = True) -> StageSummary:
    """Run `process` over every sample of the committed input shard set(s) this rank owns.

    inputs: shard-set folder (or ShardSet), or a list of them joined by shard index and key (fields of later
      inputs are added to each sample; a clashing field `f` from input k is renamed `f_k`).
    process(batch: Batch) -> list of outputs, one per real sample (len n_real, or len B with padding ignored);
      an output is a dict field -> value (PIL.Image or uint8 array -> png, dict -> json, str -> txt,
      dict[str, Tensor] -> safetensors), or None / {"__reject__": reason} to reject that sample.
    resolution / center_crop: images of the first input come as uint8 (B, 3, res, res) after the reference's
      Resize(1.25·res)+CenterCrop(res), or a plain resize to res×res when center_crop is False.
    config: the resolved stage config; its hash (with the inputs' hashes) is recorded, and resuming into the same
      output with a different one raises ConfigMismatch unless force=True.
    On a CUDA OOM the same samples are redone at half the batch size (kept for the rest of the run).
    SIGTERM/SIGUSR1: stop at the next batch boundary, discard open shards, return summary.interrupted=True
    (exit code EXIT_REQUEUE). Returns a StageSummary; raises StageFailed if an input shard failed its checks.
    """
    import torch

    ins = [x if isinstance(x, ShardSet) else ShardSet.load(x) for x in
           (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
    output = Path(output)
    name = name or output.name
    env_rank, env_world, local_rank = rank_world()
    rank = env_rank if rank is None else rank
    world = env_world if world is None else world
    device = device if device is not None else device_for_local_rank(local_rank)
    config = dict(config or {})
    _check_unique_keys(ins[0])  # before anything is written
    meta = _prepare_output(output, name, ins, config, force)

    out = ShardSet.load(output)
    mine = assign_shards(ins[0].indices(), rank, world)
    todo, summary = [], StageSummary(final_batch_size=batch_size)
    for i in mine:
        if _is_committed(out, i):
            summary.skipped_shards += 1
            summary.skipped_samples += out.records[i]["count"] + len(out.records[i].get("rejects", []))
        else:
            todo.append(i)
            (output / (f"{name}-{i:06d}.tar" + PARTIAL)).unlink(missing_ok=True)  # orphans of a killed run
            for tmp in (output / "commits").glob(f"{i:06d}.json.tmp.*"):
                tmp.unlink(missing_ok=True)

    log = _RunLog(output / "logs", rank)
    summary.log_path = str(log.path)
    log.event("start", rank=rank, world=world, device=str(device), config_hash=meta["config_hash"],
              todo=todo, skipped=summary.skipped_shards, batch_size=batch_size)
    bar = Progress(sum(ins[0].records[i]["count"] for i in todo), f"{name} r{rank}", enabled=progress and rank == 0)
    state = {"bs": batch_size}

    def run_batch(samples: list[dict]) -> list:
        try:
            outs = process(make_batch(samples, state["bs"], resolution, device))
        except Exception as e:
            if not is_oom(e) or state["bs"] == 1:
                raise
            old = state["bs"]
            state["bs"] = max(1, old // 2)
            summary.oom_retries += 1
            log.event("oom_retry", shard=samples[0]["__shard__"], keys=[s["__key__"] for s in samples],
                      from_batch_size=old, to_batch_size=state["bs"], error=str(e)[:300])
            print(f"[{name}] rank {rank}: out of memory at batch size {old}; redoing these {len(samples)} samples "
                  f"at {state['bs']}", file=sys.stderr, flush=True)
            del e
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            outs = []
            while len(outs) < len(samples):  # bs may shrink again inside: re-read it every step
                outs += run_batch(samples[len(outs):len(outs) + state["bs"]])
            return outs
        outs = list(outs)
        if len(outs) not in (len(samples), state["bs"]):
            raise ValueError(f"process returned {len(outs)} outputs for {len(samples)} real samples")
        return outs[:len(samples)]

    open_shards: dict[int, dict] = {}
    try:
        with _Stopper() as stopper:
            stream = ChunkStream(ins, todo, batch_size, resolution, required, check_hash, center_crop)
            for chunk in _chunks(stream, num_workers):
                if stopper.stop:
                    break
                i = chunk["shard"]
                st = open_shards.get(i)
                if st is None:
                    st = open_shards[i] = {"writer": ShardWriter(output, i, f"{name}-{i:06d}.tar",
                                                                 {"config_hash": meta["config_hash"]}),
                                           "rejects": []}
                if chunk["error"]:
                    open_shards.pop(i)["writer"].discard()
                    summary.failed_shards.append({"shard": i, "error": chunk["error"]})
                    log.event("shard_failed", shard=i, error=chunk["error"])
                    print(f"[{name}] rank {rank}: input shard {i} failed: {chunk['error']}", file=sys.stderr)
                    continue
                for r in chunk["rejects"]:
                    st["rejects"].append(r)
                    log.event("reject", shard=i, **r)
                summary.rejected += len(chunk["rejects"])
                bar.update(len(chunk["rejects"]))
                samples, done = chunk["samples"], 0
                while done < len(samples) and not stopper.stop:
                    part = samples[done:done + state["bs"]]
                    done += len(part)
                    for smp, o in zip(part, run_batch(part)):
                        reason = ("process_returned_none" if o is None else o.get("__reject__"))
                        if reason:
                            r = {"key": smp["__key__"], "reason": str(reason), "pos": smp["__pos__"]}
                            st["rejects"].append(r)
                            log.event("reject", shard=i, **r)
                            summary.rejected += 1
                            continue
                        if not o:
                            raise ValueError(f"process returned an empty output for {smp['__key__']}")
                        st["writer"].add(smp["__key__"], o)
                        summary.processed += 1
                    bar.update(len(part))
                if stopper.stop:
                    break
                if chunk["last"]:
                    rec = open_shards.pop(i)["writer"].commit(sorted(st["rejects"], key=lambda r: r["pos"]))
                    summary.committed_shards += 1
                    log.event("commit", shard=i, count=rec["count"], rejects=len(rec["rejects"]),
                              sha256=rec["sha256"])
            if stopper.stop:
                summary.interrupted = True
                log.event("interrupted", signal=stopper.signum, discarded=sorted(open_shards))
    finally:
        for st in open_shards.values():
            st["writer"].discard()
        open_shards.clear()
        summary.final_batch_size = state["bs"]
        bar.close()
        log.event("summary", **{k: v for k, v in summary.__dict__.items()})
        log.close()
    print(f"[{name}] " + summary.line(rank), file=sys.stderr, flush=True)
    if summary.failed_shards and raise_on_failure:
        raise StageFailed(f"{len(summary.failed_shards)} input shard(s) failed: " +
                          "; ".join(f["error"] for f in summary.failed_shards[:5]))
    return summary
