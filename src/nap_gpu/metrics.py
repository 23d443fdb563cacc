"""Population metrics (DESIGN.md §3), written once for every backend.

Every number here is exact or correctly rounded, so it is the same on every backend and does
not depend on summation order or thread count:

* counts, means, standard deviations and the separation come from ``exact_sums``: integer
  sums of float32 significands grouped by exponent (a backend operation), combined with
  Python's exact rationals and rounded once to float64 at the end;
* the inversion ratio is the Mann-Whitney U statistic divided by |R|·|P| (the ROC AUC of w
  for R vs P, ties counted one half), counted exactly in integers from sorted populations:
  O(n log n), and cheap with heavy ties since each distinct P value is searched once;
* saturation counts weights within ``eps`` of 0 or 1 (float32 comparisons).

``compute`` is ``combine(summarize(...))``: ``summarize`` reduces weights where they live to a
``Summary`` (the integer bins, each label's distinct weights with counts, saturation and
extremes) and ``merge`` adds summaries exactly, so a sharded population
(``nap_gpu.sharded``) gets its metrics from the same ``combine``, equal to the last bit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction

import numpy as np

from .backends import _xp

__all__ = ["DEFAULT_EPS", "Metrics", "PopulationStats", "Health", "Summary", "combine",
           "compute", "health", "inversion_ratio", "merge", "summarize"]

#: Saturation tolerance: with the default decay 0.02, a reinforced memory plateaus at
#: 1 - 0.02, which therefore counts as saturated (float32 comparison, inclusive).
DEFAULT_EPS = 0.02

_SCALE = 149  # 2^-149 is the float32 quantum: every float32 is an integer times it


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

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Health:
    """The health verdict of DESIGN.md §3: ``ok`` and the rules that failed, in words."""

    ok: bool
    failures: tuple[str, ...] = field(default_factory=tuple)


def compute(w, labels: np.ndarray, backend, *, eps: float = DEFAULT_EPS) -> Metrics:
    """Metrics of weights ``w`` (an array of ``backend``) for uint8 ``labels`` (1 = R, 0 = P)."""
    return combine(summarize(w, labels, backend, eps=eps), eps=eps, xp=backend.xp)


@dataclass(frozen=True)
class Summary:
    """What one part of a population contributes to its metrics, in a form that merges
    exactly (``merge``): so a population split into parts, anywhere, gives the same numbers.

    ``sums`` are ``exact_sums``' integer bins (2, 512, 4); ``reinforced`` and ``punished``
    each label's sorted distinct weights and how often each occurs (empty when a weight is
    not finite: the inversion ratio is then NaN); ``saturated`` counts weights within eps of
    0 or 1; ``min``/``max`` are NaN when a weight is NaN (or the part is empty).
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
        def host(pair):
            values, counts = (np.asarray(_xp._to_host(a)) for a in pair)
            return values, counts.astype(np.min_scalar_type(int(counts.max(initial=0))))
        return dataclasses.replace(self, reinforced=host(self.reinforced),
                                   punished=host(self.punished))


def summarize(w, labels: np.ndarray, backend, *, eps: float = DEFAULT_EPS) -> Summary:
    """The mergeable summary of weights ``w`` for uint8 ``labels``, computed where they live."""
    _check_eps(eps)
    xp = backend.xp
    sums = np.asarray(backend.exact_sums(w, labels))
    lab = xp.asarray(labels).astype(bool)
    if _nonfinite(sums):  # the ratio is NaN: skip the sorts
        reinforced = punished = (xp.zeros(0, dtype=w.dtype), xp.zeros(0, dtype=xp.int64))
    else:
        reinforced = _distinct(xp.sort(w[lab]), xp)
        punished = _distinct(xp.sort(w[~lab]), xp)
    lo = np.float32(eps)
    hi = np.float32(1) - lo
    saturated = int(xp.count_nonzero(w <= lo)) + int(xp.count_nonzero(w >= hi))
    n = int(w.size)
    return Summary(n=n, sums=sums, reinforced=reinforced, punished=punished,
                   saturated=saturated, min=float(xp.min(w)) if n else math.nan,
                   max=float(xp.max(w)) if n else math.nan)


def merge(parts) -> Summary:
    """One host summary of a population from the summaries of its parts: integer bins and
    counts add, distinct values merge, extremes take the extreme (NaN if any part has NaN)."""
    parts = [p.on_host() for p in parts]
    n = sum(p.n for p in parts)
    present = [p for p in parts if p.n]

    def extreme(pick, field):
        return float(pick([getattr(p, field) for p in present])) if present else math.nan
    return Summary(
        n=n, sums=sum((p.sums for p in parts), np.zeros((2, 512, 4), np.uint64)),
        reinforced=_merge_distinct([p.reinforced for p in parts]),
        punished=_merge_distinct([p.punished for p in parts]),
        saturated=sum(p.saturated for p in parts),
        min=extreme(np.min, "min"), max=extreme(np.max, "max"))  # np.min/max propagate NaN


