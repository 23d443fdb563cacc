#!/usr/bin/env bash
# The wheels the GPU host lacks, for its Python (cp312, manylinux x86_64), fetched here on a
# machine with a package index:
#
#     bash benchmarks/gpu/wheelhouse.sh DIR [--with-dask]
#
# DIR then travels with the tree to the GPU host (no index there), where
#     bash benchmarks/gpu/run.sh OUT --wheelhouse DIR
# installs them offline (pip --no-index --find-links DIR). DIR/requirements.txt names what
# run.sh installs (by name: whatever the host already has is kept, the rest comes from DIR).
#
# The list is explicit (pip download --no-deps): the host already has CuPy, NumPy, torch,
# pytest, hypothesis, pybind11, scikit-build-core, cmake, ninja, nvidia-ml-py, safetensors,
# prometheus-client, ... (the H200 host's package list), so only what it lacks is fetched.
# Computed once (pip's resolver against the index, cp312, 2026-12; see the comments below):
#
#   crc32c          runtime dependency of nap_gpu (snapshots' CRC-32C)
#   pyyaml          tests/test_containers.py imports yaml at module level: `pytest tests -m gpu`
#                   collects (imports) every test module, and a missing one is a collection
#                   error (not a skip). No GPU-marked test uses it.
#   httpx, httpcore, h11, anyio, idna, certifi
#                   tests/test_serve_fuzz.py imports httpx at module level (same reason); its
#                   closure (anyio 4.16 also needs typing_extensions, which the host has: torch
#                   depends on it).
#
# Not needed by the GPU-marked tests (checked with
#   pytest tests -m gpu --collect-only -q   ->  574 tests in test_bad_input, test_cuda_probe,
#   test_functional, test_golden, test_invariants, test_metrics, test_parity, test_snapshots;
# and grep over those modules' imports): fastapi, uvicorn, pydantic-settings (only
# test_serve*.py, no cuda parametrisation, importorskip'd) and dask[distributed]
# (test_sharded.py has no cuda parametrisation: all its tests are deselected by -m gpu, and it
# importorskips dask). --with-dask fetches dask[distributed] anyway (about 4 MiB more), for a
# run that also collects the sharded tests with dask present.
set -euo pipefail

usage() { echo "usage: bash benchmarks/gpu/wheelhouse.sh DIR [--with-dask]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
dir="$1"; shift
with_dask=0
for arg in "$@"; do
  case "$arg" in
    --with-dask) with_dask=1 ;;
    *) usage ;;
  esac
done

# name==version (pinned: the closure was resolved together) and the requirement run.sh
# installs for it.
wheels=(
  "crc32c==2.9.post0"
  "pyyaml==6.0.4"
  "httpx==0.28.1"
  "httpcore==1.0.9"
  "h11==0.16.0"
  "anyio==4.16.0"
  "idna==3.20"
  "certifi==2026.10.19.post1"
)
# dask[distributed] 2026.8 without what the host has (jinja2 + markupsafe and fsspec come with
# torch, packaging with pytest, sortedcontainers with hypothesis).
dask_wheels=(
  "dask==2026.8.0"
  "distributed==2026.8.0"
  "click==8.5.1"
  "cloudpickle==3.1.3"
  "importlib-metadata==10.2.0"
  "zipp==4.1.2"
  "lazy-importer==0.1.0"
  "locket==1.0.0"
  "msgpack==1.2.4"
  "partd==1.4.2"
  "psutil==7.2.2"
  "tblib==3.2.2"
  "toolz==1.2.0"
  "tornado==6.6.1"
  "zict==3.0.0"
)
if [[ $with_dask == 1 ]]; then wheels+=("${dask_wheels[@]}"); fi

limit=$((30 * 1024 * 1024))
target=(--only-binary=:all: --platform manylinux2014_x86_64 --python-version 3.12
        --implementation cp --abi cp312)

mkdir -p "$dir"
echo "wheelhouse: ${#wheels[@]} wheels for cp312 manylinux x86_64 into $dir"
python3 -m pip download --no-deps --dest "$dir" "${target[@]}" "${wheels[@]}"

# What run.sh installs, by name (a package the host already has, in any version, is kept).
{
  echo "# written by benchmarks/gpu/wheelhouse.sh: installed by run.sh with"
  echo "#   pip install --no-index --find-links DIR -r DIR/requirements.txt"
  for w in "${wheels[@]}"; do echo "${w%%==*}"; done
} > "$dir/requirements.txt"

# Offline check: every pinned wheel resolves from DIR alone, for the GPU host's interpreter.
check="$(mktemp -d)"
trap 'rm -rf "$check"' EXIT
if ! PIP_CONFIG_FILE=/dev/null python3 -m pip download --isolated --no-index --find-links "$dir" \
       --no-deps --dest "$check" "${target[@]}" "${wheels[@]}" > "$check/log" 2>&1; then
  cat "$check/log" >&2
  echo "wheelhouse: FAILED: the pinned wheels do not all resolve offline from $dir" >&2
  exit 1
fi

# Only the wheels of this list count (DIR may hold others from an earlier call).
total=0
printf '%10s  %s\n' bytes wheel
for w in "${wheels[@]}"; do
  name="${w%%==*}"; version="${w##*==}"
  pattern="$(echo "$name" | tr '-' '_')-${version}-"
  file="$(find "$dir" -maxdepth 1 -iname "${pattern}*.whl" | head -1)"
  if [[ -z "$file" ]]; then
    echo "wheelhouse: FAILED: no wheel for $w in $dir" >&2
    exit 1
  fi
  size=$(stat -c %s "$file")
  total=$((total + size))
  printf '%10d  %s\n' "$size" "$(basename "$file")"
done
extra=$(find "$dir" -maxdepth 1 -name '*.whl' | wc -l)
if (( extra > ${#wheels[@]} )); then
  echo "note: $dir holds $((extra - ${#wheels[@]})) more wheel(s) than this list (not counted)"
fi
printf 'wheelhouse total: %d bytes (%s MiB) in %d wheels; limit 30 MiB\n' \
  "$total" "$(awk -v b="$total" 'BEGIN { printf "%.2f", b / 1048576 }')" "${#wheels[@]}"
if (( total >= limit )); then
  echo "wheelhouse: FAILED: $total bytes is over the 30 MiB limit" >&2
  exit 1
fi
