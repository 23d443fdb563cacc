"""Convergence of the reference workload (docs/law.md §4) per tier, noise level and backend.

Group ``convergence-<tier>``; one benchmark per (backend, sigma), timed once (rounds=1: the
time of 50 iterations, steps and metrics). Its record's ``convergence`` holds:

* ``checkpoints``: separation and inversion ratio (exact, docs/law.md §3) at iterations
  1, 5, 10, 20, 50, and saturation at 50;
* ``first_healthy``: the first iteration at which every health rule holds *with its threshold
  applied* (no NaN, weights in [0, 1], separation > 0.2, inversion ratio > 0.9), i.e.
  ``nap.health(m, it, warmup=0, settle=0).ok`` — the plain ``health(m, it)`` waives the
  thresholds before iterations 10 and 50 and would hold trivially at iteration 1;
  evaluated at every iteration until it holds (None if never within 50);
* ``healthy_at_50``: ``nap.health(m, 50).ok``;
* ``weights_crc32``: a CRC-32 of the final weights' bytes (equal on every backend, or the
  contract is broken).

Backends: every usable one up to the 10M tier; from 100M on only the first usable (cpp),
unless ``--convergence-all-backends``. That the numbers are identical on every backend is
tested in ``tests/test_scaling_report.py`` at a small tier, and the report shows, per tier
and sigma, whether the backends that ran agree.
"""

from __future__ import annotations

import pytest
import scale_support
from scale_support import CpuContention, convergence, size_label

import nap_gpu as nap

from benchmarks.report.schema import Record

SIGMAS = (0.0, 0.1, 0.2)


def _backends(tier: int, config) -> list[str]:
    usable = [b for b, why in nap.available_backends().items() if why is None]
    order = [b for b in ("cuda", "cpp", "numpy") if b in usable]
    if tier > 10**7 and not config.getoption("--convergence-all-backends"):
        return order[:1]
    return order


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("backend", ["cuda", "cpp", "numpy"])
def test_convergence(benchmark, request, tier, backend, sigma):
    fits, why = scale_support.op_fits("convergence", tier)
    if not fits:
        pytest.skip(why)
    reason = nap.available_backends().get(backend)
    if reason is not None:
        pytest.skip(f"nap backend {backend!r} unavailable: {reason}")
    if backend not in _backends(tier, request.config):
        pytest.skip(f"convergence at {size_label(tier)} runs on the first usable backend only "
                    f"(--convergence-all-backends for all)")
    benchmark.group = f"convergence-{size_label(tier)}"
    benchmark.name = f"{backend}-sigma{sigma}[{size_label(tier)}]"
    record = {}

    def run():
        record.update(convergence(tier, sigma, backend))

    with CpuContention() as c:
        benchmark.pedantic(run, rounds=1, iterations=1)
    # its cost grows with n as the mean step's (the 50 iterations also time the metrics)
    benchmark.extra_info.update(Record(
        op="convergence", impl=backend, role="convergence", n=tier, variant=f"σ={sigma:g}",
        sigma=sigma, foreign_cpu=c.fraction, convergence=record,
        fit_seconds=record.get("step_seconds_mean") or None).json())
