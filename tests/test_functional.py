"""The functional form: ``nap.step`` / ``nap.update`` write into the caller's own memory.

Each backend's own arrays (NumPy float32 on cpp/numpy, device arrays on cuda) and host arrays
shared through DLPack (PyTorch CPU tensors, on the host backends) are updated in place,
bit-identical to the Engine. Anything that cannot be written in place (another
dtype, non-contiguous, read-only, a Python list, a tensor that requires grad, an immutable
JAX array) is refused with a clear error, and the caller's array is left exactly as it was:
never a silent copy that would leave it stale.
"""

from __future__ import annotations

import numpy as np
import pytest

import nap_gpu as nap

from conftest import assert_same_bits, bits, data_pointer, on_backend, to_host

N = 1000


def weights(n: int = N, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).random(n, dtype=np.float32)


def qualities(n: int = N, seed: int = 4) -> np.ndarray:
    q = np.random.default_rng(seed).uniform(-0.2, 1.2, n).astype(np.float32)
    q[: min(n, 4)] = [0.5, np.nextafter(np.float32(0.5), np.float32(1)), 0.0, 1.0][: min(n, 4)]
    return q


def batch(n: int = N, m: int = 3000, seed: int = 5):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, n // 10, m).astype(np.int64)  # many duplicates, in order
    return ids, rng.random(m, dtype=np.float32)


def engine_after(backend, w0, *calls, params=None) -> np.ndarray:
    """The Engine's weights after the same calls, from the same initial weights."""
    eng = nap.Engine(w0.size, backend=backend, init=w0.reshape(-1), params=params)
    for name, *args in calls:
        getattr(eng, name)(*args)
    return eng.to_numpy()


# -- the backend's own arrays (NumPy on the host, device arrays on cuda) -------------------------

def test_step_in_place_matches_engine(backend):
    w0 = weights()
    w = on_backend(w0, backend)
    address = data_pointer(w)
    q = qualities()
    assert nap.step(w, q, backend=backend) is None
    assert data_pointer(w) == address
    assert not (bits(w) == bits(w0)).all(), "nothing was written into the caller's array"
    assert_same_bits(w, engine_after(backend, w0, ("step", q)), "nap.step vs Engine.step")


def test_update_in_place_matches_engine(backend):
    w0 = weights()
    w = on_backend(w0, backend)
    ids, q = batch()
    nap.update(w, ids, q, backend=backend)
    assert not (bits(w) == bits(w0)).all()
    assert_same_bits(w, engine_after(backend, w0, ("update", ids, q)), "nap.update vs Engine.update")


@pytest.mark.parametrize("layout", ["big-endian", "int32 ids, float64 q", "strided"])
def test_update_inputs_off_the_direct_path(backend, layout):
    """Inputs the direct path (native int64 ids, float32 qualities) leaves to the conversions:
    the same bits as native inputs, and big-endian weights refused with nothing written."""
    w0 = weights()
    ids, q = batch()
    converted = {"big-endian": (ids.astype(">i8"), q.astype(">f4")),
                 "int32 ids, float64 q": (ids.astype(np.int32), q.astype(np.float64)),
                 "strided": (np.repeat(ids, 2)[::2], np.repeat(q, 2)[::2])}[layout]
    w, ref = on_backend(w0, backend), on_backend(w0, backend)
    nap.update(w, *converted, backend=backend)
    nap.update(ref, ids, q, backend=backend)
    assert_same_bits(w, ref, layout)
    if backend != "cuda":
        swapped = w0.astype(">f4")
        with pytest.raises(TypeError, match="float32"):
            nap.update(swapped, ids, q, backend=backend)
        assert_same_bits(swapped.astype(np.float32), w0, "big-endian weights after the refusal")

def test_view_writes_into_the_underlying_buffer(backend):
    """A contiguous slice of a larger buffer: the buffer itself changes (so no copy was
    made), only inside the slice (and the slice starts off any vector alignment)."""
    base0 = weights(N + 201)
    base = on_backend(base0, backend)
    view = base[101:101 + N]
    q = qualities()
    ids, qb = batch()
    nap.step(view, q, backend=backend)
    nap.update(view, ids, qb, backend=backend)
    nap.step(view, 0.8, backend=backend)
    expected = engine_after(backend, base0[101:101 + N], ("step", q), ("update", ids, qb), ("step", 0.8))
    assert_same_bits(base[101:101 + N], expected, "the buffer behind the view")
    assert_same_bits(base[:101], base0[:101], "before the view")
    assert_same_bits(base[101 + N:], base0[101 + N:], "after the view")


