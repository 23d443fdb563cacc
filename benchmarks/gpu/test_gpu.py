"""Dense step, sparse batch and metrics on the GPU, each beside the floor measured in the same
run: the ``nap_triad`` kernel (w += s*q, the same 12 bytes per memory as a step) and a
device-to-device copy of the same number of bytes (``gpu_floor.CopyFloor``: 6n bytes copied,
read + written = 12n); peers: CuPy written naively (elementwise expressions) and a
``cupy.fuse``d version, each checked bit-exact against the NumPy reference before it is timed
(a peer that is not is labelled so, not hidden)."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_floor import STEP_BYTES_PER_MEMORY, CopyFloor  # benchmarks/gpu/gpu_floor.py (shared)

import nap_gpu as nap
from nap_gpu.backends import numpy as reference

from benchmarks.report.schema import Record

P = nap.Params()


@pytest.fixture(scope="module")
def gpu():
    import cupy  # noqa: PLC0415 - only on a GPU host

    from nap_gpu.backends import cuda  # noqa: PLC0415

    return cupy, cuda


@pytest.fixture(scope="module")
def device_data(gpu, gpu_size):
    cupy, _ = gpu
    weights = cupy.asarray(np.random.default_rng([gpu_size, 0]).random(gpu_size, dtype=np.float32))
    quality = cupy.asarray(nap.ReferenceWorkload(gpu_size, seed=gpu_size).next_quality())
    return weights, quality, cupy.empty_like(weights)


def _timed(measure, cupy, pristine, work, fn, n):
    def setup():
        cupy.copyto(work, pristine)
        cupy.cuda.get_current_stream().synchronize()

    def target():
        fn()
        cupy.cuda.get_current_stream().synchronize()

    return measure(setup, target, n)


def naive_law(cupy, w, q, p=P):
    lr, gate, d = p.float32()
    qc = cupy.clip(q, 0, 1)
    w2 = cupy.where(qc > gate, w + lr * qc, w - lr * (1 - qc))
    return cupy.clip(cupy.clip(w2, 0, 1) - d, 0, 1)


def _fused(cupy):
    lr, gate, d = P.float32()

    @cupy.fuse()
    def law(w, q):
        qc = cupy.minimum(cupy.maximum(q, 0), 1)
        w2 = cupy.where(qc > gate, w + lr * qc, w - lr * (1 - qc))
        w2 = cupy.minimum(cupy.maximum(w2, 0), 1)
        return cupy.minimum(cupy.maximum(w2 - d, 0), 1)

    return law


def _bit_exact(cupy, law, w, q) -> bool:
    n = min(int(w.size), 1 << 20)
    expected = cupy.asnumpy(w[:n]).copy()
    reference.step(expected, cupy.asnumpy(q[:n]), P)
    got = cupy.asnumpy(law(w[:n].copy(), q[:n]))
    return bool(np.array_equal(got.view(np.uint32), expected.view(np.uint32)))


@pytest.mark.parametrize("impl", ["floor-triad", "floor-copy", "nap-cuda", "cupy-naive", "cupy-fuse"])
def test_dense_step(benchmark, measure, gpu, device_data, gpu_size, impl):
    cupy, cuda = gpu
    pristine, q, work = device_data
    fused = _fused(cupy) if impl == "cupy-fuse" else None
    if impl == "floor-copy":  # 6n bytes read + 6n written = the step's 12 bytes per memory
        floor = CopyFloor(cupy, gpu_size)
        fn, exact = floor.run, None
    elif impl == "floor-triad":
        fn, exact = (lambda: cuda.triad(work, q, 0.25)), None
    elif impl == "nap-cuda":
        fn, exact = (lambda: cuda.step(work, q, P)), True
    elif impl == "cupy-naive":
        fn = lambda: cupy.copyto(work, naive_law(cupy, work, q))  # noqa: E731
        exact = _bit_exact(cupy, lambda w, qq: naive_law(cupy, w, qq), pristine, q)
    else:
        fn = lambda: cupy.copyto(work, fused(work, q))  # noqa: E731
        exact = _bit_exact(cupy, fused, pristine, q)
    benchmark.group = f"gpu-dense-step-{gpu_size}"
    info = _timed(measure, cupy, pristine, work, fn, gpu_size)
    role = "floor" if impl.startswith("floor") else "nap" if impl == "nap-cuda" else "peer"
    benchmark.extra_info.update(Record(
        op="gpu-dense-step", impl=impl, role=role, n=gpu_size, bytes=STEP_BYTES_PER_MEMORY * gpu_size,
        bit_exact=exact, yardstick=impl == "floor-triad", **info).json())
    if impl == "nap-cuda":  # and the engine's result is the reference's, bit for bit
        n = min(gpu_size, 1 << 20)
        expected = cupy.asnumpy(pristine[:n]).copy()
        reference.step(expected, cupy.asnumpy(q[:n]), P)
        assert np.array_equal(cupy.asnumpy(work[:n]).view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("ids_kind", ["uniform", "zipf1.1"])
def test_sparse_batch_1M_events(benchmark, measure, gpu, ids_kind):
    cupy, cuda = gpu
    n, m = 10_000_000, 1_000_000
    rng = np.random.default_rng(1)
    ids = rng.integers(0, n, m) if ids_kind == "uniform" else (rng.zipf(1.1, m) - 1) % n
    ids, q = cupy.asarray(ids.astype(np.int64)), cupy.asarray(rng.random(m, dtype=np.float32))
    pristine = cupy.asarray(rng.random(n, dtype=np.float32))
    work = cupy.empty_like(pristine)
    benchmark.group = f"gpu-sparse-{ids_kind}"
    info = _timed(measure, cupy, pristine, work, lambda: cuda.update(work, ids, q, P), m)
    benchmark.extra_info.update(Record(op="gpu-sparse-batch", impl="nap-cuda", role="nap", n=n,
                                       events=m, dist=ids_kind, variant=ids_kind, growth="events",
                                       **info).json())


def test_metrics_10M(benchmark, measure, gpu):
    cupy, _ = gpu
    eng = nap.Engine(10_000_000, backend="cuda", seed=0)
    workload = nap.ReferenceWorkload(eng.n, seed=0)
    for _ in range(50):
        eng.step(workload.next_quality())
    labels = workload.labels
    benchmark.group = "gpu-metrics-10M"
    info = measure(lambda: None, lambda: eng.metrics(labels), eng.n)
    benchmark.extra_info.update(Record(op="gpu-metrics", impl="nap-cuda", role="nap", n=eng.n,
                                       growth="n log n", **info).json())
