"""The NumPy backend: the law restated in array code, and the executable reference.

Runs wherever NumPy does (no compiler, no GPU). Every operation works in place on the
caller's float32 array, chunk by chunk, through preallocated scratch of ``CHUNK`` elements:
no n-sized temporary is ever allocated, and each chunk stays in cache across the law's
dozen passes.

The restatement of the law (``cpp/include/nap/law.h`` is the source) uses exact float32
identities, all checked bit for bit by the parity tests:

* ``w - lr * (1 - q) == w + lr * (q - 1)``: round-to-nearest is symmetric, so
  ``fl(q - 1) == -fl(1 - q)`` and ``fl(lr * -u) == -fl(lr * u)``, and IEEE defines ``x - y``
  as ``x + (-y)``. The select is arithmetic: ``q - (q <= gate)`` is ``q - 1`` where the
  quality punishes and ``q - 0 == q`` where it reinforces (a masked copy costs ten times more);
* ``numpy.clip(x, 0, 1)`` is the header's ``clamp_unit``: NaN passes through, and ``-0.0``
  passes too, as in the header, until ``positive_zero`` (``x + 0``) turns it into ``+0.0``.
  A ``-0.0`` can only survive a clamp when the decay is 0 (``-0 - d`` is ``-d`` otherwise),
  so the step adds 0 only then.
"""

from __future__ import annotations

import threading

import numpy as np

from ..params import Params
from . import _xp

name = "numpy"
xp = np
asarray, from_host, to_host, synchronize, read_only, device_of, narrow_quality = (
    _xp.host_asarray, _xp.host_from_host, _xp.host_to_host, _xp.host_synchronize,
    _xp.host_read_only, _xp.host_device_of, _xp.host_narrow_quality)

#: Elements per chunk: 256 Ki float32 = 1 MiB per stream, so a chunk of w, q and the scratch
#: stays in cache across the law's passes while the per-call overhead stays small.
CHUNK = 1 << 18

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_local = threading.local()


def _scratch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-thread scratch: two float32 chunks and a bool chunk, allocated once."""
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = (np.empty(CHUNK, np.float32), np.empty(CHUNK, np.float32), np.empty(CHUNK, bool))
        _local.buffers = buffers
    return buffers


def _clamp_unit(x: np.ndarray) -> None:
    np.clip(x, _ZERO, _ONE, out=x)


def _feedback_clamped(w: np.ndarray, q: np.ndarray, lr: np.float32, gate: np.float32,
                      qc: np.ndarray, t: np.ndarray) -> None:
    """w = feedback_clamped(w, q) in place (may leave -0.0); qc, t: scratch of w's length."""
    np.clip(q, _ZERO, _ONE, out=qc)       # q = clamp_unit(q)
    np.less_equal(qc, gate, out=t)        # 1.0 where q punishes, 0.0 where it reinforces
    np.subtract(qc, t, out=t)             # q - 1 == -(1 - q) exactly, or q - 0 == q
    np.multiply(t, lr, out=t)             # t = lr * q   or   -(lr * (1 - q))
    np.add(w, t, out=w)                   # w + t        or   w - lr * (1 - q)
    _clamp_unit(w)


def _decay(w: np.ndarray, d: np.float32) -> None:
    """w = decay_once(w, d) in place."""
    np.subtract(w, d, out=w)
    _clamp_unit(w)
    if d == 0:  # positive_zero: only with d == 0 can a -0.0 be left (-0 - d is -d otherwise)
        np.add(w, _ZERO, out=w)


# NaN inputs (allowed with check_finite=False) make NaN weights on every backend; NumPy would
# also warn, and a warning turned into an error would stop a call half-written.
_quiet = np.errstate(invalid="ignore")


@_quiet
def step(w: np.ndarray, q: np.ndarray, p: Params) -> None:
    """Dense step in place: feedback then decay, for every memory."""
    lr, gate, d = p.float32()
    qc, t, _ = _scratch()
    for lo in range(0, w.size, CHUNK):
        hi = min(lo + CHUNK, w.size)
        k = hi - lo
        wc = w[lo:hi]
        _feedback_clamped(wc, q[lo:hi], lr, gate, qc[:k], t[:k])
        _decay(wc, d)