def test_sequence_with_params_and_scalars(backend):
    params = nap.Params(lr=0.125, gate=0.25, decay=0.0)
    w0 = weights(seed=9)
    w = on_backend(w0, backend)
    q = qualities(seed=10)
    ids, qb = batch(seed=11)
    nap.step(w, q, params, backend=backend)
    nap.update(w, ids, qb, params, backend=backend)
    nap.update(w, ids[:10], 0.3, params, backend=backend)
    nap.step(w, 0.26, params, backend=backend)
    expected = engine_after(backend, w0, ("step", q), ("update", ids, qb), ("update", ids[:10], 0.3),
                            ("step", 0.26), params=params)
    assert_same_bits(w, expected, "sequence with custom Params")


def test_numpy_default_backend_is_a_host_backend():
    w0 = weights()
    w = w0.copy()
    q = qualities()
    nap.step(w, q)  # backend="auto"
    assert_same_bits(w, engine_after("numpy", w0, ("step", q)), "auto vs the numpy reference")


@pytest.mark.slow
def test_large_in_place(backend):
    """Large enough for the C++ loops to run in parallel."""
    n = 300_000
    w0 = weights(n, seed=12)
    w = on_backend(w0, backend)
    q = qualities(n, seed=13)
    ids, qb = batch(n, 100_000, seed=14)
    nap.step(w, q, backend=backend)
    nap.update(w, ids, qb, backend=backend)
    assert_same_bits(w, engine_after(backend, w0, ("step", q), ("update", ids, qb)), "300k in place")


def test_two_dimensional_c_contiguous_is_updated_as_flat_view(backend):
    w0 = weights(1200).reshape(30, 40)
    w = on_backend(w0, backend)
    q = qualities(1200)
    nap.step(w, q, backend=backend)            # 1-D qualities, one per element
    nap.step(w, q.reshape(30, 40), backend=backend)  # same-shape qualities
    ids = np.array([0, 41, 1199, 41, 40], np.int64)  # flat indices
    qb = np.array([0.9, 0.2, 0.7, 0.95, 0.1], np.float32)
    nap.update(w, ids, qb, backend=backend)
    assert w.shape == (30, 40)
    expected = engine_after(backend, w0, ("step", q), ("step", q), ("update", ids, qb))
    assert_same_bits(w.reshape(-1), expected, "2-D C-contiguous weights")


# -- refusals (arrays of the backend, and Python objects) ----------------------------------------

def _refused(call, target, exc, *needles) -> None:
    """``call()`` raises ``exc`` mentioning every needle, and ``target`` is left unchanged."""
    before = to_host(target)
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    assert "weights" in message, f"the message should name the argument: {message}"
    for needle in needles:
        assert needle in message, f"{needle!r} missing from: {message}"
    assert (to_host(target).view(np.uint8) == before.view(np.uint8)).all(), "caller's array changed"


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32])
@pytest.mark.parametrize("op", ["step", "update"])
def test_other_dtypes_refused(backend, dtype, op):
    w = on_backend(weights(10).astype(dtype) if dtype != np.int32 else np.arange(10, dtype=np.int32),
                   backend)
    call = ((lambda: nap.step(w, 0.9, backend=backend)) if op == "step"
            else (lambda: nap.update(w, [1, 2], [0.9, 0.9], backend=backend)))
    _refused(call, w, TypeError, "float32", np.dtype(dtype).name)


@pytest.mark.parametrize("op", ["step", "update"])
def test_strided_slice_refused(backend, op):
    base = on_backend(weights(20), backend)
    w = base[::2]
    call = ((lambda: nap.step(w, 0.9, backend=backend)) if op == "step"
            else (lambda: nap.update(w, [1, 2], [0.9, 0.9], backend=backend)))
    _refused(call, base, ValueError, "contiguous")


@pytest.mark.parametrize("op", ["step", "update"])
def test_transposed_refused(backend, op):
    base = on_backend(weights(12).reshape(3, 4), backend)
    w = base.T
    call = ((lambda: nap.step(w, 0.9, backend=backend)) if op == "step"
            else (lambda: nap.update(w, [1, 2], [0.9, 0.9], backend=backend)))
    _refused(call, base, ValueError, "contiguous")


@pytest.mark.parametrize("op", ["step", "update"])
def test_read_only_refused(host_backend, op):
    backend = host_backend  # device arrays have no read-only flag
    w = weights(10)
    w.flags.writeable = False
    call = ((lambda: nap.step(w, 0.9, backend=backend)) if op == "step"
            else (lambda: nap.update(w, [1, 2], [0.9, 0.9], backend=backend)))
    _refused(call, w, ValueError, "read-only")


