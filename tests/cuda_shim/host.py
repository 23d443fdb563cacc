"""Build cuda/kernels.cu for the CPU through shim.cpp and call its kernels like CuPy does."""

from __future__ import annotations

import ctypes
import pathlib
import shutil
import subprocess

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHIM = pathlib.Path(__file__).with_name("shim.cpp")

_C_TYPES = {np.float32: ctypes.c_float, np.float64: ctypes.c_double,
            np.uint64: ctypes.c_ulonglong, np.int64: ctypes.c_longlong}


def build(out_dir: pathlib.Path) -> pathlib.Path:
    """Compile the kernels with g++ and the law's parity flags into a shared library."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise FileNotFoundError("no C++ compiler (g++/c++) to build the CUDA host shim")
    library = out_dir / "libnap_cuda_shim.so"
    # -fno-strict-aliasing: the kernels read float arrays as float4 vectors, CUDA's idiom.
    cmd = [compiler, "-std=c++17", "-O2", "-ffp-contract=off", "-fno-fast-math",
           "-fno-strict-aliasing", "-shared", "-fPIC", f"-I{ROOT / 'cpp' / 'include'}",
           f"-I{ROOT / 'cuda'}", str(SHIM), "-o", str(library)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return library


class ShimKernels:
    """Kernel objects with CuPy's calling convention: ``kernel(grid, block, args)``."""

    def __init__(self, library: pathlib.Path) -> None:
        self._lib = ctypes.CDLL(str(library))

    def __getattr__(self, name: str):
        fn = getattr(self._lib, f"shim_{name}")
        fn.restype = None

        def call(grid, block, args):
            converted = [ctypes.c_uint(grid[0]), ctypes.c_uint(block[0])]
            for arg in args:
                if isinstance(arg, np.ndarray):
                    assert arg.flags.c_contiguous, "kernels take contiguous arrays"
                    converted.append(ctypes.c_void_p(arg.ctypes.data))
                else:
                    converted.append(_C_TYPES[type(arg)](arg))
            fn(*converted)

        return call
