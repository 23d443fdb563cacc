"""The simulated device array: a NumPy buffer standing for device memory, with CuPy's manners.

It refuses what CuPy refuses (implicit conversion to NumPy, host arrays mixed into device
operations, arrays of another device than the current one), says CUDA in
``__cuda_array_interface__`` (v3) and ``__dlpack_device__``, has no writeable flag, copies to
the host only through ``.get()`` (and ``int()``/``float()``/``bool()``, counted as host
synchronisations), and computes float32 through ``_ops``, which flush subnormals as CuPy's own
kernels do.
"""

from __future__ import annotations

import weakref

import numpy as np

from . import _state

KDL_CPU, KDL_CUDA = 1, 2
#: Live device buffers by address, so a foreign __cuda_array_interface__ pointer maps back.
_BUFFERS: dict[int, tuple[weakref.ref, int]] = {}


def _account(host: np.ndarray, device: int) -> np.ndarray:
    """Count a fresh host buffer as device memory of ``device`` until it is collected."""
    memory = _state.MEMORY[device]
    memory.allocate(host.nbytes)
    address = host.__array_interface__["data"][0]
    _BUFFERS[address] = (weakref.ref(host), device)
    weakref.finalize(host, _released, memory, host.nbytes, address)
    return host


def _released(memory, nbytes, address) -> None:
    memory.release(nbytes)
    _BUFFERS.pop(address, None)


def buffer_at(address: int, nbytes: int):
    """(buffer, its address, its device) of the live device buffer holding
    [address, address + nbytes), or None."""
    for start, (ref, device) in list(_BUFFERS.items()):
        base = ref()
        if base is not None and start <= address and address + nbytes <= start + base.nbytes:
            return base, start, device
    return None


class Flags:
    """CuPy's flags: c_contiguous, f_contiguous, owndata; no writeable flag."""

    def __init__(self, host: np.ndarray, owndata: bool) -> None:
        self.c_contiguous = bool(host.flags.c_contiguous)
        self.f_contiguous = bool(host.flags.f_contiguous)
        self.owndata = owndata

    def __getitem__(self, name: str):
        return getattr(self, {"C_CONTIGUOUS": "c_contiguous", "F_CONTIGUOUS": "f_contiguous",
                              "OWNDATA": "owndata"}[name])


class MemoryPointer:
    def __init__(self, ptr: int, device_id: int) -> None:
        self.ptr, self.device_id = ptr, device_id

    def __int__(self) -> int:
        return self.ptr


class DeviceCapsule:
    """What ``__dlpack__`` hands a consumer asking for device memory: only the simulated CuPy
    (``cupy.from_dlpack``) can open it, as only a CUDA-aware consumer could open CuPy's."""

    def __init__(self, array: ndarray, stream) -> None:
        self.array, self.stream = array, stream


