#!/usr/bin/env python
"""`python bench/bench.py key=value ...` — the same as `digin bench key=value ...` (digin/tasks/bench.py): the
benchmark prepares its models through the path every stage uses (engine/prepare.py) and times the engine's own
functions; nothing is patched here.

  GPU:  python bench/bench.py out=bench/results/rows.jsonl                 # sd15: reference vs fast + cost rows
        python bench/bench.py models=sdxl512 batch=2 out=bench/results/rows.jsonl
  CPU:  python bench/bench.py models=tiny compile_backend=aot_eager iters=1
        python bench/bench.py workloads=[cost] models=sd15               # device-independent cost rows only
"""
import sys

from digin.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
