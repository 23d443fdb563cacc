#!/usr/bin/env bash
# The GPU run, one command on a GPU host:  bash benchmarks/gpu/run.sh
# Runs the GPU test subset (parity, golden, invariants with backend="cuda") and the GPU
# benchmarks, and writes benchmarks/results/gpu-<host>-<date>.{json,txt,md}.
# Needs: pip install ".[cuda13,nvml,test,bench]" (or cuda12).
set -euo pipefail
cd "$(dirname "$0")/../.."
stamp="$(hostname)-$(date +%Y%m%d-%H%M)"
out="benchmarks/results/gpu-${stamp}"
mkdir -p benchmarks/results
export NAP_CACHE_DIR="${NAP_CACHE_DIR:-$(mktemp -d)}"   # a fresh kernel cache: compile included

nap-gpu info | tee "${out}.txt"
echo "== GPU tests" | tee -a "${out}.txt"
pytest tests -m gpu -q -p no:randomly 2>&1 | tee -a "${out}.txt"
echo "== GPU benchmarks" | tee -a "${out}.txt"
pytest benchmarks/gpu --benchmark-json="${out}.json" --benchmark-columns=median,iqr,rounds "$@" \
  2>&1 | tee -a "${out}.txt"
python benchmarks/report.py "${out}.json" | tee "${out}.md"
echo "results: ${out}.txt ${out}.json ${out}.md"
