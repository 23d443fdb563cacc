"""The reference workload of docs/law.md §4, seeded so every backend sees the same inputs.

n memories, half reinforced (R: even ids) and half punished (P: odd ids); each iteration
draws q ~ U[0.6, 1.0) for R and U[0.0, 0.4) for P in float32, plus Gaussian noise of std
``sigma`` when sigma > 0 (the law then clamps). Initial weights are the Engine's seeded
U[0, 1). Qualities come from their own stream, ``default_rng([seed, 1])``, into one reused
buffer: generating them allocates nothing per iteration.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["ReferenceWorkload"]


class ReferenceWorkload:
    """Seeded qualities of the reference workload: call ``next_quality()`` once per iteration.

    Parameters
    ----------
    n : int
        Memories (>= 2): even ids reinforced (R), odd ids punished (P).
    sigma : float
        Standard deviation of the Gaussian noise added to the qualities (default 0: none).
    seed : int
        Seed of the qualities' stream.

    Examples
    --------
    >>> import nap_gpu as nap
    >>> work = nap.ReferenceWorkload(4, seed=0)
    >>> work.labels
    array([1, 0, 1, 0], dtype=uint8)
    >>> q = work.next_quality()
    >>> bool((q[0::2] >= 0.6).all() and (q[1::2] < 0.4).all())
    True
    """

    def __init__(self, n: int, *, sigma: float = 0.0, seed: int = 0) -> None:
        if n < 2:
            raise ValueError(f"the reference workload needs n >= 2 (half R, half P), got {n}")
        if not sigma >= 0.0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.n, self.sigma, self.seed = n, float(sigma), seed
        self._rng = np.random.default_rng([seed, 1])
        self._q = np.empty(n, np.float32)
        self._noise = np.empty(n, np.float32) if sigma > 0 else None

    @property
    def labels(self) -> npt.NDArray[np.uint8]:
        """1 for R (even ids), 0 for P (odd ids), as uint8."""
        labels = np.zeros(self.n, np.uint8)
        labels[0::2] = 1
        return labels

    def next_quality(self) -> npt.NDArray[np.float32]:
        """The next iteration's qualities (a reused buffer: copy it to keep it)."""
        q = self._q
        self._rng.random(dtype=np.float32, out=q)
        q *= np.float32(0.4)
        q[0::2] += np.float32(0.6)
        if self._noise is not None:
            self._rng.standard_normal(dtype=np.float32, out=self._noise)
            self._noise *= np.float32(self.sigma)
            q += self._noise
        return q
