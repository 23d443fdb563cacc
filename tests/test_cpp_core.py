"""The C++ core on its own: CMake configure/build, its ctest suite on every instruction set the
build carries, install + find_package, and the machine code of its loops (packed clamps, no
fused multiply-add).

One Release build of ``cpp/`` (Ninja when available) is shared by the module. Skipped with the
reason when CMake or a C++ compiler is missing.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest

import nap_gpu as nap

from conftest import bits
from cpp_build import CPP_DIR, EXTRA_CMAKE_ARGS, TIMEOUT, build_consumer, run

CORE_SOURCE = CPP_DIR / "src" / "core.cpp"


@pytest.fixture(scope="module")
def installed(core_installed):  # the session's build, installed (tests/conftest.py)
    return core_installed


def test_ctest_passes(core_build):
    output = run(["ctest", "--output-on-failure", "-V", "-C", "Release"], cwd=core_build.build_dir)
    assert re.search(r"100% tests passed(?:, 0 tests failed)? out of [1-9]", output), output
    checks = re.search(r"(\d+) checks, (\d+) failed", output)
    assert checks, f"the core's test program printed no summary:\n{output}"
    assert int(checks.group(1)) > 100 and int(checks.group(2)) == 0, output
    if "-DNAP_OPENMP=OFF" in EXTRA_CMAKE_ARGS:  # a serial core says so, and runs one thread
        assert "openmp=off;" in output and ", 1 threads" in output, output


def test_install_layout(installed):
    for header in ("law.h", "core.h", "config.h"):
        assert (installed / "include" / "nap" / header).is_file(), f"{header} not installed"
    configs = list(installed.glob("lib*/cmake/nap/napConfig.cmake"))
    assert configs, f"napConfig.cmake not installed under {installed}"
    cmake_dir = configs[0].parent
    assert (cmake_dir / "napConfigVersion.cmake").is_file()
    assert (cmake_dir / "napTargets.cmake").is_file()
    libs = list(installed.glob("lib*/libnap.a")) + list(installed.glob("lib*/nap.lib"))
    assert libs, "the static library was not installed"


# Inputs of the consumer program: special weights and qualities (subnormals, the plateau,
# qualities on and beside the gate, out of range, -0.0).
_W = np.array([0.0, 1.0, 0.5, 0.98, 1.401298464324817e-45, 1e-39, 0.3, 0.02, 0.75,
               np.nextafter(np.float32(1), np.float32(0))], np.float32)
_Q = np.array([0.9, 0.1, 0.5, 1.0, 0.0, np.nextafter(np.float32(0.5), np.float32(1)), -3.0, 7.0,
               -0.0, np.nextafter(np.float32(0.5), np.float32(0))], np.float32)
_IDS = np.array([3, 3, 0, 9, 3, 5, 0, 3, 1, 1, 2], np.int64)
_EQ = np.array([0.9, 0.1, 0.95, 0.5, 0.7, 0.2, 0.4, 1.5, 0.6, 0.51, 0.49], np.float32)
_DECAYS = 3


def _c_array(name: str, values: np.ndarray, ctype: str) -> str:
    if ctype == "std::uint32_t":
        body = ", ".join(f"0x{int(b):08x}u" for b in bits(values))
    else:
        body = ", ".join(str(int(v)) for v in values)
    return f"const {ctype} {name}[] = {{{body}}};"


CONSUMER_MAIN = """\
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "nap/core.h"
#include "nap/law.h"

namespace {{
float from_bits(std::uint32_t b) {{ float x; std::memcpy(&x, &b, sizeof x); return x; }}
std::uint32_t to_bits(float x) {{ std::uint32_t b; std::memcpy(&b, &x, sizeof b); return b; }}
{w}
{q}
{ids}
{eq}
constexpr std::size_t kN = sizeof(W) / sizeof(W[0]);
constexpr std::size_t kM = sizeof(IDS) / sizeof(IDS[0]);
void print(const char* label, const float* w) {{
  std::printf("%s", label);
  for (std::size_t i = 0; i < kN; ++i) std::printf(" %08x", static_cast<unsigned>(to_bits(w[i])));
  std::printf("\\n");
}}
}}  // namespace

