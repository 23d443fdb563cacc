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
from hypothesis import given, settings
from hypothesis import strategies as st

import nap_gpu as nap
from nap_gpu import metrics
from nap_gpu.backends import _device, _kernels, _xp
from nap_gpu.backends import numpy as reference

from conftest import GOLDEN_DIR, assert_same_bits, bits, f32, finishes_within
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
    default = "/usr/local/cuda/bin/nvcc"
    nvcc = shutil.which("nvcc") or (default if os.path.exists(default) else None)
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
    cuobjdump = shutil.which("cuobjdump") or next(
        (str(b / "cuobjdump") for b in bins if (b / "cuobjdump").exists()), None)
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


# -- the kernels' interface ------------------------------------------------------------------

_ALLOWED_PARAMETER_TYPES = {"unsigned long long", "long long", "float", "double"}


def _parameter_types(params: str) -> list[str]:
    """A C parameter list as normalised types ("float*", "unsigned long long", ...)."""
    kinds = []
    for param in params.split(","):
        words = param.replace("__restrict__", "").replace("const", "").replace("*", " * ").split()
        kinds.append(" ".join(words[:-1]).replace(" *", "*"))
    return kinds


def test_kernel_parameters_are_pointers_and_plain_scalars():
    """What the shim and the simulated device convert: pointers, (unsigned) long long, float,
    double; no structs, no int, no size_t (whose width a ctypes caller would have to guess)."""
    text = (ROOT / "cuda" / "kernels.cu").read_text()
    kernels = re.findall(r"__global__\s+void\s+(\w+)\s*\(([^)]*)\)", text)
    assert [name for name, _ in kernels] == list(_kernels.KERNELS)
    for name, params in kernels:
        for kind in _parameter_types(params):
            assert kind.endswith("*") or kind in _ALLOWED_PARAMETER_TYPES, (name, kind)


def test_shim_exports_every_kernel_with_its_parameters():
    """shim_K(unsigned grid, unsigned block, K's parameters in order) for every kernel K."""
    kernels = dict(re.findall(r"__global__\s+void\s+(\w+)\s*\(([^)]*)\)",
                              (ROOT / "cuda" / "kernels.cu").read_text()))
    shim_text = (ROOT / "tests" / "cuda_shim" / "shim.cpp").read_text()
    shim_text = shim_text.replace("u64", "unsigned long long")
    exported = dict(re.findall(r"^void shim_(\w+)\(([^)]*)\)", shim_text, re.M))
    assert sorted(exported) == sorted(_kernels.KERNELS)
    for name, params in exported.items():
        kinds = _parameter_types(params)
        assert kinds[:2] == ["unsigned", "unsigned"], name
        assert kinds[2:] == _parameter_types(kernels[name]), name


def test_nvrtc_sass_has_no_ffma_and_no_ftz(nvrtc_build, tmp_path):
    """The production cubin itself (NVRTC, the loader's options), every kernel in it."""
    arch, compiled = nvrtc_build
    cubin = tmp_path / f"kernels_sm{arch}.cubin"
    cubin.write_bytes(compiled.cubin)
    sass = _sass(cubin)
    functions = re.findall(r"Function : (\w+)", sass)
    assert sorted(functions) == sorted(_kernels.KERNELS)
    assert "FFMA" not in sass and ".FTZ" not in sass


# -- decay(k) stops at each weight's fixpoint ------------------------------------------------

def decay_until_fixpoint(w, d, k):
    """The definition: decay_once (clip(w - d, 0, 1) + 0 in float32) round after round over
    the whole array, k rounds or until a round changes no bit."""
    x, d = np.array(w, np.float32), np.float32(d)
    with np.errstate(invalid="ignore"):
        for _ in range(k):
            y = np.clip(x - d, np.float32(0), np.float32(1)) + np.float32(0)
            if (y.view(np.uint32) == x.view(np.uint32)).all():
                break
            x = y
    return x


