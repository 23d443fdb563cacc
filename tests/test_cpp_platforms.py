"""The C++ core where platforms and hosts differ: the law header compiled without the CMake
target (FMA contraction, x87 excess precision), flush-to-zero set by another library, fork()
after a parallel region, multi-config generators. Bits are compared, never closeness.

Each test skips with its reason when its toolchain is missing. The cross builds (aarch64 under
qemu-user, 32-bit x86, no OpenMP with -Werror, ASan+UBSan) are in cpp/ci/cross_checks.sh.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import nap_gpu as nap

from conftest import bits

REPO = pathlib.Path(__file__).resolve().parents[1]
INCLUDE = REPO / "cpp" / "include"
TIMEOUT = 300  # a guard against a hang, not a speed assertion
CPP_USABLE = nap.available_backends()["cpp"] is None


def _compiler(kind: str) -> str | None:
    """A g++ that is GCC, or a clang++ that is Clang (c++ may be either)."""
    for name in (("g++",) if kind == "gcc" else ("clang++",)):
        path = shutil.which(name)
        if path is None:
            continue
        macros = subprocess.run([path, "-dM", "-E", "-x", "c++", os.devnull], capture_output=True,
                                text=True).stdout
        is_clang = "__clang__" in macros
        if (kind == "clang") == is_clang:
            return path
    return None


def _has_fma_cpu() -> bool:
    cpu = pathlib.Path("/proc/cpuinfo")
    return cpu.exists() and re.search(r"^flags\s*:.*\bfma\b.*\bavx2\b", cpu.read_text(), re.M) is not None


# A host service's own loop over the scalar law: w and q read from files, the steps written back.
HOST_PROGRAM = r"""
#include <cstdio>
#include <vector>
#include "nap/law.h"

