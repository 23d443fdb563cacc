"""Population metrics (docs/law.md §3), written once for every backend.

Every number here is exact or correctly rounded, so it is the same on every backend and does
not depend on summation order or thread count:

* counts, means, standard deviations and the separation come from ``exact_sums``: integer
  sums of float32 significands grouped by exponent (a backend operation), combined with
  Python's exact rationals and rounded once to float64 at the end;
* the inversion ratio is the Mann-Whitney U statistic divided by ``|R|·|P|`` (the ROC AUC of w
  for R vs P, ties counted one half), counted exactly in integers. The C++ backend counts
  2U in O(n) without sorting (``rank_sums``: a histogram of the keys' top 16 bits, and the
  bins holding both labels ranked apart, cpp/src/ranks.cpp); a device bins the keys the same
  way (``rank_bins``) and sorts only the mixed bins' keys (``_binned_rank_sums``); NumPy sorts
  each label's keys, O(n log n) (``summarize``), cheap with heavy ties since each distinct P
  value is searched once, the sum of products behind U formed in 24-bit pieces
  (``_dot_partials``), exact at any size. All give the same integer;
* saturation counts weights within ``eps`` of 0 or 1 (w <= float32(eps) or
  w >= 1 - float32(eps), the float32 comparisons, made on integer keys).

Weights are never compared as floats through ``xp``. CuPy compiles its own elementwise and
reduction kernels with ``-ftz=true``: there float32 ``<``, ``==``, ``!=``, min/max and
searchsorted flush subnormals to zero (two different subnormals compare equal, a subnormal
equals 0). Every comparison is therefore made on ``_keys``: the float32 bits mapped to uint32
in the same order as the values (``-0.0`` and ``+0.0`` share a key), so sorting, distinct
values, searchsorted, saturation and the extremes are integer operations on every backend.

``compute`` is ``combine(summarize(...))``: ``summarize`` reduces weights where they live to a
``Summary`` (the integer bins, each label's distinct weights with counts, saturation and
extremes) and ``merge`` adds summaries exactly, so a sharded population
(``nap_gpu.sharded``) gets its metrics from the same ``combine``, equal to the last bit.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from .backends import _xp

if TYPE_CHECKING:
    from ._types import ArrayInput, BackendArray

__all__ = ["DEFAULT_EPS", "Metrics", "PopulationStats", "Health", "Summary", "combine",
           "compute", "health", "inversion_ratio", "merge", "summarize"]

#: Saturation tolerance: with the default decay 0.02, a reinforced memory plateaus at
#: 1 - 0.02, which therefore counts as saturated (float32 comparison, inclusive).
DEFAULT_EPS = 0.02

_SCALE = 149  # 2^-149 is the float32 quantum: every float32 is an integer times it

# Keys (``_keys``): finite and infinite weights have keys in [_KEY_NEG_INF, _KEY_POS_INF];
# NaNs lie outside (sign set: below, sign clear: above), so the extreme keys tell NaN apart.
_KEY_NEG_INF = 0x007FFFFF
_KEY_POS_INF = 0xFF800000
_KEY_NEG_ZERO = 0x7FFFFFFF   # -0.0 before it is turned into +0.0's key

# The exact sum of products behind the inversion ratio (``_dot_partials``): factors below
# 2^48 split into 24-bit halves give partial products below 2^48 (cross terms, two of them
# added, below 2^49), so a chunk of 2^14 of them sums below 2^63 in uint64.
_DOT_LIMIT = 1 << 48
_SUM_CHUNK = 1 << 14
#: Distinct P values per pass of ``_ratio``: bounds its temporaries (a few arrays of this
#: many int64/uint64) on a device holding billions of weights.
_RATIO_BLOCK = 1 << 24


@dataclass(frozen=True)
class PopulationStats:
    """Count, mean and standard deviation (population, ddof=0) of one population's weights."""

    count: int
    mean: float
    std: float


