"""Cross-backend bit parity of the NAP law (docs/law.md §2), property-based.

Every usable backend is compared bitwise against the NumPy backend (the executable reference)
and, for small cases, against ``Oracle``: a scalar restatement of docs/law.md §2 written here
with NumPy float32 scalars, one IEEE operation at a time, in the order the design writes them
(``t = lr * q; w + t`` / ``u = 1 - q; t = lr * u; w - t``), with a real if/else. For the large
arrays, ``law_arrays`` restates the same law in straightforward array code (both branches
computed as written, then selected), independent of the backend's ``q - 1`` identity.

Inputs are random AND adversarial: weights 0, 1, subnormals, the 0.98 plateau and its
neighbours, values next to the gate; qualities of any finite float32 (negative, > 1, huge,
subnormal, -0.0, exactly the gate and its float32 neighbours); random valid parameters; sparse
batches with many duplicate ids in random order, including batches big enough for the C++
core's parallel path (>= 2^15 events) and arrays >= 2^16 weights for its parallel dense loops.

Hypothesis runs derandomized (fixed examples, no example database), without a deadline.
"""

from __future__ import annotations

import collections
import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nap_gpu as nap
from nap_gpu import backends as nap_backends

from conftest import BACKENDS, assert_same_bits, bits, on_backend, to_host

#: The backends compared against the numpy reference (numpy itself is checked against oracles).
OTHER_BACKENDS = [param for param in BACKENDS if param.values[0] != "numpy"]

BASE = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: For tests whose inputs come from a seed: shrinking a seed teaches nothing and costs minutes.
NO_SHRINK = settings(BASE, phases=[Phase.explicit, Phase.reuse, Phase.generate])

CPP_USABLE = nap.available_backends()["cpp"] is None

F = np.float32
ZERO, ONE = F(0.0), F(1.0)


def f32_bits(b: int) -> np.float32:
    return np.array([b], np.uint32).view(np.float32)[0]


def up(x) -> np.float32:
    return np.nextafter(F(x), F(np.inf))


def down(x) -> np.float32:
    return np.nextafter(F(x), F(-np.inf))


DEFAULT = nap.Params()
PLATEAU = ONE - F(DEFAULT.decay)  # 0.98: reinforced memories plateau here
assert bits(np.array([PLATEAU]))[0] == 0x3F7AE148

TINY = f32_bits(0x00000001)          # smallest subnormal
MAX_SUB = f32_bits(0x007FFFFF)       # largest subnormal
MIN_NORMAL = f32_bits(0x00800000)
HALF = F(0.5)

#: Adversarial weights, all in [0, 1].
WEIGHT_SPECIALS = [ZERO, ONE, TINY, f32_bits(2), MAX_SUB, MIN_NORMAL, down(1.0), PLATEAU,
                   down(PLATEAU), up(PLATEAU), HALF, down(HALF), up(HALF), F(0.02), down(F(0.02)),
                   up(F(0.02)), F(0.05), F(0.025), F(0.03), F(0.97), F(0.99)]

#: Adversarial qualities: finite float32 of every kind.
QUALITY_SPECIALS = [F(-0.0), ZERO, ONE, HALF, down(HALF), up(HALF), TINY, -TINY, MAX_SUB, -MAX_SUB,
                    down(1.0), up(1.0), F(-1.0), F(2.0), F(-3.0), F(7.0), F(np.finfo(F).max),
                    F(-np.finfo(F).max), F(1e-30), F(-1e-30), F(0.6), F(0.4), F(0.99999)]

UNIT = st.floats(0.0, 1.0, width=32)
ANY_FINITE = st.floats(width=32, allow_nan=False, allow_infinity=False)


def weight_elements():
    return st.one_of(UNIT, st.sampled_from(WEIGHT_SPECIALS))


def quality_elements(gate: float):
    g = F(gate)
    near_gate = [g, down(g), up(g), down(down(g)), up(up(g))]
    return st.one_of(ANY_FINITE, UNIT, st.sampled_from(QUALITY_SPECIALS + near_gate))