int main(int argc, char** argv) {
  std::FILE* in = std::fopen(argv[1], "rb");
  long n = 0;
  if (!in || std::fread(&n, sizeof n, 1, in) != 1) return 2;
  std::vector<float> w(n), q(n), lr(n);
  if (std::fread(w.data(), 4, n, in) != size_t(n) || std::fread(q.data(), 4, n, in) != size_t(n) ||
      std::fread(lr.data(), 4, n, in) != size_t(n)) return 2;
  const nap::Params p;
  for (long i = 0; i < n; ++i) w[i] = nap::step(w[i], q[i], p);
  // q known to reinforce: the product feeds one sum, the easiest case to fuse
  for (long i = 0; i < n; ++i) w[i] = nap::feedback(w[i], 0.875f, lr[i], p.gate);
  std::FILE* out = std::fopen(argv[2], "wb");
  return out && std::fwrite(w.data(), 4, n, out) == size_t(n) && std::fclose(out) == 0 ? 0 : 3;
}
"""


def _host_inputs(n: int = 1 << 16):
    rng = np.random.default_rng(21)
    w = rng.random(n, dtype=np.float32)
    q = rng.uniform(-0.2, 1.2, n).astype(np.float32)
    lr = rng.uniform(0.0, 0.3, n).astype(np.float32)
    return w, q, lr


def _host_expected(w, q, lr):
    out = w.copy()
    nap.step(out, q, backend="numpy")
    # feedback(w, 0.875, lr[i]) reinforces: t = lr * q, then w + t, clamped (docs/law.md §2),
    # each a float32 operation in NumPy; + 0 turns -0.0 into +0.0 as the law does
    t = lr * np.float32(0.875)
    return np.minimum(np.maximum(out + t, np.float32(0)), np.float32(1)) + np.float32(0)


def _compile(cxx: str, flags: list[str], source: str, out: pathlib.Path) -> subprocess.CompletedProcess:
    src = out.with_suffix(".cpp")
    src.write_text(source)
    return subprocess.run([cxx, *flags, f"-I{INCLUDE}", str(src), "-o", str(out)],
                          capture_output=True, text=True, timeout=TIMEOUT)


def test_law_header_refuses_gcc_without_contraction_off(tmp_path):
    """GCC fuses a*b+c by default wherever the target has an FMA, and no header pragma stops
    it where the law is inlined and vectorised: for such a target the header refuses to
    compile unless the build says contraction is off (the CMake target does both)."""
    gxx = _compiler("gcc")
    if gxx is None:
        pytest.skip("no GCC (g++) on PATH")
    fma = {"x86_64": ["-mfma"], "i686": ["-msse2", "-mfpmath=sse", "-mfma"]}.get(os.uname().machine, [])
    if not fma and os.uname().machine not in ("aarch64", "arm64", "ppc64le", "s390x"):
        pytest.skip(f"no FMA target flags known for {os.uname().machine}")
    plain = _compile(gxx, ["-O2", "-c", *fma], '#include "nap/law.h"\n', tmp_path / "plain.o")
    assert plain.returncode != 0 and "-ffp-contract=off" in plain.stderr, plain.stderr
    told = _compile(gxx, ["-O2", "-c", *fma, "-ffp-contract=off", "-DNAP_FP_CONTRACT_OFF"],
                    '#include "nap/law.h"\n', tmp_path / "told.o")
    assert told.returncode == 0, told.stderr


@pytest.mark.parametrize("kind", ["gcc", "clang"])
def test_law_header_alone_matches_numpy_on_fma_hardware(tmp_path, kind):
    """The header compiled by a host's own command line, on a CPU with FMA (-march=haswell,
    -O3 so the loops vectorise): GCC with the flags it demands, Clang with none at all (the
    header's pragma): the same bits as NumPy, and no fused instruction."""
    cxx = _compiler(kind)
    if cxx is None:
        pytest.skip(f"no {kind} compiler on PATH")
    if not _has_fma_cpu():
        pytest.skip("this CPU has no FMA/AVX2: a -march=haswell program cannot run here")
    flags = ["-O3", "-march=haswell", "-fno-trapping-math"]
    if kind == "gcc":
        flags += ["-ffp-contract=off", "-DNAP_FP_CONTRACT_OFF"]
    built = _compile(cxx, flags, HOST_PROGRAM, tmp_path / "host")
    assert built.returncode == 0, built.stderr
    w, q, lr = _host_inputs()
    (tmp_path / "in.bin").write_bytes(np.int64(w.size).tobytes() + w.tobytes() + q.tobytes()
                                      + lr.tobytes())
    subprocess.run([tmp_path / "host", tmp_path / "in.bin", tmp_path / "out.bin"], check=True,
                   timeout=TIMEOUT)
    got = np.fromfile(tmp_path / "out.bin", np.float32)
    want = _host_expected(w, q, lr)
    differ = int(np.count_nonzero(bits(got) != bits(want)))
    assert differ == 0, f"{kind}: {differ} of {w.size} weights differ from numpy"
    objdump = shutil.which("objdump")
    if objdump:
        code = subprocess.run([objdump, "-d", str(tmp_path / "host")], capture_output=True,
                              text=True).stdout
        assert not re.findall(r"\bvf(?:n)?m(?:add|sub)\w*", code)


def test_law_header_refuses_x87_excess_precision(tmp_path):
    """32-bit x86 without SSE evaluates floats in 80 bits (__FLT_EVAL_METHOD__ == 2): refused,
    naming the flags; with -msse2 -mfpmath=sse it compiles."""
    cxx = shutil.which("i686-linux-gnu-g++")
    flags32: list[str] = []
    if cxx is None:
        gxx = _compiler("gcc")
        # A probe that includes the headers law.h needs: an empty file compiles with -m32 even
        # where the 32-bit C++ library headers (g++-multilib) are missing.
        if gxx and subprocess.run([gxx, "-m32", "-x", "c++", "-c", "-", "-o", os.devnull],
                                  input=b"#include <cmath>\n#include <cstdint>\n",
                                  capture_output=True).returncode == 0:
            cxx, flags32 = gxx, ["-m32", "-march=i686"]
    if cxx is None:
        pytest.skip("no 32-bit x86 compiler (g++-i686-linux-gnu or g++-multilib)")
    ok = ["-ffp-contract=off", "-DNAP_FP_CONTRACT_OFF"]
    x87 = _compile(cxx, [*flags32, *ok, "-c"], '#include "nap/law.h"\n', tmp_path / "x87.o")
    assert x87.returncode != 0 and "-mfpmath=sse" in x87.stderr, x87.stderr
    sse = _compile(cxx, [*flags32, *ok, "-msse2", "-mfpmath=sse", "-c"], '#include "nap/law.h"\n',
                   tmp_path / "sse.o")
    assert sse.returncode == 0, sse.stderr


# -- the cpp backend in a host that changed the floating-point mode, or forked ------------------

def _need_cpp():
    if not CPP_USABLE:
        pytest.skip(f"the cpp backend is unavailable: {nap.available_backends()['cpp']}")


def _run_child(code: str) -> dict:
    flags = ["-S"] if sys.flags.no_site else []  # the interpreter as this one runs
    proc = subprocess.run([sys.executable, *flags, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=TIMEOUT, cwd=REPO / "tests")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


FLUSH_LIBRARY = r"""
/* What another library's initialisation may do: flush subnormals for the whole thread. */
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
unsigned long long nap_test_mode(void) { return _mm_getcsr(); }
void nap_test_flush(void) { _mm_setcsr(_mm_getcsr() | (1u << 15) | (1u << 6)); }  /* FTZ, DAZ */
#elif defined(__aarch64__)
unsigned long long nap_test_mode(void) {
  unsigned long long m;
  __asm__ volatile("mrs %0, fpcr" : "=r"(m));
  return m;
}
void nap_test_flush(void) { __asm__ volatile("msr fpcr, %0" : : "r"(nap_test_mode() | (1ull << 24))); }
#endif
"""


def test_cpp_backend_keeps_subnormals_when_the_host_flushes_them(tmp_path):
    """Another library sets FTZ+DAZ (MXCSR) or FZ (FPCR) on the calling thread: the core still
    keeps every subnormal, on 1 and 2 threads, and the caller's mode is unchanged after. The
    reference is computed before the mode is set (NumPy itself is affected by DAZ)."""
    _need_cpp()
    if os.uname().machine not in ("x86_64", "i686", "aarch64", "arm64"):
        pytest.skip(f"no flush-to-zero control written for {os.uname().machine}")
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler to build the library that sets flush-to-zero")
    lib = tmp_path / "libflush.so"
    (tmp_path / "flush.c").write_text(FLUSH_LIBRARY)
    subprocess.run([cc, "-O2", "-shared", "-fPIC", str(tmp_path / "flush.c"), "-o", str(lib)],
                   check=True, timeout=TIMEOUT)
    result = _run_child(f"""
        import ctypes, json
        import numpy as np
        import nap_gpu as nap
        from nap_gpu import backends
        cpp, ref = backends.get("cpp"), backends.get("numpy")
        n = 1 << 18  # above the core's parallel threshold
        rng = np.random.default_rng(5)
        w0 = rng.integers(1, 1 << 23, n, dtype=np.uint32).view(np.float32)  # all subnormal
        qb = np.where(np.arange(n) % 2 == 1, rng.integers(1, 1 << 23, n, dtype=np.uint32),
                      rng.integers(0, 0x3f800000, n, dtype=np.uint32))
        q = qb.astype(np.uint32).view(np.float32)  # half subnormal, half in [0, 1)
        ids = (np.arange(n, dtype=np.int64) * 7919) % n
        p = nap.Params(lr=float(np.uint32(0x00100000).view(np.float32)), gate=0.5, decay=0.0)
        tiny = float(np.uint32(1).view(np.float32))
        def run(mod):
            a = w0.copy(); mod.step(a, q, p)
            b = w0.copy(); mod.update(b, ids, q, p)
            c = w0.copy(); mod.decay(c, tiny, 1)
            return [x.view(np.uint32) for x in (a, b, c)]
        want = run(ref)  # before the mode changes
        subnormal = int(np.count_nonzero((want[0] & 0x7f800000) == 0) - np.count_nonzero(want[0] == 0))
        lib = ctypes.CDLL({str(lib)!r})
        lib.nap_test_mode.restype = ctypes.c_ulonglong
        before = lib.nap_test_mode()
        lib.nap_test_flush()
        flushed = lib.nap_test_mode()
        out = {{"subnormal": subnormal, "flush_set": flushed != before, "differ": {{}}, "mode_kept": True,
               "numpy_flushed": int(np.count_nonzero(run(ref)[0] != want[0]))}}
        for threads in (1, 2):
            cpp.set_num_threads(threads)
            got = run(cpp)
            out["differ"][threads] = [int(np.count_nonzero(g != e)) for g, e in zip(got, want)]
            out["mode_kept"] &= lib.nap_test_mode() == flushed
        print(json.dumps(out))
    """)
    assert result["flush_set"], "the test library did not change the mode"
    assert result["subnormal"] > (1 << 17), "the case keeps too few subnormal results to test"
    assert result["numpy_flushed"] > 0, "the mode was set but changed nothing (test void)"
    assert result["differ"] == {"1": [0, 0, 0], "2": [0, 0, 0]}, (
        f"weights differing from the IEEE law (step, update, decay) by thread count: "
        f"{result['differ']}")
    assert result["mode_kept"], "the core left the caller's floating-point mode changed"


def test_fork_after_a_parallel_region_does_not_hang(tmp_path):
    """multiprocessing's fork start method: the parent ran a parallel step (2 threads, above
    the parallel threshold), then forks; the child's steps must finish, serially, with the
    law's bits (libgomp used to wait forever for the parent's threads)."""
    _need_cpp()
    if not hasattr(os, "fork"):
        pytest.skip("no os.fork on this platform")
    result = _run_child("""
        import json, os, signal
        import numpy as np
        import nap_gpu as nap
        from nap_gpu import backends
        cpp, ref = backends.get("cpp"), backends.get("numpy")
        n = 1 << 17
        rng = np.random.default_rng(9)
        w = rng.random(n, dtype=np.float32)
        q = rng.uniform(-0.2, 1.2, n).astype(np.float32)
        p = nap.Params()
        want = w.copy()
        for _ in range(3):
            ref.step(want, q, p)
        cpp.set_num_threads(2)
        threads_before = cpp.num_threads()
        cpp.step(w, q, p)  # the OpenMP threads now exist
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            signal.alarm(60)  # a hang ends as SIGALRM
            a = w.copy()
            cpp.step(a, q, p)
            cpp.step(a, q, p)
            ok = bool(np.array_equal(a.view(np.uint32), want.view(np.uint32)))
            os.write(write, json.dumps({"ok": ok, "threads": cpp.num_threads()}).encode())
            os._exit(0)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        child = json.loads(os.read(read, 4096) or b"null")
        cpp.step(w, q, p)
        cpp.step(w, q, p)
        print(json.dumps({"status": status, "child": child, "threads_before": threads_before,
                          "openmp": cpp.compile_options()["openmp"],
                          "parent_ok": bool(np.array_equal(w.view(np.uint32), want.view(np.uint32)))}))
    """)
    status = result["status"]
    how = f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else "exited"
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (
        f"the forked child did not finish (wait status {status}: {how})")
    assert result["child"] == {"ok": True, "threads": 1}, result
    assert result["parent_ok"], "the parent's steps after the fork differ from the law"
    # A serial core (built without OpenMP) runs one thread before the fork as after it.
    assert result["threads_before"] == (1 if result["openmp"] == "off" else 2), result


def test_multi_config_generator_reports_each_configs_flags(tmp_path):
    """Under Ninja Multi-Config (as under Visual Studio) CMAKE_BUILD_TYPE is empty: the flags
    compile_options() reports come from the configuration built (-O3 -DNDEBUG for Release)."""
    if shutil.which("cmake") is None or shutil.which("ninja") is None:
        pytest.skip("cmake or ninja is missing (pip install ninja)")
    if _compiler("gcc") is None and _compiler("clang") is None:
        pytest.skip("no GCC or Clang")
    build = tmp_path / "build"
    subprocess.run(["cmake", "-S", REPO / "cpp", "-B", build, "-G", "Ninja Multi-Config",
                    "-DNAP_INSTALL=OFF"], check=True, capture_output=True, timeout=TIMEOUT)
    flags = {}
    for config in ("Release", "Debug"):
        subprocess.run(["cmake", "--build", build, "--config", config, "--parallel", "2"],
                       check=True, capture_output=True, timeout=TIMEOUT)
        exe = build / config / "nap_core_tests"
        if not exe.exists():
            exe = next(build.rglob(f"{config}/nap_core_tests*"))
        out = subprocess.run([exe, REPO / "tests" / "golden"], capture_output=True, text=True,
                             timeout=TIMEOUT)
        assert out.returncode == 0, out.stdout + out.stderr
        flags[config] = re.search(r";flags=([^;]*);", out.stdout).group(1).split()
    assert {"-O3", "-DNDEBUG", "-ffp-contract=off"} <= set(flags["Release"]), flags
    assert "-g" in flags["Debug"] and "-O3" not in flags["Debug"], flags