class ndarray:  # noqa: N801 - CuPy's name
    """A device array of the simulated CuPy (constructed by the namespace's functions)."""

    __array_priority__ = 100

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C") -> None:
        if memptr is not None or strides is not None:
            raise NotImplementedError("simulated CuPy: ndarray(memptr=, strides=) is not simulated")
        self._setup(_account(np.empty(shape, dtype, order=order), _state.current_device()),
                    _state.current_device(), owndata=True)

    def _setup(self, host: np.ndarray, device: int, owndata: bool) -> None:
        self._a, self._device, self._owndata = host, device, owndata

    @classmethod
    def _adopt(cls, host: np.ndarray, device: int | None = None) -> ndarray:
        """A fresh host result becomes a new device allocation (on the current device)."""
        device = _state.current_device() if device is None else device
        if not host.flags.owndata or host.base is not None:
            host = host.copy()
        out = cls.__new__(cls)
        out._setup(_account(host, device), device, owndata=True)
        return out

    @classmethod
    def _view(cls, host: np.ndarray, device: int) -> ndarray:
        out = cls.__new__(cls)
        out._setup(host, device, owndata=False)
        return out

    # -- attributes ---------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    dtype = property(lambda self: self._a.dtype)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: Flags(self._a, self._owndata))
    data = property(lambda self: MemoryPointer(self._a.__array_interface__["data"][0], self._device))

    @property
    def device(self):
        from .cuda import Device  # noqa: PLC0415

        return Device(self._device)

    @property
    def T(self) -> ndarray:  # noqa: N802
        return self._view(self._a.T, self._device)

    @property
    def base(self):
        return None if self._owndata else self

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"array({np.array2string(self._a, separator=', ')}, dtype={self.dtype})"

    # -- to the host: explicit only ------------------------------------------------------
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def get(self, stream=None, order="C", out=None, blocking=True) -> np.ndarray:
        _state.host_sync()
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None) -> None:
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr)}")
        if arr.shape != self.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        self._a[...] = arr

    def _scalar(self):
        if self.size != 1:
            raise TypeError("only length-1 arrays can be converted to Python scalars")
        _state.host_sync()
        return self._a.reshape(-1)[0]

    def __int__(self) -> int:
        return int(self._scalar())

    def __index__(self) -> int:
        if self.dtype.kind not in "iub":
            raise TypeError("only integer arrays can be used as an index")
        return int(self._scalar())

    def __float__(self) -> float:
        return float(self._scalar())

    def __complex__(self) -> complex:
        return complex(self._scalar())

    def __bool__(self) -> bool:
        if self.size != 1:
            raise ValueError("The truth value of an array with more than one element is ambiguous.")
        return bool(self._scalar())

    def item(self):
        return self._scalar().item()

    def tolist(self):
        _state.host_sync()
        return self._a.tolist()

    # -- interop ------------------------------------------------------------------------
    @property
    def __cuda_array_interface__(self) -> dict:
        contiguous = self._a.flags.c_contiguous
        return {"shape": self.shape, "typestr": self.dtype.str, "descr": self._a.dtype.descr,
                "data": (self.data.ptr, False), "version": 3,
                "strides": None if contiguous else self.strides,
                "stream": 1}  # the legacy default stream: CuPy's current stream here

    def __dlpack_device__(self) -> tuple[int, int]:
        return (KDL_CUDA, self._device)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        if dl_device is not None and int(dl_device[0]) == KDL_CPU:
            if copy is False:
                raise BufferError("device memory cannot be exported to the CPU without a copy")
            _state.host_sync()
            return np.array(self._a, copy=True).__dlpack__()
        return DeviceCapsule(self, stream)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        from . import _ops  # noqa: PLC0415

        fn = getattr(_ops, ufunc.__name__, None)
        if method != "__call__" or fn is None:
            return NotImplemented
        return fn(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        import cupy  # noqa: PLC0415

        fn = getattr(cupy, func.__name__, None)
        if fn is None or fn is func:
            return NotImplemented
        return fn(*args, **kwargs)

    # -- shape and memory ---------------------------------------------------------------
    def reshape(self, *shape, order="C") -> ndarray:
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        host = self._a.reshape(shape, order=order)
        if np.may_share_memory(host, self._a):
            return self._view(host, self._device)
        return self._adopt(host)

    def ravel(self, order="C") -> ndarray:
        return self.reshape(-1, order=order)

    def view(self, dtype=None) -> ndarray:
        return self._view(self._a.view(dtype) if dtype is not None else self._a.view(), self._device)

    def copy(self, order="C") -> ndarray:
        from . import _ops  # noqa: PLC0415

        _ops.check_device(self)
        return self._adopt(np.array(self._a, order=order, copy=True))

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True) -> ndarray:
        from . import _ops  # noqa: PLC0415

        return _ops.astype(self, dtype, copy=copy)

    def fill(self, value) -> None:
        self._a.fill(value)

    def __getitem__(self, key):
        from . import _ops  # noqa: PLC0415

        _ops.check_device(self)
        host = self._a[_ops.index(key)]
        if not isinstance(host, np.ndarray):
            return self._adopt(np.asarray(host))
        if np.may_share_memory(host, self._a):
            return self._view(host, self._device)
        return self._adopt(host)

    def __setitem__(self, key, value) -> None:
        from . import _ops  # noqa: PLC0415

        _ops.check_device(self)
        if isinstance(value, np.ndarray):
            raise TypeError(f"Unsupported type {type(value)}")
        self._a[_ops.index(key)] = value._a if isinstance(value, ndarray) else value

    # -- methods over the namespace -----------------------------------------------------
    def _call(name):  # noqa: N805 - builds methods
        def method(self, *args, **kwargs):
            from . import _ops  # noqa: PLC0415

            return getattr(_ops, name)(self, *args, **kwargs)
        method.__name__ = name
        return method

    sum = _call("sum")
    min = _call("min")
    max = _call("max")
    any = _call("any")
    all = _call("all")
    mean = _call("mean")
    argmax = _call("argmax")
    argmin = _call("argmin")
    cumsum = _call("cumsum")
    nonzero = _call("nonzero")
    argsort = _call("argsort")
    clip = _call("clip")
    searchsorted = _call("searchsorted")

    def sort(self, axis=-1) -> None:
        from . import _ops  # noqa: PLC0415

        self._a[...] = _ops.sort(self, axis=axis)._a

    def _binary(name, reflected=False):  # noqa: N805
        def method(self, other):
            from . import _ops  # noqa: PLC0415

            fn = getattr(_ops, name)
            return fn(other, self) if reflected else fn(self, other)
        return method

    def _inplace(name):  # noqa: N805
        def method(self, other):
            from . import _ops  # noqa: PLC0415

            result = getattr(_ops, name)(self, other)
            self._a[...] = result._a
            return self
        return method

    for _name, _op in (("add", "add"), ("sub", "subtract"), ("mul", "multiply"),
                       ("truediv", "true_divide"), ("floordiv", "floor_divide"),
                       ("mod", "remainder"), ("pow", "power"), ("and", "bitwise_and"),
                       ("or", "bitwise_or"), ("xor", "bitwise_xor"), ("lshift", "left_shift"),
                       ("rshift", "right_shift")):
        locals()[f"__{_name}__"] = _binary(_op)
        locals()[f"__r{_name}__"] = _binary(_op, reflected=True)
        locals()[f"__i{_name}__"] = _inplace(_op)
    for _name, _op in (("lt", "less"), ("le", "less_equal"), ("gt", "greater"),
                       ("ge", "greater_equal"), ("eq", "equal"), ("ne", "not_equal")):
        locals()[f"__{_name}__"] = _binary(_op)
    del _name, _op
    __hash__ = None

    def __neg__(self):
        from . import _ops  # noqa: PLC0415

        return _ops.negative(self)

    def __abs__(self):
        from . import _ops  # noqa: PLC0415

        return _ops.absolute(self)

    def __invert__(self):
        from . import _ops  # noqa: PLC0415

        return _ops.invert(self)