@dataclass(frozen=True)
class Metrics:
    """The monitoring metrics of one population of weights.

    ``separation`` is mean(w[R]) - mean(w[P]); ``inversion_ratio`` the probability that a
    random R memory outranks a random P memory (ties one half); ``saturation`` the fraction of
    all weights within ``eps`` of 0 or 1; ``nonfinite`` counts NaN/inf weights (health fails).
    Undefined values (an empty population, non-finite weights) are NaN.
    """

    n: int
    separation: float
    inversion_ratio: float
    saturation: float
    reinforced: PopulationStats
    punished: PopulationStats
    min: float
    max: float
    nonfinite: int
    eps: float = DEFAULT_EPS

    def as_dict(self) -> dict[str, Any]:
        """The metrics as a plain dict (``reinforced``/``punished`` as nested dicts)."""
        return asdict(self)


@dataclass(frozen=True)
class Health:
    """The health verdict of docs/law.md §3: ``ok`` and the rules that failed, in words."""

    ok: bool
    failures: tuple[str, ...] = field(default_factory=tuple)


def compute(w: BackendArray, labels: BackendArray, backend: ModuleType, *,
            eps: float = DEFAULT_EPS) -> Metrics:
    """Metrics of weights ``w`` (an array of ``backend``) for uint8 ``labels`` (1 = R, 0 = P).

    The C++ core (``rank_sums``) and a device (``rank_bins``) count the inversion ratio's
    pairs from a histogram of the keys, sorting only the weights of bins that hold both
    labels; NumPy sorts them all (``summarize``). All count the same integers exactly, so the
    metrics are the same to the last bit."""
    rank_sums = _rank_sums_of(backend)
    if rank_sums is None or w.size == 0:
        return combine(summarize(w, labels, backend, eps=eps), eps=eps, xp=backend.xp)
    check_eps(eps)
    twice_u, nr, np_, saturated, kmin, kmax, sums = rank_sums(w, labels, *_saturation_keys(eps))
    nan = kmin < _KEY_NEG_INF or kmax > _KEY_POS_INF
    ratio = math.nan if _nonfinite(sums) or not nr or not np_ else _exact_ratio(twice_u, nr, np_)
    return _assemble(int(w.size), sums, ratio, saturated, math.nan if nan else _key_value(kmin),
                     math.nan if nan else _key_value(kmax), eps)


def _rank_sums_of(backend: ModuleType) -> Callable[..., tuple] | None:
    """``rank_sums(w, labels, low_key, high_key)`` of ``backend``: the C++ core's, or one made
    from a device's rank histogram, or None (sort instead)."""
    if hasattr(backend, "rank_sums"):
        return backend.rank_sums
    if hasattr(backend, "rank_bins"):
        return functools.partial(_binned_rank_sums, backend)
    return None


def _binned_rank_sums(backend: ModuleType, w: BackendArray, labels: BackendArray,
                      low_key: int, high_key: int) -> tuple:
    """The C++ core's ``rank_sums`` tuple (2U, |R|, |P|, saturated, least key, greatest key,
    exact_sums' bins) from a device's histogram of the keys' top 16 bits (``rank_bins``), as
    cpp/src/ranks.cpp counts it: pairs in different bins are ordered by the bins (prefix
    sums); the weights of mixed bins (holding both labels) are gathered and ranked by sorting
    them alone, and their pairs across bins, counted there too, are taken off again."""
    xp = backend.xp
    ranks, sums, saturated, lowest, highest = backend.rank_bins(w, labels, low_key, high_key)
    mixed = (ranks[0] > 0) & (ranks[1] > 0)
    in_mixed = ranks * mixed  # the counts of the mixed bins alone, (P, R) rows
    nr, np_, mixed_p, mixed_r, *partials = _gather(xp, [
        ranks[1].sum(), ranks[0].sum(), in_mixed[0].sum(), in_mixed[1].sum(),
        _across_bins(ranks, xp), _across_bins(in_mixed, xp)])
    twice_u = _dot_total(partials[:6]) - _dot_total(partials[6:])
    if mixed_p and not _nonfinite(sums):  # (a NaN makes the ratio NaN: no need to rank)
        starts = xp.cumsum(in_mixed, axis=1) - in_mixed  # each bin's run in the gathered keys
        keys_p, keys_r = backend.gather_mixed(w, labels, mixed.astype(xp.uint8), starts,
                                              (mixed_p, mixed_r))
        twice_u += _twice_u(_distinct(xp.sort(keys_r), xp), _distinct(xp.sort(keys_p), xp),
                            xp)[0]
    return twice_u, nr, np_, saturated, lowest, highest, sums


