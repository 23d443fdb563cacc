"""Kernels on the simulated device: ``RawModule(path=cubin)`` checks the cubin NVRTC built
(an ELF for CUDA, for an architecture this device runs, holding the kernel) and launches the
same kernel source compiled for the CPU by ``tests/cuda_shim``.

Arguments are converted as CuPy converts them (device arrays as pointers, NumPy scalars as
their own C type, Python ints as 64-bit integers, Python floats as doubles) and checked
against the kernel's parameter list read from ``cuda/kernels.cu``, so a launch a GPU would
silently misread (a double where the kernel takes a float, a host array, an array of another
device, a non-contiguous view) fails loudly here.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import os
import pathlib
import re
import struct
import tempfile

import numpy as np

from . import _state
from ._ndarray import ndarray

ROOT = pathlib.Path(__file__).resolve().parents[3]
KERNEL_SOURCE = ROOT / "cuda" / "kernels.cu"
EM_CUDA = 190

#: Kernel parameter types -> (ctypes type, what CuPy may pass for it).
_POINTER = (ctypes.c_void_p, "pointer")
_SCALARS = {
    "unsigned long long": (ctypes.c_ulonglong, (np.uint64,)),
    "long long": (ctypes.c_longlong, (np.int64,)),
    "float": (ctypes.c_float, (np.float32,)),
    "double": (ctypes.c_double, (np.float64,)),
}


@functools.cache
def kernel_signatures() -> dict[str, tuple[str, ...]]:
    """Each ``extern "C" __global__`` kernel's parameter types, in order."""
    text = KERNEL_SOURCE.read_text()
    signatures = {}
    for name, params in re.findall(r"__global__\s+void\s+(\w+)\s*\(([^)]*)\)", text):
        kinds = []
        for param in params.split(","):
            words = param.replace("__restrict__", "").replace("const", "").split()
            declared = " ".join(words[:-1]).replace(" *", "*")
            kinds.append("pointer" if "*" in declared or "*" in words[-1] else declared)
        signatures[name] = tuple(kinds)
    return signatures


@functools.cache
def _shim() -> ctypes.CDLL:
    """The kernels compiled for the CPU, built once per source version (shared by processes)."""
    spec = importlib.util.spec_from_file_location("_nap_cuda_shim_host",
                                                  ROOT / "tests" / "cuda_shim" / "host.py")
    host = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(host)
    digest = hashlib.sha256()
    for path in sorted([KERNEL_SOURCE, host.SHIM, ROOT / "tests" / "cuda_shim" / "host.py",
                        *(ROOT / "cpp" / "include" / "nap").glob("*.h")]):
        digest.update(path.read_bytes())
    folder = pathlib.Path(tempfile.gettempdir()) / f"nap-simdevice-{digest.hexdigest()[:16]}"
    library = folder / "libnap_cuda_shim.so"
    if not library.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            built = host.build(pathlib.Path(scratch))
            os.replace(built, library)  # atomic: concurrent test processes share it
    return ctypes.CDLL(os.fspath(library))


def cubin_arch(image: bytes) -> int:
    """The SM version a CUDA ELF was built for (e_flags bits 8-15), after checking it is one."""
    if len(image) < 64 or image[:4] != b"\x7fELF" or struct.unpack_from("<H", image, 18)[0] != EM_CUDA:
        raise RuntimeError("CUDA_ERROR_INVALID_IMAGE: not a CUDA cubin")
    return (struct.unpack_from("<I", image, 48)[0] >> 8) & 0xFF


class RawModule:
    """cupy.RawModule(path=...) for a cubin; source compilation is refused: CuPy's own compile
    path appends -ftz=true, which is exactly what nap_gpu must never use."""

    def __init__(self, code=None, *, path=None, options=(), backend="nvrtc", **kwargs) -> None:
        if code is not None or path is None:
            raise NotImplementedError("the simulated device loads finished cubins only "
                                      "(RawModule(path=...)); CuPy would compile code with -ftz=true")
        self.path = os.fspath(path)
        self._image = pathlib.Path(self.path).read_bytes()
        self.arch = cubin_arch(self._image)

    def get_function(self, name: str) -> RawKernel:
        device_cc = _state.COMPUTE_CAPABILITY
        if self.arch // 10 != device_cc // 10 or self.arch > device_cc:
            raise RuntimeError(f"CUDA_ERROR_NO_BINARY_FOR_GPU: cubin for sm_{self.arch} cannot run "
                               f"on a device of compute capability {device_cc}")
        if (b".text." + name.encode() + b"\0") not in self._image:
            raise RuntimeError(f"CUDA_ERROR_NOT_FOUND: named symbol not found: {name}")
        return RawKernel(name)


class RawKernel:
    """A kernel of the cubin, launched as ``kernel(grid, block, args)``."""

    def __init__(self, name: str, *args, **kwargs) -> None:
        if args or kwargs:
            raise NotImplementedError("RawKernel from source is not simulated (see RawModule)")
        self.name = name
        self.params = kernel_signatures()[name]
        self._fn = getattr(_shim(), f"shim_{name}")
        self._fn.restype = None

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None) -> None:
        grid, block = tuple(grid), tuple(block)
        if len(args) != len(self.params):
            raise TypeError(f"{self.name} takes {len(self.params)} arguments, got {len(args)}")
        if grid[1:] not in ((), (1,), (1, 1)) or block[1:] not in ((), (1,), (1, 1)):
            raise NotImplementedError("the shim runs one-dimensional launches")
        if not (1 <= grid[0] < 2**31 and 1 <= block[0] <= 1024):
            raise RuntimeError(f"cudaErrorInvalidConfiguration: grid {grid}, block {block}")
        converted = [ctypes.c_uint(grid[0]), ctypes.c_uint(block[0])]
        converted += [self._argument(i, kind, arg) for i, (kind, arg) in
                      enumerate(zip(self.params, args))]
        _state.COUNTERS.launches += 1
        self._fn(*converted)

    def _argument(self, i: int, kind: str, arg):
        where = f"{self.name} argument {i}"
        if kind == "pointer":
            if not isinstance(arg, ndarray):
                raise TypeError(f"Unsupported type {type(arg)} ({where} is a device pointer)")
            if arg._device != _state.current_device():
                raise RuntimeError(f"cudaErrorIllegalAddress: {where} lives on device {arg._device}, "
                                   f"the kernel runs on device {_state.current_device()}")
            if not arg._a.flags.c_contiguous:
                raise ValueError(f"{where} is a non-contiguous view: the kernel would read "
                                 "other elements than the array holds")
            return ctypes.c_void_p(arg.data.ptr)
        c_type, accepted = _SCALARS[kind]
        if isinstance(arg, ndarray):
            raise TypeError(f"{where} is a {kind}, got a device array")
        if isinstance(arg, accepted):
            return c_type(arg)
        if isinstance(arg, int) and not isinstance(arg, bool) and kind in ("long long", "unsigned long long"):
            return c_type(arg)  # CuPy passes a Python int as a 64-bit integer
        passed = "double" if isinstance(arg, float) else type(arg).__name__
        raise TypeError(f"{where} is a {kind} but CuPy would pass a {passed}: the kernel would "
                        "read the wrong bytes")
