#!/usr/bin/env python
"""One fast-preset guidance iteration under torch.profiler → a table of the top kernels by time.

  python bench/profile_guidance.py out=/tmp/profile.md                  # GPU: sd15, batch 8, top 15 CUDA kernels
  python bench/profile_guidance.py models=tiny batch=2 compile=false    # CPU smoke run (CPU ops)

Models and preparation are the benchmark's (digin/stages/bench.py), i.e. what the stages run; the profiled call is
engine.guidance.optimise with one SGD step (UVCE settings otherwise), after one untimed warm-up call (compiles).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Config:
    models: str = "auto"  # auto (sd15 on CUDA, tiny on CPU) | sd15 | sdxl512 | tiny
    batch: int = 8
    compile: Optional[bool] = None  # None: the fast preset's
    compile_backend: Optional[str] = None
    top: int = 15
    out: Optional[str] = None  # write the table here too (markdown)


def main(argv=None) -> int:
    from digin.cli import build_config
    from digin.engine.models import resolve_dtype
    from digin.engine.prepare import prepare_classifier, prepare_sd
    from digin.engine.presets import resolve_compute
    from digin.stages.bench import PRESETS, build_classifier, build_sd, make_workload

    cfg = build_config(Config, list(sys.argv[1:] if argv is None else argv))
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = cfg.models if cfg.models != "auto" else ("sd15" if dev.type == "cuda" else "tiny")
    s = resolve_compute("fast", dev, batch_size=cfg.batch, compile=cfg.compile, compile_backend=cfg.compile_backend)
    dtype = resolve_dtype(s.dtype)
    settings = {**PRESETS[models], "sgd_steps": 1}
    sd = prepare_sd(build_sd(models, dev, dtype), s)
    clf = prepare_classifier(build_classifier(models, dev, dtype, settings["num_cutouts"]), s)
    fn = make_workload("guidance", sd, clf, settings, s.batch_size, s.checkpoint, 0)
    fn()  # warm-up: compiles every graph
    if dev.type == "cuda":
        torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda"
                                                    else [])
    with torch.profiler.profile(activities=acts) as prof:
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=cfg.top, max_name_column_width=80)
    head = (f"# One fast guidance iteration (optimise, 1 SGD step + evaluation), {models}, batch {s.batch_size}, "
            f"{s.dtype}, compile={s.compile}, device {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}"
            f"\n\nTop {cfg.top} by {key}:\n\n```\n{table}\n```\n")
    print(head)
    if cfg.out:
        with open(cfg.out, "w") as f:
            f.write(head)
    return 0


if __name__ == "__main__":
    sys.exit(main())
