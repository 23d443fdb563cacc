"""The functional form: the law applied in place to the caller's own float32 array.

``nap.step(w, q)`` and ``nap.update(w, ids, q)`` take the weights where they live and write
into that memory: NumPy arrays (C++ core, or NumPy when no core is built) and host arrays
shared through DLPack without a copy (e.g. PyTorch CPU tensors). An array that cannot be
written in place (another dtype, non-contiguous, read-only, immutable like JAX, or on a
device without its backend) is refused with an error saying what to do: never a silent copy
that would leave the caller's array stale.
"""

from __future__ import annotations

from . import _inputs, backends
from .params import Params

__all__ = ["step", "update"]


def _host_backend(name: str | None):
    backend = backends.resolve(name)
    if backend.xp.__name__ != "numpy":  # "auto" picked a device backend: use the best host one
        backend = backends.get("cpp" if backends.available_backends()["cpp"] is None else "numpy")
    return backend


def step(weights, quality, params: Params | None = None, *, backend: str | None = "auto",
         check_finite: bool = True) -> None:
    """Dense step in place on ``weights``: one quality per element (or one for all)."""
    w = _inputs.writable_weights(weights)
    be = _host_backend(backend)
    q = _inputs.quality(quality, w.size, be, check_finite=check_finite)
    p = Params() if params is None else params
    if isinstance(q, float):
        be.step_scalar(w, q, p)
    else:
        be.step(w, q, p)


def update(weights, ids, quality, params: Params | None = None, *,
           backend: str | None = "auto", check_finite: bool = True) -> None:
    """Sparse ordered batch in place on ``weights``: feedback only, events in the order given."""
    w = _inputs.writable_weights(weights)
    be = _host_backend(backend)
    ids_, q = _inputs.events(ids, quality, w.size, be, check_finite=check_finite)
    be.update(w, ids_, q, Params() if params is None else params)
