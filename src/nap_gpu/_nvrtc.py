"""A minimal ctypes binding of NVRTC, the CUDA runtime compiler: enough to compile the kernels
to a cubin (and PTX) with exactly the options we choose. It needs no GPU and no driver, so CI
compiles every kernel on CPU-only machines with the same code the GPU hosts run.

The library comes from NVIDIA's wheels (``nvidia-cuda-nvrtc``, pulled in by
the ``cuda12``/``cuda13`` extras), found by ``cuda.pathfinder`` (a CuPy dependency), or from the system.
"""

from __future__ import annotations

import ctypes
import functools
import os
import pathlib
from dataclasses import dataclass

__all__ = ["NvrtcError", "Compiled", "build_id", "compile_program", "supported_archs", "version"]


class NvrtcError(RuntimeError):
    """NVRTC failed; for a compilation error the message carries NVRTC's log."""


class _Nvrtc(ctypes.CDLL):
    nap_path: str  # the library file loaded, or the name the system's loader resolved


@functools.cache
def _lib() -> _Nvrtc:
    path = None
    try:
        import cuda.pathfinder as pathfinder  # noqa: PLC0415 - optional, only when compiling

        path = pathfinder.load_nvidia_dynamic_lib("nvrtc").abs_path
    except Exception:  # not installed, or no NVRTC it knows of: try the system's
        pass
    names = [path] if path else ["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "nvrtc64_130_0.dll"]
    errors = []
    for name in names:
        try:
            lib = _Nvrtc(name, mode=ctypes.RTLD_GLOBAL)
            break
        except OSError as exc:
            errors.append(str(exc))
    else:
        raise NvrtcError("NVRTC not found (pip install 'nap_gpu[cuda13]' or nvidia-cuda-nvrtc): "
                         + "; ".join(errors))
    _preload_builtins(pathlib.Path(path) if path else None)
    _declare(lib)
    lib.nap_path = path or lib._name
    return lib


def _preload_builtins(nvrtc_path: pathlib.Path | None) -> None:
    """libnvrtc-builtins sits beside libnvrtc in the wheel but not on the loader's path."""
    if nvrtc_path is None:
        return
    for candidate in sorted(nvrtc_path.parent.glob("libnvrtc-builtins.so*")):
        try:
            ctypes.CDLL(os.fspath(candidate), mode=ctypes.RTLD_GLOBAL)
            return
        except OSError:
            continue


def _declare(lib: ctypes.CDLL) -> None:
    p, c_int, size_t = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    strings = ctypes.POINTER(ctypes.c_char_p)
    signatures = {
        "nvrtcVersion": [ctypes.POINTER(c_int), ctypes.POINTER(c_int)],
        "nvrtcCreateProgram": [ctypes.POINTER(p), ctypes.c_char_p, ctypes.c_char_p, c_int,
                               strings, strings],
        "nvrtcCompileProgram": [p, c_int, strings],
        "nvrtcDestroyProgram": [ctypes.POINTER(p)],
        "nvrtcGetProgramLogSize": [p, ctypes.POINTER(size_t)],
        "nvrtcGetProgramLog": [p, ctypes.c_char_p],
        "nvrtcGetCUBINSize": [p, ctypes.POINTER(size_t)],
        "nvrtcGetCUBIN": [p, ctypes.c_char_p],
        "nvrtcGetPTXSize": [p, ctypes.POINTER(size_t)],
        "nvrtcGetPTX": [p, ctypes.c_char_p],
        "nvrtcGetNumSupportedArchs": [ctypes.POINTER(c_int)],
        "nvrtcGetSupportedArchs": [ctypes.POINTER(c_int)],
    }
    for name, argtypes in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, c_int
    lib.nvrtcGetErrorString.argtypes, lib.nvrtcGetErrorString.restype = [c_int], ctypes.c_char_p


def _check(result: int, what: str) -> None:
    if result != 0:
        message = _lib().nvrtcGetErrorString(result).decode()
        raise NvrtcError(f"{what} failed: {message} ({result})")


def version() -> tuple[int, int]:
    """NVRTC's (major, minor) version."""
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(_lib().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


@functools.cache
def build_id() -> str:
    """NVRTC's version and the identity of its library file (path, size, modification time):
    NVRTC reports major.minor only, and a patch release may emit other code."""
    major, minor = version()
    path = _lib().nap_path
    try:
        stat = os.stat(path)
        return f"{major}.{minor} {os.path.realpath(path)} {stat.st_size} {stat.st_mtime_ns}"
    except OSError:  # loaded by name from the system's search path
        return f"{major}.{minor} {path}"


def supported_archs() -> tuple[int, ...]:
    """The SM versions this NVRTC can compile for, e.g. (75, 80, ..., 120)."""
    lib = _lib()
    count = ctypes.c_int()
    _check(lib.nvrtcGetNumSupportedArchs(ctypes.byref(count)), "nvrtcGetNumSupportedArchs")
    archs = (ctypes.c_int * count.value)()
    _check(lib.nvrtcGetSupportedArchs(archs), "nvrtcGetSupportedArchs")
    return tuple(archs)


@dataclass(frozen=True)
class Compiled:
    cubin: bytes
    ptx: str
    log: str


def _strings(values) -> ctypes.Array:
    return (ctypes.c_char_p * len(values))(*(v.encode() for v in values))


def compile_program(source: str, name: str, headers: dict[str, str],
                    options: tuple[str, ...]) -> Compiled:
    """Compile ``source`` (with in-memory ``headers``: include name -> text) under ``options``."""
    lib = _lib()
    prog = ctypes.c_void_p()
    _check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), len(headers),
                                  _strings(list(headers.values())), _strings(list(headers))),
           "nvrtcCreateProgram")
    try:
        result = lib.nvrtcCompileProgram(prog, len(options), _strings(options))
        size = ctypes.c_size_t()
        _check(lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
        log = ctypes.create_string_buffer(size.value)
        _check(lib.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
        log_text = log.value.decode(errors="replace")
        if result != 0:
            message = lib.nvrtcGetErrorString(result).decode()
            raise NvrtcError(f"compiling {name} failed: {message}\n{log_text}")
        _check(lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
        cubin = ctypes.create_string_buffer(size.value)
        _check(lib.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        _check(lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
        ptx = ctypes.create_string_buffer(size.value)
        _check(lib.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
        return Compiled(cubin=cubin.raw, ptx=ptx.value.decode(errors="replace"), log=log_text)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
