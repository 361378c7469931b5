"""Throughput benchmark: `digin bench` (or `python bench/bench.py`) — one JSON row per measurement.

Builds a model set with random weights (weights do not change speed) — SD-1.5-shaped (`sd15`, the default on
CUDA), SDXL-base at 512 px (`sdxl512`), or the tiny test models (`tiny`, `tiny-sdxl`; the default on a CPU) — with a
ViT-B/16-384 classifier (tiny ViT for tiny sets), prepares them through the same path every stage uses
(engine/prepare.py with the `reference` or `fast` compute preset, engine/presets.py) and times, after warm-up:
  guidance   — engine.guidance.optimise with UVCE settings (20 DDIM × 20 SGD steps, CE over the last 3 x̂0,
               classifier on 16 cutouts), the objective the uvce stage builds (engine.objectives.Objective);
  uvce       — the `digin uvce` stage's per-image work: engine.edit.prepare_edit (initial pass with attention
               capture, masks, Prompt-to-Prompt, the default 3 × 2 schedule search, blending) + optimise with the
               controller injecting, the background regularisers, 16 cutouts;
  inversion  — engine.inversion.invert, null-text (20 steps × 10 inner Adam steps, no early exit);
  generation — engine.sampling.denoise + VAE decode (20 steps, CFG, no grad);
  calls      — each call site once per mode (UNet CFG without / with grad, the inversion's B-row UNet call, VAE
               decode without / with grad, VAE encode, classifier on 16 cutouts with grad and on one view), timed with
               CUDA events, composed with the engine's call counts into seconds per image of guidance, UVCE and
               inversion, and cross-checked by one short end-to-end optimise (K = 1).
Modes: `reference` = the reference's compute path (fp32, batch 1, UNet/VAE block checkpointing, eager, kernels
off, tf32=conv as the reference ran); `fast` = the fast preset (bf16, batch 8, per-step recompute, torch.compile,
CUDA graphs for the no-grad calls, fused kernels), with any single key overridden here, once per attention
backend; `fast-eager` = the same without compiling.
Each row: device, versions, workload, mode, batch, TF32 switches, s/image, images/hour, peak GiB (and the cost rows'
prediction), compile time, recompiles, how every call site ran (compiled, CUDA graphs, fell back and why, UNet calls
run eagerly), FLOPs per image (eager count at batch 1, same settings) and achieved TFLOP/s; then one `speedup` row
per workload — only where neither side fell back, otherwise a row saying why.
`workloads=[plan]` (on by default) adds the work plans of the reference's tables (busiest rank ÷ mean per world
size, a simulated dynamic schedule with slow and dead ranks, the ImageNet UVCE pipeline's EFLOP; counted, not
timed: digin/stages/plan_bench.py). `workloads=[cost]` (on by default) adds device-independent cost rows (stages/costs.py: FLOPs per image with and
without recompute, saved bytes per sample, largest batch in `capacity_gib`) for sd15, sdxl512 or tiny.
Tests never assert timings.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import torch

from digin.engine.presets import xformers_problem
from digin.fields import COUNT, COUNT0, Int, NONNEG, RATE, SEED, key
from digin.shards.dist import device_problem
from digin.stages.bench import (MODES, PRESETS, WORKLOADS, bench_calls, bench_one, cost_rows, environment,
                                mode_settings, speedup_row)
from digin.stages.costs import cost_rows as sd15_rows
from digin.stages.plan_bench import bench_rows


@dataclass
class Config:
    models: str = key("auto", "auto (sd15 on CUDA, tiny on CPU) | sd15 | sdxl512 | tiny | tiny-sdxl")
    workloads: list = key(help="guidance | uvce | inversion | generation | calls | cost | plan (default: all)",
                          factory=lambda: list(WORKLOADS))
    modes: list = key(help="reference | fast-eager | fast (default: all; with reference, a speedup row per workload)",
                      factory=lambda: list(MODES))
    attention: list = key(help="fast mode backends compared", factory=lambda: ["sdpa", "xformers"])
    batch: Optional[int] = key(None, "fast modes: samples run together (None: the fast preset's, 8)", rule=COUNT)
    dtype: Optional[str] = key(None, "fast modes: weights fp32 | bf16 | fp16 (None: the fast preset's, bf16)")
    checkpoint: Optional[str] = key(None, "fast modes: step | none | block (None: the fast preset's, step)")
    compile: Optional[bool] = key(None, "fast mode: torch.compile the UNet call, VAE decode and classifier (None: "
                                        "the preset's, true)")
    compile_backend: Optional[str] = key(None, "fast mode: inductor | aot_eager (quick CPU runs) | eager (None: the "
                                              "preset's, inductor)")
    cudagraphs: Optional[bool] = key(None, "fast mode: CUDA graphs for the compiled no-grad calls (None: the preset's)")
    kernels: Optional[bool] = key(None, "fast modes: fused Triton kernels on CUDA (None: the fast preset's, true)")
    tf32: Optional[str] = key(None, "fast modes: off | conv | on (None: the preset's, on)")
    reference_tf32: Optional[str] = key(None, "reference mode (None: the preset's, conv — what the reference ran "
                                              "with)")
    strict_compile: Optional[bool] = key(None, "a fast-mode fallback to eager is an error row instead of a slow row",
                                               results=False)
    compile_scope: Optional[str] = key(None, "fast mode: full (the whole UNet call) | regional (its transformer "
                                             "blocks)")
    reps: int = key(5, "calls: timed repetitions per call site", rule=COUNT)
    budget_s: Optional[float] = key(None, "calls: stop timing new calls after this many seconds (the GPU check's "
                                          "limit)", rule=NONNEG)
    warmup: int = key(1, "untimed calls before timing; the first one compiles (at least 1 runs)", rule=COUNT0)
    iters: int = key(2, "timed calls per row; the row reports their median", rule=COUNT)
    count_flops: bool = key(True, "count FLOPs per image (eager, batch 1): TFLOP/s and the peak-memory prediction")
    cost_models: Optional[str] = key(None, "model set of the cost rows (default: sd15, or tiny for the tiny sets)")
    capacity_gib: float = key(139.0, "GPU memory for the cost rows' largest batch (H200: 139 GiB usable)", rule=RATE)
    device: str = key("auto", "auto (cuda when available, else cpu) | cpu | cuda | cuda:<n>", results=False, check=device_problem)
    seed: int = key(0, "seeds the random weights and the workloads' inputs", rule=SEED)
    out: Optional[str] = key(None, "append the JSON rows to this file too", results=False)
    ddim_steps: Optional[int] = key(None, "DDIM steps per image (None: the model set's, 20; tiny sets 3)",
                                          rule=Int(1, 1000))
    sgd_steps: Optional[int] = key(None, "guidance steps per image (None: the model set's, 20; tiny sets 1)",
                                         rule=COUNT0)
    loss_steps: Optional[int] = key(None, "guidance loss over the last this many x̂0 (None: the model set's, 3; "
                                          "tiny sets 2)", rule=COUNT)
    num_cutouts: Optional[int] = key(None, "classifier cutouts per image (None: the model set's, 16; tiny sets 2)",
                                           rule=COUNT0)
    inner_steps: Optional[int] = key(None, "inversion: null-text Adam steps per DDIM step (None: the model set's, "
                                           "10; tiny sets 1)", rule=COUNT0)
    search_candidates: Optional[int] = key(None, "calls: UVCE schedule candidates in the composition (default 6)",
                                                 rule=COUNT)


def run(cfg: Config):
    dev = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    models = cfg.models if cfg.models != "auto" else ("sd15" if dev.type == "cuda" else "tiny")
    if models not in PRESETS:
        raise SystemExit(f"digin bench: models must be auto, {', '.join(PRESETS)}; got {models!r}")
    unknown = set(cfg.workloads) - set(WORKLOADS)
    if unknown:
        raise SystemExit(f"digin bench: unknown workloads {sorted(unknown)}; choose from {', '.join(WORKLOADS)}")
    bad_modes = set(cfg.modes) - set(MODES)
    if bad_modes:
        raise SystemExit(f"digin bench: unknown modes {sorted(bad_modes)}; choose from {', '.join(MODES)}")

    for mode in cfg.modes:  # bad compute values (tf32=..., dtype=...) stop here, in one line
        try:
            mode_settings(mode, cfg, "sdpa", dev)
        except ValueError as e:
            raise SystemExit(f"digin bench: {e}") from None
    settings = dict(PRESETS[models])
    settings.update({k: getattr(cfg, k) for k in settings if getattr(cfg, k, None) is not None})
    common = dict(environment(dev), models=models, settings=settings)
    rows = []

    def emit(row):
        row = {**common, **row}
        rows.append(row)
        line = json.dumps(row, allow_nan=False, default=str)
        print(line, flush=True)
        if cfg.out:
            with open(cfg.out, "a") as f:
                f.write(line + "\n")

    predict = {}  # (workload, preset mode) → cost row: the peak-memory prediction of the timed rows
    if models in ("sd15", "tiny") and any(w in cfg.workloads for w in ("guidance", "uvce", "inversion")) \
            and cfg.count_flops:
        predict = {(r["workload"], r["mode"]): r for r in cost_rows(cfg, models)}
    for workload in cfg.workloads:
        if workload == "cost":
            for r in cost_rows(cfg, models):
                emit(r)
            continue
        if workload == "plan":  # the reference's own workloads: SD-1.5 cost rows whatever `models` is
            for r in bench_rows(sd15_rows("sd15")):
                emit(r)
            continue
        if workload == "calls":
            import time

            deadline = time.monotonic() + cfg.budget_s if cfg.budget_s else None
            composed = {}
            for m in cfg.modes:  # reference, fast-eager, fast: the eager fast timings estimate what a budget cut
                composed[m] = bench_calls(cfg, models, settings, dev, m, emit,
                                          eager_ms=(composed.get("fast-eager") or {}).get("ms"), deadline=deadline)
            ref = composed.get("reference") or {}
            if "reference" in cfg.modes and len(cfg.modes) > 1:
                for wl in ("guidance", "uvce", "inversion"):
                    fast = [c[wl] for m, c in composed.items() if m != "reference" and c and wl in c]
                    emit(speedup_row(wl, ref.get(wl), fast, kind="speedup_composed"))
            continue
        by_mode = {}
        for mode in cfg.modes:
            backends = ["sdpa"] if mode == "reference" else list(cfg.attention)
            for attention in backends:
                if attention == "xformers":
                    problem = xformers_problem(dev)
                    if problem:
                        emit(dict(workload=workload, mode=mode, attention=attention, status=f"skipped: {problem}"))
                        continue
                row = bench_one(cfg, models, settings, dev, workload, mode, attention, predict)
                emit(row)
                if row["status"] == "ok":
                    by_mode.setdefault(mode, []).append(row)
        if "reference" in cfg.modes and len(cfg.modes) > 1:
            ref = by_mode.get("reference", [None])[0]
            emit(speedup_row(workload, ref, [r for m, rs in by_mode.items() if m != "reference" for r in rs]))
    return 0 if all(r["status"] == "ok" or r["status"].startswith(("skipped", "no speedup")) for r in rows) else 1