@pytest.mark.parametrize("op", ["step", "update"])
def test_engine_weights_cannot_be_written_through(backend, op):
    """``Engine.weights`` never lets the functional form change the Engine behind its back:
    a read-only view on the host (refused), a copy on the device (written, Engine unchanged)."""
    eng = nap.Engine(10, backend=backend, seed=1)
    before = eng.to_numpy()
    exposed = eng.weights
    call = ((lambda: nap.step(exposed, 0.9, backend=backend)) if op == "step"
            else (lambda: nap.update(exposed, [1, 2], [0.9, 0.9], backend=backend)))
    if isinstance(exposed, np.ndarray):
        with pytest.raises(ValueError, match="read-only"):
            call()
    else:
        call()
        assert not (bits(exposed) == bits(before)).all(), "the copy itself is an ordinary array"
    assert_same_bits(eng.to_numpy(), before, "engine weights")
    assert eng.iteration == 0


@pytest.mark.parametrize("obj", [[0.5] * 10, (0.5,) * 10, 0.5, np.float32(0.5)],
                         ids=["list", "tuple", "float", "np.float32"])
@pytest.mark.parametrize("op", ["step", "update"])
def test_python_objects_refused(backend, obj, op):
    before = list(obj) if isinstance(obj, (list, tuple)) else obj
    with pytest.raises(TypeError, match="weights") as info:
        if op == "step":
            nap.step(obj, 0.9, backend=backend)
        else:
            nap.update(obj, [1], [0.9], backend=backend)
    assert "in place" in str(info.value)
    assert (list(obj) if isinstance(obj, (list, tuple)) else obj) == before


# -- qualities that overlap the weights ---------------------------------------------------------

@pytest.mark.parametrize("shift", [1, -1])
def test_step_quality_overlapping_weights_reads_qualities_as_given(backend, shift):
    """Qualities are an input read as they are at the call: when they share memory with the
    weights (here: the same buffer shifted by one element), the result must be that of a copy
    of the qualities (or the call must be refused), on every backend and thread count."""
    n = 200_000  # large enough for the C++ loop to run in parallel
    base0 = np.random.default_rng(21).random(n + 1, dtype=np.float32)

    def views(buf):
        return (buf[0:n], buf[1:n + 1]) if shift == 1 else (buf[1:n + 1], buf[0:n])

    expected = base0.copy()
    w, q = views(expected)
    nap.step(w, q.copy(), backend="numpy")
    got = on_backend(base0, backend)
    w, q = views(got)
    try:
        nap.step(w, q, backend=backend)
    except (ValueError, TypeError):
        assert_same_bits(got, base0, "refused, so nothing may change")
        return
    assert_same_bits(got, expected, f"overlapping qualities (shift {shift})")


def test_update_quality_overlapping_weights_reads_qualities_as_given(backend):
    w0 = weights(64, seed=22)
    ids = np.array([1, 0, 2, 1, 3, 0, 1], np.int64)
    expected = w0.copy()
    nap.update(expected, ids, w0[:7].copy(), backend="numpy")
    got = on_backend(w0, backend)
    try:
        nap.update(got, ids, got[:7], backend=backend)
    except (ValueError, TypeError):
        assert_same_bits(got, w0, "refused, so nothing may change")
        return
    assert_same_bits(got, expected, "qualities overlapping the weights")


def test_engine_update_with_its_own_weights_as_quality(backend):
    """``eng.update(ids, eng.weights[:k])``: the weights' values at the call are the
    qualities; the batch must not see its own writes."""
    w0 = weights(64, seed=23)
    ids = np.array([1, 0, 2, 1, 3, 0, 1], np.int64)
    expected = engine_after(backend, w0, ("update", ids, w0[:7].copy()))
    eng = nap.Engine(64, backend=backend, init=w0)
    try:
        eng.update(ids, eng.weights[:7])
    except (ValueError, TypeError):
        assert_same_bits(eng.to_numpy(), w0, "refused, so nothing may change")
        return
    assert_same_bits(eng.to_numpy(), expected, "Engine.update with its own weights as qualities")


# -- PyTorch (DLPack) -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="PyTorch not installed: DLPack interop untested")


def test_torch_step_in_place(host_backend, torch):
    backend = host_backend
    w0 = weights()
    t = torch.from_numpy(w0.copy())
    pointer = t.data_ptr()
    storage = t.untyped_storage().data_ptr()
    q = qualities()
    nap.step(t, q, backend=backend)
    assert t.data_ptr() == pointer and t.untyped_storage().data_ptr() == storage
    assert t.dtype == torch.float32 and t.shape == (N,)
    assert_same_bits(t.numpy(), engine_after(backend, w0, ("step", q)), "torch tensor vs Engine")


