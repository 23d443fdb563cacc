"""The cuda backend as a GPU host runs it: device pinning, the memory pool, interop with other
device libraries, where the kernel source is found, the cubin cache key, host
synchronisations, and the simulated device's own fidelity (a result that depends on CuPy's
flushing elementwise kernels instead of our cubin must fail the parity checks).

Marked ``gpu``: on the simulated device here (tests/simdevice), on the GPU on a GPU host. The
few that need the simulator's controls (its memory size, its counters, a foreign library
backed by its memory) say so and skip on real hardware, where ``benchmarks/gpu/run.sh``
checks the same things.
"""

from __future__ import annotations

import numpy as np
import pytest

import nap_gpu as nap
from nap_gpu import _inputs, _nvrtc
from nap_gpu.backends import _kernels
from nap_gpu.backends import numpy as reference

from conftest import _forget_probes, assert_same_bits, needs_cuda, needs_simulated_device

pytestmark = [pytest.mark.gpu, needs_cuda]


@pytest.fixture(scope="module")
def cupy():
    import cupy as module  # noqa: PLC0415 - the real or the simulated CuPy

    return module


@pytest.fixture(scope="module")
def cuda():
    return nap.backends.get("cuda")


def _host_run(w0, calls):
    eng = nap.Engine(w0.size, backend="numpy", init=w0)
    for name, *args in calls:
        getattr(eng, name)(*args)
    return eng


# -- device pinning -------------------------------------------------------------------------------

def test_an_engine_stays_on_the_device_it_was_made_on(cupy, tmp_path):
    """Made on device 1, used while device 0 is current: every call runs on device 1 (a
    launch on device 0 with device-1 pointers is an illegal address on a GPU)."""
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("one GPU: nothing to pin against")
    rng = np.random.default_rng(7)
    w0 = rng.random(5000, dtype=np.float32)
    q = rng.random(5000, dtype=np.float32)
    ids, qb = rng.integers(0, 5000, 3000), rng.random(3000, dtype=np.float32)
    labels = np.arange(5000) % 2
    with cupy.cuda.Device(1):
        eng = nap.Engine(5000, backend="cuda", init=w0)
        device_q = cupy.asarray(q)
    assert eng.weights.device.id == 1
    with cupy.cuda.Device(0):
        eng.step(q)
        eng.step(0.7)
        eng.update(ids, qb)
        eng.decay(3)
        eng.clamp()
        metrics = eng.metrics(labels)
        assert eng.weights.device.id == 1
        eng.step(device_q)  # a device-1 quality while device 0 is current
        path = eng.save(tmp_path / "pinned.nap")
        with pytest.raises(ValueError, match="quality lives on GPU 0"):
            eng.step(cupy.asarray(q))  # a device-0 quality for a device-1 engine
    host = _host_run(w0, [("step", q), ("step", 0.7), ("update", ids, qb), ("decay", 3),
                          ("clamp",)])
    assert metrics == host.metrics(labels)
    host.step(q)
    assert_same_bits(eng.to_numpy(), host.to_numpy(), "engine on device 1")
    assert_same_bits(nap.load(path, backend="numpy").to_numpy(), host.to_numpy(), "its snapshot")


def test_the_functional_form_runs_on_the_weights_device(cupy):
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("one GPU: nothing to pin against")
    w0 = np.random.default_rng(8).random(3000, dtype=np.float32)
    with cupy.cuda.Device(1):
        w = cupy.asarray(w0)
    with cupy.cuda.Device(0):
        nap.step(w, 0.8)
        nap.update(w, [5, 5, 2999], [0.9, 0.1, 0.7])
    expected = w0.copy()
    reference.step_scalar(expected, 0.8, nap.Params())
    nap.update(expected, [5, 5, 2999], [0.9, 0.1, 0.7], backend="numpy")
    assert_same_bits(w, expected, "functional form on device 1")


# -- memory ---------------------------------------------------------------------------------------

