"""A device backend: the host-side orchestration of the CUDA kernels, written against ``xp``.

Launch sizes, the stable sort and segment starts of sparse batches, validation scans and the
metric reductions are array code, so the same class drives the kernels on a GPU (``xp`` =
CuPy, kernels loaded by ``_kernels.CupyKernels``) and, in the tests, the very same kernel
source compiled for the CPU through a host shim (``xp`` = NumPy): the orchestration and the
kernel logic both run on machines without a GPU.

A kernel object is called as CuPy's RawKernel is: ``kernel(grid, block, args)``.
"""

from __future__ import annotations

import numpy as np

from ..params import Params
from . import _xp


class DeviceBackend:
    """The backend operations over a kernel set and an array namespace."""

    #: Threads per block; grids are capped (grid-stride loops cover the rest), which keeps a
    #: launch's size independent of n and lets the shim exercise the striding.
    block = 256
    max_blocks = 65_536

    def __init__(self, name: str, xp, kernels) -> None:
        self.name, self.xp, self.kernels = name, xp, kernels

    def _launch(self, kernel: str, work: int, *args) -> None:
        blocks = min(max(1, -(-work // self.block)), self.max_blocks)
        getattr(self.kernels, kernel)((blocks,), (self.block,), args)

    def step(self, w, q, p: Params) -> None:
        if w.size:
            self._launch("nap_step", w.size, w, q, np.uint64(w.size), *p.float32())

    def step_scalar(self, w, q: float, p: Params) -> None:
        if w.size:
            self._launch("nap_step_scalar", w.size, w, np.float32(q), np.uint64(w.size),
                         *p.float32())

    def decay(self, w, d: float, k: int) -> None:
        if k == 0 or not w.size:
            return
        if d == 0:
            k = 1  # decay by 0 is the clamp: idempotent after one round
        self._launch("nap_decay", w.size, w, np.uint64(w.size), np.float32(d), np.uint64(k))

    def update(self, w, ids, q, p: Params) -> None:
        """Sparse ordered batch: a stable sort by id keeps each id's events in order; one
        kernel thread per distinct id walks its segment. Cost: the sort, O(m log m), plus the
        longest segment walked serially by one thread (a hot id with r events costs r
        dependent updates, about r times a cached load; other ids run in parallel)."""
        xp, m = self.xp, int(ids.size)
        if m == 0:
            return
        order = xp.argsort(ids, kind="stable")
        sorted_ids, sorted_q = ids[order], q[order]
        boundary = xp.empty(m, dtype=bool)
        boundary[0] = True
        boundary[1:] = sorted_ids[1:] != sorted_ids[:-1]
        starts = xp.flatnonzero(boundary).astype(xp.int64)
        lr, gate, _ = p.float32()
        self._launch("nap_update_segments", int(starts.size), w, sorted_ids, sorted_q, starts,
                     np.uint64(starts.size), np.uint64(m), lr, gate)

    def triad(self, w, q, s: float) -> None:
        self._launch("nap_triad", w.size, w, q, np.float32(s), np.uint64(w.size))

    def first_nonfinite(self, x) -> int:
        return _xp.first_nonfinite(x, self.xp)

    def first_bad_id(self, ids, n: int) -> int:
        return _xp.first_bad_id(ids, n, self.xp)

    def exact_sums(self, w, labels):
        return _xp.exact_sums(w, labels, self.xp)
