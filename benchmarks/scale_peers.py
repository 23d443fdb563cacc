"""The sparse ordered batch and decay(k): nap's paths, the floors and the peers.

Peers are the code a user without nap would write, each as well as its library allows, and
checked bit for bit against the NumPy backend (the executable reference) before they are
timed. One that differs is timed anyway and labelled "not bit-exact" with its first mismatch.

Sparse ordered batch (feedback only, each id's events in the order given, docs/law.md §2):

* ``numba-seq``: ``@njit`` loop over the events in order: the obvious correct compiled code
  (sequential: a parallel loop would race on repeated ids);
* ``numpy-rounds``: the correct vectorised NumPy form: stable sort by id, the r-th event of
  every id forms round r (its ids are distinct), one fancy-indexed law per round. Its cost
  grows with the largest multiplicity of one id (Zipf!);
* ``numpy-add-at``: ``np.add.at(w, ids, lr*s)`` then one clamp: what a user reaches for first,
  and NOT a valid form of the law: it sums every event of an id and clamps once, where the law
  clamps after every event (a memory at 0.99 reinforced twice ends at 1, not 0.99 + 2·lr
  clamped, and a punished-then-reinforced one at 0 does not stay at 0 after the first event);
  it is also unordered. It is timed to show what the shortcut would buy, and reported as not
  bit-exact with its mismatch count.

decay(k): ``numpy-naive`` (``k`` times ``clip(w - d)`` in place) and ``numba`` (``prange``,
``k`` rounds in a register); the floor is the same-run in-place streaming triad over the same
bytes (``w += s*w``: read and write w, 8 bytes a memory).
"""

from __future__ import annotations

import numpy as np
from peers import DECAY, GATE, LR, PARAMS, TRIAD_S, _backend, _core, _import

import nap_gpu as nap
from nap_gpu import backends

ZERO, ONE = np.float32(0.0), np.float32(1.0)


# --------------------------------------------------------------------------------------------
# Sparse ordered batch
# --------------------------------------------------------------------------------------------
def numpy_rounds(w: np.ndarray, ids: np.ndarray, q: np.ndarray) -> None:
    """The correct vectorised NumPy form of the ordered batch."""
    m = ids.size
    if m == 0:
        return
    order = np.argsort(ids, kind="stable")
    sid = ids[order]
    first = np.ones(m, bool)
    first[1:] = sid[1:] != sid[:-1]
    group_start = np.maximum.accumulate(np.where(first, np.arange(m), 0))
    rank = np.arange(m) - group_start                     # position of the event in its id
    by_rank = order[np.argsort(rank, kind="stable")]      # round 0, then round 1, ...
    edges = np.concatenate(([0], np.cumsum(np.bincount(rank))))
    for lo, hi in zip(edges[:-1], edges[1:]):
        ev = by_rank[lo:hi]
        idx = ids[ev]
        x = np.clip(q[ev], ZERO, ONE)
        s = np.where(x > GATE, x, x - ONE)               # q, or q - 1 == -(1 - q)
        w[idx] = np.maximum(np.minimum(w[idx] + LR * s, ONE), ZERO) + ZERO


def numpy_add_at(w: np.ndarray, ids: np.ndarray, q: np.ndarray) -> None:
    """The tempting shortcut: sum each id's deltas, clamp once. Not the law (see above)."""
    x = np.clip(q, ZERO, ONE)
    np.add.at(w, ids, LR * np.where(x > GATE, x, x - ONE))
    np.clip(w, ZERO, ONE, out=w)
    w += ZERO


_numba_update = None


def numba_seq():
    global _numba_update
    if _numba_update is None:
        numba = _import("numba")

        @numba.njit(fastmath=False)
        def update(w, ids, q, lr, gate):
            zero = np.float32(0.0)
            one = np.float32(1.0)
            for i in range(ids.size):
                j = ids[i]
                x = q[i]
                x = x if x > zero else zero
                x = x if x < one else one
                s = x if x > gate else x - one
                v = w[j] + lr * s
                v = v if v > zero else zero
                v = v if v < one else one
                w[j] = v

        _numba_update = update
    f = _numba_update
    return lambda w, ids, q: f(w, ids, q, LR, GATE)


