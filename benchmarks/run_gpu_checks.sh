#!/usr/bin/env bash
# On the GPU machine, from the repo root: the test suite on CUDA (compiled Triton), then
# the benchmarks, each log into OUTDIR. Steps are time-boxed so one slow step can't eat
# the others.   bash benchmarks/run_gpu_checks.sh OUTDIR [STEP...]
# STEP: tests | hit | ops | pw | gemm | llama | host | scaling   (default: tests hit ops)
# scaling needs two GPUs (nvidia-h200-x2): llama7b pretuned on GPU 0, then on 0,1, then
# checked in a fresh process under the never policy
set -uo pipefail
out=${1:-/tmp/gems-gpu}; shift || true
steps=${*:-tests hit ops}
mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  $py -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__)"
  date -u +%F; } > "$out/device.txt"
cat "$out/device.txt"
for step in $steps; do
  t0=$(date +%s)
  case $step in
    tests) # -rfE: failures are named at the end; a time-out still leaves each one's traceback (tail)
           FLAGGEMS_TEST_DEVICE=cuda timeout "${TEST_TIMEOUT:-400}" $py -m pytest -q -rfE -n "${JOBS:-12}" -p no:cacheprovider \
             tests/test_api.py tests/tuner/test_libtuner.py tests/tuner/test_launch.py tests/ops tests/integrations > "$out/tests.log" 2>&1
           grep -E "^(FAILED|ERROR) |passed|failed" "$out/tests.log" | tail -n 40 ;;
    hit) timeout 120 $py benchmarks/bench_libtuner_hit.py > "$out/hit.md" 2>&1; cat "$out/hit.md" ;;
    ops) timeout "${OPS_TIMEOUT:-240}" $py benchmarks/bench_ops.py > "$out/ops.md" 2>&1; cat "$out/ops.md" ;;
    gemm) timeout "${GEMM_TIMEOUT:-400}" $py benchmarks/bench_gemm.py > "$out/gemm.md" 2>&1; cat "$out/gemm.md" ;;
    pw) timeout 120 $py benchmarks/bench_pointwise.py > "$out/pw.md" 2>&1; cat "$out/pw.md" ;;
    llama) timeout "${LLAMA_TIMEOUT:-300}" $py benchmarks/bench_llama.py > "$out/llama.md" 2>&1; cat "$out/llama.md" ;;
    host) timeout 120 $py benchmarks/profile_host.py > "$out/host.md" 2>&1; head -n 14 "$out/host.md" ;;
    scaling) w=${WORK:-/tmp/gems-scaling}  # one device call: 300 + 200 + 40 s at most
             WORK=$w PRETUNE_TIMEOUT=300 bash benchmarks/pretune_scaling.sh workloads/llama7b.yaml "$out" 0 2>&1 | grep "^== pretune"
             WORK=$w PRETUNE_TIMEOUT=200 bash benchmarks/pretune_scaling.sh workloads/llama7b.yaml "$out" 0,1 2>&1 | grep "^== pretune"
             TRITON_CACHE_DIR=$w/triton-gpus-0_1 FLAGGEMS_TUNING_DB=$w/gpus-0_1.db CUDA_VISIBLE_DEVICES=0 \
               FLAGGEMS_AUTOTUNE=never timeout 40 $py benchmarks/check_pretuned.py workloads/llama7b.yaml | tail -n 12 ;;
    *) echo "unknown step $step" ;;
  esac
  echo "== $step: $(( $(date +%s) - t0 )) s"
done
