"""``show_config()`` / ``nap-gpu info``: what is installed, what is usable, and why."""

from __future__ import annotations

import platform
import sys

import numpy as np

from . import __version__, backends


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
        info["cpp"] = {**cpp.compile_options(), "threads": str(cpp.num_threads())}
    return info


def show_config(file=None) -> None:
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
            print(f"  {key:<10} {value}", file=out)
