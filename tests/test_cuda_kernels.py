"""The CUDA kernels, checked without a GPU.

* They compile with NVRTC (no GPU or driver needed) for sm_80, sm_90 and sm_100 with exactly
  the loader's options, and with nvcc (-cubin and -ptx).
* Their PTX and SASS hold no fused multiply-add and no flush-to-zero; negative controls show
  each check catches the instruction when the parity options are dropped.
* Their logic runs here: the same cuda/kernels.cu, compiled for the CPU through a host shim,
  driven by the same orchestration code as on a GPU (``backends/_device.py``), must match the
  NumPy reference bit for bit (dense, decay(k), sparse segments with duplicates, golden rows).
"""

from __future__ import annotations

import importlib.resources
import os
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import nap_gpu as nap
from nap_gpu.backends import _device, _kernels, numpy as reference
from conftest import GOLDEN_DIR, assert_same_bits, f32
from cuda_shim.host import ShimKernels, build

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARCHS = (80, 90, 100)


def _nvrtc_or_skip():
    from nap_gpu import _nvrtc

    try:
        _nvrtc.version()
    except _nvrtc.NvrtcError as exc:
        pytest.skip(f"NVRTC unavailable ({exc}); pip install nvidia-cuda-nvrtc cuda-pathfinder")
    return _nvrtc


# -- sources ------------------------------------------------------------------------------

def test_installed_kernel_sources_match_the_repository():
    package = importlib.resources.files("nap_gpu")
    assert (package / "cuda" / "kernels.cu").read_text() == (ROOT / "cuda" / "kernels.cu").read_text()
    for header in _kernels.HEADERS:
        installed = (package / "include" / header).read_text()
        assert installed == (ROOT / "cpp" / "include" / header).read_text(), header


def test_every_kernel_is_listed_and_prefixed():
    names = re.findall(r"__global__ void (\w+)\(", (ROOT / "cuda" / "kernels.cu").read_text())
    assert tuple(names) == _kernels.KERNELS
    assert all(name.startswith("nap_") for name in names)


def test_kernels_hold_no_arithmetic_of_the_law():
    """The kernels only iterate: the law's constants and clamps live in law.h alone."""
    body = (ROOT / "cuda" / "kernels.cu").read_text()
    for forbidden in ("1.0f - ", "<= 0.0f ?", ">= 1.0f ?"):
        assert forbidden not in body, forbidden


# -- NVRTC --------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=ARCHS, ids=lambda a: f"sm_{a}")
def nvrtc_build(request):
    _nvrtc_or_skip()
    return request.param, _kernels.compile_kernels(request.param)


def test_nvrtc_compiles_every_kernel_with_production_options(nvrtc_build):
    arch, compiled = nvrtc_build
    assert len(compiled.cubin) > 1000
    entries = re.findall(r"\.entry (\w+)\(", compiled.ptx)
    assert sorted(entries) == sorted(_kernels.KERNELS)
    assert f".target sm_{arch}" in compiled.ptx


def test_nvrtc_ptx_has_no_fma_and_no_flush_to_zero(nvrtc_build):
    _, compiled = nvrtc_build
    assert not re.search(r"\bfma\.", compiled.ptx), "fused multiply-add in the law's PTX"
    assert ".ftz" not in compiled.ptx, "flush-to-zero in the law's PTX"
    assert re.search(r"\bmul\.rn\.f32", compiled.ptx) and re.search(r"\badd\.rn\.f32", compiled.ptx)


def test_ptx_checks_catch_fma_and_ftz_when_parity_options_are_dropped():
    nvrtc = _nvrtc_or_skip()
    kernels, headers = _kernels.source()
    loose = nvrtc.compile_program(kernels, "kernels.cu", headers,
                                  ("--std=c++17", "--fmad=true", "--ftz=true", "--gpu-architecture=sm_90"))
    assert re.search(r"\bfma\.rn(\.ftz)?\.f32", loose.ptx)
    assert ".ftz" in loose.ptx