def combine(summary: Summary, *, eps: float = DEFAULT_EPS, xp=np) -> Metrics:
    """The metrics of the population ``summary`` describes (its arrays in namespace ``xp``)."""
    _check_eps(eps)
    reinforced, nonfinite_r = _population(summary.sums[1])
    punished, nonfinite_p = _population(summary.sums[0])
    nonfinite = nonfinite_r + nonfinite_p
    if nonfinite or not reinforced.count or not punished.count:
        separation = math.nan
    else:
        separation = float(reinforced.exact_mean - punished.exact_mean)
    ratio = math.nan if nonfinite else _ratio(summary.reinforced, summary.punished, xp)
    n = summary.n
    return Metrics(
        n=n, separation=separation, inversion_ratio=ratio,
        saturation=summary.saturated / n if n else math.nan,
        reinforced=reinforced.public(), punished=punished.public(),
        min=summary.min, max=summary.max, nonfinite=nonfinite, eps=float(eps))


def inversion_ratio(reinforced, punished, xp=np) -> float:
    """Exact P(r > p) + P(r == p)/2 for r from ``reinforced`` and p from ``punished``."""
    r = xp.sort(xp.asarray(reinforced).reshape(-1))
    p = xp.sort(xp.asarray(punished).reshape(-1))
    return _ratio(_distinct(r, xp), _distinct(p, xp), xp)


def _check_eps(eps: float) -> None:
    if not 0.0 <= eps < 0.5:  # NaN fails too; from 0.5 on, a weight would count twice
        raise ValueError(f"eps must lie in [0, 0.5), got {eps!r}")


def _run_starts(sorted_values, xp=np):
    """Where each run of equal values begins in a non-empty sorted array."""
    new_value = xp.concatenate((xp.ones(1, dtype=bool), sorted_values[1:] != sorted_values[:-1]))
    return xp.nonzero(new_value)[0]


def _distinct(sorted_values, xp=np) -> tuple:
    """(distinct values, int64 counts) of a sorted array: heavy ties make it small."""
    size = int(sorted_values.size)
    if size == 0:
        return sorted_values, xp.zeros(0, dtype=xp.int64)
    starts = _run_starts(sorted_values, xp)
    counts = xp.diff(xp.concatenate((starts, xp.asarray([size], dtype=starts.dtype))))
    return sorted_values[starts], counts.astype(xp.int64)


def _merge_distinct(pairs) -> tuple:
    """The (distinct values, counts) of the union of host (distinct values, counts) pairs."""
    values = np.concatenate([v for v, _ in pairs])
    counts = np.concatenate([c for _, c in pairs]).astype(np.int64)
    if len(pairs) == 1 or values.size == 0:
        return values, counts
    order = np.argsort(values, kind="stable")
    values, counts = values[order], counts[order]
    starts = _run_starts(values)
    return values[starts], np.add.reduceat(counts, starts)


def _ratio(reinforced: tuple, punished: tuple, xp=np) -> float:
    """The inversion ratio from each population's (distinct values, counts)."""
    r_values, r_counts = reinforced
    p_values, p_counts = punished
    if r_values.size == 0 or p_values.size == 0:
        return math.nan
    # cumulative[i]: R weights among the first i distinct values, so indexing it with
    # searchsorted right/left gives #(r <= p) and #(r < p) for each distinct p.
    cumulative = xp.concatenate((xp.zeros(1, dtype=xp.int64), xp.cumsum(r_counts)))
    nr, np_ = int(cumulative[-1]), int(xp.sum(p_counts))
    below_or_equal = cumulative[xp.searchsorted(r_values, p_values, side="right")]
    below = cumulative[xp.searchsorted(r_values, p_values, side="left")]
    # 2U = sum over p of 2 * #(r > p) + #(r == p): an integer, at most 2 |R| |P| < 2^63.
    twice_u = int(xp.sum(p_counts * (2 * (nr - below_or_equal) + (below_or_equal - below))))
    return twice_u / (2 * nr * np_)  # int / int: correctly rounded


def _nonfinite(sums: np.ndarray) -> int:
    """NaN and infinite weights counted in ``exact_sums`` bins (biased exponent 0xFF)."""
    return int(sums[:, 0x0FF, 0].sum() + sums[:, 0x1FF, 0].sum())


def health(m: Metrics, iteration: int, *, warmup: int = 10, settle: int = 50,
           min_separation: float = 0.2, min_inversion: float = 0.9) -> Health:
    """DESIGN.md §3 rules: no NaN, weights in [0, 1], separation > 0.2 after ``warmup``
    iterations, inversion ratio > 0.9 after ``settle`` iterations."""
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
