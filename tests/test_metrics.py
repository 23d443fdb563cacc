"""Monitoring metrics (docs/law.md §3) against independent oracles.

* inversion ratio: an exact brute-force O(|R||P|) count in Python Fractions (must be equal
  after one rounding: the package counts exactly) and ``sklearn.metrics.roc_auc_score``
  (floating point, so a 1e-12 tolerance);
* per-population mean, std and the separation: exact rational arithmetic on the float32
  weights, rounded once to float64 (must be equal to the last bit), and NumPy float64 and
  ``math.fsum`` (tolerance);
* saturation: a direct count; min/max/nonfinite;
* the same weights give identical metrics on every backend;
* subnormal weights (CuPy's own kernels flush them in float32 comparisons, so the metrics
  compare integer keys): every metric against exact Fractions on every backend, and on a
  NumPy stand-in whose float32 comparisons flush subnormals as CuPy's do;
* the inversion ratio's integer arithmetic beyond 2^32 memories (synthetic counts) and its
  exact sum of products, against Python integers;
* ``nap.health``: the verdict rules.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import nap_gpu as nap

# On a failure Hypothesis imports libcst (to print a patch of the failing example), and
# libcst 1.0 warns (DeprecationWarning from mypy_extensions) on import; with
# ``filterwarnings = error`` that turns the failure report into a pytest INTERNALERROR.
# Import it once here, quietly, so failures are reported as failures.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:
        pass

sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn (test extra) not installed")

PLATEAU = float(np.float32(1) - np.float32(0.02))  # 0.98 in float32: where reinforced weights settle
HYPOTHESIS = settings(max_examples=60, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])


def usable_backends() -> list[str]:
    return [name for name, reason in nap.available_backends().items() if reason is None]


def metrics_of(w, labels, backend: str = "numpy", **kwargs) -> nap.Metrics:
    w = np.asarray(w, np.float32)
    return nap.Engine(w.size, backend=backend, init=w).metrics(labels, **kwargs)


# -- exact oracles ------------------------------------------------------------------------------

def exact_auc(w, labels) -> Fraction:
    r = [Fraction(float(x)) for x, lab in zip(w, labels) if lab]
    p = [Fraction(float(x)) for x, lab in zip(w, labels) if not lab]
    twice_u = sum(2 if a > b else 1 if a == b else 0 for a in r for b in p)
    return Fraction(twice_u, 2 * len(r) * len(p))


def exact_mean_var(values) -> tuple[Fraction, Fraction]:
    """Exact mean and population variance of float32 values: each value times 2^149 is an
    integer (scaling by a power of two is exact in float64), so Python ints sum them exactly."""
    scaled = (np.asarray(values, np.float32).astype(np.float64) * 2.0 ** 149).tolist()
    ints = [int(x) for x in scaled]
    n = len(ints)
    mean = Fraction(sum(ints), n << 149)
    var = Fraction(sum(i * i for i in ints), n << 298) - mean * mean
    return mean, var


def sqrt_rounded(x: Fraction) -> float:
    """The float64 nearest to sqrt(x) (round half to even), computed in integers."""
    if x == 0:
        return 0.0
    p, q = x.numerator, x.denominator
    s = (140 - (p.bit_length() - q.bit_length())) // 2  # sqrt(x * 4^s) has ~70 bits
    num, den = (p << 2 * s, q) if s >= 0 else (p, q << -2 * s)
    whole, rem = divmod(num, den)
    r = math.isqrt(whole)
    scaled = Fraction(r) if (r * r == whole and rem == 0) else Fraction(2 * r + 1, 2)  # sticky
    return float(scaled / Fraction(2) ** s)


def check_population_stats(stats: nap.PopulationStats, values, context: str) -> None:
    values = np.asarray(values, np.float32)
    assert stats.count == values.size, context
    if values.size == 0:
        assert math.isnan(stats.mean) and math.isnan(stats.std), context
        return
    mean, var = exact_mean_var(values)
    assert stats.mean == float(mean), f"{context}: mean {stats.mean!r} != exact {float(mean)!r}"
    # within an ulp here; that it is rounded once exactly is test_std_is_rounded_once*
    assert abs(stats.std - sqrt_rounded(var)) <= math.ulp(sqrt_rounded(var)), (
        f"{context}: std {stats.std!r} vs sqrt(exact variance) {sqrt_rounded(var)!r}")
    as64 = values.astype(np.float64)
    assert stats.mean == pytest.approx(float(np.mean(as64)), rel=1e-13, abs=1e-300), context
    assert stats.std == pytest.approx(float(np.std(as64)), rel=1e-9, abs=1e-15), context
    fsum_mean = math.fsum(as64.tolist()) / values.size  # correctly rounded sum, one more rounding
    assert abs(stats.mean - fsum_mean) <= math.ulp(fsum_mean), context


def check_metrics(m: nap.Metrics, w, labels, context: str = "") -> None:
    """Every field of ``m`` against the oracles."""
    w = np.asarray(w, np.float32)
    lab = np.asarray(labels).astype(bool)
    r, p = w[lab], w[~lab]
    assert m.n == w.size
    check_population_stats(m.reinforced, r, f"{context} R")
    check_population_stats(m.punished, p, f"{context} P")
    if r.size and p.size:
        mean_r, _ = exact_mean_var(r)
        mean_p, _ = exact_mean_var(p)
        assert m.separation == float(mean_r - mean_p), f"{context}: separation"
        naive = float(np.mean(r, dtype=np.float64) - np.mean(p, dtype=np.float64))
        assert m.separation == pytest.approx(naive, abs=1e-12)
        exact = exact_auc(w, lab)
        assert m.inversion_ratio == float(exact), (
            f"{context}: inversion {m.inversion_ratio!r} != exact {exact} = {float(exact)!r}")
        reference = sklearn_metrics.roc_auc_score(lab, w)
        assert abs(m.inversion_ratio - reference) <= 1e-12, f"{context}: sklearn {reference!r}"
    else:
        assert math.isnan(m.separation) and math.isnan(m.inversion_ratio), context
    eps32 = np.float32(m.eps)
    saturated = sum(1 for x in w if x <= eps32 or x >= np.float32(1) - eps32)
    assert m.saturation == saturated / w.size, f"{context}: saturation"
    assert m.min == float(w.min()) and m.max == float(w.max()), context
    assert m.nonfinite == 0


# -- strategies ---------------------------------------------------------------------------------

TIE_VALUES = [0.0, PLATEAU, 1.0, 0.5, float(np.float32(0.02)), float(np.float32(0.3))]


@st.composite
def populations(draw, max_size: int = 80, ties: bool | None = None):
    """(float32 weights in [0, 1], bool labels): general, or heavily tied as after convergence."""
    n = draw(st.integers(1, max_size), label="n")
    if ties is None:
        ties = draw(st.booleans(), label="ties")
    if ties:
        converged = st.sampled_from(TIE_VALUES[:2])  # most exactly 0.0 or 0.98
        element = st.one_of(converged, converged, converged, st.sampled_from(TIE_VALUES),
                            st.floats(0, 1, width=32))
    else:
        element = st.floats(0, 1, width=32)
    w = np.asarray(draw(st.lists(element, min_size=n, max_size=n)), np.float32) + np.float32(0.0)
    labels = np.asarray(draw(st.lists(st.booleans(), min_size=n, max_size=n)), bool)
    return w, labels


# -- inversion ratio, separation, stats ---------------------------------------------------------

@HYPOTHESIS
@given(pop=populations())
def test_metrics_against_oracles(pop):
    w, labels = pop
    for name in usable_backends():
        check_metrics(metrics_of(w, labels, name), w, labels, name)


@HYPOTHESIS
@given(pop=populations(ties=True, max_size=300))
def test_heavy_ties_inversion_exact(pop):
    w, labels = pop
    assume(labels.any() and not labels.all())
    m = metrics_of(w, labels, "numpy")
    assert m.inversion_ratio == float(exact_auc(w, labels))
    assert abs(m.inversion_ratio - sklearn_metrics.roc_auc_score(labels, w)) <= 1e-12


def test_inversion_known_values():
    # R = {0.9, 0.5}, P = {0.5, 0.1}: pairs (0.9>0.5) (0.9>0.1) (0.5=0.5: 1/2) (0.5>0.1) -> 3.5/4
    m = metrics_of([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0])
    assert m.inversion_ratio == 0.875
    assert metrics_of([0.1, 0.9], [1, 0]).inversion_ratio == 0.0
    assert metrics_of([0.9, 0.1], [1, 0]).inversion_ratio == 1.0
    # 1/3 is not a dyadic: correctly rounded from the exact count
    m = metrics_of([0.5, 0.2, 0.6, 0.4], [1, 0, 0, 0])
    assert m.inversion_ratio == float(Fraction(2, 3))


@pytest.mark.parametrize("value", [0.0, PLATEAU, 0.5, 1.0])
def test_all_tied(value):
    n = 101
    labels = np.arange(n) % 3 == 0
    m = metrics_of(np.full(n, value, np.float32), labels)
    assert m.inversion_ratio == 0.5
    assert m.separation == 0.0
    assert m.reinforced.std == 0.0 and m.punished.std == 0.0
    assert m.reinforced.mean == m.punished.mean == float(np.float32(value))
    check_metrics(m, np.full(n, value, np.float32), labels)


def test_converged_population_heavy_ties():
    """As after convergence: R at the plateau 0.98 or 1, P at exactly 0, a few stragglers."""
    rng = np.random.default_rng(7)
    n = 20_000
    labels = rng.random(n) < 0.5
    w = np.where(labels, np.float32(PLATEAU), np.float32(0.0)).astype(np.float32)
    stragglers = rng.choice(n, 300, replace=False)
    w[stragglers] = rng.choice(np.array([0.0, PLATEAU, 0.5], np.float32), 300)
    m = metrics_of(w, labels)
    # exact count by value classes (too many pairs for brute force)
    r_vals, r_counts = np.unique(w[labels], return_counts=True)
    p_vals, p_counts = np.unique(w[~labels], return_counts=True)
    twice_u = sum(int(rc) * int(pc) * (2 if rv > pv else 1 if rv == pv else 0)
                  for rv, rc in zip(r_vals, r_counts) for pv, pc in zip(p_vals, p_counts))
    exact = Fraction(twice_u, 2 * int(labels.sum()) * int((~labels).sum()))
    assert m.inversion_ratio == float(exact)
    assert abs(m.inversion_ratio - sklearn_metrics.roc_auc_score(labels, w)) <= 1e-12
    check_population_stats(m.reinforced, w[labels], "R")
    check_population_stats(m.punished, w[~labels], "P")


@pytest.mark.parametrize("n_r, n_p", [(1, 1), (1, 9), (9, 1)])
def test_single_element_populations(n_r, n_p):
    rng = np.random.default_rng(n_r * 10 + n_p)
    w = rng.random(n_r + n_p, dtype=np.float32)
    labels = np.array([True] * n_r + [False] * n_p)
    for name in usable_backends():
        m = metrics_of(w, labels, name)
        check_metrics(m, w, labels, f"{name} |R|={n_r} |P|={n_p}")
        if n_r == 1:
            assert m.reinforced.std == 0.0 and m.reinforced.mean == float(w[0])


@pytest.mark.parametrize("empty", ["R", "P"])
def test_empty_population_gives_nan(empty):
    w = np.random.default_rng(1).random(10, dtype=np.float32)
    labels = np.full(10, empty == "P")  # all R when P is empty, and vice versa
    for name in usable_backends():
        m = metrics_of(w, labels, name)
        assert math.isnan(m.separation) and math.isnan(m.inversion_ratio)
        missing, present = ((m.reinforced, m.punished) if empty == "R" else (m.punished, m.reinforced))
        assert missing.count == 0 and math.isnan(missing.mean) and math.isnan(missing.std)
        assert present.count == 10
        check_population_stats(present, w, f"{name} present population")
        assert not math.isnan(m.saturation)


def test_mean_is_exact_where_float64_summation_is_not():
    """Subnormal float32 weights beside 1.0: float64 summation drops them; the package must
    still round the exact mean once."""
    tiny = np.float32(2.0 ** -149)
    w = np.array([1.0, 1.0, 1.0] + [tiny] * 4 + [0.0], np.float32)
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    m = metrics_of(w, labels)
    check_metrics(m, w, labels)
    # (3 + 2^-149) / 4 rounds to 0.75 but the P mean is exactly 3 * 2^-149 / 4 (not 0)
    assert m.punished.mean == float(Fraction(3, 4) * Fraction(2) ** -149) > 0.0


def test_std_is_rounded_once():
    """The module promises exact sums rounded once at the end: std must be the float64
    nearest to sqrt(exact variance), not sqrt of the variance already rounded to float64
    (a second rounding, off by an ulp for ~10% of populations)."""
    w = np.array([0.0, 0.1, 0.2], np.float32)
    m = metrics_of(w, [1, 1, 1])
    _, var = exact_mean_var(w)
    assert m.reinforced.std == sqrt_rounded(var), (m.reinforced.std, sqrt_rounded(var))


@HYPOTHESIS
@given(pop=populations())
def test_std_is_rounded_once_random(pop):
    w, labels = pop
    m = metrics_of(w, labels)
    for stats, values in ((m.reinforced, w[labels]), (m.punished, w[~labels])):
        if values.size:
            _, var = exact_mean_var(values)
            assert stats.std == sqrt_rounded(var), (
                f"std {stats.std!r} != correctly rounded sqrt(exact variance) {sqrt_rounded(var)!r}"
                f" (sqrt(float(var)) = {math.sqrt(float(var))!r})")


def test_std_needs_the_exact_variance():
    """Large common offset, tiny spread: the naive E[x^2] - E[x]^2 in float64 loses it."""
    base = np.float32(0.75)
    ulp = np.spacing(base)
    w = np.array([base, base + ulp, base, base + ulp, base + 2 * ulp, 0.1], np.float32)
    labels = np.array([1, 1, 1, 1, 1, 0], bool)
    m = metrics_of(w, labels)
    check_population_stats(m.reinforced, w[labels], "R")
    assert m.reinforced.std > 0.0


# -- saturation, min/max ------------------------------------------------------------------------

@HYPOTHESIS
@given(pop=populations(max_size=200), eps=st.sampled_from([0.02, 0.0, 0.1, 1e-6, 0.49]))
def test_saturation_direct_count(pop, eps):
    w, labels = pop
    m = metrics_of(w, labels, eps=eps)
    eps32 = np.float32(eps)
    count = sum(1 for x in w.tolist() if np.float32(x) <= eps32 or np.float32(x) >= np.float32(1) - eps32)
    assert m.saturation == count / w.size
    assert m.eps == eps


def test_saturation_default_eps_counts_the_plateau():
    w = np.array([PLATEAU, 1.0, 0.0, float(np.float32(0.02)), 0.5,
                  float(np.nextafter(np.float32(PLATEAU), np.float32(0)))], np.float32)
    m = metrics_of(w, [1, 1, 0, 0, 1, 0])
    assert m.eps == nap.metrics.DEFAULT_EPS == 0.02
    assert m.saturation == 4 / 6


# -- across backends ----------------------------------------------------------------------------

def _comparable(m: nap.Metrics) -> dict:
    return {k: (repr(v) if not isinstance(v, dict) else {kk: repr(vv) for kk, vv in v.items()})
            for k, v in m.as_dict().items()}


@HYPOTHESIS
@given(pop=populations(max_size=500))
def test_metrics_identical_across_backends(pop):
    w, labels = pop
    names = usable_backends()
    assert len(names) >= 2
    results = {name: _comparable(metrics_of(w, labels, name)) for name in names}
    for name in names[1:]:
        assert results[name] == results[names[0]], f"{name} vs {names[0]}"


def test_metrics_identical_across_backends_large_after_training():
    """A trained population large enough for the C++ reductions to run in parallel."""
    n = 300_000
    workload = nap.ReferenceWorkload(n, seed=3)
    qs = [workload.next_quality().copy() for _ in range(3)]
    results = {}
    for name in usable_backends():
        eng = nap.Engine(n, backend=name, seed=3)
        for q in qs:
            eng.step(q)
        m = eng.metrics(workload.labels)
        results[name] = _comparable(m)
        w = eng.to_numpy()
    first = next(iter(results.values()))
    assert all(r == first for r in results.values()), results
    lab = workload.labels.astype(bool)
    m_ratio = float(first["inversion_ratio"])
    assert abs(m_ratio - sklearn_metrics.roc_auc_score(lab, w)) <= 1e-12
    mean_r, _ = exact_mean_var(w[lab])
    mean_p, _ = exact_mean_var(w[~lab])
    assert float(first["separation"]) == float(mean_r - mean_p)


def _one_bin(rng, n, base=0.5):
    """n weights sharing their top 16 bits (one bin of the C++ rank_sums), heavy ties."""
    low = rng.integers(0, 1 << 16, n).astype(np.uint32)
    return (np.float32(base).view(np.uint32) + low).view(np.float32)


def _finite_bit_patterns(rng, n):
    """Any finite float32 (both signs, subnormals, -0.0): keys across the whole range."""
    bits = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    bits[(bits & 0x7F800000) == 0x7F800000] ^= np.uint32(0x00800000)  # NaN, inf -> finite
    bits[:64] = 0x80000000  # -0.0, which ranks as +0.0
    return bits.view(np.float32)


#: Populations that take each path of the C++ core's O(n) rank_sums (cpp/src/ranks.cpp): one
#: thread or several slices; no bin holding both labels; mixed bins sorted by std::sort,
#: radix sorted, or counted; ties within and across bins and slices.
RANK_CASES = {
    "separated": lambda rng, n: np.where(rng.integers(0, 2, n) == 1, np.float32(0.98),
                                         rng.random(n, dtype=np.float32) * np.float32(0.01)),
    "one bin, counted": lambda rng, n: _one_bin(rng, n),
    "one bin, radix sorted": lambda rng, n: _one_bin(rng, 3000),
    "one bin, two values": lambda rng, n: _one_bin(rng, n) * 0 + np.float32(0.5),
    "uniform, several slices": lambda rng, n: rng.random(n, dtype=np.float32),
    "few values, several slices": lambda rng, n: (rng.integers(0, 7, n) / 6).astype(np.float32),
    "any bit pattern": lambda rng, n: _finite_bit_patterns(rng, n),
}


@pytest.mark.parametrize("case", sorted(RANK_CASES))
def test_linear_rank_sums_equal_the_sorting_metrics(case):
    """The C++ backend counts the inversion ratio's pairs without sorting; the metrics equal
    the NumPy backend's (which sorts) and the sorting path on the C++ backend, bit for bit."""
    if "cpp" not in usable_backends():
        pytest.skip("the C++ core is not built")
    rng = np.random.default_rng(sorted(RANK_CASES).index(case))
    w = np.asarray(RANK_CASES[case](rng, 200_000), np.float32)
    labels = rng.integers(0, 2, w.size).astype(np.uint8)
    cpp, numpy = nap.backends.get("cpp"), nap.backends.get("numpy")
    linear = nap.metrics.compute(w, labels, cpp)  # weights outside [0, 1] too: no Engine
    assert _comparable(linear) == _comparable(nap.metrics.compute(w, labels, numpy))
    sorting = nap.metrics.combine(nap.metrics.summarize(w, labels, cpp))
    assert _comparable(linear) == _comparable(sorting)
    assert not math.isnan(linear.inversion_ratio)
    try:  # and whatever the thread count (slices cut elsewhere, bins split across them)
        for threads in (1, 3):
            cpp.set_num_threads(threads)
            assert _comparable(nap.metrics.compute(w, labels, cpp)) == _comparable(linear)
    finally:
        cpp.set_num_threads(0)


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(RANK_CASES))
def test_device_rank_histogram_equals_the_sorting_metrics(case):
    """The device counts the pairs from its histogram of the keys (nap_rank_bins), gathering
    and sorting only the mixed bins' weights: the metrics equal the NumPy backend's."""
    if "cuda" not in usable_backends():
        pytest.skip(nap.available_backends()["cuda"])
    rng = np.random.default_rng(sorted(RANK_CASES).index(case))
    w = np.asarray(RANK_CASES[case](rng, 200_000), np.float32)
    labels = rng.integers(0, 2, w.size).astype(np.uint8)
    cuda, numpy = nap.backends.get("cuda"), nap.backends.get("numpy")
    device = nap.metrics.compute(cuda.asarray(w), cuda.asarray(labels), cuda)
    assert _comparable(device) == _comparable(nap.metrics.compute(w, labels, numpy))
    assert not math.isnan(device.inversion_ratio)


