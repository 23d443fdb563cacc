"""cupy.cuda of the simulated CuPy: devices, streams, events, the memory pool."""

from __future__ import annotations

import time

from .. import _state
from . import memory, runtime  # noqa: F401


def is_available() -> bool:
    return True


class Device:
    """A simulated device; as a context manager it is current inside the block."""

    def __init__(self, device=None) -> None:
        self.id = _state.current_device() if device is None else int(device)
        self._previous: list[int] = []

    @property
    def compute_capability(self) -> str:
        return str(_state.COMPUTE_CAPABILITY)

    @property
    def mem_info(self) -> tuple[int, int]:
        memory_ = _state.MEMORY[self.id]
        return memory_.driver_free, memory_.total

    def use(self) -> None:
        _state.set_current_device(self.id)

    def synchronize(self) -> None:
        """Kernels run synchronously here."""

    def __enter__(self) -> Device:
        self._previous.append(_state.current_device())
        _state.set_current_device(self.id)
        return self

    def __exit__(self, *exc) -> None:
        _state.set_current_device(self._previous.pop())

    def __eq__(self, other) -> bool:
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"


class Stream:
    """A stream; kernels run synchronously, so waiting on one returns at once."""

    null: Stream

    def __init__(self, null=False, non_blocking=False, ptr=None) -> None:
        self.ptr = 0 if null else (ptr if ptr is not None else id(self))
        self._previous: list[Stream] = []

    def synchronize(self) -> None:
        pass

    def use(self) -> Stream:
        global _current
        _current = self
        return self

    def __enter__(self) -> Stream:
        global _current
        self._previous.append(_current)
        _current = self
        return self

    def __exit__(self, *exc) -> None:
        global _current
        _current = self._previous.pop()


Stream.null = Stream(null=True)
_current = Stream.null


def get_current_stream(device=None) -> Stream:
    return _current


class Event:
    """A CUDA event: the host clock when it was recorded (work is synchronous here)."""

    def __init__(self, block=False, disable_timing=False, interprocess=False) -> None:
        self.time_ns: int | None = None

    def record(self, stream=None) -> None:
        self.time_ns = time.perf_counter_ns()

    def synchronize(self) -> None:
        pass

    @property
    def done(self) -> bool:
        return True


def get_elapsed_time(start: Event, end: Event) -> float:
    """Milliseconds between two recorded events."""
    if start.time_ns is None or end.time_ns is None:
        raise runtime.CUDARuntimeError(600, "cudaErrorNotReady: event not recorded")
    return (end.time_ns - start.time_ns) / 1e6