int main() {{
  const nap::Params p;  // the defaults of docs/law.md section 2
  float w[kN], q[kN], eq[kM];
  for (std::size_t i = 0; i < kN; ++i) {{ w[i] = from_bits(W[i]); q[i] = from_bits(Q[i]); }}
  for (std::size_t j = 0; j < kM; ++j) eq[j] = from_bits(EQ[j]);
  float law[kN];
  for (std::size_t i = 0; i < kN; ++i) law[i] = nap::step(w[i], q[i], p);  // the header alone
  print("law", law);
  nap::step(w, q, kN, p);                     // the library's dense loop
  print("step", w);
  nap::update(w, kN, IDS, eq, kM, p);         // ordered sparse batch
  print("update", w);
  nap::decay(w, kN, p.decay, {decays});        // decay(k)
  print("decay", w);
  std::printf("threads %d\\n", nap::num_threads());
  return 0;
}}
"""

def _expected_consumer_lines() -> dict[str, list[int]]:
    """What the consumer must print, computed with the numpy backend."""
    w = _W.copy()
    nap.step(w, _Q, backend="numpy")
    after_step = w.copy()
    nap.update(w, _IDS, _EQ, backend="numpy")
    after_update = w.copy()
    eng = nap.Engine(w.size, backend="numpy", init=w)
    eng.decay(_DECAYS)
    return {"law": bits(after_step).tolist(), "step": bits(after_step).tolist(),
            "update": bits(after_update).tolist(), "decay": bits(eng.to_numpy()).tolist()}


def test_find_package_consumer_builds_and_matches_numpy(installed, tmp_path):
    app = build_consumer(installed, tmp_path / "consumer", CONSUMER_MAIN.format(
        w=_c_array("W", _W, "std::uint32_t"), q=_c_array("Q", _Q, "std::uint32_t"),
        ids=_c_array("IDS", _IDS, "std::int64_t"), eq=_c_array("EQ", _EQ, "std::uint32_t"),
        decays=_DECAYS))
    output = run([app])

    got = {}
    for line in output.splitlines():
        label, *values = line.split()
        got[label] = values
    expected = _expected_consumer_lines()
    for label, want in expected.items():
        assert label in got, f"consumer printed no {label!r} line:\n{output}"
        have = [int(v, 16) for v in got[label]]
        assert have == want, (f"{label}: consumer (C++ core via find_package) differs from the "
                              f"numpy backend\n got  {[f'{b:08x}' for b in have]}\n want "
                              f"{[f'{b:08x}' for b in want]}")
    assert int(got["threads"][0]) >= 1
    # the inputs were not trivial: every stage changed something
    assert expected["step"] != bits(_W).tolist()
    assert expected["update"] != expected["step"] and expected["decay"] != expected["update"]


ISA_NAMES = {"baseline": "SSE2", "avx2": "AVX2", "avx512": "AVX512F"}


def test_ctest_passes_on_every_instruction_set(core_build):
    """NAP_SIMD forces each vector path the build carries; each must pass the golden tables and
    the parallel-vs-scalar checks (the tails and the vector bodies are compared bitwise)."""
    library = next(core_build.build_dir.glob("**/libnap.a"), None)
    if library is None or "x86" not in os.uname().machine and "amd64" not in os.uname().machine:
        pytest.skip("the dispatched AVX2/AVX-512 loops exist on x86-64 builds only")
    cpu = pathlib.Path("/proc/cpuinfo").read_text() if pathlib.Path("/proc/cpuinfo").exists() else ""
    ran = []
    for forced, isa in ISA_NAMES.items():
        if forced != "baseline" and f" {forced.replace('avx512', 'avx512f')}" not in cpu:
            continue  # this CPU cannot run it
        env = {**os.environ, "NAP_SIMD": forced}
        proc = subprocess.run(["ctest", "--output-on-failure", "-V", "-C", "Release"],
                              cwd=core_build.build_dir, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"simd={isa};" in proc.stdout, f"NAP_SIMD={forced} did not select {isa}"
        assert re.search(r"\b\d+ checks, 0 failed", proc.stdout)
        ran.append(isa)
    assert "SSE2" in ran


def test_loops_use_packed_clamps_and_no_fma(core_build):
    """The law's clamps compile to packed max/min (one instruction each, NaN rules included)
    and no instruction fuses a multiply with an add (bit parity)."""
    objdump = shutil.which("objdump")
    library = next(core_build.build_dir.glob("**/libnap.a"), None)
    if objdump is None or library is None:
        pytest.skip("objdump or the static library is missing")
    code = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(library)],
                          capture_output=True, text=True, check=True).stdout
    if "x86-64" not in code and "i386" not in code:
        pytest.skip("instruction checks are written for x86-64")
    assert re.search(r"\bv?maxps\b", code) and re.search(r"\bv?minps\b", code)
    fused = re.findall(r"\bv?f(?:n)?m(?:add|sub)\w*", code)
    assert not fused, f"fused multiply-add instructions in the core: {sorted(set(fused))}"
