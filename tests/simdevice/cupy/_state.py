"""The simulated devices' state: which device is current, memory accounting with a CuPy-like
pool, the count of device-to-host synchronisations, and CuPy's flush-to-zero.

Configured by environment variables, read once (subprocesses of the tests see the same
device): ``NAP_SIM_DEVICES`` (default 2), ``NAP_SIM_MEMORY`` (bytes per device, default 8 GiB),
``NAP_SIM_CC`` (compute capability, default 90: an H200).
"""

from __future__ import annotations

import os
import threading

import numpy as np

DEVICES = int(os.environ.get("NAP_SIM_DEVICES", "2"))
COMPUTE_CAPABILITY = int(os.environ.get("NAP_SIM_CC", "90"))
DRIVER_VERSION = 13000  # CUDA 13.0, as on the H200 host
_local = threading.local()


class OutOfMemoryError(MemoryError):
    """cupy.cuda.memory.OutOfMemoryError"""

    def __init__(self, size: int, total: int) -> None:
        super().__init__(f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes).")


class DeviceMemory:
    """One device's memory: live allocations, and blocks CuPy's pool keeps after a free (the
    driver does not count them as free; the pool reuses them)."""

    def __init__(self, total: int) -> None:
        self.total, self.live, self.pooled = total, 0, 0
        self.lock = threading.Lock()

    def allocate(self, size: int) -> None:
        size = _rounded(size)
        with self.lock:
            reuse = min(self.pooled, size)
            if self.total - self.live - self.pooled < size - reuse:
                raise OutOfMemoryError(size, self.live)
            self.pooled -= reuse
            self.live += size

    def release(self, size: int) -> None:
        with self.lock:
            size = _rounded(size)
            self.live -= size
            self.pooled += size  # CuPy's pool keeps the block

    def free_all_blocks(self) -> None:
        with self.lock:
            self.pooled = 0

    @property
    def driver_free(self) -> int:
        return self.total - self.live - self.pooled


def _rounded(size: int) -> int:
    return -(-max(size, 1) // 512) * 512  # CuPy's pool rounds allocations to 512 bytes


MEMORY = [DeviceMemory(int(os.environ.get("NAP_SIM_MEMORY", str(8 << 30)))) for _ in range(DEVICES)]


def current_device() -> int:
    return getattr(_local, "device", 0)


def set_current_device(device_id: int) -> None:
    if not 0 <= device_id < DEVICES:
        from .cuda.runtime import CUDARuntimeError  # noqa: PLC0415

        raise CUDARuntimeError(101, f"cudaErrorInvalidDevice: invalid device ordinal {device_id}")
    _local.device = device_id


class Counters:
    """What a test may want to count: device-to-host synchronisations, kernel launches."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.host_syncs = self.launches = self.stream_waits = 0


COUNTERS = Counters()


def host_sync() -> None:
    COUNTERS.host_syncs += 1


_F32_EXPONENT = np.uint32(0x7F800000)
_F32_SIGN = np.uint32(0x80000000)


def flush(a):
    """CuPy's -ftz=true on float32 data: subnormals become sign-preserving zeros. Anything
    else (float64 too: ftz acts on single precision only) passes unchanged."""
    if isinstance(a, np.ndarray) and a.dtype == np.float32:
        bits = a.view(np.uint32)
        sub = ((bits & _F32_EXPONENT) == 0) & ((bits & ~_F32_SIGN) != 0)
        if sub.any():
            return np.where(sub, bits & _F32_SIGN, bits).astype(np.uint32).view(np.float32)
        return a
    if isinstance(a, np.float32):
        return flush(np.array([a]))[0]
    return a
