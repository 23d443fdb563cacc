#!/usr/bin/env bash
# The first GPU run: one offline command that answers every open GPU question.
#
#     bash benchmarks/gpu/run.sh OUT [--wheelhouse DIR] [--simulated]
#
# On the GPU host (no package index): makes a venv over the host's packages
# (--system-site-packages: CuPy, torch, pytest, ... as they are), installs the wheels of DIR
# (benchmarks/gpu/wheelhouse.sh DIR, made beforehand on a machine with an index; default
# benchmarks/gpu/wheelhouse if it exists) and then nap_gpu from this tree
# (pip install --no-index --no-build-isolation --find-links DIR .: the C++ core is built with
# the host's scikit-build-core, pybind11, cmake and ninja), then runs
#   1. benchmarks/gpu/first_run.py: versions and the cold compile (a fresh NAP_CACHE_DIR), the
#      cubin's SASS, parity at the 64-bit boundaries, dense/sparse/metrics timings with CUDA
#      events, per-call latency, PyTorch interop, the pool-sized Engine;
#   2. pytest tests -m gpu (NAP_TEST_DEVICE=real), JUnit XML;
# and writes at most 8 files into OUT:
#   gpu-run.json   every figure, with units, and each phase's exit status
#   gpu-run.md     a short table per section, PASS/FAIL against the targets
#   pytest-gpu.xml the GPU tests' JUnit report
#   sass.txt       cuobjdump -sass of the device's own cubin
#   run.log        everything the phases printed (pip, the build, pytest, first_run)
# The summary table comes last on stdout.
#
# It never stops at the first failure: each phase has a time limit (`timeout`) and its exit
# status is recorded; the whole run keeps within NAP_GPU_RUN_BUDGET_S (default 400 s, under
# the 7 minutes a device run has). The venv, caches and build folder live in a temporary
# folder (removed at the end; NAP_GPU_RUN_KEEP=1 keeps it), never in OUT or in the tree.
#
# --simulated: the same script here, without a GPU, on the simulated device of
# tests/simdevice (prepended to PYTHONPATH, so `import cupy` is the simulated CuPy) with the
# small "simulated" profile; gpu-run.json says "simulated": true, and no figure is a GPU's.
set -uo pipefail   # not -e: a failed phase is recorded and the next one runs

usage() { echo "usage: bash benchmarks/gpu/run.sh OUT [--wheelhouse DIR] [--simulated]" >&2; exit 2; }
[[ $# -ge 1 && $1 != -* ]] || usage
out_arg="$1"; shift
wheelhouse="" simulated=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheelhouse) [[ $# -ge 2 ]] || usage; wheelhouse="$2"; shift 2 ;;
    --wheelhouse=*) wheelhouse="${1#*=}"; shift ;;
    --simulated) simulated=1; shift ;;
    *) usage ;;
  esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$root/benchmarks/gpu"
if [[ -z "$wheelhouse" && -d "$here/wheelhouse" ]]; then wheelhouse="$here/wheelhouse"; fi
if [[ -n "$wheelhouse" ]]; then wheelhouse="$(cd "$wheelhouse" 2>/dev/null && pwd || echo "$wheelhouse")"; fi
mkdir -p "$out_arg" || exit 2
out="$(cd "$out_arg" && pwd)"
rm -f "$out"/{gpu-run.json,gpu-run.md,pytest-gpu.xml,sass.txt,run.log}
log="$out/run.log"
work="$(mktemp -d "${TMPDIR:-/tmp}/nap-gpu-run.XXXXXX")"
cleanup() { if [[ "${NAP_GPU_RUN_KEEP:-0}" != 1 ]]; then rm -rf "$work"; fi; }
trap cleanup EXIT
phases="$work/phases.tsv"
: > "$phases"

budget="${NAP_GPU_RUN_BUDGET_S:-400}"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
say() { echo "[run.sh $(printf '%4d' "$(elapsed)")s] $*" | tee -a "$log"; }