def spread_weights(rng, slow: bool) -> np.ndarray:
    """Weights over [0, 1] for a decay of 1e-9: uniform in (2^-5, 1] (where 1e-9 is below half
    an ulp: a round changes nothing; 2^-5 itself moves, the ulp below it being finer), every
    binade below 1e-6 down to the subnormals (these
    reach 0 within ~1000 rounds), 0 and 1; with ``slow``, two weights in between (0.01, 0.03),
    which move by about an ulp a round and need ~2.5e7 rounds to reach 0."""
    parts = [rng.uniform(2.0**-5, 1.0, 400).astype(np.float32),
             np.float32(2.0) ** -np.arange(20, 150, dtype=np.float32),
             rng.uniform(0, 1e-6, 200).astype(np.float32),
             np.array([0.0, 1.0, np.nextafter(np.float32(2.0**-5), np.float32(1)), 1e-6],
                      np.float32)]
    if slow:
        parts.append(np.array([0.01, 0.03], np.float32))
    w = np.concatenate(parts)
    rng.shuffle(w)
    return w


def test_shim_decay_with_a_decay_below_half_an_ulp_ends(shim):
    """Params(decay=1e-9), decay(2**62): weights above 2^-5 never move; the kernel used to
    loop 2^62 rounds on them. Now each weight stops at its fixpoint, with the bits of k rounds."""
    rng = np.random.default_rng(11)
    w = spread_weights(rng, slow=False)
    expected = decay_until_fixpoint(w, 1e-9, 2**62)
    actual = w.copy()
    finishes_within(60, shim.decay, actual, 1e-9, 2**62)
    assert_same_bits(actual, expected, "decay(2**62) with decay 1e-9")
    frozen = w > np.float32(2.0**-5)
    assert (actual[frozen] == w[frozen]).all() and (actual[w < 1e-6] == 0).all()


def test_shim_decay_slow_weights_reach_zero(shim):
    """0.01 and 0.03 under decay 1e-9 take ~2.5e7 rounds each (an ulp or two a round) to reach
    0; the kernel walks them there (the fixpoint), with every other weight at its own."""
    rng = np.random.default_rng(12)
    w = spread_weights(rng, slow=True)
    actual = w.copy()
    finishes_within(120, shim.decay, actual, 1e-9, 2**62)
    slow = (w == np.float32(0.01)) | (w == np.float32(0.03))
    assert (bits(actual[slow]) == 0).all()
    assert_same_bits(actual[~slow], decay_until_fixpoint(w[~slow], 1e-9, 2**62), "the others")
    few = w.copy()  # a bounded k on the slow ones: exactly k rounds
    shim.decay(few, 1e-9, 5000)
    assert_same_bits(few, decay_until_fixpoint(w, 1e-9, 5000), "decay(5000)")


@pytest.mark.parametrize("d, k", [(0.02, 2**62), (0.02, 37), (1e-4, 4321), (0.3, 2**64 - 1),
                                  (1.401298464324817e-45, 3000)])
def test_shim_decay_large_k_matches_k_rounds(shim, d, k):
    rng = np.random.default_rng(13)
    w = rng.random(3001, dtype=np.float32)
    w[:5] = [0, 1, 1e-45, 1e-39, 0.5]
    actual = w.copy()
    shim.decay(actual, d, k)
    assert_same_bits(actual, decay_until_fixpoint(w, d, min(k, 10**6)), f"decay({k}) by {d}")


@pytest.mark.parametrize("d, k", [(0.02, 1), (0.02, 3), (0.02, 100), (0.0, 1), (0.0, 5),
                                  (1e-9, 2**62)])
def test_shim_decay_clamps_weights_from_outside_the_law(shim, d, k):
    """A caller's own array may hold -0.0, negative, NaN or above-1 weights: every backend
    clamps them as k rounds do (and Engine.clamp() is decay(0, 1)). The kernel used to skip
    every weight <= 0 or NaN, leaving -0.0 and negative weights as they were."""
    w = np.array([-0.0, -0.5, -1e-45, -np.inf, np.nan, 1.5, np.inf, 0.3, 0.0, 1.0,
                  -np.float32(np.nan)], np.float32)
    nans = np.array([0x7F800001, 0x7FC12345, 0xFF812345], np.uint32).view(np.float32)
    w = np.concatenate([w, nans])
    expected = decay_until_fixpoint(w, d, k)
    for backend in (shim, reference):
        actual = w.copy()
        backend.decay(actual, d, k)
        assert_same_bits(actual, expected, f"{backend.name}: decay({k}) by {d}")
    assert not (bits(expected) == 0x80000000).any()