def test_nan_weights_counted_and_undefined_metrics():
    q = np.full(10, 0.7, np.float32)
    q[[3, 8]] = np.nan
    per_backend = {}
    for name in usable_backends():
        eng = nap.Engine(10, backend=name, init=0.5)
        eng.step(q, check_finite=False)
        m = eng.metrics(np.arange(10) % 2 == 0)
        assert m.nonfinite == 2
        assert math.isnan(m.separation) and math.isnan(m.inversion_ratio)
        per_backend[name] = _comparable(m)
    assert len({repr(v) for v in per_backend.values()}) == 1


# -- label forms --------------------------------------------------------------------------------

@HYPOTHESIS
@given(pop=populations(max_size=60))
def test_label_forms_agree(pop):
    w, labels = pop
    forms = [
        labels,
        labels.astype(np.uint8), labels.astype(np.int64), labels.astype(np.int8),
        labels.astype(int).tolist(),
        labels.tolist(),
        np.where(labels, "R", "P"),
        ["R" if x else "P" for x in labels],
        np.where(labels, "r", "p"),
    ]
    for name in usable_backends():
        eng = nap.Engine(w.size, backend=name, init=w)
        reference = _comparable(eng.metrics(labels))
        for form in forms:
            assert _comparable(eng.metrics(form)) == reference, f"{name}: labels {form!r}"


