"""The C++ backend: NumPy arrays updated in place by the pybind11 core (``nap_gpu._core``).

The core iterates the law header (``cpp/include/nap/law.h``) with OpenMP threads and SIMD
loops, releases the GIL, and never copies the caller's arrays (it refuses anything that is
not float32/int64 C-contiguous instead of converting it).
"""

from __future__ import annotations

import numpy as np

# ImportError here (_core) means the core was not built: the registry says so
from .. import _core, _env, _threads
from ..params import Params
from . import _xp

name = "cpp"
xp = np
asarray, from_host, to_host, synchronize, read_only, device_of, narrow_quality = (
    _xp.host_asarray, _xp.host_from_host, _xp.host_to_host, _xp.host_synchronize,
    _xp.host_read_only, _xp.host_device_of, _xp.host_narrow_quality)


# The thread count nap_gpu chose for the core (docs: nap_gpu/_threads.py): NAP_NUM_THREADS, else
# OMP_NUM_THREADS (left to OpenMP: 0), else min(affinity, cgroup CPU quota). set_num_threads(0)
# comes back to it.
_threads.core_loaded(dict(item.split("=", 1) for item in
                          _core.compile_options().split(";")).get("compiler", ""))
_default_threads, threads_reason = _threads.choose_threads()  # ValueError: bad NAP_NUM_THREADS
_core.set_num_threads(_default_threads or 0)
_default_count = _core.num_threads()
_parallel_pin = _env.parallel_from()  # ValueError: a bad NAP_PARALLEL_FROM
_core.set_parallel_threshold(_parallel_pin or 0)


def step(w: np.ndarray, q: np.ndarray, p: Params) -> None:
    _core.step(w, q, p.lr, p.gate, p.decay)


def step_into(w: np.ndarray, q: np.ndarray, out: np.ndarray, p: Params) -> int:
    return _core.step_into(w, q, out, p.lr, p.gate, p.decay)


def step_scalar(w: np.ndarray, q: float, p: Params) -> None:
    _core.step_scalar(w, float(np.float32(q)), p.lr, p.gate, p.decay)


def decay(w: np.ndarray, d: float, k: int) -> None:
    _core.decay(w, d, k)


def update(w: np.ndarray, ids: np.ndarray, q: np.ndarray, p: Params) -> None:
    _core.update(w, ids, q, p.lr, p.gate)


def first_nonfinite(x: np.ndarray) -> int:
    return _core.first_nonfinite(x)


def first_bad_id(ids: np.ndarray, n: int) -> int:
    return _core.first_bad_id(ids, n)


def exact_sums(w: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return _core.exact_sums(w, labels)


def rank_sums(w: np.ndarray, labels: np.ndarray, low_key: int, high_key: int
              ) -> tuple[int, int, int, int, int, int, np.ndarray]:
    """(2U, |R|, |P|, saturated, min key, max key, exact_sums' bins), all in one O(n) pass:
    nap_gpu.metrics.compute's inputs without a sort (nap/core.h rank_sums)."""
    high, low, reinforced, punished, saturated, min_key, max_key, sums = _core.rank_sums(
        w, labels, low_key, high_key)
    return (high << 64) | low, reinforced, punished, saturated, min_key, max_key, sums


num_threads = _core.num_threads


def set_num_threads(n: int) -> None:
    """Threads the core's loops use from now on; ``n < 1`` restores nap_gpu's default (the one
    ``nap-gpu info`` shows: NAP_NUM_THREADS, else min(affinity, cgroup CPU quota))."""
    _core.set_num_threads(int(n) if int(n) >= 1 else (_default_threads or 0))


def thread_config() -> dict[str, str]:
    """The thread count, the wait policy, and why: ``nap-gpu info`` shows them."""
    wait, wait_from = _threads.wait_policy()
    threads = num_threads()
    why = threads_reason if threads == _default_count else (
        f"set_num_threads({threads}); the default {_default_count}: {threads_reason}")
    parallel = _core.parallel_threshold()  # measured here if no loop has asked yet
    return {"threads": str(threads), "threads_from": why, "wait_policy": wait,
            "wait_from": wait_from,
            "parallel_from": f"{parallel:,} elements" if threads > 1 else "never (one thread)",
            "parallel_from_why": f"NAP_PARALLEL_FROM={_parallel_pin}" if _parallel_pin else
            "measured: waking the threads against one thread's step"}


def compile_options() -> dict[str, str]:
    """How the core was built, e.g. ``{"compiler": "GCC 12.2.0", "flags": ..., "simd": ...}``."""
    return dict(item.split("=", 1) for item in _core.compile_options().split(";"))
