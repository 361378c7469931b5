#!/usr/bin/env bash
# One prepared GPU check (CUDA tests + bench + profile), sized for a ~15-minute device budget (≈ 8 min of it).
# On the GPU machine (torch, triton, timm, transformers present; diffusers/webdataset/omegaconf not):
#   here, once:  echo /.whl/ >> .git/info/exclude
#                python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#                  --platform manylinux2014_x86_64 --platform any -d .whl diffusers==0.42.1 omegaconf==2.4.0 \
#                  antlr4-python3-runtime==4.9.3 webdataset==1.0.2 braceexpand
#   device run:  carry=[".whl"], command: bash bench/gpu_check.sh   (timeout_s ~540)
# Results under $OUT: gpu.txt, pytest-gpu.txt, bench.jsonl, profile.md. Copy the rows into bench/results/<gpu>.md.
set -u
OUT=${OUT:-/tmp/digin-gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
else
  export PYTHONPATH=$PWD
fi
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/digin-inductor}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# 1. CUDA tests (≈ 2 min): GPU-marked tests, the kernel tests and the fused cutouts on real Triton, the doctor.
TRITON_INTERPRET=0 timeout 180 python3 -m pytest -q -p no:randomly -m gpu tests/engine/test_gpu.py tests/kernels \
  tests/tasks/test_doctor.py 2>&1 | tail -15 | tee "$OUT/pytest-gpu.txt"
TRITON_INTERPRET=0 timeout 60 python3 -m pytest -q -p no:randomly tests/kernels \
  "tests/engine/test_classifiers.py::test_fused_cutout_views_equal_the_eager_views_forward_and_backward" \
  2>&1 | tail -5 | tee -a "$OUT/pytest-gpu.txt"
# 2. Bench at SD-1.5 shapes, reference vs fast in one run (sgd_steps=2, inner_steps=2: times scale linearly), then the
#    fast preset at batch 16 for guidance.
timeout 240 python3 bench/bench.py models=sd15 workloads=[guidance,inversion,generation,cost] sgd_steps=2 \
  inner_steps=2 iters=1 batch=8 attention=[sdpa] out="$OUT/bench.jsonl" 2>&1 | tail -12
timeout 90 python3 bench/bench.py models=sd15 workloads=[guidance] modes=[fast] sgd_steps=2 iters=1 batch=16 \
  attention=[sdpa] count_flops=false out="$OUT/bench.jsonl" 2>&1 | tail -3
# 3. Profile one fast guidance iteration at batch 8: the top 15 CUDA kernels.
timeout 90 python3 bench/profile_guidance.py models=sd15 batch=8 out="$OUT/profile.md" 2>&1 | tail -25
