"""The one loader of the CUDA kernels: source, compile options, on-disk cubin cache, loading.

The kernel source is ``cuda/kernels.cu`` plus the law's headers (``cpp/include/nap/``), both
shipped inside the package. They are compiled with NVRTC under ``PRODUCTION_OPTIONS`` for the
device's own architecture, and the cubin is loaded with ``cupy.RawModule(path=...)``: CuPy's
own compile path would append ``-ftz=true`` after our options (flushing subnormals and
breaking bit parity with the CPU), loading a finished cubin adds nothing.

The cache key hashes the full source (kernel and headers), the options, the architecture and
the NVRTC version, so a changed header can never load a stale cubin. Nothing here touches CUDA
at import time.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import pathlib
import tempfile

from .. import _nvrtc

#: Bit parity with the CPU: no FMA contraction, no flush-to-zero, IEEE division and sqrt.
PRODUCTION_OPTIONS = ("--std=c++17", "--fmad=false", "--ftz=false", "--prec-div=true",
                      "--prec-sqrt=true")

#: Every kernel of cuda/kernels.cu (the nap_ prefix names them in profilers).
KERNELS = ("nap_step", "nap_step_scalar", "nap_decay", "nap_update_segments", "nap_triad")

HEADERS = ("nap/config.h", "nap/law.h")


def source() -> tuple[str, dict[str, str]]:
    """The kernel source and its headers (include name -> text), as shipped in the package."""
    package = importlib.resources.files("nap_gpu")
    kernels = (package / "cuda" / "kernels.cu").read_text(encoding="utf-8")
    headers = {name: (package / "include" / name).read_text(encoding="utf-8") for name in HEADERS}
    return kernels, headers


def options(arch: int) -> tuple[str, ...]:
    """The full NVRTC option list for compute capability ``arch`` (e.g. 90 for sm_90)."""
    return (*PRODUCTION_OPTIONS, f"--gpu-architecture=sm_{arch}")


def compile_kernels(arch: int) -> _nvrtc.Compiled:
    """Compile the kernels for ``arch`` with the production options (no GPU needed)."""
    kernels, headers = source()
    return _nvrtc.compile_program(kernels, "kernels.cu", headers, options(arch))


def cache_dir() -> pathlib.Path:
    """``NAP_CACHE_DIR``, else ``$XDG_CACHE_HOME/nap_gpu/kernels`` (``~/.cache/...``)."""
    explicit = os.environ.get("NAP_CACHE_DIR")
    if explicit:
        return pathlib.Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "nap_gpu" / "kernels"


def cache_key(arch: int) -> str:
    kernels, headers = source()
    digest = hashlib.sha256()
    for part in (kernels, *headers.values(), *options(arch), repr(_nvrtc.version())):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def cubin_path(arch: int) -> pathlib.Path:
    """The cached cubin for ``arch``, compiled and written atomically on first use."""
    path = cache_dir() / f"nap_kernels_sm{arch}_{cache_key(arch)}.cubin"
    if not path.exists():
        compiled = compile_kernels(arch)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".nap_kernels_", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(compiled.cubin)
            os.replace(tmp, path)  # atomic: concurrent processes never see a torn cubin
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise
    return path


def arch_for(device_cc: int) -> int:
    """The architecture to compile for on a device of compute capability ``device_cc``: its
    own, else the newest this NVRTC supports of the same major (a cubin runs on later minors)."""
    supported = _nvrtc.supported_archs()
    if device_cc in supported:
        return device_cc
    same_major = [a for a in supported if a // 10 == device_cc // 10 and a <= device_cc]
    if same_major:
        return max(same_major)
    raise _nvrtc.NvrtcError(f"NVRTC {_nvrtc.version()} cannot compile for sm_{device_cc} "
                            f"(it supports sm_{', sm_'.join(map(str, supported))})")


class CupyKernels:
    """The kernels as CuPy RawKernel objects for the current device, loaded on first use."""

    def __init__(self) -> None:
        self._module = None

    def __getattr__(self, name: str):
        if name not in KERNELS:
            raise AttributeError(name)
        if self._module is None:
            import cupy  # noqa: PLC0415 - only on a GPU host, on first launch

            arch = arch_for(int(cupy.cuda.Device().compute_capability))
            self._module = cupy.RawModule(path=os.fspath(cubin_path(arch)))
        kernel = self._module.get_function(name)
        setattr(self, name, kernel)
        return kernel
