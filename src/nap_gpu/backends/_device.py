"""A device backend: the host-side orchestration of the CUDA kernels, written against ``xp``.

Launch sizes, allocations and the stable sort and segment starts of sparse batches are array
code (the validation scans, the float64 -> float32 conversion of qualities and the metric
sums run in our own kernels), so the same class drives the kernels on a GPU (``xp`` =
CuPy, kernels loaded by ``_kernels.CupyKernels``) and, in the tests, the very same kernel
source compiled for the CPU through a host shim (``xp`` = NumPy): the orchestration and the
kernel logic both run on machines without a GPU.

A kernel object is called as CuPy's RawKernel is: ``kernel(grid, block, args)``.
"""

from __future__ import annotations

import math

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

    def step_into(self, w, q, out, p: Params) -> int:
        """The checked step written to out in one kernel (w only read, q's finite check on
        the way): -1, or q's first non-finite index (a second scan finds it; out's contents
        are then unspecified)."""
        if not w.size:
            return -1
        nonfinite = self.xp.zeros(1, dtype=self.xp.uint64)
        self._launch("nap_step_into", w.size, w, q, out, np.uint64(w.size), *p.float32(),
                     nonfinite)
        return self.first_nonfinite(q) if int(nonfinite[0]) else -1  # the one host sync

    def step_scalar(self, w, q: float, p: Params) -> None:
        if w.size:
            self._launch("nap_step_scalar", w.size, w, np.float32(q), np.uint64(w.size),
                         *p.float32())

    def decay(self, w, d: float, k: int) -> None:
        if k == 0 or not w.size:
            return
        if d == 0:
            k = 1  # decay by 0 is the clamp: idempotent after one round
        # Each weight stops at its fixpoint (nap::decay_repeated), which any weight reaches in
        # fewer than 2^31 rounds (at most one per float32 in [0, 1], plus one clamp): a k
        # beyond 64 bits does the same.
        k = min(k, 2**64 - 1)
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

    # -- scans and conversions, in our own kernels -------------------------------------------
    # CuPy's elementwise and reduction kernels are compiled with -ftz=true, which flushes float32
    # subnormals: nothing that decides bits goes through them. (Allocation, fills, copies and
    # integer sums of uint64 bins change no float bits.)

    def _first(self, kernel: str, a, *args) -> int:
        """The least index a scan kernel reports, or -1: one launch, one read back."""
        n = int(a.size)
        if n == 0:
            return -1
        first = self.xp.full(1, n, dtype=self.xp.uint64)  # the kernel lowers it to a hit
        self._launch(kernel, n, a.reshape(-1), np.uint64(n), *args, first)
        found = int(first[0])  # the one host sync
        return found if found < n else -1

    def first_nonfinite(self, x) -> int:
        """Index of the first NaN or infinity in float32 x, or -1."""
        return self._first("nap_first_nonfinite", self.xp.ascontiguousarray(x))

    def first_bad_id(self, ids, n: int) -> int:
        """Index of the first int64 id outside [0, n), or -1."""
        return self._first("nap_first_bad_id", self.xp.ascontiguousarray(ids), np.int64(n))

    def narrow_quality(self, x):
        """A new float32 array of x's shape from float64 x: finite values clipped to [-1, 2]
        and rounded to nearest (subnormals kept), NaN and infinities as they are; exactly
        ``_inputs._as_float32`` on float64 (``nap::narrow_quality``)."""
        if x.dtype != np.float64:
            raise TypeError(f"narrow_quality takes float64, got {x.dtype}")
        out = self.xp.empty(x.shape, dtype=self.xp.float32)
        if out.size:
            src = self.xp.ascontiguousarray(x).reshape(-1)
            self._launch("nap_narrow_quality", src.size, src, out.reshape(-1), np.uint64(src.size))
        return out

    #: exact_sums runs on about this many times sqrt(n) threads. Each thread flushes its
    #: register bins with atomics at the end (4 per bin it holds), so the atomics on a converged
    #: population's two bins grow with the threads while the loads in flight grow too; sqrt(n)
    #: keeps both well below a pass over memory: 1M weights -> 8K threads of 125 weights,
    #: 1G -> 253K threads (about the resident threads of an H100/H200) of 4K weights.
    exact_threads_per_sqrt = 8

    def _binning_threads(self, n: int) -> int:
        return max(1, min(n, self.exact_threads_per_sqrt * math.isqrt(n)))

    def _flat(self, w, labels):
        xp = self.xp
        return (xp.ascontiguousarray(w).reshape(-1),
                xp.ascontiguousarray(labels, dtype=xp.uint8).reshape(-1))

    def exact_sums(self, w, labels):
        """The integer bins of ``_xp.exact_sums`` (host uint64, shape (2, 512, 4)), summed on
        the device with integer atomics; one copy to the host."""
        n = int(w.size)
        bins = self.xp.zeros(2 * 512 * 4, dtype=self.xp.uint64)
        if n:
            self._launch("nap_exact_sums", self._binning_threads(n), *self._flat(w, labels),
                         np.uint64(n), bins)
        return np.array(_xp._to_host(bins), dtype=np.uint64).reshape(2, 512, 4)

    #: Rank bins per label (``nap::kRankBins``: keys binned by their top 16 bits).
    rank_bins_per_label = 1 << 16

    def rank_bins(self, w, labels, low_key: int, high_key: int):
        """One read of the weights for the metrics (``nap_rank_bins``): the rank histogram (a
        device uint64 array (2, 65536): label, then the keys' top 16 bits), and on the host
        ``exact_sums``' bins, the saturated count and the least and greatest key."""
        xp, n = self.xp, int(w.size)
        # exact_sums' bins and the three stats share one buffer: one copy to the host
        host_part = xp.zeros(2 * 512 * 4 + 3, dtype=xp.uint64)
        host_part[-2] = 0xFFFFFFFF  # the least key so far
        ranks = xp.zeros(2 * self.rank_bins_per_label, dtype=xp.uint64)
        if n:
            self._launch("nap_rank_bins", self._binning_threads(n), *self._flat(w, labels),
                         np.uint64(n), np.uint64(low_key), np.uint64(high_key),
                         host_part[:-3], ranks, host_part[-3:])
        bins, (saturated, lowest, highest) = np.split(
            np.array(_xp._to_host(host_part), dtype=np.uint64), [2 * 512 * 4])
        return (ranks.reshape(2, -1), bins.reshape(2, 512, 4), int(saturated), int(lowest),
                int(highest))

    def gather_mixed(self, w, labels, mixed, starts, sizes: tuple[int, int]):
        """The keys of the weights in the rank bins flagged by ``mixed`` (uint8, one per bin),
        as two device uint32 arrays (P's, R's) of ``sizes``: each bin's keys from
        ``starts[label, bin]`` on (uint64 (2, 65536)), in no order within the bin."""
        xp = self.xp
        out_p, out_r = (xp.empty(size, dtype=xp.uint32) for size in sizes)
        if sizes[0] or sizes[1]:
            w, labels = self._flat(w, labels)
            cursors = xp.ascontiguousarray(starts, dtype=xp.uint64).reshape(-1).copy()
            self._launch("nap_gather_mixed", int(w.size), w, labels, np.uint64(w.size),
                         xp.ascontiguousarray(mixed, dtype=xp.uint8), cursors, out_p, out_r)
        return out_p, out_r
