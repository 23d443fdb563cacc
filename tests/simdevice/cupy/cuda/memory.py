"""cupy.cuda.memory of the simulated CuPy: the default pool, per current device."""

from __future__ import annotations

from .. import _state
from .._state import OutOfMemoryError  # noqa: F401


class MemoryPool:
    """CuPy's MemoryPool: reports and frees the current device's pool."""

    @staticmethod
    def _memory():
        return _state.MEMORY[_state.current_device()]

    def used_bytes(self) -> int:
        return self._memory().live

    def free_bytes(self) -> int:
        return self._memory().pooled

    def total_bytes(self) -> int:
        return self._memory().live + self._memory().pooled

    def free_all_blocks(self, stream=None) -> None:
        self._memory().free_all_blocks()


_POOL = MemoryPool()
