#!/usr/bin/env bash
# One prepared GPU check (CUDA tests + a short bench), sized for a ~15-minute device budget.
# On the GPU machine (torch, triton, timm, transformers present; diffusers/webdataset/omegaconf not):
#   here, once:  echo /.whl/ >> .git/info/exclude
#                python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#                  --platform manylinux2014_x86_64 --platform any -d .whl diffusers==0.42.1 omegaconf==2.4.0 \
#                  antlr4-python3-runtime==4.9.3 webdataset==1.0.2 braceexpand
#   device run:  carry=[".whl"], command: bash bench/gpu_check.sh   (timeout_s ~540)
# Results: $OUT/bench.jsonl (copy into bench/results/<gpu>.md) and $OUT/pytest-gpu.txt.
set -u
OUT=${OUT:-/tmp/digin-gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# 1. CUDA tests (a few minutes): GPU-marked tests plus the kernel tests on real Triton.
TRITON_INTERPRET=0 timeout 240 python3 -m pytest -q -m gpu tests/engine/test_gpu.py tests/engine/test_augment.py \
  2>&1 | tail -15 | tee "$OUT/pytest-gpu.txt"
# 2. Short bench: guidance + inversion, reference vs fast, SD-1.5 shapes (times scale linearly in sgd_steps).
timeout 420 python3 bench/bench.py models=sd15 workloads=[guidance,inversion] sgd_steps=2 inner_steps=2 iters=1 \
  batch=8 out="$OUT/bench.jsonl" 2>&1 | tail -20