@st.composite
def params_strategy(draw) -> nap.Params:
    """Default, random or edge parameters: every value a float32 in [0, 1]."""
    edge = st.sampled_from([0.0, 1.0, float(TINY), float(MAX_SUB), 0.5, 2.0 ** -24, 1e-7,
                            float(F(1e-30)), float(down(F(1e-30)))])
    value = st.one_of(UNIT, edge)
    kind = draw(st.sampled_from(["default", "random", "random", "mixed"]))
    if kind == "default":
        return nap.Params()
    if kind == "mixed":  # one parameter moved away from the defaults
        which = draw(st.sampled_from(["lr", "gate", "decay"]))
        return nap.Params(**{which: draw(value)})
    return nap.Params(lr=draw(value), gate=draw(value), decay=draw(value))


# -- the scalar oracle (docs/law.md §2, literally) -----------------------------------------------

class Oracle:
    """The law on one weight at a time with float32 scalars, as docs/law.md §2 writes it."""

    def __init__(self, p: nap.Params) -> None:
        self.lr, self.gate, self.decay = F(p.lr), F(p.gate), F(p.decay)

    @staticmethod
    def clamp(x: np.float32) -> np.float32:
        x = ZERO if x <= ZERO else x   # max(x, 0): -0.0 becomes +0.0, NaN passes
        return ONE if x >= ONE else x  # min(x, 1)

    def feedback(self, w: np.float32, q: np.float32) -> np.float32:
        q = self.clamp(F(q))
        if q > self.gate:
            t = self.lr * q
            w = w + t
        else:
            u = ONE - q
            t = self.lr * u
            w = w - t
        return self.clamp(w)

    def decay_once(self, w: np.float32) -> np.float32:
        return self.clamp(w - self.decay)

    def step(self, w: np.float32, q: np.float32) -> np.float32:
        w = self.feedback(w, q)
        if self.decay != ZERO:  # "skipped when decay == 0"
            w = self.decay_once(w)
        return w

    # populations -------------------------------------------------------------------------
    def step_all(self, w: np.ndarray, q) -> np.ndarray:
        q = np.broadcast_to(np.asarray(q, np.float32), w.shape)
        return np.array([self.step(wi, qi) for wi, qi in zip(w, q)], np.float32)

    def update_all(self, w: np.ndarray, ids, q) -> np.ndarray:
        w = w.copy()
        q = np.broadcast_to(np.asarray(q, np.float32), np.shape(ids))
        for i, qi in zip(ids, q):
            w[i] = self.feedback(w[i], qi)
        return w

    def decay_all(self, w: np.ndarray, k: int) -> np.ndarray:
        out = w.copy()
        for i in range(out.size):
            x = out[i]
            for _ in range(k):
                x = self.decay_once(x)
            out[i] = x
        return out


def law_arrays_step(w: np.ndarray, q: np.ndarray, p: nap.Params) -> np.ndarray:
    """docs/law.md §2 in plain array code: both branches as written, then a select."""
    lr, gate, d = p.float32()
    qc = np.minimum(np.maximum(q, ZERO), ONE)
    reinforced = w + lr * qc
    punished = w - lr * (ONE - qc)
    out = np.minimum(np.maximum(np.where(qc > gate, reinforced, punished), ZERO), ONE)
    if d != ZERO:
        out = np.minimum(np.maximum(out - d, ZERO), ONE)
    return out.astype(np.float32)


# -- helpers ---------------------------------------------------------------------------------

@contextlib.contextmanager
def cpp_threads(n: int):
    """Run the C++ core with n OpenMP threads (0: its default), restoring the count after."""
    if not CPP_USABLE:
        yield
        return
    cpp = nap_backends.get("cpp")
    before = cpp.num_threads()
    cpp.set_num_threads(n)
    try:
        yield
    finally:
        cpp.set_num_threads(before)


def pair(n: int, backend: str, p: nap.Params, w0: np.ndarray):
    """An engine on ``backend`` and one on numpy (the reference), same initial weights."""
    return (nap.Engine(n, backend=backend, init=w0, params=p),
            nap.Engine(n, backend="numpy", init=w0, params=p))


def special_mix(rng: np.random.Generator, n: int, values, lo: float, hi: float,
                share: float = 0.3) -> np.ndarray:
    """n float32 values: uniform in [lo, hi) with a ``share`` of them drawn from ``values``."""
    out = rng.uniform(lo, hi, n).astype(np.float32)
    pick = rng.random(n) < share
    out[pick] = rng.choice(np.array(values, np.float32), int(pick.sum()))
    return out


