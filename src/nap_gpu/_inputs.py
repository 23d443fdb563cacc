"""Input coercion and validation, written once for every backend.

The policy (DESIGN.md §2, §6): every check runs before any weight is written, and a rejected
call changes nothing. ``TypeError`` for the wrong kind of input, ``ValueError`` for bad
values, ``IndexError`` for ids; each message names the argument and the first bad position.

Where inputs live decides where they are checked: device arrays stay on the device
(``backend.asarray``, no copy), everything else comes to the host as NumPy (a view where it
can) and is checked and converted there, then copied to the device once (``_to_backend``), so
a host array of objects or strings gets our ``TypeError``, never CuPy's. Qualities of other
float dtypes are converted to float32 (round to nearest) after clipping to [-1, 2], so a huge
finite float64 stays finite (the law clamps to [0, 1] anyway): on the device in our own
kernel (``backend.narrow_quality``; CuPy's conversion flushes subnormals). Ids of any integer
dtype are converted to int64. These are inputs, so converting them is safe; weights updated in
place are never converted (see ``writable_weights``).

Shapes and kinds, the same on every backend: dense qualities are a scalar or 1-D of length n
(the functional form also takes exactly its weights' shape); any other shape of n elements,
(n, 1) or a grid, is a ``ValueError``, never flattened. A bool is neither an id nor a quality,
inside a list too (NumPy would make ``[True, 5]`` the ids ``[1, 5]``): ``TypeError``. A finite
real number beyond float64's range (``10**400``) is a ``ValueError``, not an OverflowError.
"""

from __future__ import annotations

import math
import numbers
from types import ModuleType

import numpy as np

from .backends import _xp
from .params import Params

_INT64_MAX = np.iinfo(np.int64).max
# Compared as dtype instances: ``arr.dtype == np.float32`` builds a dtype from the type each
# time (twice the cost, on every call's hot path).
_FLOAT32, _INT64 = np.dtype(np.float32), np.dtype(np.int64)


