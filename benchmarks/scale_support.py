"""Helpers of the scale suites: memory fit and measurement, event streams, the machine.

Memory is *measured*, never estimated: ``PeakRss`` resets the kernel's peak-RSS counter of
this process (``/proc/self/clear_refs`` 5, Linux >= 4.0) and reads ``VmHWM`` afterwards; where
that is not possible it falls back to ``tracemalloc`` (which sees NumPy's allocations, not the
C++ core's) and says so in ``mem_method``. The *fit check* is the one place that estimates:
before a tier is allocated, the bytes its operations need (``NEED_PER_MEMORY``, deliberately
generous) are compared with ``MemAvailable``.
"""

from __future__ import annotations

import gc
import os
import platform
import time
import tracemalloc
import zlib

import numpy as np

from nap_gpu._sizes import size_label  # noqa: F401 - re-exported to the suites

#: Conservative bytes per memory each operation's benchmarks hold at once, plus a fixed
#: allowance for event batches. Used only to refuse, before allocating, what cannot fit.
#: test_scale.py's module-scoped fixtures stay alive until the module ends, so an operation
#: counts those of the operations that ran before it in the module (sparse, then decay, then
#: snapshots). The first estimates counted each operation alone, and a 1G run was killed by
#: the kernel's OOM killer at 24 GB (2026-11-25).
NEED_PER_MEMORY = {
    "dense-step": 36,      # pristine w, q, working w, floor's w, peers' copies (JAX: 3 more)
    "sparse-batch": 16,    # pristine w, working w, the peak measurement's copy, a peer's copy
    "decay": 28,           # the sparse fixtures (8) + pristine w, working w, floor's w, a copy
    "metrics": 24,         # weights, labels, both populations sorted (+ their masks)
    "snapshot": 36,        # the fixtures above (20) + source, engine, loaded copy, a copy
    "convergence": 28,     # engine, qualities, noise, metrics' sorted copies
    "wal": 16,             # the engine's weights, the snapshot written at open (page cache)
    "serve": 24,           # the server's weights, the health check's copy and its sort
}
FIXED_BYTES = {"sparse-batch": 10_000_000 * 40}  # ids, qualities, Zipf draws of 10M events
HEADROOM = 1.5 * 2**30  # left to the OS and the other processes


def mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def mem_total() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def op_need(op: str, n: int) -> int:
    return int(NEED_PER_MEMORY[op] * n + FIXED_BYTES.get(op, 0) + HEADROOM)


def op_fits(op: str, n: int) -> tuple[bool, str]:
    need, avail = op_need(op, n), mem_available()
    if need <= avail:
        return True, ""
    return False, (f"{op} at {n:,} memories needs ~{need / 2**30:.1f} GiB "
                   f"({NEED_PER_MEMORY[op]} B/memory + headroom), MemAvailable is "
                   f"{avail / 2**30:.1f} GiB: refused before allocating")


def tier_fits(n: int) -> tuple[bool, int, int]:
    """(fits, bytes the smallest operation needs, bytes available)."""
    need = min(op_need(op, n) for op in NEED_PER_MEMORY)
    avail = mem_available()
    return need <= avail, need, avail


# --------------------------------------------------------------------------------------------
# Peak memory, measured
# --------------------------------------------------------------------------------------------
def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_peak(build, op) -> dict:
    """Peak bytes while ``state = build(); op(state)`` runs, above the process's state before
    ``build`` (everything the operation needs: its population, its inputs, its scratch), and
    the transient part (above the state once ``build`` is done). Measured twice at once:
    peak RSS (``VmHWM`` after resetting it: sees every allocation, C++ and JIT runtimes
    included, at page granularity, and blind to memory the allocator reuses: small tiers
    can read 0) and ``tracemalloc`` (exact, but only for Python/NumPy allocations). The
    reported peak is the larger of the two. ``build``'s result is dropped afterwards."""
    gc.collect()
    use_rss = _status_kib("VmRSS") is not None and _reset_hwm()
    tracemalloc.start()
    try:
        rss0 = _status_kib("VmRSS") * 1024 if use_rss else 0
        state = build()
        rss1 = _status_kib("VmRSS") * 1024 if use_rss else 0
        built, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        if use_rss:
            _reset_hwm()
        op(state)
        _, tpeak = tracemalloc.get_traced_memory()
        peak = _status_kib("VmHWM") * 1024 if use_rss else 0
    finally:
        tracemalloc.stop()
    del state
    gc.collect()
    out = {"mem_rss_peak_bytes": max(0, peak - rss0) if use_rss else None,
           "mem_tracemalloc_peak_bytes": tpeak,
           "mem_rss_transient_bytes": max(0, peak - rss1) if use_rss else None,
           "mem_tracemalloc_transient_bytes": max(0, tpeak - built)}
    rss_peak = out["mem_rss_peak_bytes"] or 0
    out["mem_peak_bytes"] = max(rss_peak, tpeak)
    out["mem_transient_bytes"] = max(out["mem_rss_transient_bytes"] or 0,
                                     out["mem_tracemalloc_transient_bytes"])
    out["mem_method"] = ("rss" if rss_peak >= tpeak else "tracemalloc") if use_rss \
        else "tracemalloc (NumPy allocations only)"
    return out