def _across_bins(ranks: BackendArray, xp: ModuleType) -> BackendArray:
    """``_dot_partials`` of 2U over pairs in different bins of a (P, R) histogram: each P
    weight outranked by every R weight of a higher bin (2 each)."""
    punished, reinforced = ranks[0], ranks[1]
    r_above = reinforced.sum() - xp.cumsum(reinforced)  # R weights in the bins above each bin
    return _dot_partials(punished, np.uint64(2) * r_above, xp)


@dataclass(frozen=True)
class Summary:
    """What one part of a population contributes to its metrics, in a form that merges
    exactly (``merge``): so a population split into parts, anywhere, gives the same numbers.

    ``sums`` are ``exact_sums``' integer bins (2, 512, 4); ``reinforced`` and ``punished``
    each label's distinct weights and how often each occurs, as (sorted uint32 keys, int64
    counts): the keys are ``_keys`` of the weights, in the weights' order, so they sort,
    compare and merge as integers (``_key_value`` turns one back into its float32); they
    are empty when a weight is not finite (the inversion ratio is then NaN). ``saturated``
    counts weights within eps of 0 or 1; ``min``/``max`` are NaN when a weight is NaN (or
    the part is empty), and never -0.0 (it has +0.0's key).
    """

    n: int
    sums: np.ndarray
    reinforced: tuple
    punished: tuple
    saturated: int
    min: float
    max: float

    def on_host(self) -> Summary:
        """The same summary in NumPy arrays, to send elsewhere: the counts in the narrowest
        unsigned type that holds them (one byte each when there are no ties)."""
        def host(pair: tuple[Any, Any]) -> tuple[np.ndarray, np.ndarray]:
            values, counts = (np.asarray(_xp._to_host(a)) for a in pair)
            return values, counts.astype(np.min_scalar_type(int(counts.max(initial=0))))
        return dataclasses.replace(self, reinforced=host(self.reinforced),
                                   punished=host(self.punished))


def summarize(w: BackendArray, labels: BackendArray, backend: ModuleType, *,
              eps: float = DEFAULT_EPS) -> Summary:
    """The mergeable summary of weights ``w`` for uint8 ``labels``, computed where they live.

    Only integer operations touch the weights (their bits, through ``exact_sums`` and
    ``_keys``); the extreme keys and the saturated counts come to the host in one transfer."""
    check_eps(eps)
    xp = backend.xp
    sums = np.asarray(backend.exact_sums(w, labels))
    n = int(w.size)
    if n == 0:
        empty = (xp.zeros(0, dtype=xp.uint32), xp.zeros(0, dtype=xp.int64))
        return Summary(n=0, sums=sums, reinforced=empty, punished=empty, saturated=0,
                       min=math.nan, max=math.nan)
    keys = _keys(w, xp)
    lab = xp.asarray(labels).astype(bool)
    if _nonfinite(sums):  # the ratio is NaN: skip the sorts
        reinforced = punished = (xp.zeros(0, dtype=xp.uint32), xp.zeros(0, dtype=xp.int64))
    else:
        reinforced = _distinct(xp.sort(keys[lab]), xp)
        punished = _distinct(xp.sort(keys[~lab]), xp)
    lo, hi = _saturation_keys(eps)
    # w <= lo: keys from -inf's up to lo's; w >= hi: from hi's up to +inf's (NaN: neither)
    low = xp.count_nonzero((keys >= _KEY_NEG_INF) & (keys <= lo))
    high = xp.count_nonzero((keys >= hi) & (keys <= _KEY_POS_INF))
    kmin, kmax, low, high = _gather(xp, [xp.min(keys), xp.max(keys), low, high])
    nan = kmin < _KEY_NEG_INF or kmax > _KEY_POS_INF  # a NaN's key lies beyond an infinity's
    return Summary(n=n, sums=sums, reinforced=reinforced, punished=punished,
                   saturated=low + high, min=math.nan if nan else _key_value(kmin),
                   max=math.nan if nan else _key_value(kmax))