def test_torch_tensor_made_by_torch(host_backend, torch):
    backend = host_backend
    """A tensor torch allocated itself (not from_numpy), a view with a storage offset: the
    storage changes inside the view and nowhere else."""
    gen = torch.Generator().manual_seed(0)
    big = torch.rand(N + 50, generator=gen)
    before = big.numpy().copy()
    t = big[50:]
    assert t.storage_offset() == 50 and t.is_contiguous()
    pointer = t.data_ptr()
    q = torch.from_numpy(qualities())
    ids, qb = batch()
    nap.step(t, q, backend=backend)
    nap.update(t, torch.from_numpy(ids), torch.from_numpy(qb), backend=backend)
    assert t.data_ptr() == pointer
    expected = engine_after(backend, before[50:], ("step", q.numpy()), ("update", ids, qb))
    assert_same_bits(big[50:].numpy(), expected, "torch view vs Engine")
    assert_same_bits(big[:50].numpy(), before[:50], "storage outside the view")


def test_torch_update_in_place(host_backend, torch):
    backend = host_backend
    w0 = weights()
    t = torch.from_numpy(w0.copy())
    pointer = t.data_ptr()
    ids, q = batch()
    nap.update(t, ids, q, backend=backend)
    assert t.data_ptr() == pointer
    assert_same_bits(t.numpy(), engine_after(backend, w0, ("update", ids, q)), "torch update vs Engine")


def test_torch_two_dimensional(host_backend, torch):
    backend = host_backend
    w0 = weights(1200)
    t = torch.from_numpy(w0.copy()).reshape(30, 40)
    nap.step(t, 0.7, backend=backend)
    assert t.shape == (30, 40)
    assert_same_bits(t.reshape(-1).numpy(), engine_after(backend, w0, ("step", 0.7)), "2-D tensor")


def _torch_refused(call, t, exc, *needles):
    before = t.detach().clone()
    with pytest.raises(exc) as info:
        call()
    for needle in needles:
        assert needle in str(info.value), f"{needle!r} missing from: {info.value}"
    assert bool((t.detach() == before).all()) and t.dtype == before.dtype, "caller's tensor changed"


def test_torch_float64_refused(host_backend, torch):
    backend = host_backend
    t = torch.rand(10, dtype=torch.float64)
    _torch_refused(lambda: nap.step(t, 0.9, backend=backend), t, TypeError, "float32")
    _torch_refused(lambda: nap.update(t, [1], [0.9], backend=backend), t, TypeError, "float32")


def test_torch_non_contiguous_refused(host_backend, torch):
    backend = host_backend
    t = torch.rand(20)[::2]
    _torch_refused(lambda: nap.step(t, 0.9, backend=backend), t, ValueError, "contiguous")
    t2 = torch.rand(3, 4).T
    _torch_refused(lambda: nap.step(t2, 0.9, backend=backend), t2, ValueError, "contiguous")


def test_torch_requires_grad_refused(host_backend, torch):
    backend = host_backend
    t = torch.rand(10, requires_grad=True)
    for call in (lambda: nap.step(t, 0.9, backend=backend),
                 lambda: nap.update(t, [1], [0.9], backend=backend)):
        with pytest.raises((TypeError, ValueError)) as info:
            call()
        message = str(info.value)
        assert "weights" in message and ("grad" in message or "detach" in message), message
    assert t.requires_grad and t.grad is None
    # the documented way out: update the detached tensor, which shares the storage
    before = t.detach().numpy().copy()
    nap.step(t.detach(), 0.9, backend=backend)
    assert_same_bits(t.detach().numpy(), engine_after(backend, before, ("step", 0.9)), "detached")


def test_torch_cpu_tensor_refused_by_the_device_backend(backend, torch):
    """A host tensor given to cuda is refused (a device copy would leave it stale)."""
    if backend != "cuda":
        pytest.skip("host backends update host tensors in place")
    t = torch.rand(10)
    _torch_refused(lambda: nap.step(t, 0.9, backend=backend), t, TypeError, "host memory")
    _torch_refused(lambda: nap.update(t, [1], [0.9], backend=backend), t, TypeError, "host memory")


# -- JAX --------------------------------------------------------------------------------------------

def test_jax_array_refused_pointing_to_engine(backend):
    jnp = pytest.importorskip("jax.numpy", reason="JAX not installed: immutable-array refusal untested")
    w = jnp.asarray(weights(10))
    before = np.asarray(w).copy()
    with pytest.raises(TypeError) as info:
        nap.step(w, 0.9, backend=backend)
    assert "Engine" in str(info.value)
    assert_same_bits(np.asarray(w), before, "jax array")
