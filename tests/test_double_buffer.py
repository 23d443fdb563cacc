"""``Engine(double_buffer=True)``: the checked dense step in one pass, into a second buffer.

The step's bits must be the in-place step's on every backend (random and adversarial inputs,
against the NumPy backend in place), a rejected step must leave the weights, the iteration and
the next step exactly as they were, and the buffers must never be confused: a stale view fed
back as qualities, snapshots, and the unchecked step (in place) after a swap. ``step_into``
itself is checked on views at every offset, sizes on each side of the C++ core's streaming
stores, and thread counts.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_parity import (
    BASE,
    NO_SHRINK,
    WEIGHT_SPECIALS,
    cpp_threads,
    params_strategy,
    programs,
    qualities_for,
    special_mix,
)

import nap_gpu as nap
from nap_gpu import backends as nap_backends

from conftest import BACKENDS, assert_same_bits, on_backend, to_host

#: The C++ core writes with streaming stores from 2^20 weights (core.cpp kStreamFrom).
STREAM_FROM = 1 << 20


def twins(n: int, backend: str, p: nap.Params, w0: np.ndarray):
    """A double-buffered engine on ``backend`` and the in-place reference on numpy."""
    return (nap.Engine(n, backend=backend, init=w0, params=p, double_buffer=True),
            nap.Engine(n, backend="numpy", init=w0, params=p))


@pytest.mark.parametrize("backend", BACKENDS)
@settings(BASE, max_examples=80)
@given(program=programs())
def test_programs_match_the_in_place_engine(backend, program):
    """Every operation of a random program, the checked steps going through step_into."""
    p, w0, ops = program
    eng, ref = twins(w0.size, backend, p, w0)
    for i, (kind, *args) in enumerate(ops):
        if kind == "step_scalar":
            kind, args = "step", [float(args[0])]
        getattr(eng, kind)(*args)
        getattr(ref, kind)(*args)
        assert_same_bits(eng.to_numpy(), ref.to_numpy(), f"{backend} op {i} ({kind}) {p}")
    assert eng.iteration == ref.iteration


@pytest.mark.parametrize("backend", BACKENDS)
@settings(NO_SHRINK, max_examples=4)
@given(seed=st.integers(0, 2**32 - 1),
       n=st.sampled_from([(1 << 16) + 1, STREAM_FROM - 1, STREAM_FROM + 13]),
       threads=st.sampled_from([0, 1, 2, 3]), p=params_strategy())
def test_large_steps_match_on_every_thread_count(backend, seed, n, threads, p):
    """Sizes for the parallel loop, with and without streaming stores."""
    rng = np.random.default_rng(seed)
    w0 = special_mix(rng, n, WEIGHT_SPECIALS, 0.0, 1.0)
    eng, ref = twins(n, backend, p, w0)
    with cpp_threads(threads):
        for it in range(3):
            q = qualities_for(rng, n, p)
            eng.step(q)
            ref.step(q)
            assert_same_bits(eng.to_numpy(), ref.to_numpy(), f"{backend} step {it} n={n} {p}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [1, 7, 1000, STREAM_FROM + 5])
@pytest.mark.parametrize("offsets", [(0, 0, 0), (1, 0, 3), (3, 2, 1), (2, 2, 2)])
def test_step_into_on_views_at_any_offset(backend, n, offsets):
    """w, q and out start anywhere within a vector (the kernels' scalar heads and tails)."""
    be = nap_backends.get(backend)
    rng = np.random.default_rng(n)
    p = nap.Params()
    w0, q0 = rng.random(n, dtype=np.float32), qualities_for(rng, n, p)
    expect = w0.copy()
    nap_backends.get("numpy").step(expect, q0, p)

    def view(host, offset):
        room = on_backend(np.zeros(n + offset, np.float32), backend)
        room[offset:] = on_backend(host, backend)
        return room[offset:]

    w, q, out = view(w0, offsets[0]), view(q0, offsets[1]), view(np.full(n, -1, np.float32),
                                                                  offsets[2])
    assert be.step_into(w, q, out, p) == -1
    assert_same_bits(out, expect, f"{backend} n={n} offsets={offsets}")
    assert_same_bits(w, w0, "step_into wrote w")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [1, 33, STREAM_FROM + 3])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_rejected_step_changes_nothing(backend, n, bad):
    """A NaN or infinite quality first, in the middle or last: the error names its index, and
    the weights, the iteration and the next step are what they would have been without it."""
    rng = np.random.default_rng(n)
    p = nap.Params()
    w0 = rng.random(n, dtype=np.float32)
    eng, ref = twins(n, backend, p, w0)
    q = qualities_for(rng, n, p)
    eng.step(q)
    ref.step(q)
    for at in sorted({0, n // 2, n - 1}):
        poisoned = q.copy()
        poisoned[at] = poisoned[n - 1] = bad  # the first, and a later one where there is room
        with pytest.raises(ValueError, match=rf"quality\[{at}\] = -?(nan|inf) is not finite"):
            eng.step(poisoned)
        assert_same_bits(eng.to_numpy(), ref.to_numpy(), f"{backend}: a rejected step wrote")
        assert eng.iteration == ref.iteration == 1
    q2 = qualities_for(rng, n, p)
    eng.step(q2)
    ref.step(q2)
    assert_same_bits(eng.to_numpy(), ref.to_numpy(), f"{backend}: the step after a rejection")
    with pytest.raises(ValueError, match="quality must be finite"):
        eng.step(float(bad))
    assert_same_bits(eng.to_numpy(), ref.to_numpy(), f"{backend}: a rejected scalar step wrote")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stale_view_fed_back_as_qualities(backend):
    """``weights`` taken before a step shows the other buffer afterwards: the next checked step
    writes that buffer, so qualities read from it must be copied first."""
    n = 4099
    rng = np.random.default_rng(5)
    p = nap.Params(lr=0.25)
    w0 = rng.random(n, dtype=np.float32)
    eng, ref = twins(n, backend, p, w0)
    stale = eng.weights
    q = qualities_for(rng, n, p)
    eng.step(q)
    ref.step(q)
    assert_same_bits(eng.weights, ref.to_numpy(), f"{backend}: weights after the step")
    eng.step(stale)  # the weights before the first step, as qualities
    ref.step(w0)
    assert_same_bits(eng.to_numpy(), ref.to_numpy(), f"{backend}: stale view as qualities")


@pytest.mark.parametrize("backend", BACKENDS)
def test_unchecked_steps_and_snapshots_follow_the_live_buffer(backend, tmp_path):
    n = 2053
    rng = np.random.default_rng(6)
    p = nap.Params()
    w0 = rng.random(n, dtype=np.float32)
    eng, ref = twins(n, backend, p, w0)
    for check in (True, False, True, True, False):
        q = qualities_for(rng, n, p)
        eng.step(q, check_finite=check)
        ref.step(q, check_finite=check)
    eng.update([3, 3, 2000], [1.0, 0.9, 0.0])
    ref.update([3, 3, 2000], [1.0, 0.9, 0.0])
    eng.decay(3)
    ref.decay(3)
    assert_same_bits(eng.to_numpy(), ref.to_numpy(), f"{backend}: mixed calls")
    again = nap.Engine.load(eng.save(tmp_path / "pop.nap"), backend=backend, double_buffer=True)
    assert_same_bits(again.to_numpy(), ref.to_numpy(), f"{backend}: snapshot")
    assert again.iteration == ref.iteration == 5
    q = qualities_for(rng, n, p)
    again.step(q)
    ref.step(q)
    assert_same_bits(to_host(again.weights), ref.to_numpy(), f"{backend}: step after load")