def qualities_for(rng, n: int, p: nap.Params) -> np.ndarray:
    g = F(p.gate)
    specials = QUALITY_SPECIALS + [g, down(g), up(g)]
    return special_mix(rng, n, specials, -0.5, 1.5, share=0.35)


def hot_ids(rng, m: int, n: int) -> np.ndarray:
    """m ids in [0, n) in random order with many duplicates: half of them on a few hot ids."""
    ids = rng.integers(0, n, m)
    hot = rng.integers(0, n, min(n, 5))
    which = rng.random(m) < 0.5
    ids[which] = rng.choice(hot, int(which.sum()))
    return ids


# -- small programs: every op, every backend, numpy and the oracle ------------------------------

@st.composite
def programs(draw):
    p = draw(params_strategy())
    n = draw(st.integers(1, 24))
    w0 = draw(hnp.arrays(np.float32, n, elements=weight_elements()))
    q_elems = quality_elements(p.gate)
    ops = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["step", "step", "step_scalar", "update", "update", "decay"]))
        if kind == "step":
            ops.append(("step", draw(hnp.arrays(np.float32, n, elements=q_elems))))
        elif kind == "step_scalar":
            ops.append(("step_scalar", F(draw(q_elems))))
        elif kind == "update":
            m = draw(st.integers(0, 4 * n + 4))
            ids = draw(hnp.arrays(np.int64, m, elements=st.integers(0, n - 1)))
            ops.append(("update", ids, draw(hnp.arrays(np.float32, m, elements=q_elems))))
        else:
            ops.append(("decay", draw(st.sampled_from([0, 1, 2, 3, 7, 8, 9, 16, 17, 40]))))
    return p, w0, ops


@pytest.mark.parametrize("backend", BACKENDS)
@settings(BASE, max_examples=120)
@given(program=programs())
def test_programs_match_numpy_and_oracle(backend, program):
    p, w0, ops = program
    n = w0.size
    eng, ref = pair(n, backend, p, w0)
    oracle = Oracle(p)
    expect = w0 + ZERO  # the engine stores -0.0 as +0.0
    for i, op in enumerate(ops):
        if op[0] == "step":
            eng.step(op[1])
            ref.step(op[1])
            expect = oracle.step_all(expect, op[1])
        elif op[0] == "step_scalar":
            eng.step(float(op[1]))
            ref.step(float(op[1]))
            expect = oracle.step_all(expect, op[1])
        elif op[0] == "update":
            eng.update(op[1], op[2])
            ref.update(op[1], op[2])
            expect = oracle.update_all(expect, op[1], op[2])
        else:
            eng.decay(op[1])
            ref.decay(op[1])
            expect = oracle.decay_all(expect, op[1])
        context = f"{backend} op {i} ({op[0]}) with {p}"
        assert_same_bits(ref.to_numpy(), expect, f"numpy vs oracle: {context}")
        assert_same_bits(eng.to_numpy(), ref.to_numpy(), f"{context} vs numpy")
    assert not np.any(bits(eng.to_numpy()) == 0x80000000), "-0.0 left the engine"


@pytest.mark.parametrize("backend", BACKENDS)
@settings(BASE, max_examples=80)
@given(p=params_strategy(), data=st.data())
def test_functional_step_and_update_match(backend, p, data):
    """The functional form on the caller's array (weights may include -0.0)."""
    n = data.draw(st.integers(1, 40), label="n")
    w_elems = st.one_of(weight_elements(), st.just(F(-0.0)))
    w0 = data.draw(hnp.arrays(np.float32, n, elements=w_elems), label="w0")
    q_elems = quality_elements(p.gate)
    q = data.draw(hnp.arrays(np.float32, n, elements=q_elems), label="q")
    qs = F(data.draw(q_elems, label="scalar q"))
    m = data.draw(st.integers(1, 5 * n), label="m")
    ids = data.draw(hnp.arrays(np.int64, m, elements=st.integers(0, n - 1)), label="ids")
    eq = data.draw(hnp.arrays(np.float32, m, elements=q_elems), label="event q")
    oracle = Oracle(p)

    w, ref = on_backend(w0, backend), w0.copy()
    nap.step(w, q, p, backend=backend)
    nap.step(ref, q, p, backend="numpy")
    expect = oracle.step_all(w0, q)
    assert_same_bits(ref, expect, f"numpy step vs oracle, {p}")
    assert_same_bits(w, ref, f"{backend} step, {p}")

    nap.step(w, float(qs), p, backend=backend)
    nap.step(ref, float(qs), p, backend="numpy")
    expect = oracle.step_all(expect, qs)
    assert_same_bits(ref, expect, f"numpy scalar step vs oracle, {p}")
    assert_same_bits(w, ref, f"{backend} scalar step, {p}")

    nap.update(w, ids, eq, p, backend=backend)
    nap.update(ref, ids, eq, p, backend="numpy")
    expect = oracle.update_all(expect, ids, eq)
    assert_same_bits(ref, expect, f"numpy update vs oracle, {p}")
    assert_same_bits(w, ref, f"{backend} update, {p}")
    assert not np.any(bits(w) == 0x80000000), "-0.0 left the law"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lr", [0.0, float(TINY), float(down(F(1e-30))), float(F(1e-30)), 0.05])