# -- subnormal weights: compared as integer keys, never as floats through xp ---------------------

Q = 2.0 ** -149                    # the smallest subnormal float32
LARGEST_SUBNORMAL = float(np.array([0x007FFFFF], np.uint32).view(np.float32)[0])
SMALLEST_NORMAL = 2.0 ** -126

SUBNORMAL_CASES = {
    # the ratio depends on the order of distinct subnormals, with a tie at 3q
    "distinct subnormals": ([3 * Q, 5 * Q, SMALLEST_NORMAL, Q, 2 * Q, 3 * Q, 0.0, 0.5],
                            [1, 1, 1, 0, 0, 0, 0, 0]),
    "subnormals beside zero": ([Q, 0.0, 0.0, Q, 2 * Q, 0.0], [1, 0, 0, 1, 1, 0]),
    "P above R by a subnormal": ([Q, 2 * Q, 0.0, 3 * Q], [1, 0, 1, 0]),
    "min and max subnormal": ([7 * Q, 2 * Q, LARGEST_SUBNORMAL, 3 * Q, 2 * Q], [1, 0, 1, 0, 1]),
    "min subnormal, max normal": ([Q, 0.75, 4 * Q, 0.25], [0, 1, 1, 0]),
}


def exact_oracle(w, labels, eps: float) -> dict:
    """Ratio, saturation and extremes of float32 weights in Python Fractions (no NumPy
    comparison): each float32 converts to a float64, hence to a Fraction, exactly."""
    values = [Fraction(float(x)) for x in np.asarray(w, np.float32).tolist()]
    lab = [bool(x) for x in labels]
    r = [v for v, is_r in zip(values, lab) if is_r]
    p = [v for v, is_r in zip(values, lab) if not is_r]
    lo = Fraction(float(np.float32(eps)))
    hi = Fraction(float(np.float32(1) - np.float32(eps)))  # the float32 subtraction, as defined
    twice_u = sum(2 if a > b else 1 if a == b else 0 for a in r for b in p)
    return {"ratio": float(Fraction(twice_u, 2 * len(r) * len(p))) if r and p else math.nan,
            "saturated": sum(1 for v in values if v <= lo or v >= hi),
            "min": float(min(values)), "max": float(max(values))}


