"""``show_config()`` / ``nap-gpu info``: what is installed, what is usable, and why."""

from __future__ import annotations

import platform
import sys
from typing import TextIO

import numpy as np

from . import __version__, backends
from .telemetry import gpu_status


def config() -> dict:
    """A dict describing this installation: versions, each backend's status, the C++ build."""
    info: dict = {
        "nap_gpu": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "platform": platform.platform(),
        "backends": {name: ("usable" if reason is None else f"unusable: {reason}")
                     for name, reason in backends.available_backends().items()},
    }
    try:
        info["auto"] = backends.resolve("auto").name
    except (ValueError, backends.BackendUnavailableError) as exc:
        info["auto"] = f"error: {exc}"
    if backends.available_backends()["cpp"] is None:
        cpp = backends.get("cpp")
        info["cpp"] = {**cpp.compile_options(), **cpp.thread_config()}
    info["cuda_kernels"] = _kernel_build()
    info["gpu"] = gpu_status()
    return info


def _kernel_build() -> dict:
    """How the CUDA kernels would be compiled here: NVRTC version and the options."""
    from . import _nvrtc  # noqa: PLC0415 - loads NVRTC only when asked
    from .backends import _kernels  # noqa: PLC0415

    build = {"options": " ".join(_kernels.PRODUCTION_OPTIONS), "cache": str(_kernels.cache_dir())}
    try:
        build["nvrtc"] = ".".join(map(str, _nvrtc.version()))
    except _nvrtc.NvrtcError as exc:
        build["nvrtc"] = f"unavailable: {exc}"
    return build


def show_config(file: TextIO | None = None) -> None:
    """Print each backend, why it is or is not usable, and how the C++ core was compiled."""
    info = config()
    out = file or sys.stdout
    print(f"nap_gpu {info['nap_gpu']}  (python {info['python']}, numpy {info['numpy']}, "
          f"{info['platform']})", file=out)
    print("backends (auto tries them in this order):", file=out)
    for name, status in info["backends"].items():
        print(f"  {name:<6} {status}", file=out)
    print(f"backend='auto' picks: {info['auto']}", file=out)
    if "cpp" in info:
        print("C++ core:", file=out)
        for key, value in info["cpp"].items():
            print(f"  {key:<12} {value}", file=out)
    print("CUDA kernels (NVRTC):", file=out)
    for key, value in info["cuda_kernels"].items():
        print(f"  {key:<10} {value}", file=out)
    gpu = info["gpu"]
    if not gpu["available"]:
        print(f"GPU (NVML): {gpu['reason']}", file=out)
    else:
        print(f"GPU (NVML): driver {gpu['driver']}, CUDA {gpu['cuda']}", file=out)
        for d in gpu["devices"]:
            used, total = d.get("memory_used_bytes"), d.get("memory_total_bytes")
            memory = f"{used / 2**30:.1f}/{total / 2**30:.1f} GiB" if used is not None and total else "?"
            print(f"  [{d['index']}] {d.get('name', '?')}  memory {memory}  "
                  f"util {d.get('utilization_percent', '?')}%  {d.get('temperature_c', '?')} C  "
                  f"{d.get('power_w', '?')} W", file=out)