@pytest.mark.parametrize("gate", [0.0, 0.5, 1.0])
def test_update_of_negative_zero_weights(backend, lr, gate):
    """A sparse batch straight onto the caller's -0.0 weights, every quality kind on each: the
    core drops its + 0 from an id's chain only where the parameters rule a -0.0 step out
    (lr >= 1e-30, gate >= 0); at lr 0 a punishing step is -0.0 and -0.0 + -0.0 must not stay."""
    p = nap.Params(lr=lr, gate=gate)
    g = F(gate)
    q = np.array(QUALITY_SPECIALS + [g, down(g), up(g)], np.float32)
    n = 7
    ids = np.arange(q.size) % n
    w0 = np.full(n, -0.0, np.float32)
    w, ref = on_backend(w0, backend), w0.copy()
    nap.update(w, ids, q, p, backend=backend)
    nap.update(ref, ids, q, p, backend="numpy")
    assert_same_bits(ref, Oracle(p).update_all(w0, ids, q), f"numpy vs oracle, {p}")
    assert_same_bits(w, ref, f"{backend}, {p}")
    assert not np.any(bits(to_host(w)) == 0x80000000), "-0.0 left the law"

@pytest.mark.parametrize("backend", BACKENDS)
@settings(BASE, max_examples=60)
@given(p=params_strategy(), w=weight_elements(), data=st.data())
def test_every_quality_kind_on_one_weight(backend, p, w, data):
    """One weight against many qualities at once (every special and the gate's neighbours)."""
    g = F(p.gate)
    q = np.array(QUALITY_SPECIALS + [g, down(g), up(g), data.draw(ANY_FINITE)], np.float32)
    w0 = np.full(q.size, w, np.float32)
    eng, ref = pair(q.size, backend, p, w0)
    eng.step(q)
    ref.step(q)
    assert_same_bits(ref.to_numpy(), Oracle(p).step_all(w0, q), f"numpy vs oracle {p}")
    assert_same_bits(eng.to_numpy(), ref.to_numpy(), f"{backend} {p}")


# -- the C++ core's parallel paths -------------------------------------------------------------

@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@settings(NO_SHRINK, max_examples=8)
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([2, 3, 5, 64, 997]),
       m=st.integers(40_000, 50_000), threads=st.sampled_from([0, 2, 3, 4, 7]),
       p=params_strategy())
