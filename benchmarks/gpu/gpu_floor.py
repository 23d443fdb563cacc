"""The copy floor of a dense step, shared by ``test_gpu.py`` and ``first_run.py``.

A step over n memories reads n weights and n qualities and writes n weights: 12 bytes per
memory, 12n in all. The floor moves the same bytes in the cheapest way there is, a
device-to-device copy of 6n bytes (``cupy.copyto`` of two contiguous arrays of one dtype is a
``cudaMemcpyAsync``): 6n read + 6n written = 12n.
"""

from __future__ import annotations

#: Bytes a dense step moves per memory: weight read + quality read + weight written.
STEP_BYTES_PER_MEMORY = 12


class CopyFloor:
    """Source and destination of ``6 n`` bytes each on the current device; ``run()`` copies
    one into the other (asynchronously, on the current stream)."""

    def __init__(self, cupy, n: int) -> None:
        self.n = int(n)
        self.copied = STEP_BYTES_PER_MEMORY * self.n // 2   # bytes per array: 6n
        self.moved = 2 * self.copied                          # read + written: 12n
        self.src = cupy.zeros(self.copied, dtype=cupy.uint8)
        self.dst = cupy.empty_like(self.src)
        self._copyto = cupy.copyto

    @property
    def allocated(self) -> int:
        """Device bytes the floor holds (both arrays)."""
        return 2 * self.copied

    def run(self) -> None:
        self._copyto(self.dst, self.src)