def merge(parts: Iterable[Summary]) -> Summary:
    """One host summary of a population from the summaries of its parts: integer bins and
    counts add, distinct values merge, extremes take the extreme (NaN if any part has NaN)."""
    parts = [p.on_host() for p in parts]
    n = sum(p.n for p in parts)
    present = [p for p in parts if p.n]

    def extreme(pick: Callable[[list[float]], Any], field: str) -> float:
        return float(pick([getattr(p, field) for p in present])) if present else math.nan
    return Summary(
        n=n, sums=sum((p.sums for p in parts), np.zeros((2, 512, 4), np.uint64)),
        reinforced=_merge_distinct([p.reinforced for p in parts]),
        punished=_merge_distinct([p.punished for p in parts]),
        saturated=sum(p.saturated for p in parts),
        min=extreme(np.min, "min"), max=extreme(np.max, "max"))  # np.min/max propagate NaN


def combine(summary: Summary, *, eps: float = DEFAULT_EPS, xp: ModuleType = np) -> Metrics:
    """The metrics of the population ``summary`` describes (its arrays in namespace ``xp``)."""
    check_eps(eps)
    ratio = math.nan if _nonfinite(summary.sums) else _ratio(summary.reinforced,
                                                              summary.punished, xp)
    return _assemble(summary.n, summary.sums, ratio, summary.saturated, summary.min,
                     summary.max, eps)


def _assemble(n: int, sums: np.ndarray, ratio: float, saturated: int, lowest: float,
              highest: float, eps: float) -> Metrics:
    """The metrics from ``exact_sums``' bins and the rank statistics."""
    reinforced, nonfinite_r = _population(sums[1])
    punished, nonfinite_p = _population(sums[0])
    nonfinite = nonfinite_r + nonfinite_p
    if nonfinite or not reinforced.count or not punished.count:
        separation = math.nan
    else:  # all finite, both populations non-empty: _population gave both exact means
        assert reinforced.exact_mean is not None and punished.exact_mean is not None
        separation = float(reinforced.exact_mean - punished.exact_mean)
    return Metrics(
        n=n, separation=separation, inversion_ratio=ratio,
        saturation=saturated / n if n else math.nan,
        reinforced=reinforced.public(), punished=punished.public(),
        min=lowest, max=highest, nonfinite=nonfinite, eps=float(eps))


def inversion_ratio(reinforced: ArrayInput, punished: ArrayInput, xp: ModuleType = np) -> float:
    """Exact P(r > p) + P(r == p)/2 for r from ``reinforced`` and p from ``punished``
    (float32 weights; other dtypes are converted to float32 on the host). NaN when a
    population is empty or holds a NaN; infinities rank as the extremes they are.

    Examples
    --------
    >>> from nap_gpu import metrics
    >>> metrics.inversion_ratio([0.9, 0.5], [0.5, 0.1])  # (1 + 1 + 0.5 + 1) / 4
    0.875
    """
    r = xp.sort(_keys(_float32(reinforced, xp), xp))
    p = xp.sort(_keys(_float32(punished, xp), xp))
    if r.size == 0 or p.size == 0:
        return math.nan
    r_first, r_last, p_first, p_last = _gather(xp, [r[0], r[-1], p[0], p[-1]])
    if min(r_first, p_first) < _KEY_NEG_INF or max(r_last, p_last) > _KEY_POS_INF:
        return math.nan  # a NaN weight (its key lies beyond an infinity's)
    return _ratio(_distinct(r, xp), _distinct(p, xp), xp)


def _float32(x: ArrayInput, xp: ModuleType) -> BackendArray:
    """x as a flat float32 array of namespace ``xp``, any conversion made on the host (a
    device conversion to float32 may flush subnormal results to zero)."""
    a = xp.asarray(x)
    if a.dtype != np.float32:
        a = xp.asarray(np.asarray(_xp._to_host(a), dtype=np.float32))
    return a.reshape(-1)


def _keys(w: BackendArray, xp: ModuleType = np) -> BackendArray:
    """uint32 keys of float32 weights that order as the weights do: a sign bit set flips
    every bit, a clear one only the sign bit, and -0.0 gets +0.0's key (so equal weights have
    equal keys). NaNs come out beyond the infinities. Integer operations only."""
    bits = xp.ascontiguousarray(w).reshape(-1).view(xp.uint32)
    keys = bits >> 31                  # 1 where the sign is set
    keys *= np.uint32(0x7FFFFFFF)
    keys |= np.uint32(0x80000000)      # the mask: every bit, or only the sign bit
    keys ^= bits
    keys += keys == np.uint32(_KEY_NEG_ZERO)  # -0.0 -> +0.0's key, the next one up
    return keys


