"""The functional form: the law applied in place to the caller's own float32 array.

``nap.step(w, q)`` and ``nap.update(w, ids, q)`` take the weights where they live and write
into that memory: NumPy arrays (C++ core, or NumPy when no core is built), host arrays shared
through DLPack without a copy (e.g. PyTorch CPU tensors), and GPU arrays (CuPy, PyTorch CUDA
tensors, anything with ``__cuda_array_interface__`` or DLPack) on the cuda backend. An array
that cannot be written in place (another dtype, non-contiguous, read-only, immutable like JAX,
or on a device without its backend) is refused with an error saying what to do: never a silent
copy that would leave the caller's array stale.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from . import _env, _inputs, backends
from .params import Params

if TYPE_CHECKING:
    from ._types import ArrayInput, WritableArray

__all__ = ["step", "update"]


def _backend_for(weights: WritableArray, name: str | None) -> ModuleType:
    """The named backend (or ``NAP_BACKEND``'s), else the best for where ``weights`` live."""
    if name not in (None, "auto") or _env.backend_override() is not None:
        return backends.resolve(name)
    if _inputs.is_device_array(weights):
        return backends.get("cuda")
    return backends.best_host()


#: Params are frozen: one default serves every call (building one costs ~5 us, as much as a
#: 1K-event batch).
_DEFAULT_PARAMS = Params()


def _params(params: Params | None) -> Params:
    return _inputs.law_params(params, default=_DEFAULT_PARAMS)


def step(weights: WritableArray, quality: ArrayInput, params: Params | None = None, *,
         backend: str | None = "auto", check_finite: bool = True) -> None:
    """Dense step in place on ``weights``: one quality per element (or one for all), as a
    1-D array in the weights' C order or an array of exactly the weights' shape.

    ``backend="auto"`` uses ``NAP_BACKEND`` when set, else the best backend for where
    ``weights`` live (cpp or numpy on the host, cuda on a GPU).

    Parameters
    ----------
    weights : float32 array
        Written in place: C-contiguous, writable, on a device its backend reaches.
    quality : float or array
        One quality for every weight, or one per weight; finite values outside [0, 1] are
        clamped (docs/law.md §2).
    params : Params, optional
        The law's parameters (default ``Params()``).
    backend : str, optional
        ``"auto"`` (default), ``"cuda"``, ``"cpp"`` or ``"numpy"``.
    check_finite : bool
        Refuse NaN/inf qualities (default); False skips that scan for trusted producers.

    Examples
    --------
    >>> import numpy as np
    >>> import nap_gpu as nap
    >>> w = np.full(3, 0.5, np.float32)
    >>> nap.step(w, [1.0, 0.5, 0.0], nap.Params(lr=0.25, decay=0.0))  # 0.5 == gate punishes
    >>> print(w)
    [0.75  0.375 0.25 ]
    """
    p = _params(params)
    be = _backend_for(weights, backend)
    shaped = _inputs.writable_weights(weights, be, flat=False)
    w = shaped.reshape(-1)
    with be.device_of(w):  # qualities: 1-D, one per element, or the weights' own shape
        q = _inputs.quality(quality, w.size, be, check_finite=check_finite, weights=w,
                            shape=shaped.shape)
        if isinstance(q, float):
            be.step_scalar(w, q, p)
        else:
            be.step(w, q, p)


def update(weights: WritableArray, ids: ArrayInput, quality: ArrayInput,
           params: Params | None = None, *,
           backend: str | None = "auto", check_finite: bool = True) -> None:
    """Sparse ordered batch in place on ``weights``: feedback only, events in the order given.

    Parameters
    ----------
    weights : float32 array
        Written in place, as for `step`; ids index it flat, in C order.
    ids : int or array of int
        The memories, in [0, weights.size); an id listed twice is updated twice, in order.
    quality : float or array
        One quality for all events, or one per event.
    params, backend, check_finite
        As for `step`.

    Examples
    --------
    >>> import numpy as np
    >>> import nap_gpu as nap
    >>> w = np.full(4, 0.5, np.float32)
    >>> nap.update(w, [2, 2, 0], [1.0, 1.0, 0.0], nap.Params(lr=0.25))  # no decay in update
    >>> print(w)
    [0.25 0.5  1.   0.5 ]
    """
    p = _params(params)
    be = _backend_for(weights, backend)
    w = _inputs.writable_weights(weights, be)
    with be.device_of(w):
        ids_, q = _inputs.events(ids, quality, w.size, be, check_finite=check_finite,
                                 weights=w)
        be.update(w, ids_, q, p)
