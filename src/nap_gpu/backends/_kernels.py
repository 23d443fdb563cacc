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
from typing import TYPE_CHECKING, Any

from .. import _env, _nvrtc
from .._files import atomic_file

if TYPE_CHECKING:
    from importlib.abc import Traversable  # importlib.resources.abc from 3.11 on

#: Bit parity with the CPU: no FMA contraction, no flush-to-zero, IEEE division and sqrt.
PRODUCTION_OPTIONS = ("--std=c++17", "--fmad=false", "--ftz=false", "--prec-div=true",
                      "--prec-sqrt=true")

#: Every kernel of cuda/kernels.cu (the nap_ prefix names them in profilers).
KERNELS = ("nap_step", "nap_step_into", "nap_step_scalar", "nap_decay", "nap_update_segments", "nap_triad",
           "nap_first_nonfinite", "nap_first_bad_id", "nap_narrow_quality", "nap_exact_sums",
           "nap_rank_bins", "nap_gather_mixed")

HEADERS = ("nap/config.h", "nap/law.h")


def _source_root() -> tuple[Traversable, Traversable]:
    """(the kernel file, the header folder): inside the installed package (a wheel, or an
    editable install that maps them there), else in the source tree this module lives in (an
    in-place editable install, or ``PYTHONPATH=src``)."""
    package = pathlib.Path(__file__).resolve().parents[1]
    installed = importlib.resources.files("nap_gpu")
    candidates = [(installed / "cuda" / "kernels.cu", installed / "include"),
                  (package.parents[1] / "cuda" / "kernels.cu", package.parents[1] / "cpp" / "include")]
    for kernels, include in candidates:
        if kernels.is_file() and all((include / h).is_file() for h in HEADERS):
            return kernels, include
    raise FileNotFoundError("the CUDA kernel source (cuda/kernels.cu and nap/*.h) is neither in "
                            f"the installed package nor in the source tree beside {package}")


def source() -> tuple[str, dict[str, str]]:
    """The kernel source and its headers (include name -> text), from the installed package
    or the source tree (see ``_source_root``)."""
    kernels, include = _source_root()
    return (kernels.read_text(encoding="utf-8"),
            {name: (include / name).read_text(encoding="utf-8") for name in HEADERS})


def options(arch: int) -> tuple[str, ...]:
    """The full NVRTC option list for compute capability ``arch`` (e.g. 90 for sm_90)."""
    return (*PRODUCTION_OPTIONS, f"--gpu-architecture=sm_{arch}")


def compile_kernels(arch: int) -> _nvrtc.Compiled:
    """Compile the kernels for ``arch`` with the production options (no GPU needed)."""
    kernels, headers = source()
    return _nvrtc.compile_program(kernels, "kernels.cu", headers, options(arch))


def cache_dir() -> pathlib.Path:
    """``NAP_CACHE_DIR``, else ``$XDG_CACHE_HOME/nap_gpu/kernels`` (``~/.cache/...``)."""
    explicit = _env.kernel_cache_dir()
    if explicit is not None:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "nap_gpu" / "kernels"


def cache_key(arch: int, driver: int | None = None) -> str:
    """The hash naming a cubin: the source and headers, the options, the architecture, the
    NVRTC build (version and library file: a patch release changes the code it emits) and the
    driver version it will load under (``None`` where no driver is asked, e.g. in CI)."""
    kernels, headers = source()
    digest = hashlib.sha256()
    for part in (kernels, *headers.values(), *options(arch), _nvrtc.build_id(), repr(driver)):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def cubin_path(arch: int, driver: int | None = None) -> pathlib.Path:
    """The cached cubin for ``arch`` (and ``driver``), compiled and written atomically on first
    use."""
    path = cache_dir() / f"nap_kernels_sm{arch}_{cache_key(arch, driver)}.cubin"
    if not path.exists():
        compiled = compile_kernels(arch)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as fh:  # concurrent processes never see a torn cubin
            fh.write(compiled.cubin)
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


def device_cubin(cupy) -> pathlib.Path:
    """The cubin for CuPy's current device (compiled on first use): what a launch loads."""
    arch = arch_for(int(cupy.cuda.Device().compute_capability))
    return cubin_path(arch, cupy.cuda.runtime.driverGetVersion())


class CupyKernels:
    """The kernels as CuPy RawKernel objects, loaded once per device on its first launch there
    (finding the cubin hashes the source: never per launch)."""

    def __init__(self) -> None:
        self._modules: dict[int, Any] = {}  # device id -> cupy.RawModule of its cubin
        self._functions: dict[tuple[int, str], object] = {}

    def __getattr__(self, name: str):
        if name not in KERNELS:
            raise AttributeError(name)
        import cupy  # noqa: PLC0415 - only on a GPU host, on first launch

        device = cupy.cuda.runtime.getDevice()
        kernel = self._functions.get((device, name))
        if kernel is None:
            module = self._modules.get(device)
            if module is None:
                module = self._modules[device] = cupy.RawModule(path=os.fspath(device_cubin(cupy)))
            kernel = self._functions[device, name] = module.get_function(name)
        return kernel
