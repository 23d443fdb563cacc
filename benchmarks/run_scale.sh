#!/usr/bin/env bash
# The full scale run: one pytest session per tier (each tier's JSON stands alone, so a run cut
# short still reports what finished), then the report. Usage:
#   bash benchmarks/run_scale.sh [tiers...]      # default: 10K 100K 1M 10M 100M
# Writes benchmarks/results/scale-<tier>.json, then docs/SCALING.md and docs/scaling/*.png.
set -euo pipefail
cd "$(dirname "$0")/.."
tiers=("$@")
[ ${#tiers[@]} -eq 0 ] && tiers=(10K 100K 1M 10M 100M)
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
# the report (benchmarks/report), from the repository root
${PYTHON:-python3} -m benchmarks.report benchmarks/results/scale-*.json
