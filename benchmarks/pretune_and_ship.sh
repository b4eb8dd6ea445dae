#!/usr/bin/env bash
# On the GPU machine: pretune a workload, prove a fresh process runs it with 0 benchmarks
# and 0 misses, then ship the DB as a bundle (with and without compiled kernels) to a
# fresh "node" (new DB, new Triton cache) and time the first calls there.
#   bash benchmarks/pretune_and_ship.sh workloads/llama7b.yaml OUTDIR
# TOKENS: the token counts check_pretuned.py runs (default: its own, for 7B-sized workloads;
# e.g. TOKENS=1,4,5,8 for workloads/smoke.yaml).
set -euo pipefail
wl=${1:-workloads/llama7b.yaml}; out=${2:-/tmp/gems-ship}; mkdir -p "$out"
work=$(mktemp -d); export FLAGGEMS_CACHE_DIR=$work/cache
py=${PYTHON:-python3}

export TRITON_CACHE_DIR=$work/triton-origin
t0=$(date +%s)
$py -m tuner.cli.pretune "$wl" --db "$work/origin.db" --report "$out/pretune.json" 2>&1 | tail -25
echo "pretune wall time: $(( $(date +%s) - t0 )) s"

echo "== fresh process on the pretuned DB, FLAGGEMS_AUTOTUNE=never (origin node, warm Triton cache)"
FLAGGEMS_TUNING_DB=$work/origin.db FLAGGEMS_AUTOTUNE=never $py benchmarks/check_pretuned.py "$wl" ${TOKENS:+--tokens "$TOKENS"}

$py -m tuner.cli.tunedb export --db "$work/origin.db" -o "$work/plain.bundle"
$py -m tuner.cli.tunedb export --db "$work/origin.db" -o "$work/kernels.bundle" --with-kernels
ls -la "$work"/*.bundle

for kind in plain kernels; do
  echo "== new node, bundle: $kind"
  export TRITON_CACHE_DIR=$work/triton-$kind
  $py -m tuner.cli.tunedb import "$work/$kind.bundle" --db "$work/$kind.db"
  FLAGGEMS_TUNING_DB=$work/$kind.db FLAGGEMS_AUTOTUNE=never $py benchmarks/check_pretuned.py "$wl" ${TOKENS:+--tokens "$TOKENS"}
done