def _key_of(x: float | np.float32) -> int:
    """The key of one float32 (a host scalar): ``_keys`` in Python integers."""
    bits = int(np.asarray(x, dtype=np.float32).reshape(1).view(np.uint32)[0])
    if bits == 0x80000000:
        bits = 0
    return (~bits & 0xFFFFFFFF) if bits >> 31 else bits | 0x80000000


def _key_value(key: int) -> float:
    """The float32 (as a float) whose key is ``key``: ``_keys`` undone."""
    bits = key & 0x7FFFFFFF if key >> 31 else ~key & 0xFFFFFFFF
    return float(np.asarray([bits], dtype=np.uint32).view(np.float32)[0])


def _saturation_keys(eps: float) -> tuple[int, int]:
    """Keys of float32(eps) and 1 - float32(eps) (float32 arithmetic, as the law's)."""
    lo = np.float32(eps)
    return _key_of(lo), _key_of(np.float32(1) - lo)


def _gather(xp: ModuleType, values: Sequence[Any]) -> list[int]:
    """Device scalars and small arrays (non-negative integers below 2^63) brought to the host
    as Python ints in one transfer."""
    stacked = xp.concatenate([xp.asarray(v).astype(xp.uint64).reshape(-1) for v in values])
    return [int(v) for v in np.asarray(_xp._to_host(stacked)).tolist()]


def check_eps(eps: float) -> None:
    """Refuse a saturation tolerance outside [0, 0.5) (ValueError): what `summarize` and
    `combine` check, for callers that validate ``eps`` before any work (``ShardedEngine``)."""
    if not 0.0 <= eps < 0.5:  # NaN fails too; from 0.5 on, a weight would count twice
        raise ValueError(f"eps must lie in [0, 0.5), got {eps!r}")


def _run_starts(sorted_values: BackendArray, xp: ModuleType = np) -> BackendArray:
    """Where each run of equal values begins in a non-empty sorted array."""
    new_value = xp.concatenate((xp.ones(1, dtype=bool), sorted_values[1:] != sorted_values[:-1]))
    return xp.nonzero(new_value)[0]


def _distinct(sorted_values: BackendArray, xp: ModuleType = np) -> tuple:
    """(distinct values, int64 counts) of a sorted integer (key) array: heavy ties make it
    small."""
    size = int(sorted_values.size)
    if size == 0:
        return sorted_values, xp.zeros(0, dtype=xp.int64)
    starts = _run_starts(sorted_values, xp)
    counts = xp.diff(xp.concatenate((starts, xp.asarray([size], dtype=starts.dtype))))
    return sorted_values[starts], counts.astype(xp.int64)


def _merge_distinct(pairs: Sequence[tuple]) -> tuple:
    """The (distinct values, counts) of the union of host (distinct values, counts) pairs."""
    values = np.concatenate([v for v, _ in pairs])
    counts = np.concatenate([c for _, c in pairs]).astype(np.int64)
    if len(pairs) == 1 or values.size == 0:
        return values, counts
    order = np.argsort(values, kind="stable")
    values, counts = values[order], counts[order]
    starts = _run_starts(values)
    return values[starts], np.add.reduceat(counts, starts)


def _ratio(reinforced: tuple, punished: tuple, xp: ModuleType = np) -> float:
    """The inversion ratio from each population's (sorted distinct keys, counts), exact at
    any size: the arithmetic stays in uint64 where the keys live, and one device->host
    transfer brings the totals and ``_dot_partials``' sums. Any sorted distinct integer keys
    do (only their order counts)."""
    if reinforced[0].size == 0 or punished[0].size == 0:
        return math.nan
    return _exact_ratio(*_twice_u(reinforced, punished, xp))


