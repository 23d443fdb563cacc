"""The CUDA backend: weights resident on the GPU as a CuPy array, updated by the kernels of
``cuda/kernels.cu`` (the law header's functions, compiled by NVRTC with the production options).

Only this module imports CuPy, and only when the backend is first used. Every decision that
sets bits runs in our cubin (compiled without flush-to-zero), never in CuPy's own elementwise
kernels, which CuPy always compiles with ``-ftz=true``: the law, the float64 -> float32
conversion of qualities, the finite and id-range scans, the metrics' integer bins.
"""

from __future__ import annotations

import cupy
import numpy as np

from . import _xp
from ._device import DeviceBackend
from ._kernels import CupyKernels

name = "cuda"
xp = cupy

_backend = DeviceBackend(name, cupy, CupyKernels())

step = _backend.step
step_into = _backend.step_into
step_scalar = _backend.step_scalar
decay = _backend.decay
update = _backend.update
triad = _backend.triad
first_nonfinite = _backend.first_nonfinite
first_bad_id = _backend.first_bad_id
exact_sums = _backend.exact_sums
rank_bins = _backend.rank_bins
gather_mixed = _backend.gather_mixed
narrow_quality = _backend.narrow_quality

#: Device bytes per memory an Engine needs: its weights and one quality vector per step.
BYTES_PER_MEMORY = 8

_KDL_CUDA, _KDL_CUDA_MANAGED = 2, 13


def asarray(x, *, any_device: bool = False):
    """x as a CuPy array on the current device, without a copy where it already lives there.

    Device arrays of other libraries come through DLPack, which orders the producer's stream
    before CuPy's (PyTorch exports ``__cuda_array_interface__`` v2, without its stream: a
    quality written on a side stream could still be in flight); the CUDA array interface is
    the fallback for objects without ``__dlpack__``. Host data is copied once: callers
    validate and convert it on the host first (``nap_gpu._inputs``). An array on another
    device is refused (``ValueError``), never copied across devices behind the caller's back.
    """
    if isinstance(x, cupy.ndarray):
        array = x
    elif _on_device(x):
        try:
            array = cupy.from_dlpack(x) if hasattr(x, "__dlpack__") else cupy.asarray(x)
        except (ValueError, RuntimeError, BufferError) as exc:  # bf16, requires_grad, ...
            raise TypeError(f"cannot be imported from {type(x).__name__} ({exc})") from exc
    else:
        return cupy.asarray(_xp.host_asarray(x))
    current = cupy.cuda.Device().id
    if array.device.id != current and not any_device:
        raise ValueError(f"lives on GPU {array.device.id}; this call runs on GPU {current}")
    return array


def _on_device(x) -> bool:
    try:
        return int(x.__dlpack_device__()[0]) in (_KDL_CUDA, _KDL_CUDA_MANAGED)
    except (AttributeError, TypeError):
        return hasattr(x, "__cuda_array_interface__")


def from_host(weights: np.ndarray):
    """Move a fresh float32 population to the current device, after checking it fits: in the
    driver's free memory plus the blocks CuPy's pool holds (free to reuse, but not free to the
    driver)."""
    need = BYTES_PER_MEMORY * weights.size
    driver_free, total = cupy.cuda.runtime.memGetInfo()
    pooled = cupy.get_default_memory_pool().free_bytes()
    if need > driver_free + pooled:
        device = cupy.cuda.Device()
        raise MemoryError(f"{weights.size:,} memories need {need / 2**30:.2f} GiB on the GPU "
                          f"(weights + one quality vector) but device {device.id} has only "
                          f"{(driver_free + pooled) / 2**30:.2f} GiB free of {total / 2**30:.2f} GiB "
                          f"({pooled / 2**30:.2f} GiB of it in CuPy's memory pool)")
    return cupy.asarray(weights)


def to_host(w) -> np.ndarray:
    return cupy.asnumpy(w)


def read_only(w):
    """What ``Engine.weights`` hands out: a device copy (CuPy arrays have no read-only flag,
    and writing through the live array would bypass the engine: its iteration count, its log)."""
    return w.copy()


def device_of(w):
    """The device holding ``w``, as a context: an engine's calls run on its own device."""
    return w.device


def synchronize() -> None:
    cupy.cuda.get_current_stream().synchronize()
