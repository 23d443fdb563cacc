"""The CUDA backend: weights resident on the GPU as a CuPy array, updated by the kernels of
``cuda/kernels.cu`` (the law header's functions, compiled by NVRTC with the production options).

Only this module imports CuPy, and only when the backend is first used.
"""

from __future__ import annotations

import cupy
import numpy as np

from ._device import DeviceBackend
from ._kernels import CupyKernels

name = "cuda"
xp = cupy

_backend = DeviceBackend(name, cupy, CupyKernels())

step = _backend.step
step_scalar = _backend.step_scalar
decay = _backend.decay
update = _backend.update
triad = _backend.triad
first_nonfinite = _backend.first_nonfinite
first_bad_id = _backend.first_bad_id
exact_sums = _backend.exact_sums

#: Device bytes per memory an Engine needs: its weights and one quality vector per step.
BYTES_PER_MEMORY = 8


def asarray(x):
    """x as a CuPy array without a host round trip where it already lives on a device
    (CuPy, ``__cuda_array_interface__``, DLPack CUDA arrays such as PyTorch tensors)."""
    if isinstance(x, cupy.ndarray) or hasattr(x, "__cuda_array_interface__"):
        return cupy.asarray(x)
    if hasattr(x, "__dlpack_device__") and int(x.__dlpack_device__()[0]) == 2:  # kDLCUDA
        return cupy.from_dlpack(x)
    return cupy.asarray(np.asarray(x))


def from_host(weights: np.ndarray):
    """Move a fresh float32 population to the device, after checking it fits."""
    need = BYTES_PER_MEMORY * weights.size
    free, total = cupy.cuda.runtime.memGetInfo()
    if need > free:
        device = cupy.cuda.Device()
        raise MemoryError(f"{weights.size:,} memories need {need / 2**30:.2f} GiB on the GPU "
                          f"(weights + one quality vector) but device {device.id} has only "
                          f"{free / 2**30:.2f} GiB free of {total / 2**30:.2f} GiB")
    return cupy.asarray(weights)


def to_host(w) -> np.ndarray:
    return cupy.asnumpy(w)


def synchronize() -> None:
    cupy.cuda.get_current_stream().synchronize()
