"""The simulated CuPy's array functions: NumPy on the device buffers, with CuPy's numerics.

CuPy compiles its own elementwise and reduction kernels with ``-ftz=true``: float32 inputs
and outputs of arithmetic, comparisons, min/max, reductions and conversions are flushed to
zero when subnormal. Functions in ``_FLUSHING`` do exactly that here; data movement (copies,
indexing, concatenation, views) and the sorts (radix and merge sorts CuPy ships precompiled
without ftz) keep every bit. float64 is never flushed.
"""

from __future__ import annotations

import functools

import numpy as np

from . import _state
from ._ndarray import ndarray


def check_device(*arrays) -> None:
    current = _state.current_device()
    for a in arrays:
        if isinstance(a, ndarray) and a._device != current:
            raise ValueError(f"Array device must be same as the current device: array device = "
                             f"{a._device} while current = {current}")


def _unwrap(x, flush: bool):
    if isinstance(x, ndarray):
        check_device(x)
        return _state.flush(x._a) if flush else x._a
    if isinstance(x, np.ndarray):
        raise TypeError(f"Unsupported type {type(x)}")
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, flush) for v in x)
    return _state.flush(x) if flush else x


def _wrap(result, flush: bool):
    if isinstance(result, tuple):
        return tuple(_wrap(r, flush) for r in result)
    if not isinstance(result, np.ndarray):
        result = np.asarray(result)
    return ndarray._adopt(_state.flush(result) if flush else result)


def index(key):
    """An index with device arrays replaced by their buffers (index arrays are integers or
    booleans: nothing to flush)."""
    if isinstance(key, tuple):
        return tuple(index(k) for k in key)
    if isinstance(key, ndarray):
        check_device(key)
        return key._a
    return key


def _function(np_func, flush: bool):
    @functools.wraps(np_func)
    def call(*args, out=None, **kwargs):
        raw = [_unwrap(a, flush) for a in args]
        kwargs = {k: _unwrap(v, flush) if isinstance(v, ndarray) else v for k, v in kwargs.items()}
        with np.errstate(all="ignore"):  # CUDA kernels never warn
            result = _wrap(np_func(*raw, **kwargs), flush)
        if out is None:
            return result
        check_device(out)
        out._a[...] = result._a
        return out
    return call


_FLUSHING = (
    "add", "subtract", "multiply", "divide", "true_divide", "floor_divide", "remainder", "power",
    "negative", "absolute", "abs", "sqrt", "exp", "log", "minimum", "maximum", "fmin", "fmax",
    "clip", "less", "less_equal", "greater", "greater_equal", "equal", "not_equal",
    "isfinite", "isnan", "isinf", "signbit", "logical_and", "logical_or", "logical_not",
    "sum", "prod", "mean", "min", "max", "amin", "amax", "argmax", "argmin", "cumsum",
    "any", "all", "count_nonzero", "nonzero", "flatnonzero", "searchsorted", "diff", "unique",
    "allclose", "array_equal", "floor", "ceil", "round", "trunc",
)
_EXACT = (
    "bitwise_and", "bitwise_or", "bitwise_xor", "invert", "left_shift", "right_shift",
    "where", "sort", "argsort", "concatenate", "stack", "repeat", "tile", "take", "roll",
    "reshape", "ravel", "flip", "broadcast_to", "expand_dims", "squeeze", "zeros_like",
    "ones_like", "empty_like", "full_like", "copy", "ascontiguousarray", "bincount",
)
for _name in _FLUSHING:
    globals()[_name] = _function(getattr(np, _name), flush=True)
for _name in _EXACT:
    globals()[_name] = _function(getattr(np, _name), flush=False)
del _name


def bincount(x, weights=None, minlength=0):  # noqa: F811 - float32 weights flush, int keys don't
    flush_weights = isinstance(weights, ndarray) and weights.dtype == np.float32
    raw_w = None if weights is None else _unwrap(weights, flush_weights)
    return _wrap(np.bincount(_unwrap(x, False), weights=raw_w, minlength=minlength), False)


def astype(a: ndarray, dtype, copy: bool = True) -> ndarray:
    """cvt with ftz: float32 inputs flush (to wider types and integers), float32 outputs too."""
    check_device(a)
    dtype = np.dtype(dtype)
    if dtype == a.dtype and not copy:
        return a
    source = _state.flush(a._a)
    with np.errstate(all="ignore"):
        return ndarray._adopt(_state.flush(source.astype(dtype)))


def may_share_memory(a, b, max_work=None) -> bool:
    return bool(np.may_share_memory(a._a, b._a))


def shares_memory(a, b, max_work=None) -> bool:
    return bool(np.shares_memory(a._a, b._a))


def copyto(dst: ndarray, src, casting="same_kind", where=True) -> None:
    check_device(dst)
    np.copyto(dst._a, _unwrap(src, False), casting=casting, where=where)
