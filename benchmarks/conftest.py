"""Fixtures and options of the benchmark suite (run explicitly: ``pytest benchmarks/``).

Options:
  --sizes 1M,10M,100M      populations of the dense-step benchmarks (default all three)
  --metrics-sizes 10M      populations of the metrics benchmarks (default 10M)

Data: per size, seeded float32 weights U[0, 1) and one iteration of the reference workload's
qualities (DESIGN.md §4: R memories q ~ U[0.6, 1), P memories q ~ U[0, 0.4), interleaved, so
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

import os
import re
import time

import numpy as np
import pytest

import nap_gpu as nap

DEFAULT_SIZES = "1M,10M,100M"
DEFAULT_METRICS_SIZES = "10M"
_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}


def parse_size(text: str) -> int:
    """'1M' -> 1_000_000; also '250K', '1G', '1e6', '1000000'."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([kKmMgG]?)\s*", text)
    if not m:
        raise pytest.UsageError(f"bad size {text!r}: use e.g. 1M, 10M, 100M, 250K or 1e6")
    n = int(round(float(m.group(1)) * _SUFFIX[m.group(2).upper()]))
    if n < 2:
        raise pytest.UsageError(f"size {text!r} is too small (at least 2 memories)")
    return n


def size_label(n: int) -> str:
    for suffix, scale in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)


def _sizes(config, option: str) -> list[int]:
    text = config.getoption(option)
    return [parse_size(part) for part in text.split(",") if part.strip()]


def pytest_addoption(parser):
    group = parser.getgroup("nap benchmarks")
    group.addoption("--sizes", default=DEFAULT_SIZES,
                    help=f"comma-separated populations of the dense-step benchmarks "
                         f"(default {DEFAULT_SIZES}; e.g. --sizes 1M)")
    group.addoption("--metrics-sizes", default=DEFAULT_METRICS_SIZES,
                    help=f"comma-separated populations of the metrics benchmarks "
                         f"(default {DEFAULT_METRICS_SIZES})")


def pytest_generate_tests(metafunc):
    # Module scope: pytest then runs every benchmark of one size before the next size, and
    # only one size's arrays are alive at a time.
    for fixture, option in (("size", "--sizes"), ("metrics_size", "--metrics-sizes")):
        if fixture in metafunc.fixturenames:
            sizes = _sizes(metafunc.config, option)
            metafunc.parametrize(fixture, sizes, ids=[size_label(n) for n in sizes],
                                 scope="module")


@pytest.fixture
def size_name(size):
    """'1M' for 1_000_000: the group and benchmark names use it."""
    return size_label(size)


@pytest.fixture
def metrics_size_name(metrics_size):
    return size_label(metrics_size)


@pytest.fixture
def measure(benchmark):
    """``measure(setup, target, n, floor=None) -> dict``: time ``target`` in pedantic mode,
    ``setup`` (untimed) before every round, rounds planned from one warm-up round to fit the
    size's budget. With a ``floor`` runner, also time ``target`` and the floor in alternation
    (the paired ratio, robust to the machine drifting between benchmarks). Returns what goes
    into ``extra_info``: rounds, CPU used by other processes, and the paired ratio."""

    def run(setup, target, n: int, floor=None) -> dict:
        per_round = timed_once(setup, target)
        rounds = plan_rounds(n, per_round)
        with CpuContention() as contention:
            benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=1,
                               iterations=1)
        info = {"rounds": rounds, "foreign_cpu": contention.fraction}
        if floor is not None:
            info.update(paired_ratio(setup, target, floor, rounds))
        return info

    return run


def paired_ratio(setup, target, floor, pairs: int) -> dict:
    """Median over ``pairs`` of (target time / floor time), the two timed back to back, in
    alternating order. Shared VMs drift (the same 1M triad takes 70 or 140 µs from one minute
    to the next, with no other process running); a ratio of neighbours cancels the drift."""
    ratios = []
    for i in range(max(pairs, 3)):
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
    """(pristine weights, qualities) for ``size`` memories; the weights are read-only."""
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
    (None, 8.0, 3, 25),
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


class CpuContention:
    """CPU time that OTHER processes used while a benchmark ran, as a fraction of the machine.

    Benchmarks on a shared machine are only as good as their quiet: other processes stealing
    a core stall every OpenMP barrier. This is recorded in ``extra_info`` so that the report
    can flag measurements taken under load (Linux only; None elsewhere).
    """

    def __enter__(self):
        self._wall = time.perf_counter()
        self._busy = _machine_busy_seconds()
        times = os.times()
        self._own = times.user + times.system
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self._wall
        busy = _machine_busy_seconds()
        times = os.times()
        own = times.user + times.system - self._own
        if busy is None or self._busy is None or wall <= 0:
            self.fraction = None
        else:
            foreign = max(0.0, (busy - self._busy) - own)
            self.fraction = round(foreign / (wall * (os.cpu_count() or 1)), 3)
        return False


def _machine_busy_seconds() -> float | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = fields[0] + fields[1] + fields[2] + sum(fields[5:7])  # user nice system irq softirq
    return busy / os.sysconf("SC_CLK_TCK")