def step_into(w: np.ndarray, q: np.ndarray, out: np.ndarray, p: Params) -> int:
    """The checked step written to out (w only read): -1, or q's first non-finite index
    (out then untouched). Two passes here, as ``step`` works in place chunk by chunk."""
    bad = first_nonfinite(q)
    if bad < 0:
        out[...] = w
        step(out, q, p)
    return bad


def step_scalar(w: np.ndarray, q: float, p: Params) -> None:
    """Dense step in place with one quality for every memory."""
    filled = np.full(min(CHUNK, w.size), q, np.float32)  # one chunk, not n
    for lo in range(0, w.size, CHUNK):
        hi = min(lo + CHUNK, w.size)
        step(w[lo:hi], filled[: hi - lo], p)


#: Rounds of decay(k) between two fixpoint checks (a check costs about a round): 8 at first,
#: doubling up to 64, as in the C++ core.
DECAY_FIRST_BURST, DECAY_LONGEST_BURST = 8, 64


@_quiet
def decay(w: np.ndarray, d: float, k: int) -> None:
    """Passive decay k times in place; one pass over memory (k rounds per cached chunk).

    Each weight stops at its fixpoint, as ``nap::decay_repeated`` does: a round that changes
    no bit of a weight would change none in any later round (decay_once is a function of the
    bits), so the result is that of k rounds, and any k ends, even with a decay too small to
    move a weight at all.
    """
    d32 = np.float32(d)
    if k == 0:
        return
    if d32 == 0:
        k = 1  # decay by 0 is the clamp: idempotent after one round
    for lo in range(0, w.size, CHUNK):
        _decay_chunk(w[lo:lo + CHUNK], d32, k)


def _decay_chunk(w: np.ndarray, d: np.float32, k: int) -> None:
    """k rounds of decay on w in place, each weight stopping at its fixpoint. After each burst
    of rounds the weights whose last round changed no bit are final; once they are the
    majority, the rounds go on over the others alone (gathered), so a few slow weights do not
    keep the whole chunk busy."""
    x, where = w, None  # the weights rounds still run on: w itself, or w[where] gathered
    longest = DECAY_FIRST_BURST
    while k > 0:
        burst = min(k, longest)
        longest = min(2 * longest, DECAY_LONGEST_BURST)
        k -= burst
        for _ in range(burst - 1):
            _decay(x, d)
        if k == 0:  # the last round: no check can save one
            _decay(x, d)
            break
        before = x.copy()
        _decay(x, d)
        moving = x.view(np.uint32) != before.view(np.uint32)
        count = np.count_nonzero(moving)
        if count == 0:
            break
        if count <= x.size // 2:
            if where is not None:
                w[where] = x
            where = np.flatnonzero(moving) if where is None else where[moving]
            x = x[moving]
    if where is not None:
        w[where] = x


@_quiet
def update(w: np.ndarray, ids: np.ndarray, q: np.ndarray, p: Params) -> None:
    """Sparse ordered batch in place: feedback only, each id's events in the order given.

    Events are stably sorted by id; the r-th event of every id forms round r, and a round's
    ids are distinct, so one fancy-indexed feedback applies it. Cost: O(m log m) for the sort
    plus one vectorised round per level of multiplicity (a hot id with r events means r
    rounds: the price of order without a compiled loop).
    """
    m = ids.size
    if m == 0:
        return
    lr, gate, _ = p.float32()
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    new_group = np.empty(m, bool)
    new_group[0] = True
    np.not_equal(sorted_ids[1:], sorted_ids[:-1], out=new_group[1:])
    starts = np.flatnonzero(new_group)
    rank = np.arange(m) - np.repeat(starts, np.diff(np.append(starts, m)))
    by_round = order[np.argsort(rank, kind="stable")]
    bounds = np.concatenate(([0], np.cumsum(np.bincount(rank))))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        events = by_round[lo:hi]
        idx = ids[events]
        wr = w[idx]
        _feedback_clamped(wr, q[events], lr, gate, np.empty_like(wr), np.empty_like(wr))
        w[idx] = wr + _ZERO  # positive_zero


def first_nonfinite(x: np.ndarray) -> int:
    """Index of the first NaN or infinity in x, or -1."""
    _, _, mask = _scratch()
    for lo in range(0, x.size, CHUNK):
        chunk = x[lo:lo + CHUNK]
        ok = mask[: chunk.size]
        np.isfinite(chunk, out=ok)
        if not ok.all():
            return lo + int(np.argmin(ok))
    return -1


first_bad_id = _xp.first_bad_id
exact_sums = _xp.exact_sums