def _twice_u(reinforced: tuple, punished: tuple, xp: ModuleType = np) -> tuple[int, int, int]:
    """(2U, |R|, |P|) as Python ints from each population's (sorted distinct keys, counts)."""
    r_keys, r_counts = reinforced
    p_keys, p_counts = punished
    # cumulative[i]: R weights among the first i distinct keys, so indexing it with
    # searchsorted right/left gives #(r <= p) and #(r < p) for each distinct p.
    cumulative = xp.concatenate((xp.zeros(1, dtype=xp.int64),
                                 xp.cumsum(r_counts.astype(xp.int64))))
    twice_nr = 2 * cumulative[-1]
    p_counts = p_counts.astype(xp.uint64)
    partials = xp.zeros(6, dtype=xp.uint64)
    for lo in range(0, int(p_keys.size), _RATIO_BLOCK):
        block = p_keys[lo:lo + _RATIO_BLOCK]
        below_or_equal = cumulative[xp.searchsorted(r_keys, block, side="right")]
        below = cumulative[xp.searchsorted(r_keys, block, side="left")]
        # 2 #(r > p) + #(r == p) = 2|R| - #(r <= p) - #(r < p), in [0, 2|R|]
        factor = (twice_nr - below_or_equal - below).astype(xp.uint64)
        partials += _dot_partials(p_counts[lo:lo + _RATIO_BLOCK], factor, xp)
    nr, np_, *sums = _gather(xp, [cumulative[-1], xp.sum(p_counts), partials])
    # 2U = sum over p of count(p) * (2 #(r > p) + #(r == p)): an integer, at most 2 |R| |P|
    return _dot_total(sums), nr, np_


def _exact_ratio(twice_u: int, nr: int, np_: int) -> float:
    """U / (|R| |P|), correctly rounded (int / int), within the range ``_ratio`` is exact in."""
    if 2 * nr >= _DOT_LIMIT or np_ >= _DOT_LIMIT:
        raise OverflowError(f"populations of {nr} and {np_} weights exceed the exact "
                            f"inversion ratio's range (2|R| and |P| below 2^48)")
    return twice_u / (2 * nr * np_)