@needs_simulated_device
def test_blocks_in_cupys_pool_count_as_free(cupy, monkeypatch):
    """An engine freed leaves its blocks in CuPy's pool, which the driver does not count as
    free: the next engine of the same size must still be accepted (it reuses them)."""
    memory = cupy._state.MEMORY[0]
    cupy.get_default_memory_pool().free_all_blocks()
    monkeypatch.setattr(memory, "total", memory.live + (40 << 20))  # 40 MiB more than in use
    eng = nap.Engine(4_000_000, backend="cuda", init=0.5)  # 16 MB of weights (32 MB needed)
    del eng
    assert cupy.cuda.runtime.memGetInfo()[0] < 32 << 20 <= (
        cupy.cuda.runtime.memGetInfo()[0] + cupy.get_default_memory_pool().free_bytes())
    eng = nap.Engine(4_000_000, backend="cuda", init=0.5)
    assert eng.n == 4_000_000
    with pytest.raises(MemoryError, match="in CuPy's memory pool"):
        nap.Engine(8_000_000, backend="cuda", init=0.5)  # 64 MB: more than there is


# -- interop: other libraries' device arrays --------------------------------------------------------

class ForeignDeviceTensor:
    """A device array of another library, as PyTorch's CUDA tensors present themselves:
    ``__cuda_array_interface__`` v2 (no stream) and DLPack (which takes the consumer's stream),
    backed by simulated device memory. ``grad=True`` behaves like a tensor that requires grad:
    both interfaces raise ``RuntimeError``."""

    def __init__(self, array, grad: bool = False) -> None:
        self._array, self._grad = array, grad
        self.dlpack_streams: list = []

    @property
    def __cuda_array_interface__(self):
        if self._grad:
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad")
        return {**self._array.__cuda_array_interface__, "version": 2, "stream": None}

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()

    def __dlpack__(self, *, stream=None, **kwargs):
        if self._grad:
            raise RuntimeError("Can't export tensors that require gradient, use tensor.detach()")
        self.dlpack_streams.append(stream)
        return self._array.__dlpack__(stream=stream)


@needs_simulated_device
def test_foreign_device_arrays_come_through_dlpack(cupy):
    """DLPack hands the producer CuPy's stream (it orders its work first); the CUDA array
    interface v2 carries none, so a quality written on a side stream could still be in
    flight: DLPack must win."""
    w0 = np.random.default_rng(9).random(1000, dtype=np.float32)
    q = ForeignDeviceTensor(cupy.asarray(np.random.default_rng(10).random(1000, dtype=np.float32)))
    weights = ForeignDeviceTensor(cupy.asarray(w0))
    nap.step(weights, q)
    assert q.dlpack_streams and weights.dlpack_streams, "DLPack was not used"
    expected = w0.copy()
    reference.step(expected, q._array.get(), nap.Params())
    assert_same_bits(weights._array, expected, "foreign weights updated in place")


@needs_simulated_device
@pytest.mark.parametrize("role", ["weights", "quality", "ids"])
def test_a_tensor_that_requires_grad_is_refused_naming_the_argument(cupy, role):
    w = cupy.asarray(np.full(8, 0.5, np.float32))
    grad = ForeignDeviceTensor(cupy.asarray(np.full(8, 0.5, np.float32)), grad=True)
    with pytest.raises(TypeError, match=f"^{role}: .*detach"):
        if role == "weights":
            nap.step(grad, 0.9)
        elif role == "quality":
            nap.step(w, grad)
        else:
            nap.update(w, grad, 0.9)
    assert_same_bits(w, np.full(8, 0.5, np.float32), "unchanged")


def test_device_qualities_of_float64_are_narrowed_in_our_kernel(cupy, cuda):
    """float64 qualities that round to float32 subnormals: CuPy's astype flushes them, our
    ``nap_narrow_quality`` does not (the host's conversion is the reference)."""
    tiny = np.float64(np.finfo(np.float32).smallest_subnormal)
    q64 = np.array([tiny, 3 * tiny, -5.5 * tiny, 1e-39, 2.5e-45, 1e300, -np.inf, np.nan, 0.3, -0.0])
    device = _inputs.quality(cupy.asarray(q64), q64.size, cuda, check_finite=False)
    host = _inputs.quality(q64, q64.size, reference, check_finite=False)
    assert_same_bits(device, host, "narrowed on the device", nan_payloads=False)
    assert (host.view(np.uint32)[:5] != 0).all(), "the cases must be subnormal, not zero"


