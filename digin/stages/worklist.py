"""Work lists: the committed shard set of JSON-only items a txt2img stage (diff, neuron visualisation) runs over,
so it gets the runner's exactly-once, resume and rank split like every other stage."""
from __future__ import annotations

import json
from pathlib import Path


def wait_for_worklist(folder, timeout_s: float = 3600.0, poll_s: float = 2.0):
    """Block until rank 0 has committed every shard of the work list in `folder`."""
    import time

    from digin.shards.manifest import ShardSet

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ss = ShardSet.load(folder)
            if len(ss.records) == ss.meta.get("num_shards", -1):
                return ss
        except (FileNotFoundError, ValueError):  # not written yet / half-written manifest
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"digin: rank 0 did not write the work list {folder} within {timeout_s:.0f} s")
        time.sleep(poll_s)


def write_worklist(out, name: str, items: list[tuple[str, dict]], per_shard: int, meta: dict | None = None,
                   wait_s: float = 3600.0):
    """A committed shard set of JSON-only samples (key, item) — the input of txt2img stages, so they get the
    runner's exactly-once, resume and rank split like every other stage. Deterministic: re-running with the
    same items is a no-op; other items into the same folder are refused. Only rank 0 writes; the other ranks
    wait for its commit (several writers would race on the same files)."""
    from digin.shards.dist import rank_world
    from digin.shards.manifest import FORMAT, MANIFEST, ConfigMismatch, ShardSet, config_hash, write_json
    from digin.shards.writer import ShardWriter, remove_orphan_partial

    if rank_world()[0] != 0:
        return wait_for_worklist(out, wait_s)
    out = Path(out)
    listing = [[k, v] for k, v in items]
    chash = config_hash({"name": name, "items": listing, "per_shard": per_shard})
    chunks = [items[s:s + per_shard] for s in range(0, len(items), per_shard)]
    m = {"format": FORMAT, "kind": "worklist", "name": name, "config": {"name": name, "per_shard": per_shard,
         "num_items": len(items)}, "config_hash": chash, "num_shards": len(chunks), "num_samples": len(items),
         **(meta or {})}
    out.mkdir(parents=True, exist_ok=True)
    mpath = out / MANIFEST
    if mpath.exists() and json.loads(mpath.read_text()).get("config_hash") != chash:
        raise ConfigMismatch(f"{out} holds another work list; use a new folder")
    write_json(mpath, m)
    done = ShardSet.load(out)
    for i, chunk in enumerate(chunks):
        if i in done.records:
            continue
        remove_orphan_partial(out, f"{name}-{i:06d}.tar")  # rank 0 is the work list's only writer
        w = ShardWriter(out, i, f"{name}-{i:06d}.tar", {"config_hash": chash})
        try:
            for key, item in chunk:
                w.add(key, {"item": item})
            w.commit()
        except BaseException:
            w.discard()
            raise
    return ShardSet.load(out)