def check_exact(m: nap.Metrics, w, labels, eps: float, context: str = "") -> None:
    """Every metric of ``m`` against the exact oracles (Fractions, Python integers)."""
    w = np.asarray(w, np.float32)
    lab = np.asarray(labels).astype(bool)
    expected = exact_oracle(w, lab, eps)
    assert m.n == w.size, context
    if lab.any() and not lab.all():
        assert m.inversion_ratio == expected["ratio"], (
            f"{context}: inversion {m.inversion_ratio!r} != exact {expected['ratio']!r}")
        mean_r, _ = exact_mean_var(w[lab])
        mean_p, _ = exact_mean_var(w[~lab])
        assert m.separation == float(mean_r - mean_p), f"{context}: separation"
    else:
        assert math.isnan(m.inversion_ratio) and math.isnan(m.separation), context
    assert m.saturation == expected["saturated"] / w.size, (
        f"{context}: saturation {m.saturation * w.size} != {expected['saturated']} weights")
    assert m.min == expected["min"], f"{context}: min {m.min!r} != {expected['min']!r}"
    assert m.max == expected["max"], f"{context}: max {m.max!r} != {expected['max']!r}"
    check_population_stats(m.reinforced, w[lab], f"{context} R")
    check_population_stats(m.punished, w[~lab], f"{context} P")
    assert m.nonfinite == 0, context


