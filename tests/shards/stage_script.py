"""A tiny deterministic stage, run as a subprocess by the kill / torchrun tests.

usage: python stage_script.py <inputs> <output> <batch_size> <num_workers> [sleep_s] [calls_log_dir]
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
                         "feat": {"mean_c": x[j].mean(dim=(1, 2)), "idx": torch.tensor([s["__pos__"]])}})
        return outs
    return process


def main(argv):
    from digin.shards.runner import run_stage

    inputs, output, bs, nw = argv[0], Path(argv[1]), int(argv[2]), int(argv[3])
    sleep_s = float(argv[4]) if len(argv) > 4 else 0.0
    calls_dir = argv[5] if len(argv) > 5 else None
    torch.set_num_threads(1)
    summary = run_stage(inputs, output, process_fn(sleep_s, calls_dir, Path(str(output) + ".started")), bs,
                        {"stage": "test", "resolution": 16}, resolution=16, num_workers=nw, progress=False)
    return summary.exit_code


if __name__ == "__main__":
    np.random.seed(0)
    sys.exit(main(sys.argv[1:]))