def test_host_inputs_are_checked_on_the_host(cupy):
    """Objects, strings, ids beyond int64 in host arrays: our TypeError/IndexError, never
    CuPy's ValueError ('Unsupported dtype object'), and nothing written."""
    eng = nap.Engine(10, backend="cuda", init=0.5)
    with pytest.raises(TypeError, match="quality must be floating point"):
        eng.step(np.array(["a"] * 10))
    with pytest.raises(TypeError, match="ids must be integers"):
        eng.update(np.array([1, "x"], dtype=object), [0.9, 0.9])
    with pytest.raises(IndexError, match=r"ids\[1\] = 18446744073709551615 is outside"):
        eng.update(np.array([1, 2**64 - 1], dtype=object), [0.9, 0.9])
    assert_same_bits(eng.to_numpy(), np.full(10, 0.5, np.float32), "unchanged")
    assert eng.iteration == 0


# -- the kernel source and its cubin --------------------------------------------------------------

def test_the_kernel_source_is_found_in_the_source_tree(monkeypatch, tmp_path):
    """An in-place editable install or ``PYTHONPATH=src`` has no cuda/ inside the package:
    the files of the source tree the package sits in are used (a tree laid out as the
    repository's, with nothing in the installed package)."""
    root = _kernels.pathlib.Path(__file__).resolve().parents[1]
    tree = tmp_path / "checkout"
    (tree / "cuda").mkdir(parents=True)
    (tree / "cuda" / "kernels.cu").write_text((root / "cuda" / "kernels.cu").read_text())
    (tree / "cpp" / "include" / "nap").mkdir(parents=True)
    for header in _kernels.HEADERS:
        (tree / "cpp" / "include" / header).write_text((root / "cpp" / "include" / header).read_text())
    (tree / "src" / "nap_gpu" / "backends").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(_kernels, "__file__", str(tree / "src" / "nap_gpu" / "backends" / "_kernels.py"))
    monkeypatch.setattr(_kernels.importlib.resources, "files", lambda package: tmp_path / "empty")
    kernels, headers = _kernels.source()
    assert kernels == (root / "cuda" / "kernels.cu").read_text()
    assert headers["nap/law.h"] == (root / "cpp" / "include" / "nap" / "law.h").read_text()
    (tree / "cuda" / "kernels.cu").unlink()
    with pytest.raises(FileNotFoundError, match="neither in the installed package nor in the source tree"):
        _kernels.source()


def test_the_probe_proves_the_kernels_can_load(monkeypatch):
    """No kernel source, or an unwritable cache: the probe says cuda is unusable and why,
    instead of the first launch raising."""
    def missing():
        raise FileNotFoundError("the CUDA kernel source (cuda/kernels.cu) is nowhere")
    monkeypatch.setattr(_kernels, "_source_root", missing)
    _forget_probes()
    try:
        reason = nap.available_backends()["cuda"]
        assert reason is not None and "kernels.cu" in reason, reason
        with pytest.raises(nap.BackendUnavailableError, match="kernels.cu"):
            nap.Engine(4, backend="cuda")
    finally:
        monkeypatch.undo()
        _forget_probes()
    assert nap.available_backends()["cuda"] is None


def test_the_cubin_cache_key_covers_the_nvrtc_build_and_the_driver(monkeypatch):
    key = _kernels.cache_key(90, 13000)
    assert _kernels.cache_key(90, 12080) != key  # another driver
    monkeypatch.setattr(_nvrtc, "build_id", lambda: "13.0 /other/libnvrtc.so.13 1 2")
    assert _kernels.cache_key(90, 13000) != key  # another NVRTC build of the same major.minor


# -- host synchronisations ------------------------------------------------------------------------

