"""Backend operations written once against an array namespace ``xp`` (NumPy or CuPy)."""

from __future__ import annotations

import contextlib

import numpy as np

#: Elements per chunk of exact_sums: each bincount adds integers < 2^24 in float64, exact while
#: a chunk holds fewer than 2^29 elements.
EXACT_CHUNK = 1 << 24


def exact_sums(w, labels, xp=np):
    """Integer sums of float32 weights by (label, sign and exponent), for exact metrics.

    Returns host uint64 of shape (2, 512, 4): for label l (0 = P, 1 = R) and key
    ``bits >> 23`` (sign and biased exponent): the count, the sum of significands, and the sums
    of the high and low 24-bit halves of the squared significands. Any order of summation
    gives the same integers, so every backend (and every shard) agrees exactly; see
    ``nap_gpu.metrics``.
    """
    out = np.zeros((2, 512, 4), np.uint64)
    for lo in range(0, int(w.size), EXACT_CHUNK):
        bits = w[lo:lo + EXACT_CHUNK].view(xp.uint32)
        key = (bits >> 23).astype(xp.int64)
        sig = (bits & 0x7FFFFF).astype(xp.uint64)
        sig |= ((key & 0xFF) != 0).astype(xp.uint64) << 23
        sq = sig * sig
        key += labels[lo:lo + EXACT_CHUNK].astype(xp.int64) * 512
        for col, weights in enumerate((None, sig, sq >> 24, sq & 0xFFFFFF)):
            counts = xp.bincount(key, weights=None if weights is None else weights.astype(xp.float64),
                                 minlength=1024)
            out[:, :, col] += np.asarray(_to_host(counts)).astype(np.uint64).reshape(2, 512)
    return out


def first_nonfinite(x, xp=np) -> int:
    """Index of the first NaN or infinity in x, or -1."""
    bad = ~xp.isfinite(x)
    return int(xp.argmax(bad)) if bool(bad.any()) else -1


def first_bad_id(ids, n: int, xp=np) -> int:
    """Index of the first id outside [0, n), or -1."""
    bad = (ids < 0) | (ids >= n)
    return int(xp.argmax(bad)) if bool(bad.any()) else -1


def _to_host(a):
    return a.get() if hasattr(a, "get") else a


_DLPACK_HOST_DEVICES = (1, 3)  # kDLCPU, kDLCUDAHost


def host_asarray(x) -> np.ndarray:
    """x as a NumPy array: a view where x lives on the host (buffer protocol, ``__array__``,
    DLPack), else a host copy of a device array (for inputs only, never for weights)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__dlpack_device__"):
        if int(x.__dlpack_device__()[0]) in _DLPACK_HOST_DEVICES:
            return np.from_dlpack(x)
        try:
            return np.from_dlpack(x, device="cpu", copy=True)
        except (TypeError, BufferError, RuntimeError, ValueError):
            if hasattr(x, "get"):  # CuPy-style explicit device-to-host copy
                return np.asarray(x.get())
            raise
    if isinstance(x, (str, bytes)):
        raise TypeError(f"expected an array of numbers, got {type(x).__name__}")
    return np.asarray(x)


def host_to_host(w: np.ndarray) -> np.ndarray:
    """A float32 copy of host weights."""
    return np.array(w, dtype=np.float32, copy=True)


def host_from_host(weights: np.ndarray) -> np.ndarray:
    """Host weights stay where they are (the Engine already owns this fresh array)."""
    return weights


def host_synchronize() -> None:
    """Host backends are synchronous."""


def host_read_only(w: np.ndarray) -> np.ndarray:
    """A read-only view of host weights (the Engine's methods are the way to change them)."""
    view = w.view()
    view.flags.writeable = False
    return view


_NO_DEVICE = contextlib.nullcontext()  # stateless: one serves every call


def host_device_of(w: np.ndarray):
    """Host backends have no device to enter."""
    return _NO_DEVICE


def host_narrow_quality(x: np.ndarray) -> np.ndarray:
    """float64 qualities as float32: finite values clipped to [-1, 2] first (a huge finite
    value stays finite; the law clamps to [0, 1] anyway), NaN and inf as they are, then
    rounded to nearest. The device backend does the same in its cubin (``nap_narrow_quality``)."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(x), np.clip(x, -1.0, 2.0), x).astype(np.float32)
