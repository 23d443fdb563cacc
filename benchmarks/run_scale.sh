#!/usr/bin/env bash
# The full scale run: one pytest session per tier (each tier's JSON stands alone, so a run cut
# short still reports what finished), then the report. Usage:
#   bash benchmarks/run_scale.sh [tiers...]      # default: 10K 100K 1M 10M 100M, 1G's random batches
# Writes benchmarks/results/scale-<tier>.json, then docs/SCALING.md and docs/scaling/*.png.
set -euo pipefail
cd "$(dirname "$0")/.."
tiers=("$@")
sparse_1g=0
[ ${#tiers[@]} -eq 0 ] && tiers=(10K 100K 1M 10M 100M) && sparse_1g=1
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE   # they slow a current NumPy (README)
mkdir -p benchmarks/results
for t in "${tiers[@]}"; do
  metrics_opt=()
  # test_metrics.py (sklearn vs nap on two kinds of data) runs once, at 10M
  [ "$t" = "10M" ] || metrics_opt=(--deselect benchmarks/test_metrics.py)
  ${PYTEST:-python3 -m pytest} benchmarks/ -p no:cacheprovider -q --scale "$t" "${metrics_opt[@]}" \
    --ignore=benchmarks/gpu --benchmark-json="benchmarks/results/scale-$t.json" \
    --benchmark-columns=median,rounds -rs
done
# 1G, by default: the random-access batches only (1M and 10M uniform events, nap's core beside
# numba-seq: the speed goal at 1e9 memories); the whole tier is opt-in (`run_scale.sh 1G`)
if [ "$sparse_1g" = 1 ]; then
  ${PYTEST:-python3 -m pytest} benchmarks/test_scale.py -p no:cacheprovider -q --scale 1G \
    -k "machine or (sparse and uniform and (cpp or numba-seq) and not 1G-10K-)" \
    --benchmark-json=benchmarks/results/scale-1G.json --benchmark-columns=median,rounds -rs
fi
# the report (benchmarks/report), from the repository root
${PYTHON:-python3} -m benchmarks.report benchmarks/results/scale-*.json