def per_memory(info: dict, n: int) -> dict:
    """A peak measurement as fields of a report record (benchmarks/report/schema.py): the
    peak per memory, and the measurement in full under ``memory``."""
    out = {k: v for k, v in info.items()}
    out["mem_transient_bytes_per_memory"] = info["mem_transient_bytes"] / n
    return {"mem_peak_bytes_per_memory": info["mem_peak_bytes"] / n, "memory": out}


# --------------------------------------------------------------------------------------------
# Event streams of the sparse ordered batch
# --------------------------------------------------------------------------------------------
#: Odd, not a multiple of 5, so k -> k * SCATTER mod n is a bijection for every tier (powers
#: of ten): the hot Zipf ranks land on scattered ids, not on ids 0, 1, 2, ...
SCATTER = 2654435761


def event_ids(n: int, m: int, dist: str, seed: int = 0) -> np.ndarray:
    """``m`` int64 ids in [0, n): ``uniform``, or ``zipf`` (rank k drawn with probability
    proportional to k^-1.1 on 1..n, by rejection from NumPy's unbounded Zipf(1.1), then
    scattered over the ids by a fixed bijection)."""
    rng = np.random.default_rng([n, m, 7 if dist == "zipf" else 3, seed])
    if dist == "uniform":
        return rng.integers(0, n, m, dtype=np.int64)
    if dist != "zipf":
        raise ValueError(dist)
    out = np.empty(m, np.int64)
    filled = 0
    while filled < m:
        draw = rng.zipf(1.1, size=max(1024, int((m - filled) * 1.3)))
        draw = draw[draw <= n][: m - filled]
        out[filled:filled + draw.size] = draw
        filled += draw.size
    out -= 1
    return (out * (SCATTER % n)) % n if n > 1 else out


def event_qualities(m: int, seed: int = 0) -> np.ndarray:
    """Qualities in [0, 1): half above the gate, half below, as feedback mixes."""
    return np.random.default_rng([m, 11, seed]).random(m, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------
def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cores": os.cpu_count(), "mem_total_bytes": mem_total(),
            "mem_available_bytes": mem_available()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for mod in ("nap_gpu", "numpy", "numba", "jax", "torch", "sklearn", "pytest_benchmark"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception as exc:  # noqa: BLE001 - a missing peer is information
            versions[mod] = f"absent ({type(exc).__name__})"
    info["versions"] = versions
    try:
        from nap_gpu import backends
        info["backends"] = {k: (v or "usable") for k, v in backends.available_backends().items()}
        if info["backends"].get("cpp") == "usable":
            be = backends.get("cpp")
            info["cpp_threads"] = int(be.num_threads())
            info["cpp_build"] = be.compile_options()
    except Exception as exc:  # noqa: BLE001
        info["backends"] = f"error: {exc}"
    return info


# --------------------------------------------------------------------------------------------
# Names, and CPU used by other processes (conftest re-exports these)
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Convergence of the reference workload (test_convergence.py; tests/test_scaling_report.py
# checks that it is identical on every backend)
# --------------------------------------------------------------------------------------------
CHECKPOINTS = (1, 5, 10, 20, 50)


def convergence(n: int, sigma: float, backend: str, seed: int = 0,
                iterations: int = 50) -> dict:
    """The convergence record of one (tier, sigma, backend)."""
    import nap_gpu as nap
    eng = nap.Engine(n, backend=backend, seed=seed)
    workload = nap.ReferenceWorkload(n, sigma=sigma, seed=seed)
    labels = workload.labels
    checkpoints, first_healthy = {}, None
    step_seconds = 0.0
    m = None
    for it in range(1, iterations + 1):
        q = workload.next_quality()
        t0 = time.perf_counter()
        eng.step(q)
        eng.synchronize()
        step_seconds += time.perf_counter() - t0
        need = it in CHECKPOINTS or first_healthy is None
        if need:
            m = eng.metrics(labels)
            if first_healthy is None and nap.health(m, it, warmup=0, settle=0).ok:
                first_healthy = it
            if it in CHECKPOINTS:
                checkpoints[str(it)] = {"separation": m.separation,
                                        "inversion_ratio": m.inversion_ratio,
                                        "saturation": m.saturation}
    final = eng.to_numpy()
    return {"n": n, "sigma": sigma, "backend": eng.backend, "checkpoints": checkpoints,
            "first_healthy": first_healthy,
            "healthy_at_50": bool(nap.health(m, iterations).ok),
            "saturation_at_50": m.saturation,
            "weights_crc32": zlib.crc32(memoryview(final).cast("B")),
            "step_seconds_mean": step_seconds / iterations}