def whole(value, name: str, *, minimum: int) -> int:
    """An argument that is a count (``n``, ``shards``, ``keep``): an integer (bool refused,
    TypeError) of at least ``minimum`` (ValueError), as a Python int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def law_params(value, *, default: Params | None = None) -> Params:
    """An argument that is the law's parameters: a `Params`, or None where a ``default`` is
    given (TypeError otherwise)."""
    if value is None and default is not None:
        return default
    if not isinstance(value, Params):
        raise TypeError(f"params must be a nap.Params, got {type(value).__name__}")
    return value


def _as_float(value, argument: str) -> float:
    """A real number as a Python float; ``ValueError`` for a finite one beyond float64's
    range (an int like 10**400, a Fraction, a long double), which ``float`` would make an
    OverflowError or an infinity."""
    try:
        with np.errstate(over="ignore"):
            result = float(value)
    except OverflowError:
        result = math.inf
    if math.isinf(result) and value != result:
        text = str(value)
        shown = (f"an integer of {int(value).bit_length()} bits"
                 if isinstance(value, numbers.Integral) else text[:40] + "..." * (len(text) > 40))
        raise ValueError(f"{argument} = {shown} is beyond the range of a float64: not a "
                         f"usable {argument}")
    return result


def _scalar_quality(value, check_finite: bool) -> float:
    value = _as_float(value, "quality")
    if check_finite and not np.isfinite(value):
        raise ValueError(f"quality must be finite, got {value!r}")
    return float(np.float32(min(max(value, -1.0), 2.0)))  # NaN passes through min/max


def _is_scalar(x) -> bool:
    if isinstance(x, np.ndarray):  # the common case, spared the ABC check (~0.3 us)
        return False
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def quality(q, n: int, backend: ModuleType, *, check_finite: bool = True, weights=None,
            shape: tuple | None = None, scan: bool = True):
    """Qualities as a float32 C-contiguous 1-D array of length n (or a float for a scalar).

    The shape must be ``(n,)``, or exactly ``shape`` (the functional form passes its weights'
    shape): never another shape of n elements, e.g. (n, 1) or a transposed grid, which would
    pair qualities with memories by an accident of layout.

    An array that may share memory with ``weights`` is copied first: the kernels read q while
    they write w, so overlapping inputs would make the result depend on the backend.
    ``scan=False`` leaves an array's finite check to the caller (``backend.step_into`` does
    it in the step's own pass); a scalar is always checked here.
    """
    if _is_scalar(q):
        return _scalar_quality(q, check_finite)
    arr = _as_float32(_import(q, "quality", backend), "quality", backend)
    if arr.ndim == 0:
        return _scalar_quality(arr, check_finite)
    if arr.ndim != 1 or arr.shape[0] != n:
        if shape is not None and tuple(arr.shape) == tuple(shape):
            arr = arr.reshape(-1)  # the weights' own shape: element for element
        elif arr.ndim == 1:
            raise ValueError(f"quality has length {arr.shape[0]}, expected one per memory ({n})")
        else:
            also = ("" if shape is None or len(shape) == 1
                    else f" or of the weights' shape {tuple(shape)}")
            raise ValueError(f"quality must be 1-D of length {n}{also}, got shape {arr.shape}")
    arr = _unshared(_to_backend(arr, backend), weights, backend.xp)
    if check_finite and scan:
        _require_finite(arr, "quality", backend)
    return arr


def events(ids, q, n: int, backend: ModuleType, *, check_finite: bool = True, weights=None):
    """A sparse batch as (int64 ids, float32 qualities), both C-contiguous 1-D, validated."""
    xp = backend.xp
    ids_arr = _ids(ids, n, backend)
    if _is_scalar(q):
        q = _scalar_quality(q, check_finite)
        q_arr = xp.full(ids_arr.shape, q, dtype=xp.float32)
    else:
        q_arr = _as_float32(_import(q, "quality", backend), "quality", backend)
    if q_arr.ndim == 0:
        q_arr = xp.full(ids_arr.shape, _scalar_quality(q_arr, check_finite), dtype=xp.float32)
    if q_arr.ndim != 1:
        raise ValueError(f"quality must be 1-D, got shape {q_arr.shape}")
    if q_arr.shape[0] != ids_arr.shape[0]:
        raise ValueError(f"ids and quality differ in length: {ids_arr.shape[0]} ids, "
                         f"{q_arr.shape[0]} qualities")
    q_arr = _unshared(_to_backend(q_arr, backend), weights, xp)
    bad = backend.first_bad_id(ids_arr, n)
    if bad >= 0:
        raise IndexError(f"ids[{bad}] = {int(ids_arr[bad])} is outside [0, {n})")
    if check_finite:
        _require_finite(q_arr, "quality", backend)
    return ids_arr, q_arr


def _ids(ids, n: int, backend: ModuleType):
    """Ids as a C-contiguous int64 1-D array of the backend (range checked by the caller)."""
    if type(ids) is np.ndarray and ids.dtype == _INT64 and ids.ndim == 1 and backend.xp is np:
        return np.ascontiguousarray(ids)  # the common case: nothing to convert
    arr = _import(ids, "ids", backend)
    xp = _namespace(arr, backend)
    if arr.dtype == object:  # Python ints beyond int64, or non-numbers (host arrays only)
        values = arr.reshape(-1).tolist()
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"ids must be integers, got ids[{i}] = {v!r}")
            if not 0 <= int(v) < n:  # int(): the stubs compare no Integral with an int
                raise IndexError(f"ids[{i}] = {v} is outside [0, {n})")
        arr = np.asarray(values, dtype=np.int64).reshape(arr.shape)
    if arr.size == 0 and arr.dtype.kind == "f":  # [] arrives as float64
        arr = arr.astype(xp.int64)
    if arr.dtype == bool or arr.dtype.kind not in "iu":
        raise TypeError(f"ids must be integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind == "u" and arr.size:
        too_big = arr > _INT64_MAX
        if bool(too_big.any()):
            bad = int(xp.argmax(too_big))
            raise IndexError(f"ids[{bad}] = {int(arr[bad])} is outside [0, {n})")
    return _to_backend(arr.astype(np.int64, copy=False), backend)


def _unshared(q, weights, xp):
    """q itself, or a copy when it may overlap ``weights`` (read while they are written)."""
    if weights is not None and q.size and xp.may_share_memory(q, weights):
        return q.copy()
    return q


def repeat_count(k) -> int:
    """``decay``'s k: an integer in [0, 2^64 - 1] (bool refused).

    Larger k are a ValueError on every backend (the C++ core and the kernels take a u64, the
    log stores one): none is needed, since every weight reaches its fixpoint within
    nap_gpu.durable.decay_rounds_bound(d) <= 3 * 2^24 + 2 rounds."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if int(k) > 2**64 - 1:  # int(): the stubs compare no Integral with an int
        raise ValueError(f"k = {k} is beyond 2**64 - 1, the largest decay count: no more is "
                         "needed (every weight reaches its fixpoint within 3 * 2**24 + 2 "
                         "rounds: nap_gpu.durable.decay_rounds_bound)")
    return int(k)