def sparse_impl(name: str):
    """(role, about, fn(w, ids, q)) for a sparse implementation; raises Unavailable."""
    if name == "cpp-raw":
        be = _backend("cpp")
        return "nap", "backends.get('cpp').update (no validation)", \
            lambda w, i, q: be.update(w, i, q, PARAMS)
    if name == "cpp-validated":
        _backend("cpp")
        return "nap", "nap.update(w, ids, q, backend='cpp'): id and quality checks, then the core", \
            lambda w, i, q: nap.update(w, i, q, PARAMS, backend="cpp")
    if name == "numpy-raw":
        be = _backend("numpy")
        return "nap", "backends.get('numpy').update (stable sort, one round per multiplicity)", \
            lambda w, i, q: be.update(w, i, q, PARAMS)
    if name == "numba-seq":
        return "peer", "@njit sequential loop over the events in order", numba_seq()
    if name == "numpy-rounds":
        return "peer", "correct NumPy: stable sort, r-th event of each id in round r", numpy_rounds
    if name == "numpy-add-at":
        return "peer", "np.add.at then one clamp: unordered, clamps once (invalid)", numpy_add_at
    raise KeyError(name)


SPARSE_IMPLS = ["cpp-raw", "cpp-validated", "numpy-raw", "numba-seq", "numpy-rounds",
                "numpy-add-at"]


def sparse_check_input(seed: int = 4321):
    """2,000 memories (special weights first), 200k events on them: heavy repetition, the
    law's special qualities, out-of-range qualities."""
    from peers import SPECIAL_Q, SPECIAL_W
    rng = np.random.default_rng(seed)
    n, m = 2000, 200_000
    w = rng.random(n, dtype=np.float32)
    w[:SPECIAL_W.size] = SPECIAL_W
    ids = rng.integers(0, n, m, dtype=np.int64)
    ids[: 4 * SPECIAL_W.size] = np.tile(np.arange(SPECIAL_W.size), 4)
    q = rng.uniform(-0.25, 1.25, m).astype(np.float32)
    q[: SPECIAL_Q.size * 4] = np.tile(SPECIAL_Q, 4)
    expected = w.copy()
    backends.get("numpy").update(expected, ids, q, PARAMS)
    return w, ids, q, expected


def check_sparse(fn) -> dict:
    w, ids, q, expected = sparse_check_input()
    got = w.copy()
    fn(got, ids.copy(), q.copy())
    return _verdict(w, got, expected)


def _verdict(w, got, expected) -> dict:
    diff = np.flatnonzero(got.view(np.uint32) != expected.view(np.uint32))
    info = {"bit_exact": bool(diff.size == 0), "mismatches": int(diff.size)}
    if diff.size:
        i = int(diff[0])
        info["first_mismatch"] = f"memory {i} (w0={w[i]!r}): got {got[i]!r}, law {expected[i]!r}"
        info["label"] = "not bit-exact"
    return info


# --------------------------------------------------------------------------------------------
# decay(k)
# --------------------------------------------------------------------------------------------
def numpy_naive_decay(w: np.ndarray, k: int) -> None:
    for _ in range(k):
        np.subtract(w, DECAY, out=w)
        np.clip(w, ZERO, ONE, out=w)


_numba_decay = None


def numba_decay():
    global _numba_decay
    if _numba_decay is None:
        numba = _import("numba")

        @numba.njit(parallel=True, fastmath=False)
        def decay(w, d, k):
            zero = np.float32(0.0)
            one = np.float32(1.0)
            for i in numba.prange(w.size):
                v = w[i]
                for _ in range(k):
                    v = v - d
                    v = v if v > zero else zero
                    v = v if v < one else one
                w[i] = v

        _numba_decay = decay
    f = _numba_decay
    return lambda w, k: f(w, DECAY, k)


def decay_impl(name: str):
    if name == "floor":
        core = _core()
        return "floor", "in-place streaming triad w += s*w over the same bytes, C++/OpenMP", \
            lambda w, k: core.triad(w, w, TRIAD_S)
    if name == "cpp-raw":
        be = _backend("cpp")
        return "nap", "backends.get('cpp').decay", lambda w, k: be.decay(w, PARAMS.decay, k)
    if name == "numpy-raw":
        be = _backend("numpy")
        return "nap", "backends.get('numpy').decay (k rounds per cached chunk)", \
            lambda w, k: be.decay(w, PARAMS.decay, k)
    if name == "numpy-naive":
        return "peer", "k times: w -= d; clip(w, 0, 1) in place", numpy_naive_decay
    if name == "numba":
        return "peer", "@njit(parallel=True) prange, k rounds in a register", numba_decay()
    raise KeyError(name)


DECAY_IMPLS = ["floor", "cpp-raw", "numpy-raw", "numpy-naive", "numba"]


def check_decay(fn, k: int) -> dict:
    from peers import SPECIAL_W
    rng = np.random.default_rng(99)
    w = rng.random(1 << 16, dtype=np.float32)
    w[:SPECIAL_W.size] = SPECIAL_W
    expected = w.copy()
    backends.get("numpy").decay(expected, PARAMS.decay, k)
    got = w.copy()
    fn(got, k)
    return _verdict(w, got, expected)