def test_parallel_sparse_batch_matches_numpy(backend, seed, n, m, threads, p):
    """>= 40k events over a small id range in random order: the core's parallel bucketing must
    keep each id's events in order (any thread count, more threads than ids included)."""
    rng = np.random.default_rng(seed)
    w0 = special_mix(rng, n, WEIGHT_SPECIALS, 0.0, 1.0)
    ids = hot_ids(rng, m, n)
    q = qualities_for(rng, m, p)
    eng, ref = pair(n, backend, p, w0)
    with cpp_threads(threads):
        eng.update(ids, q)
        ref.update(ids, q)
        # a second batch, ids as int32 and qualities as float64 (converted, same bits)
        ids2 = hot_ids(rng, m, n).astype(np.int32)
        q2 = qualities_for(rng, m, p).astype(np.float64)
        eng.update(ids2, q2)
        ref.update(ids2, q2)
    assert_same_bits(eng.to_numpy(), ref.to_numpy(), f"{backend} n={n} m={m} T={threads} {p}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("threads", [0, 2, 5])
def test_parallel_sparse_batch_matches_oracle(backend, threads):
    """A 48k-event batch on 40 ids (the parallel path) against the scalar oracle, in order."""
    rng = np.random.default_rng(11)
    n, m = 40, 48_000
    p = nap.Params()
    w0 = special_mix(rng, n, WEIGHT_SPECIALS, 0.0, 1.0)
    ids = hot_ids(rng, m, n)
    q = qualities_for(rng, m, p)
    # Independent ordered reference: each id's events, in the order given, one at a time.
    oracle = Oracle(p)
    expect = w0.copy()
    per_id = collections.defaultdict(list)
    for i, qi in zip(ids.tolist(), q):
        per_id[i].append(qi)
    for i, events in per_id.items():
        x = expect[i]
        for qi in events:
            x = oracle.feedback(x, qi)
        expect[i] = x
    eng = nap.Engine(n, backend=backend, init=w0, params=p)
    with cpp_threads(threads):
        eng.update(ids, q)
    assert_same_bits(eng.to_numpy(), expect, f"{backend} T={threads}")
    # the order matters: the same events reversed give other weights (so the check has teeth)
    reversed_eng = nap.Engine(n, backend=backend, init=w0, params=p)
    reversed_eng.update(ids[::-1].copy(), q[::-1].copy())
    assert np.any(bits(reversed_eng.to_numpy()) != bits(expect))


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@settings(NO_SHRINK, max_examples=4)
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([(1 << 22) + 3, 5 * (1 << 20) + 1]),
       threads=st.sampled_from([2, 3]), p=params_strategy())
def test_sparse_batch_past_the_caches_matches_numpy(backend, seed, n, threads, p):
    """>= 2^22 weights on 2-3 threads (the core's filtered form: each thread reads every
    event and keeps its own id range): ids at every range's edge and hot ids, in order."""
    rng = np.random.default_rng(seed)
    w0 = special_mix(rng, n, WEIGHT_SPECIALS, 0.0, 1.0)
    m = 50_000
    ids = rng.integers(0, n, m)
    edges = np.array([(n + t - 1) // t * k + d for t in (2, 3) for k in range(t + 1)
                      for d in (-1, 0, 1)])
    edges = edges[(edges >= 0) & (edges < n)]
    ids[rng.integers(0, m, 8 * len(edges))] = np.repeat(edges, 8)
    ids[rng.integers(0, m, 60)] = rng.integers(0, n, 3).repeat(20)
    q = qualities_for(rng, m, p)
    eng, ref = pair(n, backend, p, w0)
    with cpp_threads(threads):
        eng.update(ids, q)
    ref.update(ids, q)
    assert_same_bits(eng.to_numpy(), ref.to_numpy(), f"{backend} n={n} T={threads} {p}")


@pytest.mark.parametrize("backend", BACKENDS)
@settings(NO_SHRINK, max_examples=6)
@given(seed=st.integers(0, 2**32 - 1),
       n=st.sampled_from([1 << 16, (1 << 16) + 1, (1 << 16) + 4095, 3 * (1 << 15) + 7, (1 << 17) + 3]),
       threads=st.sampled_from([0, 2, 3]), p=params_strategy(),
       ks=st.lists(st.sampled_from([0, 1, 2, 7, 8, 9, 16, 17, 33, 60]), min_size=1, max_size=3))
def test_parallel_dense_matches_numpy(backend, seed, n, threads, p, ks):
    """>= 2^16 weights: dense steps, scalar steps and decay(k) on the parallel dense loops."""
    rng = np.random.default_rng(seed)
    w0 = special_mix(rng, n, WEIGHT_SPECIALS, 0.0, 1.0)
    eng, ref = pair(n, backend, p, w0)
    expect = w0.copy()
    with cpp_threads(threads):
        for it in range(3):
            q = qualities_for(rng, n, p)
            eng.step(q)
            ref.step(q)
            expect = law_arrays_step(expect, q, p)
            assert_same_bits(ref.to_numpy(), expect, f"numpy vs array law, step {it}, {p}")
            assert_same_bits(eng.to_numpy(), ref.to_numpy(), f"{backend} step {it} n={n} {p}")
        qs = float(rng.choice(np.array(QUALITY_SPECIALS + [F(p.gate), up(p.gate)], np.float32)))
        eng.step(qs)
        ref.step(qs)
        expect = law_arrays_step(expect, np.full(n, qs, np.float32), p)
        assert_same_bits(ref.to_numpy(), expect, f"numpy vs array law, scalar step {qs!r}, {p}")
        assert_same_bits(eng.to_numpy(), ref.to_numpy(), f"{backend} scalar step {qs!r} {p}")
        for k in ks:
            eng.decay(k)
            ref.decay(k)
            assert_same_bits(eng.to_numpy(), ref.to_numpy(), f"{backend} decay({k}) n={n} {p}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d", [0.02, 0.0, 1e-7, 0.3, 1.0, float(TINY)])
