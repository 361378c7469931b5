#!/usr/bin/env bash
# The GPU check of issue 30 in one short run: ≤ 480 s of machine time with cold caches (the inner timeouts below sum
# to 460 s; tests/test_bench.py checks that), and every measurement appended to $OUT/rows.jsonl as soon as it exists,
# so a run cut short still returns what it measured. It decides whether the fast preset reaches ≥ 10× the reference
# preset's images/hour on the UVCE stage's work (and ≤ 6 s/image on an H100) and ≥ 20× on null-text inversion:
#   1. the Triton kernels against their eager references on CUDA tensors at SD shapes, bf16 and fp32, forward and
#      backward; one guidance iteration and one inversion step under torch.cuda.set_sync_debug_mode("error")
#   2. per-call timings with CUDA events (UNet CFG no-grad and forward+backward, the inversion's B-row UNet call, VAE
#      decode with and without grad, VAE encode, ViT-B/16-384 on 16 cutouts forward+backward) for reference (fp32,
#      eager, batch 1, its block checkpointing, tf32=conv as the reference ran) and fast-eager (bf16, batch 8), each
#      with one short end-to-end optimise (K = 1) that cross-checks the composition
#   3. the same for fast (compiled: inductor, CUDA graphs for the no-grad calls), the four deciding calls first, with
#      a time budget: calls it does not reach are estimated from fast-eager's ratios (and say so)
#   4. the cost rows (FLOPs, saved bytes: CPU, in the background) and the summary: seconds per image of guidance, UVCE
#      and inversion composed from the calls and the engine's call counts, speedups (none where a side fell back),
#      peak memory against the cost rows' prediction → $OUT/summary.md
#
# On the GPU machine (torch, triton, timm, transformers there; diffusers, omegaconf, webdataset not), prepared here once:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 --platform any -d .whl diffusers==0.42.1 omegaconf==2.4.0 \
#     antlr4-python3-runtime==4.9.3 webdataset==1.0.2 braceexpand
#   device run: carry=[".whl"], command: bash bench/gpu_check.sh, timeout_s=540
# CPU dry run (CI runs it: tests/test_bench.py): DIGIN_GPU_CHECK_DRY=1 bash bench/gpu_check.sh — tiny models, eager,
# a few seconds per step; the same steps, files and rows.
set -u
OUT=${OUT:-/tmp/digin-gpu-check}
DRY=${DIGIN_GPU_CHECK_DRY:-0}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
ROWS="$OUT/rows.jsonl"
COSTS="$OUT/costs.jsonl"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/digin-inductor}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ "$DRY" = 1 ]; then
  MODELS=tiny; FAST="compile=false"; PYTEST_GPU="-m gpu"; REPS=1
else
  MODELS=sd15; FAST="compile=true"; PYTEST_GPU="-m gpu"; REPS=3
  export TRITON_INTERPRET=0
  # 0. the missing packages from carried wheels (≤ 60 s)
  if ls .whl/*.whl >/dev/null 2>&1; then
    timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH || echo "gpu_check: wheel install failed" >&2
  fi
  timeout 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
# 4a. cost rows in the background: counted on meta tensors (CPU), done long before the summary needs them
timeout 150 "$PY" -m digin bench workloads=[cost] models=$MODELS out="$COSTS" >/dev/null 2>"$OUT/costs.err" &
COST_PID=$!
# 1. kernels on CUDA at SD shapes, bf16 and fp32, forward and backward; no host sync in a step (≤ 100 s)
timeout 100 "$PY" -m pytest -q -p no:randomly $PYTEST_GPU tests/kernels/test_cuda_kernels.py tests/engine/test_gpu.py \
  tests/engine/test_augment.py 2>&1 | tail -20 | tee "$OUT/pytest-gpu.txt"
# 2. reference and fast-eager: per-call timings + one short optimise each (≤ 100 s)
timeout 100 "$PY" -m digin bench models=$MODELS workloads=[calls] modes=[reference,fast-eager] attention=[sdpa] \
  reps=$REPS out="$ROWS" 2>&1 | tail -4
# 3. fast, compiled: the deciding calls first; no new call after 150 s, the run itself killed at 170 s (≤ 170 s)
timeout 170 "$PY" -m digin bench models=$MODELS workloads=[calls] modes=[fast] attention=[sdpa] $FAST \
  reps=$REPS budget_s=150 out="$ROWS" 2>&1 | tail -4
wait $COST_PID
# 4b. the decision (≤ 20 s)
timeout 20 "$PY" bench/gpu_summary.py "$ROWS" "$COSTS" | tee "$OUT/summary.md"