# phase NAME CAP RESERVE CMD...: run CMD with a limit of min(CAP, what the budget leaves after
# RESERVE seconds kept for the phases that follow); record its exit status and time.
phase() {
  local name="$1" cap="$2" reserve="$3"; shift 3
  local left=$(( budget - $(elapsed) - reserve ))
  local limit=$(( cap < left ? cap : left ))
  if (( limit < 10 )); then
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "-" 0 "$limit" "not run: out of time" >> "$phases"
    say "== $name: not run (out of time: $left s left)"
    return 125
  fi
  say "== $name (limit ${limit}s)"
  echo "+ $*" >> "$log"
  local t0 rc note=""
  t0=$(date +%s)
  timeout -k 20 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  local dt=$(( $(date +%s) - t0 ))
  case $rc in
    0) note="ok" ;;
    124|137) note="TIMED OUT after ${limit}s" ;;
    *) note="exit $rc" ;;
  esac
  [[ -n "${PHASE_NOTE:-}" ]] && note="$note; $PHASE_NOTE"
  PHASE_NOTE=""
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$dt" "$limit" "$note" >> "$phases"
  say "   $name: $note (${dt}s)"
  return $rc
}
note_phase() {  # a line for the phase table without running anything
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" 0 0 "$3" >> "$phases"
  say "== $1: $3"
}

mode="real GPU"; [[ $simulated == 1 ]] && mode="SIMULATED device (tests/simdevice, no GPU)"
say "nap_gpu first GPU run on $(hostname): $mode; out $out; budget ${budget}s"
{
  echo "tree: $root"
  (cd "$root" && git rev-parse HEAD 2>/dev/null && git status --short 2>/dev/null | head -50) || true
  echo "python3: $(command -v python3) $(python3 --version 2>&1)"
  command -v nvidia-smi >/dev/null && nvidia-smi 2>&1 | head -20
  command -v nvcc >/dev/null && nvcc --version 2>&1 | tail -2
  command -v cuobjdump >/dev/null && echo "cuobjdump: $(command -v cuobjdump)"
  echo "wheelhouse: ${wheelhouse:-none}"
  [[ -n "$wheelhouse" ]] && ls -la "$wheelhouse" 2>&1
} >> "$log" 2>&1

# Offline: no index, no config file or environment pointing pip anywhere else.
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT PIP_REQUIREMENT PIP_TARGET PIP_PREFIX
export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export PYTHONNOUSERSITE=1

# -- 1. the environment ----------------------------------------------------------------------
venv="$work/venv"
py="$venv/bin/python"
target_args=()
if ! phase venv 60 200 python3 -m venv --system-site-packages "$venv"; then
  if phase venv-without-pip 60 200 python3 -m venv --without-pip --system-site-packages "$venv"; then
    :  # the host's pip (a system site-package) installs into the venv
  else
    py="$(command -v python3)"
    target_args=(--target "$work/site")
    export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
    note_phase "no-venv" "-" "installing with pip --target into a temporary folder"
  fi
fi
find_links=()
[[ -n "$wheelhouse" ]] && find_links=(--find-links "$wheelhouse")
if [[ -n "$wheelhouse" && -f "$wheelhouse/requirements.txt" ]]; then
  if ! phase wheels 90 200 "$py" -m pip install --no-index "${find_links[@]}" "${target_args[@]}" \
        -r "$wheelhouse/requirements.txt"; then
    PHASE_NOTE="without dependency resolution" \
      phase wheels-no-deps 60 200 "$py" -m pip install --no-index --no-deps "${find_links[@]}" \
        "${target_args[@]}" -r "$wheelhouse/requirements.txt"
  fi
else
  note_phase "wheels" "-" "no wheelhouse (--wheelhouse DIR with requirements.txt): nothing installed"
fi
# nap_gpu itself, built here: the build folder in the temporary folder, never in the tree
if ! (cd "$root" && phase install 240 180 "$py" -m pip install -v --no-index --no-build-isolation \
        "${find_links[@]}" "${target_args[@]}" --config-settings=build-dir="$work/build" .); then
  (cd "$root" && PHASE_NOTE="without dependencies" phase install-no-deps 180 170 \
     "$py" -m pip install -v --no-index --no-build-isolation --no-deps "${target_args[@]}" \
       --config-settings=build-dir="$work/build" .)