def test_nvrtc_reports_a_syntax_error_with_its_log():
    nvrtc = _nvrtc_or_skip()
    _, headers = _kernels.source()
    with pytest.raises(nvrtc.NvrtcError, match=r"(?s)COMPILATION.*error"):
        nvrtc.compile_program('#include "nap/law.h"\n__global__ void broken( { }', "broken.cu",
                              headers, _kernels.options(90))


def test_cubin_cache_is_keyed_by_source_options_and_version(tmp_path, monkeypatch):
    _nvrtc_or_skip()
    monkeypatch.setenv("NAP_CACHE_DIR", str(tmp_path))
    first = _kernels.cubin_path(90)
    assert first.parent == tmp_path and first.stat().st_size > 1000
    stamp = first.stat().st_mtime_ns
    assert _kernels.cubin_path(90) == first and first.stat().st_mtime_ns == stamp  # a hit
    monkeypatch.setattr(_kernels, "PRODUCTION_OPTIONS", _kernels.PRODUCTION_OPTIONS + ("-lineinfo",))
    assert _kernels.cubin_path(90) != first  # other options, other cubin


def test_arch_choice_for_devices_nvrtc_does_not_name():
    nvrtc = _nvrtc_or_skip()
    supported = nvrtc.supported_archs()
    assert _kernels.arch_for(90) == 90
    assert _kernels.arch_for(86) in supported and _kernels.arch_for(86) // 10 == 8
    with pytest.raises(nvrtc.NvrtcError, match="cannot compile for sm_60"):
        _kernels.arch_for(60)


# -- nvcc ---------------------------------------------------------------------------------

def _nvcc_or_skip() -> str:
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if nvcc is None:
        pytest.skip("nvcc not installed")
    return nvcc


