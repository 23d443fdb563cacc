"""The C++ core's default threads against one thread, on an idle and on a loaded machine.

Group ``threads-1M``: the raw 1M dense step (``backends.get("cpp").step``, in cache, the
weights restored before every round, untimed) with the default thread count of this process
(``nap-gpu info``: NAP_NUM_THREADS, else min(affinity, cgroup CPU quota)) and with one thread,
first on the machine as it is (``idle``), then with one busy-loop process pinned to every CPU
of this process's affinity mask (``loaded``: started here, killed after the benchmark). The
defect this guards against: with OpenMP's spinning waits, the default threads were 10-40x
slower than one thread under load (benchmarks/README.md "Threads and waiting").

Read the ratios, which the module prints at the end and stores in its record's ``detail``:
``ratio_to_1_thread`` (this benchmark's median over the 1-thread benchmark's of the same
condition) and ``paired_ratio`` (the p50 of default-thread rounds over the p50 of 1-thread
rounds, the two alternating in blocks of ``BLOCK`` rounds under the same load, which cancels
drift). No timed assertions. The wait policy is fixed when the OpenMP runtime loads: to
measure another one, run this module again under it, e.g. the pre-fix defaults:

    NAP_NUM_THREADS=$(nproc) GOMP_SPINCOUNT=300000 pytest benchmarks/test_threads.py

(``GOMP_SPINCOUNT=300000`` is libgomp's own default when OMP_WAIT_POLICY is unset; setting any
wait variable stops nap_gpu from setting its own).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from scale_support import CpuContention

import nap_gpu as nap
from nap_gpu import backends
from nap_gpu.params import Params

from benchmarks.report.schema import Record

N = 1_000_000
ROUNDS = 400       # per benchmark (the 1M step takes 0.1-0.3 ms idle, up to ~20 ms loaded)
BLOCK = 10         # paired rounds: blocks of BLOCK rounds per thread count, alternating
PAIRED_BLOCKS = 40
LOAD_SETTLE_S = 0.3  # the busy loops reach full speed before the timing starts

pytestmark = pytest.mark.skipif(backends.available_backends()["cpp"] is not None,
                                reason=f"cpp backend unusable: "
                                       f"{backends.available_backends()['cpp']}")

_rows: list[dict] = []  # one per benchmark run: condition, label, p50, its record's detail


def _cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


@contextlib.contextmanager
def machine_load(condition: str):
    """``loaded``: one busy-loop process per CPU of this process's mask, each pinned to its
    CPU; ``idle``: nothing added (other users of the machine still count: see foreign_cpu)."""
    procs: list[subprocess.Popen] = []
    try:
        if condition == "loaded":
            for cpu in _cpus():
                code = (f"import os\ntry: os.sched_setaffinity(0, {{{cpu}}})\n"
                        f"except (AttributeError, OSError): pass\nwhile True: pass\n")
                procs.append(subprocess.Popen([sys.executable, "-c", code],
                                              stdin=subprocess.DEVNULL))
            time.sleep(LOAD_SETTLE_S)
        yield len(procs)
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


@pytest.fixture(scope="module")
def cpp():
    return backends.get("cpp")


@pytest.fixture(scope="module")
def default_threads(cpp) -> int:
    return cpp.num_threads()


@pytest.fixture(scope="module")
def data():
    weights = np.random.default_rng([N, 0]).random(N, dtype=np.float32)
    quality = nap.ReferenceWorkload(N, seed=N).next_quality().copy()
    return weights, quality


@pytest.fixture(scope="module", autouse=True)
def summary(request, cpp):
    """At the end of the module: each default-thread benchmark's ratio to the 1-thread one of
    the same condition (into its record's detail, which pytest-benchmark writes out at the end of
    the session, so the order the tests ran in does not matter), and the table."""
    yield
    if not _rows:
        return
    medians = {(r["condition"], r["label"]): r["p50_ms"] for r in _rows}
    config = cpp.thread_config()
    lines = [f"threads-1M: default {config['threads']} threads ({config['threads_from']}); "
             f"wait {config['wait_policy']} ({config['wait_from']})"]
    for r in sorted(_rows, key=lambda r: (r["condition"], r["label"] != "1-thread")):
        one = medians.get((r["condition"], "1-thread"))
        ratio = r["p50_ms"] / one if r["label"] == "default" and one else None
        r["info"]["ratio_to_1_thread"] = ratio
        threads = f"{r['threads']} thread{'s' * (r['threads'] != 1)}"
        text = (f"  {r['condition']:<7} {r['label']:<8} ({threads}) p50 "
                f"{r['p50_ms']:8.3f} ms  foreign CPU {r['foreign_cpu']}")
        if ratio is not None:
            paired = r["info"].get("paired_ratio")
            text += f"   x{ratio:.2f} of 1 thread" + (
                f", paired x{paired:.2f}" if paired is not None else "")
        lines.append(text)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        for line in ["", *lines]:
            (reporter.write_line if reporter else print)(line)


def _stepper(cpp, data):
    pristine, quality = data
    w = pristine.copy()
    params = Params()

    def reset():
        np.copyto(w, pristine)

    def run():
        cpp.step(w, quality, params)

    return reset, run


def _paired(cpp, reset, run, threads: int, blocks: int) -> float:
    """p50 of ``threads``-thread rounds over p50 of 1-thread rounds, alternating in blocks."""
    times: dict[int, list[float]] = {threads: [], 1: []}
    saved = cpp.num_threads()
    try:
        for b in range(blocks):
            for t in ((threads, 1) if b % 2 == 0 else (1, threads)):
                cpp.set_num_threads(t)
                for i in range(BLOCK + 1):
                    reset()
                    t0 = time.perf_counter()
                    run()
                    if i:  # the first round after a switch is a warm-up
                        times[t].append(time.perf_counter() - t0)
    finally:
        cpp.set_num_threads(saved)
    return float(np.median(times[threads]) / np.median(times[1]))


@pytest.mark.parametrize("label", ["1-thread", "default"])
@pytest.mark.parametrize("condition", ["idle", "loaded"])
def test_threads(benchmark, request, cpp, default_threads, data, condition, label):
    smoke = bool(request.config.getoption("--smoke"))
    threads = 1 if label == "1-thread" else default_threads
    benchmark.group = "threads-1M"
    benchmark.name = f"{condition}-{label}"
    reset, run = _stepper(cpp, data)
    saved = cpp.num_threads()
    config = cpp.thread_config()
    # (one n: the growth table shows it, with no slope to fit)
    detail = {"condition": condition, "threads": threads, "default_threads": default_threads,
              **{k: config[k] for k in ("threads_from", "wait_policy", "wait_from")}}
    with machine_load(condition) as busy:
        cpp.set_num_threads(threads)
        try:
            with CpuContention() as contention:
                benchmark.pedantic(run, setup=reset, rounds=1 if smoke else ROUNDS,
                                   warmup_rounds=0 if smoke else 10, iterations=1)
        finally:
            cpp.set_num_threads(saved)
        paired = None
        if label == "default" and not smoke:
            paired = _paired(cpp, reset, run, threads, PAIRED_BLOCKS)
    detail.update({"busy_processes": busy, "p50_ms": benchmark.stats.stats.median * 1e3,
                   "paired_ratio": paired, "ratio_to_1_thread": None})  # filled in at the end
    benchmark.extra_info.update(Record(op="threads", impl=f"cpp-{label}", role="nap", n=N,
                                       foreign_cpu=contention.fraction, detail=detail).json())
    _rows.append({"condition": condition, "label": label, "threads": threads,
                  "p50_ms": detail["p50_ms"], "foreign_cpu": contention.fraction, "info": detail})