def labels(values, n: int) -> np.ndarray:
    """Population labels as host uint8 (1 = reinforced R, 0 = punished P), length n."""
    if isinstance(values, (str, bytes)):
        raise TypeError("labels must be an array with one label per memory, got a string")
    arr = _xp.host_asarray(values)
    if arr.dtype == object:  # e.g. 'R'/'P' from pandas
        if not all(isinstance(v, str) for v in arr.reshape(-1).tolist()):
            raise TypeError("labels must be bool, 0/1 integers or 'R'/'P', got objects")
        arr = arr.astype(str)
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
        wrong = arr > 1 if arr.dtype.kind == "u" else (arr < 0) | (arr > 1)
        if wrong.any():
            bad = int(np.argmax(wrong))
            raise ValueError(f"labels[{bad}] = {arr[bad]}: expected 0 (P) or 1 (R)")
    if arr.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {arr.shape}")
    if arr.dtype == bool and arr.flags.c_contiguous:
        return arr.view(np.uint8)  # the same 0/1 bytes: no copy of a billion labels
    return np.ascontiguousarray(arr, dtype=np.uint8)


def initial_weights(init, n: int, seed) -> np.ndarray:
    """A fresh host float32 population: "uniform" (seeded U[0, 1)), a constant, or an array."""
    if isinstance(init, str):
        if init != "uniform":
            raise ValueError(f"init must be 'uniform', a number or an array, got {init!r}")
        return np.random.default_rng(seed).random(n, dtype=np.float32)
    if isinstance(init, numbers.Real) and not isinstance(init, bool):
        if not 0.0 <= _as_float(init, "init") <= 1.0:  # NaN fails too
            raise ValueError(f"init must lie in [0, 1], got {init!r}")
        return np.full(n, np.float32(init) + np.float32(0.0), np.float32)
    arr = _import_host(init, "init")
    if arr.dtype.kind != "f":
        raise TypeError(f"init must be floating point, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if arr.shape != (n,):
        raise ValueError(f"init must have shape ({n},), got {arr.shape}")
    outside = ~((arr >= 0) & (arr <= 1))
    if outside.any():
        bad = int(np.argmax(outside))
        raise ValueError(f"init[{bad}] = {float(arr[bad])!r} is not a weight in [0, 1]")
    return arr + np.float32(0.0)  # a copy the engine owns; -0.0 becomes +0.0


def is_device_array(x) -> bool:
    """Whether x lives in GPU memory: a DLPack CUDA device, else the CUDA array interface.
    (``hasattr`` cannot be trusted with the latter: PyTorch raises ``RuntimeError`` from it for
    a CUDA tensor that requires grad.)"""
    if isinstance(x, np.ndarray):
        return False
    try:
        return int(x.__dlpack_device__()[0]) in (2, 13)  # kDLCUDA, kDLCUDAManaged
    except (AttributeError, TypeError):
        pass
    try:
        return hasattr(x, "__cuda_array_interface__")
    except RuntimeError:
        return True  # it has one, but refuses to give it


def writable_weights(w, backend: ModuleType, argument: str = "weights", *, flat: bool = True):
    """The caller's weights as an array of ``backend`` sharing their memory, to be updated in
    place: never a copy, which would leave the caller's array stale. Flattened (a view),
    unless ``flat=False``: in their own shape, which qualities may have too (``quality``)."""
    if type(w) is np.ndarray and backend.xp is np:  # the common case
        return _writable_view(w, argument, flat)
    module = type(w).__module__.split(".")[0]
    if module in ("jax", "jaxlib"):
        raise TypeError(f"{argument}: JAX arrays are immutable and cannot be updated in place; "
                        "use nap.Engine(n, init=weights) and read eng.to_numpy()")
    on_device = is_device_array(w)
    if on_device != (backend.xp is not np):
        where = "GPU" if on_device else "host"
        raise TypeError(f"{argument} live in {where} memory; the {backend.name} backend cannot "
                        "update them in place")
    if on_device:
        try:  # shares the device memory (CuPy, DLPack, CAI); the call then runs on its device
            view = backend.asarray(w, any_device=True)
        except (TypeError, ValueError, RuntimeError, BufferError) as exc:
            raise TypeError(f"{argument}: {exc}") from exc
    elif isinstance(w, np.ndarray):
        view = w
    elif hasattr(w, "__dlpack__"):
        try:
            view = np.from_dlpack(w)
        except (TypeError, BufferError, RuntimeError) as exc:
            raise TypeError(f"{argument}: cannot share this array's memory via DLPack ({exc})") from exc
    else:
        raise TypeError(f"{argument} must be an array updated in place (NumPy, CuPy, or an array "
                        f"with __dlpack__), got {type(w).__name__}")
    return _writable_view(view, argument, flat)


def _writable_view(view, argument: str, flat: bool):
    """The caller's own memory, checked: float32, C-contiguous, writable."""
    if view.dtype != _FLOAT32:
        raise TypeError(f"{argument} must be float32 to be updated in place, got {view.dtype}; "
                        "convert once (e.g. w = w.astype(np.float32)) and keep that array")
    if not view.flags.c_contiguous:
        raise ValueError(f"{argument} must be C-contiguous to be updated in place "
                         f"(got strides {view.strides}); pass a contiguous copy and keep it")
    if not getattr(view.flags, "writeable", True):
        raise ValueError(f"{argument} is read-only; it cannot be updated in place")
    return view.reshape(-1) if flat and view.ndim != 1 else view


def _refuse_bools(x, argument: str, where: str = "") -> None:
    """A list or tuple (nested too) holding a bool is refused: NumPy would make True a 1 (an
    id, a quality) without a trace, while a bool is neither."""
    kinds = set(map(type, x))  # one C-level pass
    if bool in kinds or np.bool_ in kinds:
        i = next(i for i, v in enumerate(x) if isinstance(v, (bool, np.bool_)))
        kind = "integers" if argument == "ids" else "floating point"
        raise TypeError(f"{argument} must be {kind}, got {argument}{where}[{i}] = {x[i]!r} "
                        "(a bool)")
    if list in kinds or tuple in kinds:
        for i, v in enumerate(x):
            if isinstance(v, (list, tuple)):
                _refuse_bools(v, argument, f"{where}[{i}]")


def _import(x, argument: str, backend: ModuleType):
    """A device array of the backend where x lives on a device the backend runs on, else a
    NumPy array (a view where it can): host data is checked on the host."""
    if isinstance(x, (list, tuple)):
        _refuse_bools(x, argument)
    try:
        if backend.xp is not np and is_device_array(x):
            return backend.asarray(x)
        return _xp.host_asarray(x)
    except ValueError as exc:  # e.g. on another GPU than the call's
        raise ValueError(f"{argument} {exc}") from exc
    except (TypeError, RuntimeError, BufferError) as exc:  # e.g. DLPack refusing a tensor
        raise TypeError(f"{argument}: {exc}") from exc


def _namespace(arr, backend: ModuleType) -> ModuleType:
    return np if isinstance(arr, np.ndarray) else backend.xp


def _to_backend(arr, backend: ModuleType):
    """A checked input as a C-contiguous array of the backend: host data copied to the device
    once (the only copy), device data as it is."""
    if isinstance(arr, np.ndarray):
        arr = np.ascontiguousarray(arr)
        return arr if backend.xp is np else backend.asarray(arr)
    return backend.xp.ascontiguousarray(arr)


def _import_host(x, argument: str) -> np.ndarray:
    if isinstance(x, (list, tuple)):
        _refuse_bools(x, argument)
    try:
        return _xp.host_asarray(x)
    except TypeError as exc:
        raise TypeError(f"{argument}: {exc}") from exc


def _as_float32(arr, argument: str, backend: ModuleType):
    """Qualities as float32: wider floats clipped and rounded (``narrow_quality``, on the
    host or in the device's kernel), float16 widened exactly."""
    if arr.dtype == _FLOAT32:
        return arr
    if arr.dtype.kind != "f":
        raise TypeError(f"{argument} must be floating point, got dtype {arr.dtype}")
    if arr.dtype.itemsize > 4:
        if isinstance(arr, np.ndarray):
            return _xp.host_narrow_quality(arr)
        return backend.narrow_quality(arr)
    return arr.astype(np.float32)


def not_finite(argument: str, index: int, value: float) -> ValueError:
    """The error for a non-finite input, ``argument[index] = value``: ``index`` counts in the
    whole argument (a sharded input's blocks report theirs plus the block's start)."""
    return ValueError(f"{argument}[{index}] = {value!r} is not finite")


def _require_finite(arr, argument: str, backend: ModuleType) -> None:
    bad = backend.first_nonfinite(arr)
    if bad >= 0:
        raise not_finite(argument, bad, float(arr[bad]))