SUBNORMAL_EPS = [0.02, 0.0, 2.0 ** -148]  # 2^-148 = 2q: a subnormal saturation bound


@pytest.mark.parametrize("eps", SUBNORMAL_EPS)
@pytest.mark.parametrize("case", list(SUBNORMAL_CASES))
def test_subnormal_weights_exact(backend, case, eps):
    w, labels = SUBNORMAL_CASES[case]
    w = np.asarray(w, np.float32)
    assert all(float(x) == v for x, v in zip(w, SUBNORMAL_CASES[case][0]))  # exact float32s
    eng = nap.Engine(w.size, backend=backend, init=w)
    check_exact(eng.metrics(labels, eps=eps), w, labels, eps, f"{backend} {case} eps={eps}")


def test_subnormal_known_values(backend):
    """The flush-to-zero failure modes, spelled out: distinct subnormals are distinct, a
    subnormal is above 0 (not saturated at eps = 0), and subnormal extremes survive."""
    def metrics(w, labels, **kwargs):
        w = np.asarray(w, np.float32)
        return nap.Engine(w.size, backend=backend, init=w).metrics(labels, **kwargs)
    assert metrics([2 * Q, Q], [1, 0]).inversion_ratio == 1.0
    assert metrics([Q, 2 * Q], [1, 0]).inversion_ratio == 0.0
    assert metrics([Q, 0.0], [1, 0]).inversion_ratio == 1.0
    m = metrics([Q, 0.0, 3 * Q, 0.0], [1, 0, 1, 0], eps=0.0)
    assert m.saturation == 0.5  # only the two zeros are <= 0
    assert m.min == 0.0 and m.max == 3 * Q
    m = metrics([5 * Q, LARGEST_SUBNORMAL, 2 * Q], [1, 0, 1])
    assert m.min == 2 * Q and m.max == LARGEST_SUBNORMAL
    assert m.inversion_ratio == 0.0


