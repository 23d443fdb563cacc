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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction

import numpy as np

__all__ = ["DEFAULT_EPS", "Metrics", "PopulationStats", "Health", "compute", "health",
           "inversion_ratio"]

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
    if not 0.0 <= eps < 0.5:  # NaN fails too; from 0.5 on, a weight would count twice
        raise ValueError(f"eps must lie in [0, 0.5), got {eps!r}")
    xp = backend.xp
    sums = np.asarray(backend.exact_sums(w, labels))
    reinforced, nonfinite_r = _population(sums[1])
    punished, nonfinite_p = _population(sums[0])
    nonfinite = nonfinite_r + nonfinite_p
    if nonfinite or not reinforced.count or not punished.count:
        separation = math.nan
    else:
        separation = float(reinforced.exact_mean - punished.exact_mean)
    lab = xp.asarray(labels).astype(bool)
    ratio = math.nan if nonfinite else inversion_ratio(w[lab], w[~lab], xp)
    lo = np.float32(eps)
    hi = np.float32(1) - lo
    saturated = int(xp.count_nonzero(w <= lo)) + int(xp.count_nonzero(w >= hi))
    n = int(w.size)
    return Metrics(
        n=n, separation=separation, inversion_ratio=ratio,
        saturation=saturated / n if n else math.nan,
        reinforced=reinforced.public(), punished=punished.public(),
        min=float(xp.min(w)) if n else math.nan, max=float(xp.max(w)) if n else math.nan,
        nonfinite=nonfinite, eps=float(eps))


def inversion_ratio(reinforced, punished, xp=np) -> float:
    """Exact P(r > p) + P(r == p)/2 for r from ``reinforced`` and p from ``punished``."""
    r = xp.sort(xp.asarray(reinforced).reshape(-1))
    p = xp.sort(xp.asarray(punished).reshape(-1))
    nr, np_ = int(r.size), int(p.size)
    if nr == 0 or np_ == 0:
        return math.nan
    new_value = xp.concatenate((xp.ones(1, dtype=bool), p[1:] != p[:-1]))
    values = p[new_value]
    counts = xp.diff(xp.concatenate((xp.nonzero(new_value)[0], xp.asarray([np_]))))
    below_or_equal = xp.searchsorted(r, values, side="right")
    below = xp.searchsorted(r, values, side="left")
    # 2U = sum over p of 2 * #(r > p) + #(r == p): an integer, at most 2 |R| |P| < 2^63.
    twice_u = int(xp.sum(counts.astype(xp.int64) * (2 * (nr - below_or_equal) + (below_or_equal - below))))
    return twice_u / (2 * nr * np_)  # int / int: correctly rounded


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
