#!/usr/bin/env bash
# The C++ core on the platforms one x86-64 Linux machine can reach (docs/law.md §2: the same
# bits everywhere): an aarch64 cross build whose ctest runs under qemu-user, and the law
# header compiled there by a plain g++ command line; a 32-bit x86 build (SSE, not the x87);
# a build without OpenMP (as Apple clang gives) with warnings as errors, its ctest and the
# pytest module of the core; Clang with warnings as errors; an ASan+UBSan ctest run;
# MinGW-w64 under Wine when both exist.
#
# A check whose toolchain is missing prints "SKIP <check>: <reason>" and the others go on; a
# check that runs and fails makes the script exit 1 once all have run. .ci/run calls it after
# the README's test command (Debian: g++-aarch64-linux-gnu qemu-user g++-i686-linux-gnu).
# Environment: NAP_CROSS_JOBS (build parallelism, default 2), NAP_CROSS_KEEP=1 (keep the
# build trees; their path is printed).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cpp=$(dirname "$here")
repo=$(dirname "$cpp")
work=$(mktemp -d "${TMPDIR:-/tmp}/nap-cross.XXXXXX")
[ "${NAP_CROSS_KEEP:-0}" = 1 ] && echo "build trees in $work" || trap 'rm -rf "$work"' EXIT
jobs=${NAP_CROSS_JOBS:-2}
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
failed=()
started=$SECONDS

check() {  # check NAME COMMAND...: runs the command, records a failure
  local name=$1 begin=$SECONDS
  shift
  echo "== $name"
  if "$@"; then
    echo "   ok: $name ($((SECONDS - begin)) s)"
  else
    echo "   FAILED: $name ($((SECONDS - begin)) s)"
    failed+=("$name")
  fi
}
skip() { echo "SKIP $1: $2"; }
have() { command -v "$1" >/dev/null 2>&1; }

# build_and_test DIR CMAKE_ARGS...: configure, build and ctest cpp/ in $work/DIR; prints what
# the test program says about its build and its checks.
build_and_test() {
  local dir=$work/$1
  shift
  if ! { cmake -S "$cpp" -B "$dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
           -DNAP_INSTALL=OFF "$@" && cmake --build "$dir" --parallel "$jobs" &&
         ctest --test-dir "$dir" -C Release --output-on-failure -V; } >"$dir.log" 2>&1; then
    tail -n 40 "$dir.log"
    return 1
  fi
  grep -E "nap core:|[0-9]+ checks, [0-9]+ failed|tests passed" "$dir.log" | sed 's/^[0-9]*: /   /'
}

# The law header in a host's own build: a plain command line must be refused, and the one
# the error names must give the bits of the x86-64 build.
header_alone() {  # header_alone CXX RUNNER...
  local cxx=$1 out=$work/host-$1
  shift
  local plain
  plain=$("$cxx" -O2 -I"$cpp/include" -c "$here/law_host.cpp" -o "$out-plain.o" 2>&1) && {
    echo "   $cxx -O2 compiled nap/law.h without -ffp-contract=off: the header must refuse it"
    return 1
  }
  grep -q -- "-ffp-contract=off" <<<"$plain" || { echo "$plain" | tail -n 5; return 1; }
  g++ -O2 -ffp-contract=off -DNAP_FP_CONTRACT_OFF -I"$cpp/include" "$here/law_host.cpp" \
    -o "$work/host-native" && "$work/host-native" >"$work/host-native.txt" || return 1
  "$cxx" -O2 -ffp-contract=off -DNAP_FP_CONTRACT_OFF -I"$cpp/include" "$here/law_host.cpp" \
    -o "$out" && "$@" "$out" >"$out.txt" || return 1
  local differ
  differ=$(diff "$work/host-native.txt" "$out.txt" | grep -c '^<')
  echo "   $cxx -O2 -ffp-contract=off: $differ of $(wc -l <"$out.txt") weights differ from x86-64"
  [ "$differ" = 0 ]
}

if ! have cmake || ! have c++; then
  echo "SKIP all cross checks: cmake or a C++ compiler (c++) is missing"
  exit 0
fi
echo "== cross checks of the C++ core ($(uname -m), cmake $(cmake --version | head -n 1 | cut -d' ' -f3))"

# -- aarch64 (GCC contracts a*b+c by default there) ------------------------------------------
if ! have aarch64-linux-gnu-g++; then
  skip aarch64 "no aarch64-linux-gnu-g++ (Debian: g++-aarch64-linux-gnu)"
elif ! have qemu-aarch64; then
  skip aarch64 "no qemu-aarch64 to run the tests (Debian: qemu-user)"
