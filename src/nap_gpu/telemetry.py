"""GPU telemetry from NVML (``nvidia-ml-py``, extra ``nvml``): what ``nap-gpu info`` shows and
what the service exports. Never raises: an absent library, driver or query is a reason string.
"""

from __future__ import annotations

import importlib.util
from typing import Any

__all__ = ["gpu_status"]


def gpu_status() -> dict[str, Any]:
    """``{"available": True, "driver": ..., "cuda": ..., "devices": [...]}`` or
    ``{"available": False, "reason": "..."}``. Per device: index, uuid, name, memory used and
    total (bytes), utilisation (%), temperature (C), power (W); a query a device does not
    support (e.g. power on some MIG slices) is left out, not an error."""
    if importlib.util.find_spec("pynvml") is None:
        return {"available": False, "reason": "nvidia-ml-py not installed (pip install 'nap_gpu[nvml]')"}
    import pynvml  # noqa: PLC0415 - optional, imported only when asked

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return {"available": False, "reason": f"NVML unavailable: {exc}"}
    try:
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        status = {
            "available": True,
            "driver": _text(pynvml.nvmlSystemGetDriverVersion()),
            "cuda": f"{cuda // 1000}.{cuda % 1000 // 10}",
            "devices": [_device(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount())],
        }
    except pynvml.NVMLError as exc:
        status = {"available": False, "reason": f"NVML query failed: {exc}"}
    finally:
        pynvml.nvmlShutdown()
    return status


def _device(pynvml, index: int) -> dict[str, Any]:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    info: dict[str, Any] = {"index": index}
    queries = {
        "uuid": lambda: _text(pynvml.nvmlDeviceGetUUID(handle)),
        "name": lambda: _text(pynvml.nvmlDeviceGetName(handle)),
        "memory_used_bytes": lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used,
        "memory_total_bytes": lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).total,
        "utilization_percent": lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
        "temperature_c": lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
        "power_w": lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
    }
    for key, query in queries.items():
        try:
            info[key] = query()
        except pynvml.NVMLError:  # NotSupported on this device or slice
            pass
    return info


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
