"""A tiny deterministic stage, run as a subprocess by the kill / torchrun tests.

usage: python stage_script.py <inputs> <output> <batch_size> <num_workers> [sleep_s] [calls_log_dir] [schedule]
    [items_per_shard] [lease_s]
Each process() call appends the keys it saw to <calls_log_dir>/rank<R>-<pid>.txt (to count executions), and
touches <output>.started on its first call so the parent knows the stage is running.
"""
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch


def process_fn(sleep_s=0.0, calls_dir=None, started=None):
    def process(batch):
        if started is not None and not started.exists():
            started.touch()
        if calls_dir is not None:
            with open(Path(calls_dir) / f"rank{os.environ.get('RANK', '0')}-{os.getpid()}.txt", "a") as f:
                f.write("".join(k + "\n" for k in batch.keys[:batch.n_real]))
        if sleep_s:
            time.sleep(sleep_s)
        x = batch.images.float()                                   # (B, 3, r, r)
        inv_BHWC = (255 - batch.images).permute(0, 2, 3, 1).contiguous().numpy()
        outs = []
        for j in range(batch.n_real):
            s = batch.samples[j]
            outs.append({"inverted": inv_BHWC[j],
                         "stats": {"mean": float(x[j].mean()), "label": s["meta"]["label"]},
                         "note": f"{batch.keys[j]} done",
                         "feat": {"mean_c": x[j].mean(dim=(1, 2)), "idx": torch.tensor([int(batch.keys[j][-5:])])}})
        return outs
    return process


SPEC_KEYS = ("name", "resolution", "required", "center_crop", "items_per_shard", "keys", "allow_incomplete")


def run_keys(inputs, output, process, batch_size, config=None, num_workers=0, **kw):
    """run_stage over every key of the first input (joined by key with the others), as a StageSpec + RunOptions.
    items_per_shard defaults to the first input's shard size (its first record's count), so unit j holds the keys
    of input shard j and tests can count units like input shards; items_per_shard=None → auto."""
    from digin.shards.manifest import ShardSet
    from digin.shards.runner import RunOptions, StageSpec, run_stage

    spec_kw = {k: kw.pop(k) for k in SPEC_KEYS if k in kw}
    name = spec_kw.pop("name", None) or Path(output).name
    if "items_per_shard" in spec_kw:
        ips = spec_kw.pop("items_per_shard")
    else:
        first = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        first = first if isinstance(first, ShardSet) else ShardSet.load(first)
        ips = first.records[min(first.records)]["count"]
    keys = spec_kw.pop("keys", None)
    spec = StageSpec.every_key(name, inputs, dict(config or {}), process, items_per_shard=ips, keys=keys, **spec_kw)
    return run_stage(spec, RunOptions(output, batch_size=batch_size, workers=num_workers, **kw))


def main(argv):
    inputs, output, bs, nw = argv[0], Path(argv[1]), int(argv[2]), int(argv[3])
    sleep_s = float(argv[4]) if len(argv) > 4 and argv[4] else 0.0
    calls_dir = argv[5] if len(argv) > 5 and argv[5] else None
    schedule = argv[6] if len(argv) > 6 else "static"
    ips = int(argv[7]) if len(argv) > 7 else None  # None: the input's shard size (run_keys)
    lease_s = float(argv[8]) if len(argv) > 8 else 600.0
    torch.set_num_threads(1)
    summary = run_keys(inputs, output, process_fn(sleep_s, calls_dir, Path(str(output) + ".started")), bs,
                       {"stage": "test", "resolution": 16}, resolution=16, num_workers=nw, progress=False,
                       schedule=schedule, lease_s=lease_s, heartbeat_s=min(30.0, lease_s / 4),
                       **({"items_per_shard": ips} if ips else {}))
    return summary.exit_code


if __name__ == "__main__":
    np.random.seed(0)
    sys.exit(main(sys.argv[1:]))
