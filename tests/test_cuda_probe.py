"""The cuda backend's probe, selection and telemetry: in this machine's real environment (run
in subprocesses without the simulated device: CuPy without a driver in CI), where cuda is
unusable (the ``cuda_unusable`` fixture), and on the device the tests run on (marked ``gpu``:
the simulated device here, the GPU on a GPU host). The parity, golden, invariant and other
test bodies run with ``backend="cuda"`` through the ``backend`` fixture of conftest.py."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import nap_gpu as nap
from nap_gpu.telemetry import gpu_status

from conftest import REAL_CUDA_REASON, _real_environment, needs_cuda

needs_real_unusable = pytest.mark.skipif(REAL_CUDA_REASON is None, reason="a real GPU is usable here")


def _in_real_environment(code: str) -> dict:
    """Run ``code`` (which prints one JSON line) without the simulated device."""
    done = subprocess.run([sys.executable, "-c", code], env=_real_environment(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@needs_real_unusable
def test_the_reason_matches_what_is_installed():
    found = _in_real_environment("import importlib.util, json; "
                                 "print(json.dumps(importlib.util.find_spec('cupy') is not None))")
    if not found:
        assert REAL_CUDA_REASON.startswith("no CuPy installed")
    else:  # CuPy wheels install fine on machines without a driver
        assert "CuPy installed but no CUDA" in REAL_CUDA_REASON


@needs_real_unusable
def test_asking_for_cuda_raises_the_reason_and_auto_picks_a_host_backend():
    result = _in_real_environment(
        "import json, nap_gpu as nap\n"
        "try:\n    nap.Engine(10, backend='cuda'); error = None\n"
        "except nap.BackendUnavailableError as exc:\n    error = str(exc)\n"
        "print(json.dumps({'error': error, 'auto': nap.Engine(10).backend}))")
    assert result["error"] and "not usable here" in result["error"] and REAL_CUDA_REASON in result["error"]
    assert result["auto"] in ("cpp", "numpy")


@needs_real_unusable
def test_the_cuda_module_imports_without_touching_the_gpu():
    result = _in_real_environment(
        "import importlib.util, json\n"
        "if importlib.util.find_spec('cupy') is None:\n    print(json.dumps(None)); raise SystemExit\n"
        "from nap_gpu.backends import cuda\n"
        "print(json.dumps({'name': cuda.name, 'loaded': len(cuda._backend.kernels._modules)}))")
    if result is None:
        pytest.skip("CuPy not installed")
    assert result == {"name": "cuda", "loaded": 0}  # nothing compiled or loaded


def test_the_cuda_module_imports_without_loading_kernels_on_the_test_device():
    done = subprocess.run([sys.executable, "-c", "import json; from nap_gpu.backends import cuda; "
                           "print(json.dumps(len(cuda._backend.kernels._modules)))"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"


def test_telemetry_never_raises():
    status = gpu_status()
    if status["available"]:
        assert status["devices"] and all("name" in d for d in status["devices"])
    else:
        assert status["reason"]


def test_info_explains_the_cuda_backend(capsys, cuda_unusable):
    nap.show_config()
    out = capsys.readouterr().out
    assert f"cuda   unusable: {cuda_unusable}" in out
    assert "--fmad=false --ftz=false" in out and "GPU (NVML):" in out


@pytest.mark.gpu
@needs_cuda
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
@needs_cuda
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
@needs_cuda
def test_memory_fit_is_checked_before_allocating():
    import cupy

    free, _ = cupy.cuda.runtime.memGetInfo()
    too_many = free // 4 + 1  # the weights alone would not fit
    with pytest.raises(MemoryError, match="GiB free"):
        nap.Engine(too_many, backend="cuda", init=0.5)
