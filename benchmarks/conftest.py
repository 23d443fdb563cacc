"""Fixtures and options of the benchmark suite (run explicitly: ``pytest benchmarks/``).

Options:
  --scale 10K,100K,1M,10M  the scale tiers (default); 100M and 1G (1B) are opt-in:
                           --scale 100M, --scale 10K-100M, --scale all, --scale smallest
  --sizes ...              the dense-step sizes only (overrides --scale for that suite)
  --metrics-sizes 10M      populations of test_metrics.py's sklearn comparison (default 10M)
  --smoke                  CI mode: smallest tier, one round, small event counts, no paired
                           ratios (the suites run so that they never rot; numbers mean nothing)

Markers: every tiered test carries ``tier_<label>`` (``tier_10K`` ... ``tier_1G``) and the
opt-in tiers also ``large``: ``-m "not large"`` or ``-m tier_1M`` select as usual.

Memory: before a tier's data is allocated, the bytes its operations need are compared with
MemAvailable; a tier that does not fit is refused (a usage error naming both numbers) when no
operation fits, and an operation that does not fit is skipped with the same message.

Data: per size, seeded float32 weights U[0, 1) and one iteration of the reference workload's
qualities (docs/law.md §4: R memories q ~ U[0.6, 1), P memories q ~ U[0, 0.4), interleaved, so
the gate splits every SIMD vector), made once and shared by every benchmark of that size.

Every round steps the SAME data: each benchmark uses pytest-benchmark's pedantic mode with a
setup that copies the pristine weights into the working array (untimed). Stepping converging
weights instead would be valid work too: measured at 10M, the weights' values change no
implementation's cost (floor, cpp core, numba, NumPy backend: within 3% on U[0, 1) weights,
on weights after 50 reference-workload steps and on all-zero weights). Only the qualities'
pattern matters, and only to code that is not branch free (the NumPy backend's masked
``np.copyto(where=)`` costs 27% more on uniform-random qualities than on the workload's
interleaved R/P pattern); the qualities are the same in every round. Restoring the weights
anyway makes every round the same work bit for bit, for every implementation, and leaves the
working array where a real step finds it (just written): the 1M population runs in cache, as
it would in a training loop.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import nap_gpu as nap
from nap_gpu._sizes import parse_count, size_label

#: Scale tiers (the issue "Scale suites"): the default ones run unless --scale says otherwise;
#: the opt-in ones run only when named (--scale 100M, --scale all).
DEFAULT_TIERS = "10K,100K,1M,10M"
OPT_IN_TIERS = "100M,1G"
DEFAULT_METRICS_SIZES = "10M"


def parse_size(text: str) -> int:
    """'1M' -> 1_000_000; also '250K', '1G', '1e6', '1000000' (nap_gpu's one size parser)."""
    try:
        n = parse_count(text)
    except ValueError as exc:
        raise pytest.UsageError(f"bad size: {exc}") from None
    if n < 2:
        raise pytest.UsageError(f"size {text!r} is too small (at least 2 memories)")
    return n


def _all_tiers() -> list[int]:
    return [parse_size(t) for t in (DEFAULT_TIERS + "," + OPT_IN_TIERS).split(",")]


def parse_scale(text: str) -> list[int]:
    """'10K,1M' | '10K-100M' (every tier in the range) | 'all' | 'default' | 'smallest'."""
    tiers = _all_tiers()
    text = text.strip()
    if text in ("", "default"):
        return [parse_size(t) for t in DEFAULT_TIERS.split(",")]
    if text == "all":
        return tiers
    if text == "smallest":
        return tiers[:1]
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part and not part.lower().startswith("1e-"):
            lo, hi = (parse_size(x) for x in part.split("-", 1))
            out.extend(t for t in tiers if lo <= t <= hi)
        else:
            out.append(parse_size(part))
    return sorted(set(out))


def _sizes(config, option: str) -> list[int]:
    if option == "--sizes" and config.getoption("--sizes") is None:
        return scale_tiers(config)
    text = config.getoption(option)
    return [parse_size(part) for part in text.split(",") if part.strip()]


def scale_tiers(config) -> list[int]:
    if config.getoption("--smoke"):
        return _all_tiers()[:1]
    return parse_scale(config.getoption("--scale"))


def pytest_addoption(parser):
    group = parser.getgroup("nap benchmarks")
    group.addoption("--scale", default="default",
                    help=f"scale tiers: comma-separated sizes or ranges (default {DEFAULT_TIERS}; "
                         f"opt-in {OPT_IN_TIERS}; e.g. --scale 10K-100M, --scale all)")
    group.addoption("--sizes", default=None,
                    help="comma-separated populations of the dense-step benchmarks "
                         "(default: the --scale tiers)")
    group.addoption("--metrics-sizes", default=DEFAULT_METRICS_SIZES,
                    help=f"comma-separated populations of the metrics benchmarks "
                         f"(default {DEFAULT_METRICS_SIZES})")
    group.addoption("--convergence-all-backends", action="store_true", default=False,
                    help="convergence tables on every usable backend at every tier "
                         "(default: all backends up to 10M, the first usable above)")
    group.addoption("--smoke", action="store_true", default=False,
                    help="CI smoke mode: smallest tier, one round, small event counts")


def pytest_configure(config):
    for t in _all_tiers():
        config.addinivalue_line("markers", f"tier_{size_label(t)}: the {size_label(t)} scale tier")
    config.addinivalue_line("markers", "large: an opt-in scale tier (100M, 1G)")
    if config.getoption("--smoke"):
        # One round of everything: the suites must run, their numbers are not read.
        try:
            config.option.benchmark_disable_gc = False
        except AttributeError:
            pass
    # Refuse, before anything is allocated, a tier none of whose operations fits in memory.
    import scale_support as memory  # benchmarks/scale_support.py (imported like peers)
    for n in scale_tiers(config):
        fits, need, avail = memory.tier_fits(n)
        if not fits:
            raise pytest.UsageError(
                f"scale tier {size_label(n)} does not fit in memory: its smallest operation "
                f"needs {need / 2**30:.1f} GiB, MemAvailable is {avail / 2**30:.1f} GiB; "
                f"drop it from --scale")


def tier_param(n: int):
    marks = [getattr(pytest.mark, f"tier_{size_label(n)}")]
    if n > 10**7:
        marks.append(pytest.mark.large)
    return pytest.param(n, id=size_label(n), marks=marks)


def pytest_generate_tests(metafunc):
    # Module scope: pytest then runs every benchmark of one size before the next size, and
    # only one size's arrays are alive at a time.
    for fixture, option in (("size", "--sizes"), ("metrics_size", "--metrics-sizes"),
                            ("tier", "--scale")):
        if fixture in metafunc.fixturenames:
            if option == "--scale":
                sizes = scale_tiers(metafunc.config)
            elif option == "--metrics-sizes" and metafunc.config.getoption("--smoke"):
                sizes = _all_tiers()[:1]
            else:
                sizes = _sizes(metafunc.config, option)
            metafunc.parametrize(fixture, [tier_param(n) for n in sizes], scope="module")


@pytest.fixture
def smoke(request) -> bool:
    return bool(request.config.getoption("--smoke"))


@pytest.fixture
def size_name(size):
    """'1M' for 1_000_000: the group and benchmark names use it."""
    return size_label(size)


@pytest.fixture
def metrics_size_name(metrics_size):
    return size_label(metrics_size)


@pytest.fixture
def measure(benchmark, request):
    """``measure(setup, target, n, floor=None) -> dict``: time ``target`` in pedantic mode,
    ``setup`` (untimed) before every round, rounds planned from one warm-up round to fit the
    size's budget. With a ``floor`` runner, also time ``target`` and the floor in alternation
    (the paired ratio, robust to the machine drifting between benchmarks). Returns what goes
    into ``extra_info``: rounds, CPU used by other processes, and the paired ratio."""

    smoke_mode = bool(request.config.getoption("--smoke"))

    def run(setup, target, n: int, floor=None, budget_scale: float = 1.0) -> dict:
        if smoke_mode:
            rounds, warmup = 1, 0
        else:
            per_round = timed_once(setup, target)
            rounds, warmup = plan_rounds(n, per_round / budget_scale), 1
        with CpuContention() as contention:
            benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=warmup,
                               iterations=1)
        info = {"rounds": rounds, "foreign_cpu": contention.fraction}
        if floor is not None:
            info.update(paired_ratio(setup, target, floor, 1 if smoke_mode else rounds))
        return info

    return run


