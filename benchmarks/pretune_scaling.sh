#!/usr/bin/env bash
# On the GPU machine: pretune a workload from nothing (fresh DB, fresh Triton cache) once
# per device set, and report each run's wall time and key count.
#   bash benchmarks/pretune_scaling.sh workloads/llama7b.yaml OUTDIR [DEVICES...]
# DEVICES: comma-separated GPU sets, one run each (default: "0" then "0,1"). A single GPU
# runs as a user would run it: the plain in-process path (CUDA_VISIBLE_DEVICES, no
# --devices); DEVICES_FLAG=1 sends it through --devices too (one spawned worker).
# WORK: where the DBs and caches go (default: a temp dir); COMPILE_WORKERS: per device
# (default: pretune's own, the cores per device less one).
set -uo pipefail
wl=${1:-workloads/llama7b.yaml}; out=${2:-/tmp/gems-scaling}; shift 2 || true
sets=${*:-0 0,1}
work=${WORK:-$(mktemp -d)}; mkdir -p "$out" "$work"
py=${PYTHON:-python3}
for devs in $sets; do
  tag=gpus-${devs//,/_}
  rm -rf "$work/$tag.db" "$work/triton-$tag"
  export TRITON_CACHE_DIR=$work/triton-$tag FLAGGEMS_CACHE_DIR=$work/cache-$tag
  t0=$(date +%s.%N)
  if [[ $devs == *,* || -n ${DEVICES_FLAG:-} ]]; then run=(env); flag=(--devices "$devs")
  else run=(env CUDA_VISIBLE_DEVICES="$devs"); flag=(); fi
  timeout "${PRETUNE_TIMEOUT:-590}" "${run[@]}" $py -m tuner.cli.pretune "$wl" --db "$work/$tag.db" "${flag[@]}" \
    ${COMPILE_WORKERS:+--compile-workers "$COMPILE_WORKERS"} --report "$out/$tag.json" --no-progress \
    > "$out/$tag.log" 2>&1
  rc=$?
  wall=$($py -c "import time; print(round(time.time() - $t0, 1))")
  tail -n 25 "$out/$tag.log"
  # the DB holds what was tuned even if the run was cut short (rc 124): keys per second
  keys=$($py -c "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from tuning_records').fetchone()[0])" "$work/$tag.db" 2>/dev/null || echo 0)
  echo "== pretune $wl on GPUs $devs: rc=$rc, wall ${wall} s, $keys keys stored ($($py -c "print(round($keys / $wall, 2))") keys/s), DB $work/$tag.db"
done