@st.composite
def subnormal_populations(draw, max_size: int = 40):
    """float32 weights mostly subnormal (any bit pattern, or a few small multiples of q, so
    ties occur), beside 0, the smallest normal and a few ordinary weights; bool labels."""
    n = draw(st.integers(1, max_size), label="n")
    subnormal = st.integers(1, 0x007FFFFF).map(
        lambda b: float(np.array([b], np.uint32).view(np.float32)[0]))
    element = st.one_of(subnormal, st.integers(1, 6).map(lambda k: k * Q),
                        st.sampled_from([0.0, 0.0, SMALLEST_NORMAL, 0.5, 1.0]))
    w = np.asarray(draw(st.lists(element, min_size=n, max_size=n)), np.float32)
    labels = np.asarray(draw(st.lists(st.booleans(), min_size=n, max_size=n)), bool)
    return w, labels


@HYPOTHESIS
@given(pop=subnormal_populations(), eps=st.sampled_from(SUBNORMAL_EPS))
def test_subnormal_populations_exact(backend, pop, eps):
    w, labels = pop
    eng = nap.Engine(w.size, backend=backend, init=w)
    check_exact(eng.metrics(labels, eps=eps), w, labels, eps, backend)


@HYPOTHESIS
@given(pop=subnormal_populations(max_size=60), cuts=st.lists(st.integers(1, 59), max_size=4))
def test_subnormal_summaries_merge_exactly(backend, pop, cuts):
    """Summaries of parts (as the shards make them, where the weights live) merge into the
    whole population's metrics, and those are the exact ones."""
    w, labels = pop
    bk = nap.backends.get(backend)
    edges = sorted({0, w.size, *(c for c in cuts if c < w.size)})
    parts = []
    for a, b in zip(edges[:-1], edges[1:]):
        part = nap.Engine(b - a, backend=backend, init=w[a:b])
        labels_part = bk.asarray(labels[a:b].astype(np.uint8))
        parts.append(nap.metrics.summarize(part.weights, labels_part, bk).on_host())
    merged = nap.metrics.combine(nap.metrics.merge(parts))
    whole = nap.Engine(w.size, backend=backend, init=w).metrics(labels)
    assert _comparable(merged) == _comparable(whole)
    check_exact(merged, w, labels, nap.metrics.DEFAULT_EPS, backend)


# A NumPy stand-in for CuPy's own kernels (compiled with -ftz=true): float32 comparisons,
# min/max and searchsorted see subnormals as zero. Sorting keeps them (CuPy sorts by bits).
_FLUSHING_UFUNCS = {np.less, np.less_equal, np.greater, np.greater_equal, np.equal,
                    np.not_equal, np.minimum, np.maximum, np.fmin, np.fmax}


def _flushed(x):
    """x with float32 subnormals replaced by zeros of their sign (other values as they are)."""
    if isinstance(x, np.ndarray):
        x = np.asarray(x)  # the plain ndarray
        if x.dtype == np.float32:
            tiny = np.abs(x) < np.float32(SMALLEST_NORMAL)
            return np.where(tiny, np.copysign(np.float32(0), x), x)
        return x
    if isinstance(x, np.float32) and abs(x) < np.float32(SMALLEST_NORMAL):
        return np.copysign(np.float32(0), x)
    return x


