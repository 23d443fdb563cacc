"""Input coercion and validation, written once for every backend.

The policy (DESIGN.md §2, §6): every check runs before any weight is written, and a rejected
call changes nothing. ``TypeError`` for the wrong kind of input, ``ValueError`` for bad
values, ``IndexError`` for ids; each message names the argument and the first bad position.

Qualities of other float dtypes are converted to float32 (round to nearest) after clipping
to [-1, 2] (so a huge finite float64 stays finite; the law clamps to [0, 1] anyway). Ids of
any integer dtype are converted to int64. These are inputs, so converting them is safe; the
weights are never converted (see ``writable_weights``).
"""

from __future__ import annotations

import numbers
from types import ModuleType

import numpy as np

_DLPACK_HOST_DEVICES = (1, 3)  # kDLCPU, kDLCUDAHost


def to_host(x, argument: str) -> np.ndarray:
    """A NumPy view of x where x lives on the host (buffer protocol, ``__array__`` or DLPack),
    else a host copy of a device array (inputs only)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__dlpack_device__"):
        device_type = int(x.__dlpack_device__()[0])
        try:
            if device_type in _DLPACK_HOST_DEVICES:
                return np.from_dlpack(x)
            return np.from_dlpack(x, device="cpu", copy=True)
        except (TypeError, BufferError, RuntimeError, ValueError) as exc:
            if hasattr(x, "get"):  # CuPy-style explicit device-to-host copy
                return np.asarray(x.get())
            raise TypeError(f"{argument}: cannot read this array on the host ({exc})") from exc
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{argument} must be an array of numbers, got {type(x).__name__}")
    return np.asarray(x)


def quality(q, n: int, backend: ModuleType, *, check_finite: bool = True):
    """Qualities as a float32 C-contiguous 1-D array of length n (or a float for a scalar)."""
    if isinstance(q, numbers.Real) and not isinstance(q, bool):
        value = float(q)
        if check_finite and not np.isfinite(value):
            raise ValueError(f"quality must be finite, got {value!r}")
        return float(np.float32(min(max(value, -1.0), 2.0)))
    arr = to_host(q, "quality")
    arr = _as_float32(arr, "quality")
    if arr.ndim != 1:
        if arr.size != n or arr.ndim == 0:
            raise ValueError(f"quality must be 1-D of length {n}, got shape {arr.shape}")
        arr = arr.reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"quality has length {arr.shape[0]}, expected one per memory ({n})")
    arr = np.ascontiguousarray(arr)
    if check_finite:
        _require_finite(arr, "quality", backend)
    return arr


def events(ids, q, n: int, backend: ModuleType, *, check_finite: bool = True):
    """A sparse batch as (int64 ids, float32 qualities), both C-contiguous 1-D, validated."""
    ids_arr = to_host(ids, "ids")
    if ids_arr.dtype == bool or ids_arr.dtype.kind not in "iu":
        raise TypeError(f"ids must be integers, got dtype {ids_arr.dtype}")
    if ids_arr.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {ids_arr.shape}")
    q_arr = _as_float32(to_host(q, "quality"), "quality")
    if q_arr.ndim == 0:
        q_arr = np.full(ids_arr.shape, q_arr, np.float32)
    if q_arr.ndim != 1:
        raise ValueError(f"quality must be 1-D, got shape {q_arr.shape}")
    if q_arr.shape[0] != ids_arr.shape[0]:
        raise ValueError(f"ids and quality differ in length: {ids_arr.shape[0]} ids, "
                         f"{q_arr.shape[0]} qualities")
    if ids_arr.dtype.kind == "u" and ids_arr.size and ids_arr.max() > np.iinfo(np.int64).max:
        raise IndexError(f"ids[{int(np.argmax(ids_arr > np.iinfo(np.int64).max))}] is out of range")
    ids_arr = np.ascontiguousarray(ids_arr, dtype=np.int64)
    q_arr = np.ascontiguousarray(q_arr)
    bad = backend.first_bad_id(ids_arr, n)
    if bad >= 0:
        raise IndexError(f"ids[{bad}] = {int(ids_arr[bad])} is outside [0, {n})")
    if check_finite:
        _require_finite(q_arr, "quality", backend)
    return ids_arr, q_arr


def labels(values, n: int) -> np.ndarray:
    """Population labels as uint8 (1 = reinforced R, 0 = punished P), length n."""
    arr = to_host(values, "labels")
    if arr.dtype.kind in "US":
        upper = np.char.upper(arr.astype(str))
        unknown = ~np.isin(upper, ["R", "P"])
        if unknown.any():
            bad = int(np.argmax(unknown))
            raise ValueError(f"labels[{bad}] = {arr[bad]!r}: expected 'R' or 'P'")
        arr = upper == "R"
    elif arr.dtype != bool:
        if arr.dtype.kind not in "iu":
            raise TypeError(f"labels must be bool, 0/1 integers or 'R'/'P', got dtype {arr.dtype}")
        wrong = (arr != 0) & (arr != 1)
        if wrong.any():
            bad = int(np.argmax(wrong))
            raise ValueError(f"labels[{bad}] = {arr[bad]}: expected 0 (P) or 1 (R)")
    if arr.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def initial_weights(init, n: int, seed) -> np.ndarray:
    """A fresh float32 population: "uniform" (seeded U[0, 1)), a constant, or an array."""
    if isinstance(init, str):
        if init != "uniform":
            raise ValueError(f"init must be 'uniform', a number or an array, got {init!r}")
        return np.random.default_rng(seed).random(n, dtype=np.float32)
    if isinstance(init, numbers.Real) and not isinstance(init, bool):
        if not 0.0 <= float(init) <= 1.0:  # NaN fails too
            raise ValueError(f"init must lie in [0, 1], got {init!r}")
        return np.full(n, np.float32(init) + np.float32(0.0), np.float32)
    arr = _as_float32(to_host(init, "init"), "init")
    if arr.shape != (n,):
        raise ValueError(f"init must have shape ({n},), got {arr.shape}")
    outside = ~((arr >= 0) & (arr <= 1))
    if outside.any():
        bad = int(np.argmax(outside))
        raise ValueError(f"init[{bad}] = {arr[bad]!r} is not a weight in [0, 1]")
    return arr + np.float32(0.0)  # a copy the engine owns; -0.0 becomes +0.0


def writable_weights(w, argument: str = "weights") -> np.ndarray:
    """A NumPy view of the caller's host weights, to be updated in place; never a copy."""
    module = type(w).__module__.split(".")[0]
    if module in ("jax", "jaxlib"):
        raise TypeError(f"{argument}: JAX arrays are immutable and cannot be updated in place; "
                        "use nap.Engine(n, init=weights) and read eng.to_numpy()")
    if module == "cupy":
        raise TypeError(f"{argument}: a CuPy array needs the cuda backend; it is unavailable here")
    if isinstance(w, np.ndarray):
        view = w
    elif hasattr(w, "__dlpack__"):
        device_type = int(w.__dlpack_device__()[0])
        if device_type not in _DLPACK_HOST_DEVICES:
            raise TypeError(f"{argument}: the array lives on device type {device_type}, not the "
                            "host; it needs the cuda backend, unavailable here")
        try:
            view = np.from_dlpack(w)
        except (TypeError, BufferError, RuntimeError) as exc:
            raise TypeError(f"{argument}: cannot share this array's memory via DLPack ({exc})") from exc
    else:
        raise TypeError(f"{argument} must be an array updated in place (NumPy, or a host array "
                        f"with __dlpack__), got {type(w).__name__}")
    if view.dtype != np.float32:
        raise TypeError(f"{argument} must be float32 to be updated in place, got {view.dtype}; "
                        "convert once (e.g. w = w.astype(np.float32)) and keep that array")
    if not view.flags.c_contiguous:
        raise ValueError(f"{argument} must be C-contiguous to be updated in place "
                         f"(got strides {view.strides}); pass np.ascontiguousarray(w) and keep it")
    if not view.flags.writeable:
        raise ValueError(f"{argument} is read-only; it cannot be updated in place")
    return view.reshape(-1)


def _as_float32(arr: np.ndarray, argument: str) -> np.ndarray:
    if arr.dtype == np.float32:
        return arr
    if arr.dtype.kind != "f":
        raise TypeError(f"{argument} must be floating point, got dtype {arr.dtype}")
    if arr.dtype.itemsize > 4:  # keep huge finite values finite; NaN/inf stay as they are
        arr = np.clip(arr, -1.0, 2.0)
    return arr.astype(np.float32)


def _require_finite(arr: np.ndarray, argument: str, backend: ModuleType) -> None:
    bad = backend.first_nonfinite(arr)
    if bad >= 0:
        raise ValueError(f"{argument}[{bad}] = {arr[bad]!r} is not finite")
