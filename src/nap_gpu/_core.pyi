# Types of the pybind11 extension built from cpp/python/bindings.cpp (checked against the
# built module by mypy's stubtest in tests/test_typing.py). Arrays are C-contiguous and never
# converted: a wrong dtype or layout raises TypeError.
import numpy as np
from numpy.typing import NDArray

def step(w: NDArray[np.float32], q: NDArray[np.float32], lr: float, gate: float,
         decay: float) -> None:
    """Dense step in place: feedback then decay."""

def step_into(w: NDArray[np.float32], q: NDArray[np.float32], out: NDArray[np.float32],
              lr: float, gate: float, decay: float) -> int:
    """Dense step written to out with q's finite check: -1, or q's first non-finite index."""

def step_scalar(w: NDArray[np.float32], q: float, lr: float, gate: float, decay: float) -> None:
    """Dense step in place, one quality for all."""

def decay(w: NDArray[np.float32], decay: float, k: int) -> None:
    """Passive decay k times, in place."""

def update(w: NDArray[np.float32], ids: NDArray[np.int64], q: NDArray[np.float32], lr: float,
           gate: float) -> None:
    """Sparse ordered batch in place: feedback only, in the order given within each id."""

def first_nonfinite(x: NDArray[np.float32]) -> int:
    """Index of the first NaN or inf, or -1."""

def first_bad_id(ids: NDArray[np.int64], n: int) -> int:
    """Index of the first id outside [0, n), or -1."""

def exact_sums(w: NDArray[np.float32], labels: NDArray[np.uint8]) -> NDArray[np.uint64]:
    """Integer sums by (label, sign+exponent), shape (2, 512, 4): count, significand, squared
    hi/lo halves."""

def rank_sums(w: NDArray[np.float32], labels: NDArray[np.uint8], low_key: int, high_key: int
              ) -> tuple[int, int, int, int, int, int, int, NDArray[np.uint64]]:
    """(2U high, 2U low, |R|, |P|, saturated, min key, max key, exact_sums) in one pass."""

def triad(w: NDArray[np.float32], q: NDArray[np.float32], s: float) -> None:
    """Bandwidth floor for benchmarks: w += s * q in place."""

def num_threads() -> int:
    """OpenMP threads the loops use."""

def set_num_threads(n: int) -> None:
    """Set the loops' thread count; n < 1 restores the OpenMP default."""

def parallel_threshold() -> int:
    """Elements from which the dense loops run on several threads (measured once, or pinned)."""

def set_parallel_threshold(n: int) -> None:
    """Pin that threshold to n elements; 0 returns to the measured one."""

def compile_options() -> str:
    """How the core was compiled."""
