"""The cuda backend's probe, selection and telemetry as seen on a machine without a GPU, and
(marked ``gpu``) on one with a GPU. The parity, golden and invariant test bodies run with
``backend="cuda"`` through the ``backend`` fixture of conftest.py on a GPU host."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import nap_gpu as nap
from nap_gpu.telemetry import gpu_status

CUDA_REASON = nap.available_backends()["cuda"]
needs_no_gpu = pytest.mark.skipif(CUDA_REASON is None, reason="a usable GPU is present")
needs_gpu = pytest.mark.skipif(CUDA_REASON is not None, reason=f"cuda unusable: {CUDA_REASON}")


@needs_no_gpu
def test_the_reason_matches_what_is_installed():
    if importlib.util.find_spec("cupy") is None:
        assert CUDA_REASON.startswith("no CuPy installed")
    else:  # CuPy wheels install fine on machines without a driver
        assert "CuPy installed but no CUDA" in CUDA_REASON


@needs_no_gpu
def test_asking_for_cuda_raises_the_reason_and_auto_picks_a_host_backend():
    with pytest.raises(nap.BackendUnavailableError, match="not usable here") as info:
        nap.Engine(10, backend="cuda")
    assert CUDA_REASON in str(info.value)
    assert nap.Engine(10).backend in ("cpp", "numpy")


@needs_no_gpu
def test_the_cuda_module_imports_without_touching_the_gpu():
    if importlib.util.find_spec("cupy") is None:
        pytest.skip("CuPy not installed")
    from nap_gpu.backends import cuda

    assert cuda.name == "cuda" and cuda._backend.kernels._module is None  # nothing loaded


def test_telemetry_never_raises():
    status = gpu_status()
    if status["available"]:
        assert status["devices"] and all("name" in d for d in status["devices"])
    else:
        assert status["reason"]


@needs_no_gpu
def test_info_explains_the_cuda_backend(capsys):
    nap.show_config()
    out = capsys.readouterr().out
    assert f"cuda   unusable: {CUDA_REASON}" in out
    assert "--fmad=false --ftz=false" in out and "GPU (NVML):" in out


@pytest.mark.gpu
@needs_gpu
def test_engine_lives_on_the_device_and_continues_on_the_host():
    import cupy

    eng = nap.Engine(1_000_003, backend="cuda", seed=3)
    assert isinstance(eng.weights, cupy.ndarray)
    host = nap.Engine(1_000_003, backend="numpy", seed=3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        q = rng.random(eng.n, dtype=np.float32)
        eng.step(cupy.asarray(q))  # a device quality: no host round trip
        host.step(q)
    ids = rng.integers(0, 1000, 200_000)
    qs = rng.random(ids.size, dtype=np.float32)
    eng.update(ids, qs)
    host.update(ids, qs)
    eng.decay(7)
    host.decay(7)
    assert np.array_equal(eng.to_numpy().view(np.uint32), host.to_numpy().view(np.uint32))
    labels = np.arange(eng.n) % 2
    assert eng.metrics(labels) == host.metrics(labels)  # exact metrics: equal, not close


@pytest.mark.gpu
@needs_gpu
def test_functional_form_updates_a_cupy_array_in_place():
    import cupy

    w = cupy.full(1000, 0.5, dtype=cupy.float32)
    pointer = w.data.ptr
    nap.step(w, 0.9)
    expected = np.full(1000, 0.5, np.float32)
    nap.step(expected, 0.9, backend="numpy")
    assert w.data.ptr == pointer
    assert np.array_equal(cupy.asnumpy(w).view(np.uint32), expected.view(np.uint32))


@pytest.mark.gpu
@needs_gpu
def test_memory_fit_is_checked_before_allocating():
    import cupy

    free, _ = cupy.cuda.runtime.memGetInfo()
    too_many = free // 4 + 1  # the weights alone would not fit
    with pytest.raises(MemoryError, match="GiB free"):
        nap.Engine(too_many, backend="cuda", init=0.5)
