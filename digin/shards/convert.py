"""Dataset on disk -> `<name>-<split>-NNNNNN.tar` shards + manifest. Originals are stored byte-for-byte."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time
from pathlib import Path

from digin.shards.decode import IMAGE_POLICY
from digin.shards.manifest import (FORMAT, MANIFEST, ConfigMismatch, ShardSet, config_differences, config_hash,
                                   read_manifest, write_json)
from digin.shards.progress import Progress
from digin.shards.sources import SOURCES
from digin.shards.writer import PARTIAL, write_shard

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def shard_file(name: str, split: str, index: int) -> str:
    return f"{name}-{split}-{index:06d}.tar"


def _image_ext(path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    return {"jpeg": "jpg", "tiff": "tif"}.get(ext, ext)


def _write_shard(job) -> dict:
    """One conversion job = one shard: read the original files, write, commit. Runs in a pool worker."""
    out, name, split, index, entries, root, classes, extra = job

    def samples():
        for key, path, label in entries:
            path = Path(path)
            meta = {"label": label, "label_name": classes[label] if 0 <= label < len(classes) else str(label),
                    "source": os.path.relpath(path, root)}
            yield key, {"image": (_image_ext(path), path.read_bytes()),
                        "meta": ("json", json.dumps(meta, sort_keys=True, allow_nan=False).encode())}

    return write_shard(out, index, shard_file(name, split, index), samples(), extra)


def _default_signals():
    """Pool workers die on the pool's SIGTERM: the parent's stop handlers (cli's urgent()) are not theirs."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)


def pool_map(fn, jobs: list, workers: int, ordered: bool = False):
    """fn over jobs in `workers` processes (in this process when workers <= 1 or one job); results are yielded as
    they finish, or in job order when `ordered`. Workers come from a forkserver, not a fork of this process: a fork
    of a process with threads (torch's, tqdm's monitor, a test runner's) can inherit a held lock and hang, and then
    ignore the pool's SIGTERM because a Python handler can never run."""
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(min(workers, len(jobs)), initializer=_default_signals) as pool:
            yield from (pool.imap if ordered else pool.imap_unordered)(fn, jobs)
    else:
        yield from map(fn, jobs)


def start_dataset(out: Path, meta: dict, force: bool):
    """Write the manifest of a dataset conversion into `out`; a folder holding another conversion is refused
    (ConfigMismatch naming the differing keys) unless forced, which drops its commit records."""
    out.mkdir(parents=True, exist_ok=True)
    mpath = out / MANIFEST
    if mpath.exists():
        old = read_manifest(mpath)  # a damaged one: one line naming it (digin.shards.manifest)
        if old.get("config_hash") != meta["config_hash"] and not force:
            changed = "; ".join(config_differences(old.get("config"), meta["config"]))
            raise ConfigMismatch(f"{out} holds a different conversion ({old.get('config_hash')} != "
                                 f"{meta['config_hash']}: {changed}); use another folder or force=True")
        if old.get("config_hash") != meta["config_hash"]:  # forced: start over
            for p in (out / "commits").glob("*.json"):
                p.unlink()
    write_json(mpath, {k: v for k, v in meta.items() if k != "shards"})


def finish_dataset(out: Path, meta: dict) -> ShardSet:
    """List every committed record in the manifest too (a converted set's manifest is self-contained)."""
    meta["shards"] = [dict(r) for r in ShardSet.load(out).records.values()]
    write_json(out / MANIFEST, meta)
    return ShardSet.load(out)


def is_done(out: Path, rec: dict | None, chash: str) -> bool:
    """A shard committed under this conversion whose tar still has its recorded size."""
    p = out / rec["file"] if rec else None
    return bool(rec) and rec.get("config_hash") == chash and p.exists() and p.stat().st_size == rec["bytes"]


def convert(source: str, root, split: str, out, name: str | None = None, samples_per_shard: int = 1000,
            workers: int = 1, force: bool = False, limit: int | None = None, progress: bool = True) -> ShardSet:
    """Convert a dataset into a committed shard set in `out`; re-running skips committed shards."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; one of {sorted(SOURCES)}")
    root, out = Path(root), Path(out)
    name = name or (source if source != "imagefolder" else re.sub(r"[^A-Za-z0-9_-]", "_", root.name) or "images")
    check_names(name, split)
    items, classes = SOURCES[source](root, split)
    if limit is not None:
        items = items[:limit]
    if not items:
        raise ValueError(f"no images found for {source} {split} under {root}")
    width = max(5, len(str(len(items) - 1)))
    keyed = [(f"{name}/{split}/{i:0{width}d}", str(p), int(lbl)) for i, (p, lbl) in enumerate(items)]
    listing = hashlib.sha256("\n".join(f"{k}\t{os.path.relpath(p, root)}\t{l}" for k, p, l in keyed)
                             .encode()).hexdigest()[:16]
    config = {"source": source, "split": split, "name": name, "samples_per_shard": samples_per_shard,
              "listing_sha256": listing, "num_samples": len(keyed)}
    chash = config_hash(config)
    chunks = [keyed[s:s + samples_per_shard] for s in range(0, len(keyed), samples_per_shard)]
    meta = {"format": FORMAT, "kind": "dataset", "name": name, "split": split, "source": source, "root": str(root),
            "classes": classes, "config": config, "config_hash": chash, "num_shards": len(chunks),
            "num_samples": len(keyed), "image_policy": IMAGE_POLICY, "key_format": f"{name}/{split}/<index>"}
    start_dataset(out, meta, force)
    done = ShardSet.load(out, damaged="skip")  # a damaged record's shard is redone (a conversion is deterministic)
    jobs = []
    for i, entries in enumerate(chunks):
        if is_done(out, done.records.get(i), chash):
            continue
        (out / (shard_file(name, split, i) + PARTIAL)).unlink(missing_ok=True)
        jobs.append((str(out), name, split, i, entries, str(root), classes, {"config_hash": chash}))
    bar = Progress(sum(len(j[4]) for j in jobs), f"shard {name}-{split}", enabled=progress)
    t0 = time.monotonic()
    for rec in pool_map(_write_shard, jobs, workers):
        bar.update(rec["count"])
    bar.close()
    elapsed = time.monotonic() - t0
    ss = finish_dataset(out, meta)
    n_new = sum(len(j[4]) for j in jobs)
    print(f"[shard] {name}-{split}: {len(keyed)} samples in {len(chunks)} shards -> {out} "
          f"({n_new} written in {elapsed:.1f}s, {n_new / max(elapsed, 1e-9):.0f} img/s; "
          f"{len(chunks) - len(jobs)} shards already done)", flush=True)
    return ss


def check_names(name: str, split: str):
    if not NAME_RE.match(name) or not NAME_RE.match(split):
        raise ValueError(f"name {name!r} and split {split!r} must match {NAME_RE.pattern}")
