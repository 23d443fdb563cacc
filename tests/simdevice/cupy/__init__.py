"""A simulated CuPy: the CUDA device the tests run on where no usable GPU is present.

Not a mock of nap_gpu: the real backend code (``nap_gpu.backends.cuda``, ``_device``,
``_kernels``) runs against it unchanged, the kernels are our real cubin's source compiled for
the CPU (``tests/cuda_shim``) and launched with CuPy's calling convention, and the cubin itself
is still compiled by NVRTC with the production options and checked on load. What it imitates
is CuPy where bugs hide: device arrays that refuse implicit conversion to NumPy and host arrays
in device operations, several devices with a current one, a memory pool the driver does not
count as free, and float32 arithmetic that flushes subnormals as CuPy's own kernels do, so a
result that depends on CuPy's elementwise code instead of our cubin fails the parity tests.

It is put on ``sys.path`` (and ``PYTHONPATH``, for subprocesses) by ``tests/conftest.py``
and by ``benchmarks/gpu/run.sh --simulated``.
"""

from __future__ import annotations

import numpy as np
from numpy import (  # noqa: F401
    bool_,
    complex64,
    complex128,
    dtype,
    float16,
    float32,
    float64,
    inf,
    int8,
    int16,
    int32,
    int64,
    intp,
    nan,
    newaxis,
    uint8,
    uint16,
    uint32,
    uint64,
)

from . import _state, cuda  # noqa: F401
from ._ndarray import DeviceCapsule, buffer_at, ndarray
from ._ops import *  # noqa: F403 - the namespace
from ._ops import _EXACT, _FLUSHING, astype, copyto, may_share_memory, shares_memory  # noqa: F401
from ._raw import RawKernel, RawModule  # noqa: F401

__version__ = "14.2.0+simulated"
SIMULATED = True  # the tests' header and run.sh say which device they ran on

_UNSUPPORTED_KINDS = "OUSV"


def _host_to_device(host: np.ndarray, dtype=None) -> ndarray:
    if host.dtype.kind in _UNSUPPORTED_KINDS:
        raise ValueError(f"Unsupported dtype {host.dtype}")
    if dtype is not None:
        host = host.astype(dtype)  # on the host, before the copy (as CuPy does)
    return ndarray._adopt(np.array(host, copy=True))


def _from_interface(obj) -> ndarray:
    cai = obj.__cuda_array_interface__
    shape, typestr = tuple(cai["shape"]), cai["typestr"]
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(typestr).itemsize
    found = buffer_at(cai["data"][0], nbytes)
    if found is None:
        raise ValueError("__cuda_array_interface__ points outside simulated device memory")
    base, start, device = found
    stream = cai.get("stream")
    if cai.get("version", 0) >= 3 and stream not in (None, 1, 2):
        _state.COUNTERS.stream_waits += 1  # CuPy synchronises the producer's stream first
    host = np.ndarray(shape, typestr, buffer=base.data, offset=cai["data"][0] - start,
                      strides=cai.get("strides"))
    return ndarray._view(host, device)


def asarray(a, dtype=None, order=None, *, blocking=False) -> ndarray:
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else astype(a, dtype)
    if hasattr(a, "__cuda_array_interface__"):
        out = _from_interface(a)
        return out if dtype is None else astype(out, dtype)
    if hasattr(a, "__dlpack_device__") and int(a.__dlpack_device__()[0]) == 2:
        return from_dlpack(a)
    return _host_to_device(np.asarray(a), dtype)


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if isinstance(obj, ndarray):
        out = obj.copy() if copy else obj
        return out if dtype is None else astype(out, dtype, copy=False)
    return asarray(obj, dtype)


def ascontiguousarray(a, dtype=None) -> ndarray:  # noqa: F811 - keeps the buffer when it can
    a = asarray(a, dtype)
    return a if a._a.flags.c_contiguous else a.copy()


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True) -> np.ndarray:
    if isinstance(a, ndarray):
        return a.get(stream=stream, order=order, out=out)
    return np.asarray(a, order=order)


def from_dlpack(obj, *, device=None, copy=None) -> ndarray:
    if isinstance(obj, ndarray):
        return obj
    capsule = obj.__dlpack__(stream=cuda.get_current_stream().ptr)
    if not isinstance(capsule, DeviceCapsule):
        raise BufferError("simulated CuPy imports device memory only (got a host DLPack tensor)")
    return capsule.array


def _factory(np_func):
    def make(*args, **kwargs):
        return ndarray._adopt(np_func(*args, **kwargs))
    make.__name__ = np_func.__name__
    return make


empty = _factory(np.empty)
zeros = _factory(np.zeros)
ones = _factory(np.ones)
full = _factory(np.full)
arange = _factory(np.arange)
linspace = _factory(np.linspace)


def get_array_module(*args):
    return __import__("cupy") if any(isinstance(a, ndarray) for a in args) else np


def get_default_memory_pool():
    return cuda.memory._POOL


def fuse(*args, **kwargs):
    """cupy.fuse: the simulated ops run eagerly, flushing as a fused kernel (-ftz) would."""
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return lambda fn: fn
