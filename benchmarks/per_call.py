"""Fixed costs per call on the C++ backend, layer by layer, as a Markdown table:

    python benchmarks/per_call.py [--memories 1000000] [--repeats 3000]

For sparse batches of 1, 10, 1K and 10K events and a dense step of 1K memories: the core alone
(``_core``: the pybind11 binding, its id-range guard, the loop), the backend module (what
``backend="cpp"`` adds: nothing but a call), the validation (``_inputs``: conversions, the id
and finite scans), and the public entry points (``nap.update`` / ``nap.step`` and the Engine
method). Each is the median of ``--repeats`` calls on warm data; the sequential numba loop on
the same events is the peer a user would otherwise write. A regression in a fixed cost shows
in the 1-event and 10-event columns before anywhere else. Last, ``Engine.step`` at 64K-4M
memories with the core's measured parallel threshold, beside 2^16 and one thread.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

import nap_gpu as nap
from nap_gpu import _core, _inputs, backends

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import scale_peers  # noqa: E402 - beside this file

EVENTS = (1, 10, 1_000, 10_000)


def median_us(call: Callable[[], object], repeats: int) -> float:
    for _ in range(min(100, repeats)):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e3


def _sparse_layers(w: np.ndarray, ids: np.ndarray, q: np.ndarray, eng: nap.Engine,
                   numba: Callable | None) -> dict[str, Callable[[], object]]:
    cpp, p, n = backends.get("cpp"), scale_peers.PARAMS, w.size
    layers: dict[str, Callable[[], object]] = {
        "core: `_core.update` (binding, id guard, loop)":
            lambda: _core.update(w, ids, q, p.lr, p.gate),
        "backend: `backends.get('cpp').update`": lambda: cpp.update(w, ids, q, p),
        "validation: `_inputs.events`": lambda: _inputs.events(ids, q, n, cpp, weights=w),
        "public: `nap.update(w, ids, q, backend='cpp')`":
            lambda: nap.update(w, ids, q, p, backend="cpp"),
        "public: `Engine.update(ids, q)`": lambda: eng.update(ids, q),
    }
    if numba is not None:
        layers["peer: numba-seq (`@njit` loop)"] = lambda: numba(w, ids, q)
    return layers


def sparse_rows(n: int, repeats: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(0)
    w = rng.random(n, dtype=np.float32)
    eng = nap.Engine(n, backend="cpp", init=w)
    try:
        numba = scale_peers.numba_seq()
    except Exception:  # noqa: BLE001 - numba is optional (bench-peers extra)
        numba = None
    rows: dict[str, list[float]] = {}
    for m in EVENTS:
        ids = rng.integers(0, n, m).astype(np.int64)
        q = rng.random(m, dtype=np.float32)
        for name, call in _sparse_layers(w, ids, q, eng, numba).items():
            rows.setdefault(name, []).append(median_us(call, repeats))
    return rows


def step_rows(repeats: int) -> dict[str, float]:
    cpp, p, n = backends.get("cpp"), nap.Params(), 1_000
    rng = np.random.default_rng(1)
    w, q = rng.random(n, dtype=np.float32), rng.random(n, dtype=np.float32)
    eng = nap.Engine(n, backend="cpp", init=w)
    return {
        "core: `_core.step`": median_us(lambda: _core.step(w, q, p.lr, p.gate, p.decay), repeats),
        "backend: `backends.get('cpp').step`": median_us(lambda: cpp.step(w, q, p), repeats),
        "validation: `_core.first_nonfinite(q)`": median_us(lambda: _core.first_nonfinite(q),
                                                            repeats),
        "public: `nap.step(w, q, backend='cpp')`":
            median_us(lambda: nap.step(w, q, p, backend="cpp"), repeats),
        "public: `Engine.step(q)`": median_us(lambda: eng.step(q), repeats),
        "public: `Engine.step(q, check_finite=False)`":
            median_us(lambda: eng.step(q, check_finite=False), repeats),
    }


#: Populations around where the core's dense loops go parallel (its measured threshold).
THRESHOLD_SIZES = (1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 20, 1 << 22)
#: The ways to run them: 2^16 (the fixed threshold before it was measured), the measured one,
#: one thread whatever the size.
THRESHOLDS = {"from 2^16": 1 << 16, "measured": 0, "one thread": 2**62}


def threshold_rows(repeats: int) -> dict[int, dict[str, float]]:
    """``Engine.step(q)`` (the finite scan and the step: two loops) per size and threshold,
    the thresholds taking turns call by call, so that drift hits all alike."""
    rows = {}
    for n in THRESHOLD_SIZES:
        rng = np.random.default_rng(n)
        eng = nap.Engine(n, backend="cpp", init=rng.random(n, dtype=np.float32))
        q = rng.random(n, dtype=np.float32)
        calls = max(50, repeats * (1 << 16) // n // 4)
        times: dict[str, list[int]] = {name: [] for name in THRESHOLDS}
        try:
            for turn in range(calls + 10):
                for name, pin in THRESHOLDS.items():
                    _core.set_parallel_threshold(pin)
                    start = time.perf_counter_ns()
                    eng.step(q)
                    if turn >= 10:
                        times[name].append(time.perf_counter_ns() - start)
        finally:
            _core.set_parallel_threshold(0)
        rows[n] = {name: statistics.median(t) / 1e3 for name, t in times.items()}
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memories", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3_000)
    args = parser.parse_args(argv)
    if nap.available_backends()["cpp"] is not None:
        print(f"the C++ core is unusable here: {nap.available_backends()['cpp']}")
        return 1
    rows = sparse_rows(args.memories, args.repeats)
    print(f"Sparse batch over {args.memories:,} memories (median us per call, warm):\n")
    print("| layer | " + " | ".join(f"{m:,} events" for m in EVENTS) + " |")
    print("|---|" + "---|" * len(EVENTS))
    for name, times in rows.items():
        print(f"| {name} | " + " | ".join(f"{t:.2f}" for t in times) + " |")
    print("\nDense step of 1,000 memories (median us per call):\n")
    print("| layer | us |\n|---|---|")
    for name, t in step_rows(args.repeats).items():
        print(f"| {name} | {t:.2f} |")
    measured = _core.parallel_threshold()
    print(f"\n`Engine.step(q)` around the parallel threshold (median us; measured here: "
          f"parallel from {measured:,} elements on {_core.num_threads()} threads):\n")
    print("| memories | " + " | ".join(THRESHOLDS) + " | measured / from 2^16 |")
    print("|---|" + "---|" * (len(THRESHOLDS) + 1))
    for n, t in threshold_rows(args.repeats).items():
        print(f"| {n:,} | " + " | ".join(f"{t[name]:.1f}" for name in THRESHOLDS)
              + f" | {t['measured'] / t['from 2^16']:.2f} |")
    print(f"\n(C++ core: {_core.compile_options()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