# -- dense kernels on misaligned views -------------------------------------------------------

def _view(n: int, residue: int, rng, guard: int = 8) -> tuple[np.ndarray, slice]:
    """A float32 buffer and the slice of it holding n elements whose address is residue
    elements past a 16-byte boundary (0..3), with guard elements on both sides."""
    buf = rng.random(n + 2 * guard + 4, dtype=np.float32)
    address = buf.ctypes.data
    assert address % 4 == 0
    start = guard + (residue - (address // 4 + guard)) % 4
    assert (address // 4 + start) % 4 == residue
    return buf, slice(start, start + n)


_DENSE_OPS = ("step", "step_scalar", "triad", "decay")


def _dense(backend_or_ref, op, w, q, p):
    if op == "step":
        backend_or_ref.step(w, q, p)
    elif op == "step_scalar":
        backend_or_ref.step_scalar(w, np.float32(0.7), p)
    elif op == "decay":
        backend_or_ref.decay(w, p.decay, 3)
    else:
        w += np.float32(0.25) * q  # the triad's arithmetic: w + s * q


def _check_dense_view(shim, op, n, w_residue, q_residue, rng):
    p = nap.Params(lr=0.05, gate=0.5, decay=0.02)
    wbuf, ws = _view(n, w_residue, rng)
    qbuf, qs = _view(n, q_residue, rng)
    qbuf[qs] = qbuf[qs] * np.float32(1.6) - np.float32(0.3)
    if n:
        wbuf[ws][rng.integers(0, n, n // 7 + 1)] = np.float32(1e-40)
    expected = wbuf[ws].copy()
    _dense(reference, op, expected, qbuf[qs].copy(), p)
    before, q_before = wbuf.copy(), qbuf.copy()
    view = wbuf[ws]
    assert not view.flags.owndata and view.flags.c_contiguous
    if op == "triad":
        shim.triad(view, qbuf[qs], 0.25)
    else:
        _dense(shim, op, view, qbuf[qs], p)
    context = f"{op}, n={n}, w at +{w_residue}, q at +{q_residue}"
    assert_same_bits(wbuf[ws], expected, context)
    outside = np.ones(wbuf.size, bool)
    outside[ws] = False
    assert_same_bits(wbuf[outside], before[outside], f"{context}: wrote outside the view")
    assert_same_bits(qbuf, q_before, f"{context}: wrote to q")


@pytest.mark.parametrize("op", _DENSE_OPS)
def test_shim_dense_kernels_on_misaligned_views_of_every_short_length(shim, op):
    """float4 bodies with scalar heads and tails: lengths 0..67, w and q at every offset within
    16 bytes (equal offsets: vectors; unequal: one element at a time), bit for bit, nothing
    written outside the view."""
    rng = np.random.default_rng(21)
    for n in range(68):
        for w_residue in range(4):
            for q_residue in range(4):
                _check_dense_view(shim, op, n, w_residue, q_residue, rng)


@pytest.mark.parametrize("op", _DENSE_OPS)
@pytest.mark.parametrize("n", [100_003, 1_000_001, 262_147])
def test_shim_dense_kernels_on_large_odd_lengths(shim, op, n):
    rng = np.random.default_rng(n)
    for w_residue, q_residue in ((0, 0), (1, 1), (2, 2), (3, 3), (1, 2), (0, 3)):
        _check_dense_view(shim, op, n, w_residue, q_residue, rng)


# -- validation scans ------------------------------------------------------------------------

_SPECIAL_FLOAT32_BITS = [
    0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x00800000, 0x3F800000, 0x3F7FFFFF,
    0x7F7FFFFF, 0xFF7FFFFF,  # +-0, subnormals, normals, the largest finite
    0x7F800000, 0xFF800000,  # +-inf
    0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FBFFFFF, 0xFFFFFFFF, 0x7FC12345,  # NaNs, payloads
]
float32_bits = st.one_of(st.sampled_from(_SPECIAL_FLOAT32_BITS), st.integers(0, 2**32 - 1),
                         st.integers(0x00000000, 0x3F800000))  # weights in [0, 1] often


def _float32(bit_list) -> np.ndarray:
    return np.array(bit_list, np.uint64).astype(np.uint32).view(np.float32)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(float32_bits, max_size=400), st.integers(0, 3))
def test_shim_first_nonfinite_matches_numpy(shim, bit_list, offset):
    x = np.concatenate([np.zeros(offset, np.float32), _float32(bit_list)])[offset:]
    assert shim.first_nonfinite(x) == _xp.first_nonfinite(x, np)


@pytest.mark.parametrize("bad", [[0], [99_999], [70_001, 12_345, 99_998], [1279, 1280, 5],
                                 [1285, 5], list(range(3000, 100_000, 7)), list(range(100_000))])
def test_shim_first_nonfinite_several_bad(shim, bad):
    """Many threads (5 blocks of 256: 1280, each striding and loading two elements 1280 apart
    per iteration) find hits; the least index wins ([1285, 5]: both of one thread's pair)."""
    x = np.random.default_rng(3).random(100_000, dtype=np.float32)
    x[bad] = _float32([[0x7F800000, 0xFFC00000, 0x7F800001][i % 3] for i in range(len(bad))])
    assert shim.first_nonfinite(x) == min(bad) == _xp.first_nonfinite(x, np)
    x[:] = 0.5
    assert shim.first_nonfinite(x) == -1 and shim.first_nonfinite(x[:0]) == -1


_ID_SPECIALS = [-1, 0, 2**31 - 1, 2**31, 2**32, 2**62, -(2**63), 2**63 - 1, -(2**31)]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.data())
def test_shim_first_bad_id_matches_numpy(shim, data):
    n = data.draw(st.sampled_from([0, 1, 2, 100, 2**31, 2**62, 2**63 - 1])
                  | st.integers(0, 2**63 - 1))
    edges = [v for v in (n - 1, n, n + 1) if -(2**63) <= v < 2**63]
    ids = np.array(data.draw(st.lists(st.sampled_from(edges + _ID_SPECIALS) | st.integers(-2, 200)
                                      | st.integers(-(2**63), 2**63 - 1), max_size=300)), np.int64)
    assert shim.first_bad_id(ids, n) == _xp.first_bad_id(ids, n, np)


@pytest.mark.parametrize("n", [1, 100, 2**31, 2**62])
def test_shim_first_bad_id_edges(shim, n):
    for bad in (-1, n, 2**63 - 1, -(2**63)):
        ids = np.full(50_000, n - 1, np.int64)
        ids[[40_000, 31_111, 49_999]] = bad
        assert shim.first_bad_id(ids, n) == 31_111 == _xp.first_bad_id(ids, n, np)
        ids[31_111] = 0
        ids[40_000] = n - 1
        assert shim.first_bad_id(ids, n) == 49_999
        ids[[1285, 5]] = bad  # both of one thread's pair (1280 threads)
        assert shim.first_bad_id(ids, n) == 5
    ids = np.array([0, n - 1], np.int64)
    assert shim.first_bad_id(ids, n) == -1 and shim.first_bad_id(ids[:0], n) == -1
    assert shim.first_bad_id(ids, 0) == 0  # nothing is inside [0, 0)


# -- float64 qualities narrowed in the cubin -------------------------------------------------

def narrowed(x: np.ndarray) -> np.ndarray:
    """What nap_gpu._inputs does to float64 qualities on the host: finite values clipped to
    [-1, 2], then NumPy's conversion (round to nearest even, subnormals kept, NaN payloads
    truncated and quieted)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(np.isfinite(x), np.clip(x, -1.0, 2.0), x).astype(np.float32)


def _float64_adversarial() -> np.ndarray:
    f32 = np.array([0, 1, 2, 3, 0x7FFFFF, 0x800000, 0x800001, 0x3F000000, 0x3F7FFFFF, 0x3F800000,
                    0x3F800001, 0x3FFFFFFF, 0x40000000, 0x33800000], np.uint32).view(np.float32)
    nxt = np.nextafter(f32, np.float32(np.inf))
    lo, hi = f32.astype(np.float64), nxt.astype(np.float64)
    mid = (lo + hi) / 2  # exactly the tie between two float32 (ties to even)
    values = [lo, hi, mid, np.nextafter(mid, -np.inf), np.nextafter(mid, np.inf),
              np.array([2.0**-149, 2.0**-150, 3 * 2.0**-151, 2.0**-151, 2.0**-126 - 2.0**-160,
                        2.0**-1074, 2.0**-1022, 1e-300, 1e300, 1.7976931348623157e308, -1.0, 2.0,
                        np.nextafter(2.0, 3.0), np.nextafter(-1.0, -2.0), np.nextafter(2.0, 0.0),
                        -1e-46, 0.5 + 2.0**-25, 0.5 + 2.0**-25 + 2.0**-60, 1 - 2.0**-25,
                        1 - 2.0**-26, 0.0, -0.0, np.inf, -np.inf])]
    out = np.concatenate(values)
    payloads = np.array([0x7FF0000000000001, 0x7FF8000000000000, 0xFFF4000123456789,
                         0x7FF0000020000000, 0x7FF7FFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF,
                         0x7FF000001FFFFFFF, 0x7FFFFFFFE0000000], np.uint64).view(np.float64)
    return np.concatenate([out, -out, payloads])


def _float64_bits(v: float) -> int:
    return int(np.float64(v).view(np.uint64))


def test_shim_narrow_quality_adversarial(shim):
    x = _float64_adversarial()
    assert_same_bits(shim.narrow_quality(x), narrowed(x), "narrow_quality")


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 2**64 - 1) | st.floats(-4, 4).map(_float64_bits)
                | st.floats(-1e-37, 1e-37).map(_float64_bits), max_size=300))
def test_shim_narrow_quality_matches_numpy(shim, raw):
    x = np.array(raw, np.uint64).view(np.float64)
    assert_same_bits(shim.narrow_quality(x), narrowed(x), "narrow_quality")


def test_shim_narrow_quality_shapes_and_types(shim):
    for shape in [(), (0,), (3,), (2, 5), (4, 1, 3)]:
        x = np.random.default_rng(1).standard_normal(shape)
        out = shim.narrow_quality(x)
        assert out.shape == x.shape and out.dtype == np.float32
        assert_same_bits(out, narrowed(x), f"shape {shape}")
    strided = np.linspace(-3, 3, 40)[::3]
    assert_same_bits(shim.narrow_quality(strided), narrowed(strided), "a strided view")
    with pytest.raises(TypeError, match="float64"):
        shim.narrow_quality(np.zeros(3, np.float32))


# -- exact sums with integer atomics ---------------------------------------------------------

def _labels(n, kind, rng):
    if kind == "alternating":  # the reference workload's
        return (np.arange(n) % 2 == 0).astype(np.uint8)
    if kind == "halves":
        return (np.arange(n) < n // 2).astype(np.uint8)
    return (rng.random(n) < 0.5).astype(np.uint8)


@pytest.mark.parametrize("labels_kind", ["alternating", "halves", "random"])
@pytest.mark.parametrize("population", ["two-valued", "uniform", "subnormal", "mixed", "specials"])
@pytest.mark.parametrize("n", [1, 7, 1000, 100_003])
def test_shim_exact_sums_match_numpy(shim, population, labels_kind, n):
    rng = np.random.default_rng(n)
    labels = _labels(n, labels_kind, rng)
    if population == "two-valued":  # converged: R at the plateau, P at 0
        w = np.where(labels == 1, np.float32(0.98), np.float32(0.0))
    elif population == "uniform":
        w = rng.random(n, dtype=np.float32)
    elif population == "subnormal":
        w = rng.integers(0, 0x800000, n).astype(np.uint32).view(np.float32)
    elif population == "mixed":
        w = rng.random(n, dtype=np.float32) ** np.float32(40)  # many exponents: slot evictions
    else:
        w = _float32(rng.choice(_SPECIAL_FLOAT32_BITS, n))
    expected = _xp.exact_sums(w, labels, np)
    actual = shim.exact_sums(w, labels)
    assert actual.shape == (2, 512, 4) and actual.dtype == np.uint64
    assert (actual == expected).all()


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.tuples(float32_bits, st.integers(0, 1)), max_size=500))
def test_shim_exact_sums_random_bits(shim, pairs):
    w = _float32([b for b, _ in pairs])
    labels = np.array([label for _, label in pairs], np.uint8)
    assert (shim.exact_sums(w, labels) == _xp.exact_sums(w, labels, np)).all()


def test_shim_exact_sums_any_number_of_threads(shim, monkeypatch):
    """One weight per thread (every thread flushes), a few, and one thread for all (runs,
    evictions, the unrolled body and its remainder)."""
    rng = np.random.default_rng(5)
    w = rng.random(50_001, dtype=np.float32) ** np.float32(3)
    labels = _labels(w.size, "random", rng)
    expected = _xp.exact_sums(w, labels, np)
    monkeypatch.setattr(shim, "max_blocks", 1000)
    for per_sqrt in (0, 1, 8, 10**6):  # one block of 256 threads, 223, 1784, 50_001 (one each)
        monkeypatch.setattr(shim, "exact_threads_per_sqrt", per_sqrt)
        assert (shim.exact_sums(w, labels) == expected).all(), per_sqrt


# -- the metrics' rank histogram and the mixed bins' keys --------------------------------------

def _sorted_rank_sums(w, labels, low_key, high_key):
    """What metrics._binned_rank_sums must give, counted without the histogram: every key
    sorted (the NumPy backend's path), saturation and the extremes directly."""
    keys = metrics._keys(w)
    lab = labels.astype(bool)
    if keys.size:
        twice_u, nr, np_ = metrics._twice_u(metrics._distinct(np.sort(keys[lab])),
                                            metrics._distinct(np.sort(keys[~lab])))
    else:
        twice_u = nr = np_ = 0
    saturated = ((keys >= metrics._KEY_NEG_INF) & (keys <= low_key)
                 | (keys >= high_key) & (keys <= metrics._KEY_POS_INF))
    return (twice_u, nr, np_, int(saturated.sum()), int(keys.min(initial=0xFFFFFFFF)),
            int(keys.max(initial=0)), _xp.exact_sums(w, labels, np))


def _rank_population(kind, n, labels, rng):
    if kind == "two-valued":  # converged: R at the plateau, P at 0: no mixed bin
        return np.where(labels == 1, np.float32(0.98), np.float32(0.0))
    if kind == "uniform":  # every bin mixed
        return rng.random(n, dtype=np.float32)
    if kind == "one bin":  # the same top 16 bits, ties within the bin
        return (np.float32(0.5).view(np.uint32) + rng.integers(0, 300, n).astype(np.uint32)
                ).view(np.float32)
    if kind == "mixed":  # many exponents: slot evictions
        return rng.random(n, dtype=np.float32) ** np.float32(40)
    return _float32(rng.choice(_SPECIAL_FLOAT32_BITS, n))  # specials: -0.0, subnormals, inf


def _assert_same_rank_sums(actual, expected):
    """Equal rank_sums tuples; 2U aside where a weight is NaN or infinite (the ratio is NaN
    then, and the device path skips the count)."""
    skip = 1 if metrics._nonfinite(expected[6]) else 0
    assert actual[skip:6] == expected[skip:6]
    assert (actual[6] == expected[6]).all()


RANK_KINDS = ["two-valued", "uniform", "one bin", "mixed", "specials"]
SATURATION_KEYS = metrics._saturation_keys(metrics.DEFAULT_EPS)


@pytest.mark.parametrize("labels_kind", ["alternating", "halves", "random"])
@pytest.mark.parametrize("population", RANK_KINDS)
@pytest.mark.parametrize("n", [1, 7, 1000, 100_003])
def test_shim_rank_bins_match_numpy(shim, population, labels_kind, n):
    """The histogram, exact_sums' bins, saturation and extreme keys of one read."""
    rng = np.random.default_rng(n)
    labels = _labels(n, labels_kind, rng)
    w = _rank_population(population, n, labels, rng)
    ranks, sums, saturated, lowest, highest = shim.rank_bins(w, labels, *SATURATION_KEYS)
    keys = metrics._keys(w)
    for label in (0, 1):
        expected = np.bincount(keys[labels == label] >> 16, minlength=1 << 16)
        assert (ranks[label] == expected).all(), label
    assert (sums == _xp.exact_sums(w, labels, np)).all()
    assert (saturated, lowest, highest) == _sorted_rank_sums(w, labels, *SATURATION_KEYS)[3:6]


@pytest.mark.parametrize("labels_kind", ["alternating", "random"])
@pytest.mark.parametrize("population", RANK_KINDS)
@pytest.mark.parametrize("n", [1, 1000, 100_003])
def test_shim_binned_rank_sums_equal_the_sorting_count(shim, population, labels_kind, n):
    """metrics' device path (the histogram, the mixed bins gathered and sorted) counts the
    same integers as sorting every key."""
    rng = np.random.default_rng(n + 1)
    labels = _labels(n, labels_kind, rng)
    w = _rank_population(population, n, labels, rng)
    _assert_same_rank_sums(metrics._binned_rank_sums(shim, w, labels, *SATURATION_KEYS),
                           _sorted_rank_sums(w, labels, *SATURATION_KEYS))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.tuples(float32_bits, st.integers(0, 1)), min_size=1, max_size=400),
       st.sampled_from([0.02, 0.0, 0.3]))
def test_shim_binned_rank_sums_random_bits(shim, pairs, eps):
    w = _float32([b for b, _ in pairs])
    labels = np.array([label for _, label in pairs], np.uint8)
    keys = metrics._saturation_keys(eps)
    _assert_same_rank_sums(metrics._binned_rank_sums(shim, w, labels, *keys),
                           _sorted_rank_sums(w, labels, *keys))


def test_shim_gather_mixed_keeps_each_bins_keys_together(shim):
    """Every key of a flagged bin, in its label's output, inside its bin's run."""
    rng = np.random.default_rng(9)
    w = rng.random(20_000, dtype=np.float32)
    labels = _labels(w.size, "random", rng)
    keys = metrics._keys(w)
    mixed = np.zeros(1 << 16, np.uint8)
    mixed[np.unique(keys >> 16)[::3]] = 1
    counts = np.stack([np.bincount(keys[labels == label] >> 16, minlength=1 << 16) * mixed
                       for label in (0, 1)]).astype(np.uint64)
    starts = np.cumsum(counts, axis=1) - counts
    out = shim.gather_mixed(w, labels, mixed, starts, tuple(int(c) for c in counts.sum(axis=1)))
    for label in (0, 1):
        chosen = keys[(labels == label) & (mixed[keys >> 16] == 1)]
        assert (np.sort(out[label]) == np.sort(chosen)).all()
        bins = out[label] >> 16
        assert (np.diff(bins.astype(np.int64)) >= 0).all()  # each bin's run, in bin order


def test_shim_rank_bins_any_number_of_threads(shim, monkeypatch):
    rng = np.random.default_rng(6)
    w = rng.random(50_001, dtype=np.float32) ** np.float32(3)
    labels = _labels(w.size, "random", rng)
    expected = _sorted_rank_sums(w, labels, *SATURATION_KEYS)
    monkeypatch.setattr(shim, "max_blocks", 1000)
    for per_sqrt in (0, 1, 8, 10**6):
        monkeypatch.setattr(shim, "exact_threads_per_sqrt", per_sqrt)
        _assert_same_rank_sums(metrics._binned_rank_sums(shim, w, labels, *SATURATION_KEYS),
                               expected)