else
  check "aarch64: the law header alone" header_alone aarch64-linux-gnu-g++ \
    qemu-aarch64 -L /usr/aarch64-linux-gnu
  check "aarch64: ctest under qemu-user" build_and_test aarch64 \
    -DCMAKE_TOOLCHAIN_FILE="$here/aarch64-linux-gnu.cmake"
fi

# -- 32-bit x86 (the x87 FPU unless SSE is asked for) --------------------------------------
if ! have i686-linux-gnu-g++; then
  skip i686 "no i686-linux-gnu-g++ (Debian: g++-i686-linux-gnu)"
elif [ ! -x /usr/i686-linux-gnu/lib/ld-linux.so.2 ]; then
  skip i686 "no /usr/i686-linux-gnu/lib/ld-linux.so.2 to run 32-bit tests"
else
  x87_refused() {
    local msg
    msg=$(i686-linux-gnu-g++ -O2 -ffp-contract=off -DNAP_FP_CONTRACT_OFF -I"$cpp/include" -c \
          "$here/law_host.cpp" -o "$work/x87.o" 2>&1) && {
      echo "   nap/law.h compiled for the x87 FPU: it must refuse"; return 1; }
    grep -q -- "-mfpmath=sse" <<<"$msg"
  }
  check "i686: the law header refuses the x87" x87_refused
  check "i686: ctest (SSE2)" build_and_test i686 \
    -DCMAKE_TOOLCHAIN_FILE="$here/i686-linux-gnu.cmake"
fi

# -- no OpenMP, warnings as errors (Apple clang's build) -----------------------------------
serial_pytest() {
  if ! python3 -c "import nap_gpu, pytest" >/dev/null 2>&1; then
    skip "serial: pytest" "python3 cannot import nap_gpu and pytest"
    return 0
  fi
  NAP_CORE_CMAKE_ARGS="-DNAP_OPENMP=OFF -DCMAKE_COMPILE_WARNING_AS_ERROR=ON" \
    python3 -m pytest -q -p no:cacheprovider "$repo/tests/test_cpp_core.py" 2>&1 | tail -n 3
  return "${PIPESTATUS[0]}"
}
check "serial: no OpenMP, -Werror, ctest" build_and_test serial -DNAP_OPENMP=OFF \
  -DCMAKE_COMPILE_WARNING_AS_ERROR=ON
check "serial: tests/test_cpp_core.py" serial_pytest

# -- Clang (the header's own contraction pragma), warnings as errors ------------------------
if have clang++; then
  check "clang: -Werror, ctest" build_and_test clang -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_COMPILE_WARNING_AS_ERROR=ON
else
  skip clang "no clang++ (Debian: clang)"
fi

# -- AddressSanitizer + UndefinedBehaviorSanitizer ------------------------------------------
if echo 'int main() { return 0; }' |
   c++ -fsanitize=address,undefined -x c++ - -o "$work/asan-probe" >/dev/null 2>&1; then
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    check "asan+ubsan: ctest" build_and_test sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
else
  skip asan+ubsan "the C++ compiler cannot link -fsanitize=address,undefined"
fi

# -- Windows: MinGW-w64 under Wine, ctest -C Release -----------------------------------------
# The Windows code paths (MoveFileEx, _commit, gmtime_s in the snapshot writer) and the PE/COFF
# ABI; linked statically, since Wine has no MinGW runtime DLLs. Serial: MSVC's OpenMP is what
# Windows wheels use, and MinGW's static libgomp does not start under Wine.
wine_bin=$(command -v wine || command -v wine64 || { [ -x /usr/lib/wine/wine64 ] && echo /usr/lib/wine/wine64; } || true)
mingw_cxx=$(command -v x86_64-w64-mingw32-g++-posix || command -v x86_64-w64-mingw32-g++ || true)
if [ -n "$mingw_cxx" ] && [ -n "$wine_bin" ]; then
  export WINEDEBUG=-all WINEPREFIX="$work/wine"
  check "mingw-w64: ctest -C Release under wine" build_and_test mingw -DCMAKE_SYSTEM_NAME=Windows \
    -DCMAKE_CXX_COMPILER="$mingw_cxx" -DCMAKE_CROSSCOMPILING_EMULATOR="$wine_bin" \
    -DNAP_OPENMP=OFF -DCMAKE_EXE_LINKER_FLAGS=-static
else
  skip mingw-w64 "x86_64-w64-mingw32-g++ and wine are not both installed (Debian: g++-mingw-w64-x86-64-posix wine64)"
fi

echo "== cross checks done in $((SECONDS - started)) s"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