def _nvcc(out: pathlib.Path, kind: str, options) -> pathlib.Path:
    target = out / f"kernels.{kind}"
    cmd = [_nvcc_or_skip(), f"-{kind}", f"-I{ROOT / 'cpp' / 'include'}", *options,
           str(ROOT / "cuda" / "kernels.cu"), "-o", str(target)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return target


def _nvcc_options(arch: int) -> list[str]:
    # nvcc spells the architecture -arch; the parity options are the loader's own.
    return [*_kernels.PRODUCTION_OPTIONS, f"-arch=sm_{arch}"]


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm_{a}")
def test_nvcc_ptx_has_no_fma_and_no_ftz(tmp_path, arch):
    ptx = _nvcc(tmp_path, "ptx", _nvcc_options(arch)).read_text()
    assert sorted(re.findall(r"\.entry (\w+)\(", ptx)) == sorted(_kernels.KERNELS)
    assert not re.search(r"\bfma\.", ptx) and ".ftz" not in ptx


def _sass(cubin: pathlib.Path) -> str:
    import nvidia  # the nvidia-cuda-cuobjdump / nvidia-cuda-nvdisasm wheels

    bins = [pathlib.Path(p) / "cu13" / "bin" for p in nvidia.__path__]
    cuobjdump = shutil.which("cuobjdump") or next((str(b / "cuobjdump") for b in bins if (b / "cuobjdump").exists()), None)
    if cuobjdump is None:
        pytest.skip("cuobjdump not installed (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    env = {**os.environ, "PATH": os.pathsep.join([*map(str, bins), os.environ.get("PATH", "")])}
    done = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, env=env)
    if done.returncode != 0 and "nvdisasm" in done.stderr:
        pytest.skip("nvdisasm not installed (pip install nvidia-cuda-nvdisasm)")
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm_{a}")
def test_nvcc_sass_has_no_ffma(tmp_path, arch):
    sass = _sass(_nvcc(tmp_path, "cubin", _nvcc_options(arch)))
    assert "FMUL" in sass and "FADD" in sass
    assert "FFMA" not in sass, "fused multiply-add in the law's machine code"
    assert ".FTZ" not in sass


def test_sass_check_catches_ffma_without_fmad_false(tmp_path):
    sass = _sass(_nvcc(tmp_path, "cubin", ["-std=c++17", "-arch=sm_90"]))
    assert "FFMA" in sass


# -- the kernels' logic on the CPU, through the host shim -----------------------------------

@pytest.fixture(scope="module")
def shim(tmp_path_factory) -> _device.DeviceBackend:
    try:
        library = build(tmp_path_factory.mktemp("shim"))
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot build the CUDA host shim: {exc}")
    backend = _device.DeviceBackend("cuda-shim", np, ShimKernels(library))
    backend.max_blocks = 5  # few blocks: every launch exercises the grid-stride loops
    return backend


weights = st.integers(1, 3000).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(0, 2**32 - 1)))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(weights, st.integers(0, 60))
def test_shim_dense_and_decay_match_the_reference(shim, case, k):
    (n, seed) = case
    rng = np.random.default_rng(seed)
    w = rng.random(n, dtype=np.float32)
    w[rng.integers(0, n, n // 10 + 1)] = rng.choice(np.array([0, 1, 0.98, 1e-40], np.float32))
    q = (rng.random(n, dtype=np.float32) * np.float32(2) - np.float32(0.5))
    q[rng.integers(0, n, n // 10 + 1)] = rng.choice(np.array([0.5, 0, 1, -0.0, 1e-45], np.float32))
    p = nap.Params(lr=0.05, gate=0.5, decay=0.02)
    expected, actual = w.copy(), w.copy()
    reference.step(expected, q, p)
    shim.step(actual, q, p)
    assert_same_bits(actual, expected, "dense step")
    reference.step_scalar(expected, 0.7, p)
    shim.step_scalar(actual, np.float32(0.7), p)
    assert_same_bits(actual, expected, "scalar step")
    reference.decay(expected, p.decay, k)
    shim.decay(actual, p.decay, k)
    assert_same_bits(actual, expected, f"decay({k})")


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.integers(1, 500), st.integers(1, 4000), st.integers(0, 2**32 - 1))
def test_shim_sparse_segments_keep_event_order(shim, n, m, seed):
    rng = np.random.default_rng(seed)
    w = rng.random(n, dtype=np.float32)
    hot = rng.integers(0, n)
    ids = np.where(rng.random(m) < 0.3, hot, rng.integers(0, min(n, 20), m)).astype(np.int64)
    q = rng.random(m, dtype=np.float32) * np.float32(1.4) - np.float32(0.2)
    p = nap.Params()
    expected, actual = w.copy(), w.copy()
    reference.update(expected, ids, q, p)
    shim.update(actual, ids, q, p)
    assert_same_bits(actual, expected, "sparse batch")
    one_by_one = w.copy()
    for i, qi in zip(ids, q):  # the definition: events applied one at a time, in order
        reference.update(one_by_one, np.array([i]), np.array([qi], np.float32), p)
    assert_same_bits(actual, one_by_one, "sparse batch vs one event at a time")


def test_shim_hot_id_with_many_events(shim):
    rng = np.random.default_rng(7)
    ids = np.zeros(100_000, np.int64)
    q = rng.random(ids.size, dtype=np.float32)
    expected, actual = np.full(3, 0.5, np.float32), np.full(3, 0.5, np.float32)
    reference.update(expected, ids, q, nap.Params())
    shim.update(actual, ids, q, nap.Params())
    assert_same_bits(actual, expected, "one hot id")


def test_shim_golden_rows(shim):
    rows = [line.split("\t") for line in (GOLDEN_DIR / "law_golden.tsv").read_text().splitlines()
            if line and not line.startswith(("#", "op\t"))]
    for op, w, q, lr, gate, decay, out, note in rows:
        p = nap.Params(lr=float(f32(lr)), gate=float(f32(gate)), decay=float(f32(decay)))
        arr = np.array([f32(w)], np.float32)
        if op == "step":
            shim.step(arr, np.array([f32(q)], np.float32), p)
        elif op == "feedback":
            shim.update(arr, np.zeros(1, np.int64), np.array([f32(q)], np.float32), p)
        else:
            shim.decay(arr, p.decay, 1)
        assert_same_bits(arr, np.array([f32(out)], np.float32), note)


def test_shim_triad_is_the_floor_arithmetic(shim):
    w = np.linspace(0, 1, 1001, dtype=np.float32)
    q = np.linspace(1, 0, 1001, dtype=np.float32)
    expected = w + np.float32(0.25) * q
    shim.triad(w, q, 0.25)
    assert_same_bits(w, expected, "triad")