class _FlushingArray(np.ndarray):
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        flush = ufunc in _FLUSHING_UFUNCS
        inputs = tuple(_flushed(x) if flush else (np.asarray(x) if isinstance(x, np.ndarray) else x)
                       for x in inputs)
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = tuple(np.asarray(o) for o in out)
        result = getattr(ufunc, method)(*inputs, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return result.view(_FlushingArray) if isinstance(result, np.ndarray) else result

    def searchsorted(self, v, side="left", sorter=None):
        return np.asarray(_flushed(self)).searchsorted(_flushed(v), side=side, sorter=sorter)


class _FlushingBackend:
    """A backend whose weights compare as CuPy's own kernels compare them."""
    xp = np

    @staticmethod
    def exact_sums(w, labels):
        return nap.backends._xp.exact_sums(w, labels, np)


def test_flushing_stand_in_flushes():
    a = np.array([Q, 2 * Q, 0.0], np.float32).view(_FlushingArray)
    assert bool(a[:1] == a[1:2]) and bool(a[:1] == a[2:]) and bool(a[:1] <= np.float32(0))
    assert float(np.min(a)) == 0.0 and float(np.max(a)) == 0.0
    assert np.searchsorted(np.sort(a), a[:1], side="right")[0] == 3


@pytest.mark.parametrize("eps", SUBNORMAL_EPS)
@pytest.mark.parametrize("case", list(SUBNORMAL_CASES))
def test_metrics_never_compare_floats_through_xp(case, eps):
    """On weights whose float32 comparisons flush subnormals (as on the cuda backend), the
    metrics are still the exact ones: every comparison is made on integer keys."""
    w, labels = SUBNORMAL_CASES[case]
    weights = np.asarray(w, np.float32).view(_FlushingArray)
    m = nap.metrics.compute(weights, np.asarray(labels, np.uint8), _FlushingBackend, eps=eps)
    check_exact(m, w, labels, eps, f"{case} eps={eps}")


def test_public_inversion_ratio_keys():
    ratio = nap.metrics.inversion_ratio
    assert ratio(np.float32([2 * Q, Q]), np.float32([Q, 0.0])) == 0.875
    assert ratio([0.9, 0.5], [0.5, 0.1]) == 0.875  # float64 lists become float32
    assert ratio(np.float32([-0.0]), np.float32([0.0])) == 0.5  # -0.0 == +0.0
    assert ratio(np.float32([np.inf, 0.5]), np.float32([1.0])) == 0.5
    assert ratio(np.float32([-np.inf]), np.float32([0.0])) == 0.0
    assert math.isnan(ratio(np.float32([np.nan, 0.5]), np.float32([0.1])))
    negative_nan = np.array([0xFFC00000], np.uint32).view(np.float32)  # sign set: key below -inf's
    assert math.isnan(ratio(np.float32([0.5]), negative_nan))
    assert math.isnan(ratio(np.float32([]), np.float32([0.1])))


def test_extremes_and_saturation_with_nonfinite_weights():
    """NaN: never saturated, min/max NaN; +inf counts as >= 1 - eps, -inf as <= eps."""
    bk = nap.backends.get("numpy")
    labels = np.array([1, 0, 1, 0], np.uint8)
    for nan in np.array([0x7FC00000, 0xFFC00000, 0x7F800001], np.uint32).view(np.float32):
        m = nap.metrics.compute(np.array([nan, 0.5, 0.99, 0.01], np.float32), labels, bk)
        assert math.isnan(m.min) and math.isnan(m.max) and math.isnan(m.inversion_ratio)
        assert m.saturation == 0.5 and m.nonfinite == 1
    m = nap.metrics.compute(np.array([np.inf, 0.5, -np.inf, 0.5], np.float32), labels, bk)
    assert m.min == -math.inf and m.max == math.inf and m.saturation == 0.5
    assert math.isnan(m.inversion_ratio) and m.nonfinite == 2


# -- the inversion ratio's integer arithmetic at any size ----------------------------------------

def twice_u_oracle(r_keys, r_counts, p_keys, p_counts) -> int:
    """2U from (distinct keys, counts) in Python integers."""
    return sum(int(rc) * int(pc) * (2 if rk > pk else 1 if rk == pk else 0)
               for rk, rc in zip(r_keys.tolist(), r_counts.tolist())
               for pk, pc in zip(p_keys.tolist(), p_counts.tolist()))


def ratio_oracle(r_keys, r_counts, p_keys, p_counts) -> float:
    nr, np_ = sum(map(int, r_counts.tolist())), sum(map(int, p_counts.tolist()))
    return float(Fraction(twice_u_oracle(r_keys, r_counts, p_keys, p_counts), 2 * nr * np_))


def synthetic_summary(r_keys, r_counts, p_keys, p_counts) -> nap.metrics.Summary:
    """A host summary of a population too large to hold here: only the distinct keys and
    their counts (the bins are empty, so the means are NaN; the ratio does not use them)."""
    n = sum(map(int, r_counts)) + sum(map(int, p_counts))
    return nap.metrics.Summary(
        n=n, sums=np.zeros((2, 512, 4), np.uint64),
        reinforced=(np.asarray(r_keys, np.uint32), np.asarray(r_counts, np.int64)),
        punished=(np.asarray(p_keys, np.uint32), np.asarray(p_counts, np.int64)),
        saturated=0, min=0.0, max=1.0)


HUGE = {  # (R keys, R counts, P keys, P counts): totals beyond 2^33, counts near 2^32
    "separated": ([30], [2**33 + 1], [10], [2**32 + 3]),
    "ties and interleaving": ([10, 20, 30], [2**32 - 1, 2**32 + 5, 3 * 2**31],
                              [5, 20, 25, 40], [2**32 - 7, 2**32 + 11, 12_345, 2**33 + 1]),
    "one R memory": ([7], [1], [3, 7, 9], [2**34 + 3, 2**32, 2**33 - 5]),
    "2^40 P memories": ([1, 2**31, 2**32 - 1], [2**36, 5, 2**33],
                        [0, 2**31, 2**32 - 2], [2**40 - 3, 2**39 + 7, 2**32 + 1]),
}


@pytest.mark.parametrize("case", list(HUGE))
def test_inversion_ratio_exact_beyond_2_32_memories(case):
    r_keys, r_counts, p_keys, p_counts = (np.asarray(a, np.int64) for a in HUGE[case])
    assert r_counts.sum() + p_counts.sum() > 2**33
    expected = ratio_oracle(r_keys, r_counts, p_keys, p_counts)
    reinforced = (r_keys.astype(np.uint32), r_counts)
    punished = (p_keys.astype(np.uint32), p_counts)
    assert nap.metrics._ratio(reinforced, punished) == expected
    # as the sharded engine gets it: host summaries of parts, merged, then combined
    whole = synthetic_summary(*HUGE[case])
    assert nap.metrics.combine(whole).inversion_ratio == expected
    halves = [synthetic_summary(r_keys, r_counts // 2, p_keys, p_counts // 2),
              synthetic_summary(r_keys, r_counts - r_counts // 2, p_keys, p_counts - p_counts // 2)]
    merged = nap.metrics.merge(halves)
    assert merged.n == whole.n
    assert nap.metrics.combine(merged).inversion_ratio == expected


def test_inversion_ratio_at_4_4e9_memories_is_one():
    """The measured failure: R all above P at 4.4e9 memories read -0.906."""
    r = (np.array([2], np.uint32), np.array([2_200_000_000], np.int64))
    p = (np.array([1], np.uint32), np.array([2_200_000_000], np.int64))
    assert nap.metrics._ratio(r, p) == 1.0
    assert nap.metrics._ratio(p, r) == 0.0
    assert nap.metrics._ratio(r, r) == 0.5


@st.composite
def distinct_counts(draw, max_count: int):
    keys = sorted(draw(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=12, unique=True)))
    counts = draw(st.lists(st.integers(1, max_count), min_size=len(keys), max_size=len(keys)))
    return np.asarray(keys, np.uint32), np.asarray(counts, np.int64)


@HYPOTHESIS
@given(r=distinct_counts(2**42), p=distinct_counts(2**42), shared=st.booleans())
def test_inversion_ratio_large_counts_random(r, p, shared):
    if shared:  # ties: P on R's keys
        p = (r[0], p[1][:1].repeat(r[0].size))
    expected = ratio_oracle(r[0], r[1], p[0], p[1])
    assert nap.metrics._ratio(r, p) == expected


def test_inversion_ratio_refuses_counts_beyond_its_range():
    r = (np.array([1], np.uint32), np.array([2**47], np.int64))
    p = (np.array([0], np.uint32), np.array([1], np.int64))
    with pytest.raises(OverflowError):
        nap.metrics._ratio(r, p)


DOT_LIMIT = 2**48


@HYPOTHESIS
@given(pairs=st.lists(st.tuples(st.integers(0, DOT_LIMIT - 1), st.integers(0, DOT_LIMIT - 1)),
                      max_size=200),
       chunk=st.sampled_from([1, 2, 3, 16, 2**14]), block=st.sampled_from([1, 5, 64, 2**24]))
def test_exact_dot_against_python_integers(pairs, chunk, block):
    x = np.asarray([a for a, _ in pairs], np.uint64)
    y = np.asarray([b for _, b in pairs], np.uint64)
    expected = sum(a * b for a, b in pairs)
    assert nap.metrics._exact_dot(x, y, chunk=chunk, block=block) == expected


@pytest.mark.parametrize("size", [1, 2**14 - 1, 2**14, 3 * 2**14 + 7])
def test_exact_dot_largest_factors(size):
    """Every factor 2^48 - 1: the partial products and the chunk sums at their bounds."""
    x = np.full(size, DOT_LIMIT - 1, np.uint64)
    assert nap.metrics._exact_dot(x, x) == size * (DOT_LIMIT - 1) ** 2
    y = np.full(size, 2**24 - 1, np.uint64)
    assert nap.metrics._exact_dot(x, y, block=2**14 + 3) == size * (DOT_LIMIT - 1) * (2**24 - 1)


# -- health ---------------------------------------------------------------------------------------

def health_of(w, labels, iteration, backend="numpy", **kwargs) -> nap.Health:
    return nap.health(metrics_of(w, labels, backend), iteration, **kwargs)


R10 = [1] * 10 + [0] * 10


def test_health_good_population(backend):
    w = [0.9] * 10 + [0.1] * 10
    for iteration in (0, 10, 50, 10_000):
        h = health_of(w, R10, iteration, backend)
        assert h.ok and h.failures == ()


def test_health_separation_rule_after_warmup(backend):
    w = [0.5625] * 10 + [0.4375] * 10      # separation 0.125, inversion 1.0
    assert health_of(w, R10, 9, backend).ok   # still warming up
    h = health_of(w, R10, 10, backend)
    assert not h.ok and len(h.failures) == 1 and "separation" in h.failures[0]
    w = [0.75] * 10 + [0.5] * 10           # separation 0.25 > 0.2
    assert health_of(w, R10, 10, backend).ok
    assert not health_of(w, R10, 10, backend, min_separation=0.25).ok  # strictly greater


def test_health_inversion_rule_after_fifty(backend):
    w = [0.5] * 10 + [0.0] * 8 + [0.9] * 2  # inversion 0.8, separation 0.32
    m = metrics_of(w, R10, backend)
    assert m.inversion_ratio == 0.8 and m.separation > 0.2
    assert nap.health(m, 49).ok
    h = nap.health(m, 50)
    assert not h.ok and len(h.failures) == 1 and "inversion" in h.failures[0]
    exactly = metrics_of([0.5] * 10 + [0.0] * 9 + [0.9], R10, backend)
    assert exactly.inversion_ratio == 0.9
    assert not nap.health(exactly, 50).ok, "0.9 is not > 0.9"
    tie = metrics_of([0.5] * 10 + [0.0] * 9 + [0.5], R10, backend)
    assert tie.inversion_ratio == 0.95 and nap.health(tie, 50).ok


def test_health_nan_weights_fail_at_once(backend):
    eng = nap.Engine(20, backend=backend, init=np.array([0.9] * 10 + [0.1] * 10, np.float32))
    q = np.full(20, 0.9, np.float32)
    q[10:] = 0.1
    q[4] = np.nan
    eng.step(q, check_finite=False)
    m = eng.metrics(R10)
    for iteration in (0, 10, 50):
        h = nap.health(m, iteration)
        assert not h.ok and any("non-finite" in f for f in h.failures), h


def test_health_weights_outside_unit_interval_fail():
    m = metrics_of([0.9] * 10 + [0.1] * 10, R10)
    assert nap.health(m, 0).ok
    assert not nap.health(dataclasses.replace(m, max=1.5), 0).ok
    assert not nap.health(dataclasses.replace(m, min=-0.25), 0).ok


def test_health_empty_population_after_warmup():
    m = metrics_of([0.9] * 20, [1] * 20)
    assert nap.health(m, 0).ok
    assert not nap.health(m, 10).ok  # separation is undefined (NaN), so not > 0.2


def test_health_of_the_10k_profile_after_50_iterations(backend):
    """docs/law.md §3/§4: the reference workload is healthy after 50 iterations."""
    n = 10_000
    workload = nap.ReferenceWorkload(n, seed=0)
    eng = nap.Engine(n, backend=backend, seed=0)
    early = nap.health(eng.metrics(workload.labels), eng.iteration)
    assert early.ok, early  # random U[0,1): separation ~0, but still warming up
    for _ in range(50):
        eng.step(workload.next_quality())
    assert eng.iteration == 50
    m = eng.metrics(workload.labels)
    h = nap.health(m, eng.iteration)
    assert h.ok, (h, m)
    assert m.inversion_ratio > 0.9 and m.separation > 0.2
