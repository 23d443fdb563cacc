"""cupy.cuda.runtime of the simulated CuPy."""

from __future__ import annotations

from .. import _state


class CUDARuntimeError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def getDeviceCount() -> int:  # noqa: N802 - CUDA's names
    return _state.DEVICES  # read at each call: a test may take the devices away


def getDevice() -> int:  # noqa: N802
    return _state.current_device()


def setDevice(device: int) -> None:  # noqa: N802
    _state.set_current_device(device)


def memGetInfo() -> tuple[int, int]:  # noqa: N802
    """(free, total) as the driver sees them: blocks in CuPy's pool are not free."""
    memory = _state.MEMORY[_state.current_device()]
    return memory.driver_free, memory.total


def driverGetVersion() -> int:  # noqa: N802
    return _state.DRIVER_VERSION


def runtimeGetVersion() -> int:  # noqa: N802
    return _state.DRIVER_VERSION


def getDeviceProperties(device: int) -> dict:  # noqa: N802
    cc = _state.COMPUTE_CAPABILITY
    return {"name": b"Simulated CUDA device (host shim)", "major": cc // 10, "minor": cc % 10,
            "totalGlobalMem": _state.MEMORY[device].total, "multiProcessorCount": 2,
            "l2CacheSize": 0, "clockRate": 0, "memoryClockRate": 0, "memoryBusWidth": 0}


def deviceSynchronize() -> None:  # noqa: N802
    pass