def _dot_partials(x: BackendArray, y: BackendArray, xp: ModuleType = np,
                  chunk: int = _SUM_CHUNK) -> BackendArray:
    """The sum of x * y for uint64 arrays x, y of integers below 2^48, as 6 uint64 that
    ``_dot_total`` adds exactly on the host (no transfer here).

    With x = x1 2^24 + x0 and y = y1 2^24 + y0 (24-bit halves), x y is t0 + t1 2^24 + t2 2^48
    for t0 = x0 y0, t1 = x0 y1 + x1 y0, t2 = x1 y1, each below 2^49. Each t is summed over
    chunks of ``chunk`` terms (below 2^14 * 2^49 = 2^63 by default), and the chunk sums'
    low and high 32-bit halves are summed apart: exact while there are fewer than 2^31
    chunks, i.e. for any array that fits in memory."""
    m24, m32 = np.uint64(0xFFFFFF), np.uint64(0xFFFFFFFF)
    x0, x1 = x & m24, x >> np.uint64(24)
    y0, y1 = y & m24, y >> np.uint64(24)
    out = []
    for k in range(3):  # one t at a time: fewer temporaries
        t = x0 * y0 if k == 0 else x0 * y1 + x1 * y0 if k == 1 else x1 * y1
        full = int(t.size) // chunk * chunk
        sums = t[:full].reshape(full // chunk, chunk).sum(axis=1, dtype=xp.uint64)
        rest = t[full:].sum(dtype=xp.uint64)  # fewer than ``chunk`` terms
        out.append((sums & m32).sum(dtype=xp.uint64) + (rest & m32))
        out.append((sums >> np.uint64(32)).sum(dtype=xp.uint64) + (rest >> np.uint64(32)))
    return xp.stack(out)


def _dot_total(sums: Iterable[Any]) -> int:
    """The exact Python integer of ``_dot_partials``' six (host) sums."""
    t0_lo, t0_hi, t1_lo, t1_hi, t2_lo, t2_hi = (int(v) for v in sums)
    return (((t0_hi << 32) + t0_lo) + (((t1_hi << 32) + t1_lo) << 24)
            + (((t2_hi << 32) + t2_lo) << 48))


def _exact_dot(x: BackendArray, y: BackendArray, xp: ModuleType = np, *, chunk: int = _SUM_CHUNK,
               block: int = _RATIO_BLOCK) -> int:
    """sum(x * y) exactly, for equal-length arrays of integers in [0, 2^48): blocks of
    ``block`` through ``_dot_partials`` where the arrays live, then one transfer."""
    x, y = xp.asarray(x).astype(xp.uint64), xp.asarray(y).astype(xp.uint64)
    partials = xp.zeros(6, dtype=xp.uint64)
    for lo in range(0, int(x.size), block):
        partials += _dot_partials(x[lo:lo + block], y[lo:lo + block], xp, chunk)
    return _dot_total(_gather(xp, [partials]))


def _nonfinite(sums: np.ndarray) -> int:
    """NaN and infinite weights counted in ``exact_sums`` bins (biased exponent 0xFF)."""
    return int(sums[:, 0x0FF, 0].sum() + sums[:, 0x1FF, 0].sum())


def health(m: Metrics, iteration: int, *, warmup: int = 10, settle: int = 50,
           min_separation: float = 0.2, min_inversion: float = 0.9) -> Health:
    """docs/law.md §3 rules: no NaN, weights in [0, 1], separation > 0.2 after ``warmup``
    iterations, inversion ratio > 0.9 after ``settle`` iterations.

    Parameters
    ----------
    m : Metrics
        A population's metrics (``Engine.metrics``).
    iteration : int
        Where the population is: the rules due at it are checked.
    warmup, settle : int
        The iterations from which the separation and the inversion-ratio rules apply.
    min_separation, min_inversion : float
        The rules' thresholds.

    Returns
    -------
    Health
        ``ok``, and each failed rule in words.

    Examples
    --------
    >>> import nap_gpu as nap
    >>> eng = nap.Engine(4, init=[0.5, 0.5, 0.5, 0.5])
    >>> m = eng.metrics([1, 1, 0, 0])
    >>> nap.health(m, iteration=5)      # before the warm-up: only the weights are checked
    Health(ok=True, failures=())
    >>> nap.health(m, iteration=10).failures
    ('separation 0.0000 <= 0.2 after warm-up',)
    """
    failures = []
    if m.nonfinite:
        failures.append(f"{m.nonfinite} non-finite weights")
    elif m.n and not (m.min >= 0.0 and m.max <= 1.0):
        failures.append(f"weights outside [0, 1]: min {m.min}, max {m.max}")
    if iteration >= warmup and not m.separation > min_separation:
        failures.append(f"separation {m.separation:.4f} <= {min_separation} after warm-up")
    if iteration >= settle and not m.inversion_ratio > min_inversion:
        failures.append(f"inversion ratio {m.inversion_ratio:.4f} <= {min_inversion} "
                        f"after {settle} iterations")
    return Health(ok=not failures, failures=tuple(failures))


@dataclass(frozen=True)
class _Exact:
    count: int
    exact_mean: Fraction | None
    exact_var: Fraction | None

    def public(self) -> PopulationStats:
        if not self.count or self.exact_mean is None:
            return PopulationStats(self.count, math.nan, math.nan)
        assert self.exact_var is not None, "_population sets the mean and variance together"
        return PopulationStats(self.count, float(self.exact_mean), _sqrt(self.exact_var))


def _sqrt(x: Fraction) -> float:
    """The float64 nearest to sqrt(x), x >= 0 exact: one rounding, not two."""
    if x <= 0:
        return 0.0
    num, den = x.numerator, x.denominator
    # Scale so the integer root has >= 56 bits: its last bit then sits below the rounding bit
    # and can carry the "inexact" (sticky) information.
    k = 60 + max(0, (den.bit_length() - num.bit_length()) // 2 + 1)
    scaled, remainder = divmod(num << (2 * k), den)
    root = math.isqrt(scaled)
    if remainder or root * root != scaled:
        root |= 1
    return float(Fraction(root, 1 << k))  # Fraction -> float rounds correctly


def _population(bins: np.ndarray) -> tuple[_Exact, int]:
    """Exact count, mean and variance from one label's (512, 4) integer sums."""
    total = total_sq = count = 0
    nonfinite = 0
    for key in (int(k) for k in np.flatnonzero(bins[:, 0])):
        c, sig, sq_hi, sq_lo = (int(v) for v in bins[key])
        exponent = key & 0xFF
        if exponent == 0xFF:
            nonfinite += c
            continue
        shift = max(exponent, 1) - 1  # value = sig * 2^(shift - 149)
        sign = -1 if key >> 8 else 1
        count += c
        total += sign * (sig << shift)
        total_sq += ((sq_hi << 24) + sq_lo) << (2 * shift)
    if not count or nonfinite:
        return _Exact(count + nonfinite, None, None), nonfinite
    mean = Fraction(total, count << _SCALE)
    var = Fraction(total_sq, count << (2 * _SCALE)) - mean * mean
    return _Exact(count, mean, var), nonfinite