def paired_ratio(setup, target, floor, pairs: int) -> dict:
    """Median over ``pairs`` of (target time / floor time), the two timed back to back, in
    alternating order. Shared VMs drift (the same 1M triad takes 70 or 140 µs from one minute
    to the next, with no other process running); a ratio of neighbours cancels the drift."""
    ratios = []
    for i in range(max(pairs, 1 if pairs == 1 else 3)):
        times = {}
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            prepare, work = (floor.reset, floor.run) if which == 0 else (setup, target)
            prepare()
            t0 = time.perf_counter()
            work()
            times[which] = time.perf_counter() - t0
        ratios.append(times[1] / times[0])
    return {"paired_floor_ratio": float(np.median(ratios)), "pairs": len(ratios)}


@pytest.fixture(scope="module")
def dense_data(size):
    """(pristine weights, qualities) for ``size`` memories; the weights are read-only.
    Refused (skipped, with the numbers) before allocating when the step's benchmarks would
    not fit in memory."""
    import scale_support
    fits, why = scale_support.op_fits("dense-step", size)
    if not fits:
        pytest.skip(why)
    weights = np.random.default_rng([size, 0]).random(size, dtype=np.float32)
    weights.flags.writeable = False
    quality = nap.ReferenceWorkload(size, seed=size).next_quality().copy()
    return weights, quality


# --------------------------------------------------------------------------------------------
# Timing helpers shared by the benchmark modules
# --------------------------------------------------------------------------------------------
#: Wall-clock budget per benchmark (s), and bounds on its rounds, by population size.
BUDGETS = [  # (up to n, budget s, min rounds, max rounds)
    (2 * 10**6, 1.5, 20, 400),
    (2 * 10**7, 3.0, 10, 150),
    (None, 5.0, 3, 12),
]


def plan_rounds(n: int, seconds_per_round: float) -> int:
    """Rounds that fit the size's budget (a round's time includes its untimed setup)."""
    for limit, budget, low, high in BUDGETS:
        if limit is None or n <= limit:
            return int(max(low, min(high, budget / max(seconds_per_round, 1e-9))))
    raise AssertionError("unreachable")


def timed_once(setup, target) -> float:
    """Wall time of one setup + target, after one untimed warm-up (JIT compiles, first
    touches of fresh pages)."""
    setup()
    target()
    t0 = time.perf_counter()
    setup()
    target()
    return time.perf_counter() - t0


from scale_support import CpuContention  # noqa: E402,F401 - defined there, shared by modules
