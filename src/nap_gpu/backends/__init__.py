"""Backend registry: which backends exist, which are usable here and why, and selection.

A backend is a small module with the handful of operations the Engine needs (``step``,
``step_scalar``, ``update``, ``decay``, the validation scans and ``exact_sums``) over arrays
of its namespace ``xp``. Everything else (validation policy, metrics, the Engine) is written
once above them.

Selection explains itself: ``"auto"`` takes the first usable backend in ``ORDER`` and logs
why it skipped the others; ``NAP_BACKEND`` overrides ``"auto"``; naming an unusable backend
raises ``BackendUnavailableError`` with the reason, never a silent fallback.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from types import ModuleType

from .. import _env

__all__ = ["ORDER", "BackendUnavailableError", "available_backends", "best_host", "get", "resolve"]

log = logging.getLogger("nap_gpu")

#: Best first: what ``backend="auto"`` tries, in order.
ORDER = ("cuda", "cpp", "numpy")


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here; the message says why."""


def _probe_cuda() -> str | None:
    if importlib.util.find_spec("cupy") is None:
        return "no CuPy installed (pip install 'nap_gpu[cuda12]' or 'nap_gpu[cuda13]')"
    try:
        import cupy  # noqa: PLC0415 - imported only when probing, never by `import nap_gpu`
    except Exception as exc:  # a broken CuPy install must not break the probe
        return f"CuPy installed but cannot be imported: {exc}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # raises (not 0) without a driver on some hosts
        return f"CuPy installed but no CUDA driver ({exc})"
    if count == 0:
        return "CuPy installed but no CUDA device"
    try:  # prove the first launch can load: the source is found and its cubin is cached
        from . import _kernels  # noqa: PLC0415

        _kernels.device_cubin(cupy)
    except Exception as exc:  # NVRTC missing or too old, no source, an unwritable cache
        return f"CUDA kernels unusable: {exc}"
    return None


def _probe_cpp(module: str = "nap_gpu._core") -> str | None:
    """Why the C++ core is unusable: not built (reinstalling with a compiler helps) or built
    but failing to load (a library it needs is missing: reinstalling does not help, and the
    loader's message names the library)."""
    missing: ImportError | None = None
    try:
        spec = importlib.util.find_spec(module)
    except ImportError as exc:
        spec, missing = None, exc
    if spec is None:
        return (f"C++ core not built: this install has no {module} ("
                f"{missing or 'built without a C++ compiler'}); reinstall from source with a "
                "C++ compiler present")
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - ImportError, or whatever the module init raised
        return (f"C++ core built but failed to load ({spec.origin}): {exc}. A library it "
                "links against is missing or incompatible (the OpenMP runtime: libgomp, "
                "libomp or vcomp); install that library, or use the numpy backend")
    return None


_PROBES = {"cuda": _probe_cuda, "cpp": _probe_cpp, "numpy": lambda: None}


@functools.cache
def _probe_all() -> tuple[tuple[str, str | None], ...]:
    return tuple((name, _PROBES[name]()) for name in ORDER)


def available_backends() -> dict[str, str | None]:
    """Each backend and why it is unusable here (``None`` means usable). Never raises; cached."""
    return dict(_probe_all())


@functools.cache
def get(name: str) -> ModuleType:
    """The backend module ``name``; raises if unknown or unusable here."""
    if name not in _PROBES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(ORDER)} or 'auto'")
    reason = available_backends()[name]
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} is not usable here: {reason}")
    return importlib.import_module(f"{__name__}.{name}")


def resolve(name: str | None = "auto") -> ModuleType:
    """The backend for a user's choice: a name, or ``"auto"``/``None`` (``NAP_BACKEND`` first)."""
    if name in (None, "auto"):
        override = _env.backend_override()
        if override is not None:
            log.info("nap_gpu: backend %r chosen by NAP_BACKEND", override)
            try:
                return get(override)
            except (ValueError, BackendUnavailableError) as exc:
                raise type(exc)(f"NAP_BACKEND={override}: {exc}") from None
        skipped: list[str] = []
        for candidate, reason in _probe_all():
            if reason is None:
                log.info("nap_gpu: backend 'auto' chose %r%s", candidate,
                         f" (skipped {'; '.join(skipped)})" if skipped else "")
                return get(candidate)
            skipped.append(f"{candidate}: {reason}")
    if not isinstance(name, str):
        raise TypeError(f"backend must be a name or 'auto', got {type(name).__name__}")
    return get(name.lower())


def best_host() -> ModuleType:
    """The fastest usable backend on host (NumPy) arrays: the C++ core, else NumPy. It is what
    runs where a GPU gives nothing (host-side metrics, a shard worker without a GPU)."""
    return get("cpp" if available_backends()["cpp"] is None else "numpy")