@needs_simulated_device
def test_host_synchronisations_per_call_are_few(cupy):
    """Each device-to-host read waits for the GPU; the calls read back only what they must:
    a step with the finite check one (the scan's answer), without it none, a sparse batch
    two (id range, finite check), metrics a handful whatever n is."""
    counters = cupy._state.COUNTERS
    eng = nap.Engine(100_000, backend="cuda", seed=1)
    q = cupy.asarray(np.random.default_rng(2).random(eng.n, dtype=np.float32))
    ids = cupy.asarray(np.random.default_rng(3).integers(0, eng.n, 5000))
    qb = cupy.asarray(np.random.default_rng(4).random(5000, dtype=np.float32))
    labels = np.arange(eng.n) % 2
    counted = {}
    for name, call in [("step", lambda: eng.step(q)),
                       ("step unchecked", lambda: eng.step(q, check_finite=False)),
                       ("update", lambda: eng.update(ids, qb)),
                       ("metrics", lambda: eng.metrics(labels))]:
        counters.reset()
        call()
        counted[name] = counters.host_syncs
    assert counted == {"step": 1, "step unchecked": 0, "update": 2, "metrics": counted["metrics"]}
    assert counted["metrics"] <= 6, counted


# -- the simulated device catches what a GPU would get wrong ----------------------------------------

def _cupy_elementwise_step(cupy, w, q, p):
    """The law written in CuPy's own elementwise operations (compiled with -ftz=true on a
    GPU): what the kernels must never be replaced by."""
    lr, gate, d = p.float32()
    qc = cupy.clip(q, 0, 1)
    w2 = cupy.where(qc > gate, w + lr * qc, w - lr * (1 - qc))
    w[...] = cupy.clip(cupy.clip(w2, 0, 1) - d, 0, 1)


def test_a_planted_dependence_on_cupys_elementwise_code_fails_parity(cupy, cuda, monkeypatch):
    """Subnormal weights under a law that leaves them alone (lr = 0, decay = 0): our cubin
    keeps every bit, CuPy's flushing arithmetic zeroes them, and the parity check says so
    (on the simulated device, and on a GPU alike)."""
    params = nap.Params(lr=0.0, gate=0.5, decay=0.0)
    tiny = np.finfo(np.float32).smallest_subnormal
    w0 = np.array([tiny, 7 * tiny, 2**-127, 0.25, 1.0], np.float32)
    q = np.array([0.9, 0.2, 0.6, 0.1, 0.5], np.float32)
    expected = w0.copy()
    reference.step(expected, q, params)
    assert (expected.view(np.uint32)[:3] != 0).all()

    def parity():
        eng = nap.Engine(w0.size, backend="cuda", init=w0, params=params)
        eng.step(q)
        assert_same_bits(eng.to_numpy(), expected, "cuda vs the reference")

    parity()  # the real backend holds the bits
    monkeypatch.setattr(cuda, "step", lambda w, qq, p: _cupy_elementwise_step(cupy, w, qq, p))
    with pytest.raises(AssertionError, match="weights differ"):
        parity()


def test_a_launch_does_not_look_for_the_cubin_again(cuda, monkeypatch):
    """Finding the cubin hashes the kernel source (~0.3 ms): once per device, never per
    launch, or it would dominate the per-call latency of small calls."""
    eng = nap.Engine(1000, backend="cuda", seed=0)
    eng.step(0.7)  # loaded on this device
    lookups = []
    real = _kernels.device_cubin
    monkeypatch.setattr(_kernels, "device_cubin", lambda cupy: lookups.append(1) or real(cupy))
    for _ in range(5):
        eng.step(0.7)
        eng.update([1, 2, 1], [0.9, 0.1, 0.8])
        eng.decay(2)
    assert lookups == []


def test_the_gpu_copy_floor_moves_the_bytes_of_a_step(cupy):
    """The floor a GPU step is compared with moves 12 bytes per memory (6n read, 6n
    written), as the step does; it once copied 1.5n bytes, making every ratio 4x off."""
    import importlib.util  # noqa: PLC0415

    path = _kernels.pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "gpu_floor.py"
    spec = importlib.util.spec_from_file_location("gpu_floor", path)
    gpu_floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_floor)
    floor = gpu_floor.CopyFloor(cupy, 1001)
    floor.src[...] = 7
    floor.run()
    assert floor.src.nbytes == floor.dst.nbytes == 6 * 1001
    assert floor.moved == 12 * 1001 and int((floor.dst == 7).sum()) == 6 * 1001