fi
{
  echo "== the environment"
  "$py" -c "import sys, nap_gpu; print(sys.executable, sys.version); print('nap_gpu', nap_gpu.__version__, nap_gpu.__file__)" 2>&1
  "$py" -m pip list 2>&1
} >> "$log" 2>&1
nap_path="$("$py" -c "import nap_gpu; print(nap_gpu.__file__)" 2>/dev/null)"
case "$nap_path" in
  "$work"/*) ;;
  "") note_phase "nap_gpu import" "-" "FAILED: nap_gpu does not import (see run.log)" ;;
  *) note_phase "nap_gpu import" "-" "from $nap_path, not this run's install (an editable install on the host's path comes first)" ;;
esac

# -- 2. first_run.py --------------------------------------------------------------------------
export NAP_CACHE_DIR="$work/nap-kernel-cache"   # fresh: the cold compile is measured
expect=real
run_env=(env)
if [[ $simulated == 1 ]]; then
  expect=simulated
  run_env=(env "PYTHONPATH=$root/tests/simdevice${PYTHONPATH:+:$PYTHONPATH}" "NAP_SIM_MEMORY=$((4 << 30))")
fi
first_run_limit=$(( budget - $(elapsed) - 130 ))
(( first_run_limit > 220 )) && first_run_limit=220
phase first_run "$first_run_limit" 130 "${run_env[@]}" "$py" "$here/first_run.py" --out "$out" \
  --expect "$expect" --budget-s "$(( first_run_limit > 30 ? first_run_limit - 15 : 15 ))"

phase info 30 110 "${run_env[@]}" "$py" -m nap_gpu.cli info

# -- 3. the GPU tests -------------------------------------------------------------------------
collected="$work/collected"
pytest_env=(env "PYTHONPATH=$here${PYTHONPATH:+:$PYTHONPATH}" "NAP_PYTEST_COLLECTED=$collected")
if [[ $simulated == 0 ]]; then
  pytest_env+=("NAP_TEST_DEVICE=real")   # the real GPU, never the simulated fallback
fi
pytest_limit=$(( budget - $(elapsed) - 20 ))
deadline=$(( $(date +%s) + pytest_limit - 25 ))
(cd "$root" && phase "pytest -m gpu" "$pytest_limit" 20 "${pytest_env[@]}" "NAP_PYTEST_DEADLINE=$deadline" \
   "$py" -m pytest tests -m gpu -p no:randomly -p no:cacheprovider -p nap_pytest_limit \
   --continue-on-collection-errors --junitxml="$out/pytest-gpu.xml" -q)
if [[ -s "$collected" ]]; then
  note_phase "pytest selected" "-" "$(cat "$collected") tests selected by -m gpu"
fi

# -- 4. the summary ---------------------------------------------------------------------------
for f in "$out"/*; do  # every file under the 16 MiB a run may bring back
  [[ -f "$f" ]] || continue
  size=$(stat -c %s "$f")
  if (( size > 15 * 1024 * 1024 )); then
    case "$f" in
      *.log|*.txt)
        { head -c $((2 * 1024 * 1024)) "$f"; printf '\n[... %d bytes cut by run.sh ...]\n' "$size";
          tail -c $((12 * 1024 * 1024)) "$f"; } > "$work/cut" && mv "$work/cut" "$f" ;;
    esac
  fi
done
summary_args=(--summarize --out "$out" --phases "$phases" --junit "$out/pytest-gpu.xml")
[[ $simulated == 1 ]] && summary_args+=(--simulated)
[[ -s "$collected" ]] && summary_args+=(--collected "$(cat "$collected")")
say "== summary ($(elapsed)s in all)"
timeout 60 python3 "$here/first_run.py" "${summary_args[@]}" 2>>"$log" | tee -a "$log"
count=$(find "$out" -maxdepth 1 -type f | wc -l)
if (( count > 8 )); then echo "run.sh: WARNING: $count files in $out (at most 8 come back)" | tee -a "$log"; fi