def test_decay_k_equals_k_single_decays(backend, d):
    """decay(k) (one pass over memory, early exit once a block is 0) equals k single decays,
    for several k, on an array big enough for the parallel loop. References: the law written
    as array code applied k times, and the scalar oracle on a sample of the weights."""
    rng = np.random.default_rng(3)
    n = (1 << 16) + 123
    w0 = special_mix(rng, n, WEIGHT_SPECIALS, 0.0, 1.0)
    p = nap.Params(decay=d)
    oracle = Oracle(p)
    sample = np.concatenate([np.arange(64), rng.integers(0, n, 64)])
    dd = F(d)
    expect = w0.copy()
    done = 0
    for k in (0, 1, 2, 7, 8, 9, 15, 16, 17, 50, 51, 64):
        for _ in range(k - done):
            expect = np.minimum(np.maximum(expect - dd, ZERO), ONE)
        done = k
        eng = nap.Engine(n, backend=backend, init=w0, params=p)
        eng.decay(k)
        got = eng.to_numpy()
        assert_same_bits(got, expect, f"{backend} decay({k}) d={d}")
        assert_same_bits(got[sample], oracle.decay_all(w0[sample], k),
                         f"{backend} decay({k}) d={d} vs oracle")
    single = nap.Engine(n, backend=backend, init=w0, params=p)
    batched = nap.Engine(n, backend=backend, init=w0, params=p)
    for _ in range(37):
        single.decay(1)
    batched.decay(37)
    assert_same_bits(single.to_numpy(), batched.to_numpy(), f"{backend} 37 x decay(1) vs decay(37)")


# -- NaN propagates: NaN in the same places everywhere (payloads unspecified, see conftest) -----

def quiet_nans(rng, count: int) -> np.ndarray:
    """Quiet NaNs of both signs with random payloads."""
    payload = rng.integers(0, 1 << 22, count, dtype=np.uint32)
    sign = rng.integers(0, 2, count, dtype=np.uint32) << np.uint32(31)
    return (sign | np.uint32(0x7FC00000) | payload).view(np.float32)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@settings(NO_SHRINK, max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([1, 9, 100, (1 << 16) + 5]),
       p=params_strategy())
