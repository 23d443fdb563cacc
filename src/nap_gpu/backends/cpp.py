"""The C++ backend: NumPy arrays updated in place by the pybind11 core (``nap_gpu._core``).

The core iterates the law header (``cpp/include/nap/law.h``) with OpenMP threads and SIMD
loops, releases the GIL, and never copies the caller's arrays (it refuses anything that is
not float32/int64 C-contiguous instead of converting it).
"""

from __future__ import annotations

import os

import numpy as np

from .. import _core  # ImportError here means the core was not built: the registry says so
from ..params import Params
from . import _xp

name = "cpp"
xp = np
asarray, from_host, to_host, synchronize, read_only, device_of, narrow_quality = (
    _xp.host_asarray, _xp.host_from_host, _xp.host_to_host, _xp.host_synchronize,
    _xp.host_read_only, _xp.host_device_of, _xp.host_narrow_quality)


def _threads_from_env() -> None:
    value = os.environ.get("NAP_NUM_THREADS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"NAP_NUM_THREADS must be a positive integer, got {value!r}")
        _core.set_num_threads(int(value))


_threads_from_env()


def step(w: np.ndarray, q: np.ndarray, p: Params) -> None:
    _core.step(w, q, p.lr, p.gate, p.decay)


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


num_threads = _core.num_threads
set_num_threads = _core.set_num_threads


def compile_options() -> dict[str, str]:
    """How the core was built, e.g. ``{"compiler": "GCC 12.2.0", "flags": ..., "simd": ...}``."""
    return dict(item.split("=", 1) for item in _core.compile_options().split(";"))
