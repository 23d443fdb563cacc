"""The ``NAP_*`` environment variables the library reads, each read here and nowhere else.

===================== ===================================================================
``NAP_BACKEND``       the backend ``"auto"`` resolves to (``cuda``, ``cpp``, ``numpy``)
``NAP_NUM_THREADS``   threads of the C++ core (a positive integer; else OpenMP's or the CPUs')
``NAP_PARALLEL_FROM`` elements from which the core's dense loops use its threads (a count:
                      ``65536``, ``1M``; else measured once per process: what waking them
                      costs against one thread's work)
``NAP_CACHE_DIR``     where compiled CUDA kernels are cached (else ``$XDG_CACHE_HOME/nap_gpu``)
===================== ===================================================================

The service's variables (``NAP_STATE_DIR``, ``NAP_FSYNC``, ...) are the fields of
``nap_gpu.serve.Settings``, which reads them (and a ``.env`` file) itself.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

from ._sizes import parse_count

__all__ = ["backend_override", "kernel_cache_dir", "parallel_from", "requested_threads"]


def backend_override() -> str | None:
    """``NAP_BACKEND``, lower-cased, or None when it is unset, blank or ``auto``."""
    value = os.environ.get("NAP_BACKEND", "").strip().lower()
    return value if value and value != "auto" else None


def requested_threads(environ: Mapping[str, str] | None = None) -> int | None:
    """``NAP_NUM_THREADS`` as a positive integer, or None when unset; ValueError otherwise."""
    value = (os.environ if environ is None else environ).get("NAP_NUM_THREADS", "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"NAP_NUM_THREADS must be a positive integer, got {value!r}")
    return int(value)


def parallel_from(environ: Mapping[str, str] | None = None) -> int | None:
    """``NAP_PARALLEL_FROM`` as a positive count, or None when unset; ValueError otherwise."""
    value = (os.environ if environ is None else environ).get("NAP_PARALLEL_FROM", "").strip()
    if not value:
        return None
    try:
        count = parse_count(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"NAP_PARALLEL_FROM must be a positive count (65536, 1M), got {value!r}")
    return count


def kernel_cache_dir() -> pathlib.Path | None:
    """``NAP_CACHE_DIR`` as a path, or None when unset."""
    value = os.environ.get("NAP_CACHE_DIR")
    return pathlib.Path(value) if value else None