def test_nan_weights_functional(backend, seed, n, p):
    """NaN weights (functional form: the caller's array) stay NaN with identical bits."""
    rng = np.random.default_rng(seed)
    w0 = special_mix(rng, n, WEIGHT_SPECIALS, 0.0, 1.0)
    where = rng.random(n) < 0.3
    where[0] = True
    w0[where] = quiet_nans(rng, int(where.sum()))
    w, ref = on_backend(w0, backend), w0.copy()
    q = qualities_for(rng, n, p)
    nap.step(w, q, p, backend=backend)
    nap.step(ref, q, p, backend="numpy")
    assert_same_bits(w, ref, f"{backend} step with NaN weights {p}", nan_payloads=False)
    nap.step(w, 0.75, p, backend=backend)
    nap.step(ref, 0.75, p, backend="numpy")
    assert_same_bits(w, ref, f"{backend} scalar step with NaN weights {p}", nan_payloads=False)
    m = 40_000 if n <= 100 else 1000  # the parallel sparse path on a small population
    ids = hot_ids(rng, m, n)
    eq = qualities_for(rng, m, p)
    nap.update(w, ids, eq, p, backend=backend)
    nap.update(ref, ids, eq, p, backend="numpy")
    assert_same_bits(w, ref, f"{backend} update with NaN weights {p}", nan_payloads=False)
    assert np.isnan(w[where]).all(), "a NaN weight stopped being NaN"
    assert not np.isnan(w[~where]).any(), "NaN spread to another weight"


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_quality_unchecked(backend):
    """check_finite=False lets NaN qualities through: documented to punish and give NaN; the
    bits must still agree with numpy on every path (each NaN here meets finite operands)."""
    rng = np.random.default_rng(5)
    n = 1000
    p = nap.Params()
    w0 = special_mix(rng, n, WEIGHT_SPECIALS, 0.0, 1.0)
    q = qualities_for(rng, n, p)
    bad = rng.random(n) < 0.2
    q[bad] = quiet_nans(rng, int(bad.sum()))
    eng, ref = pair(n, backend, p, w0)
    eng.step(q, check_finite=False)
    ref.step(q, check_finite=False)
    assert_same_bits(eng.to_numpy(), ref.to_numpy(), f"{backend} step with NaN qualities", nan_payloads=False)
    assert np.isnan(eng.to_numpy()[bad]).all()
    assert not np.isnan(eng.to_numpy()[~bad]).any()

    # A parallel-size batch on fresh finite weights; a NaN quality only as an id's first event
    # (later events of that id then meet a NaN weight with a finite quality).
    eng, ref = pair(n, backend, p, w0)
    ids = hot_ids(rng, 50_000, n)
    eq = qualities_for(rng, ids.size, p)
    first = np.unique(ids, return_index=True)[1]
    poisoned = first[rng.random(first.size) < 0.5]
    eq[poisoned] = quiet_nans(rng, poisoned.size)
    eng.update(ids, eq, check_finite=False)
    ref.update(ids, eq, check_finite=False)
    assert_same_bits(eng.to_numpy(), ref.to_numpy(), f"{backend} update with NaN qualities",
                     nan_payloads=False)
    assert np.isnan(eng.to_numpy()).sum() == poisoned.size


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 8, 9, 20])
def test_decay_with_nan_weights(backend, k):
    """A NaN weight (let in by check_finite=False) must not change how the other weights of
    its block decay: decay(k) is k decays for every finite weight, NaN stays NaN."""
    n = 1000
    w0 = np.linspace(0.0, 1.0, n, dtype=np.float32)
    q = np.full(n, 0.9, np.float32)
    q[[0, 500]] = np.nan
    eng = nap.Engine(n, backend=backend, init=w0, params=nap.Params())
    eng.step(q, check_finite=False)
    before = eng.to_numpy()
    assert np.isnan(before[[0, 500]]).all()
    expect = before.copy()
    for _ in range(k):
        expect = np.minimum(np.maximum(expect - F(0.02), ZERO), ONE)
    eng.decay(k)
    assert_same_bits(eng.to_numpy(), expect, f"{backend} decay({k}) beside NaN weights", nan_payloads=False)


def test_nan_weight_meets_nan_quality_unchecked():
    """w = NaN 0x7ff58d57, q = NaN 0x7fc00000: the result is NaN on every backend, although
    which payload survives w + t differs (cpp keeps w's; NumPy's depends on the element's
    position in its SIMD loop)."""
    if not CPP_USABLE:
        pytest.skip("needs the cpp backend to compare against")
    w_nan = np.array([0x7FF58D57], np.uint32).view(np.float32)
    q_nan = np.array([0x7FC00000], np.uint32).view(np.float32)
    results = {}
    for name in ("cpp", "numpy"):
        w = w_nan.copy()
        nap.update(w, [0], q_nan, backend=name, check_finite=False)
        dense = np.repeat(w_nan, 17)
        nap.step(dense, np.repeat(q_nan, 17), backend=name, check_finite=False)
        results[name] = np.concatenate([w, dense])
    assert_same_bits(results["cpp"], results["numpy"], "NaN weight + NaN quality", nan_payloads=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_signalling_nan_weights_functional(backend):
    """Signalling NaNs are quieted by the first operation, identically on every backend.
    (NumPy raises the IEEE invalid flag for them, hence the errstate.)"""
    snan = np.array([0x7F800001, 0xFF800001, 0x7FBFFFFF, 0x7FA00000], np.uint32).view(np.float32)
    w0 = np.concatenate([snan, np.array([0.5, 0.0, 1.0], np.float32)])
    q = np.array([0.9, 0.1, 0.5, 1.0, 0.9, 0.1, 0.5], np.float32)
    with np.errstate(invalid="ignore"):
        w, ref = on_backend(w0, backend), w0.copy()
        nap.step(w, q, backend=backend)
        nap.step(ref, q, backend="numpy")
    assert_same_bits(w, ref, f"{backend} step with signalling NaN weights", nan_payloads=False)
    assert np.isnan(to_host(w)[:4]).all() and not np.isnan(to_host(w)[4:]).any()
