#!/usr/bin/env python
"""`python bench/bench.py key=value ...` — the same as `digin bench key=value ...` (see digin/tasks/bench.py).

GPU:  python bench/bench.py out=bench/results/rows.jsonl
CPU:  python bench/bench.py models=tiny compile_backend=aot_eager iters=1
"""
import sys

from digin.tasks.bench import main

if __name__ == "__main__":
    sys.exit(main())
