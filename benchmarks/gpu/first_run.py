#!/usr/bin/env python3
"""The first run on a real GPU: every open GPU question, answered by one offline command.

    python benchmarks/gpu/first_run.py --out OUT [--expect real|simulated] [--budget-s 180]
    python benchmarks/gpu/first_run.py --summarize --out OUT --phases FILE [--junit FILE]

Called by ``benchmarks/gpu/run.sh`` (which sets a fresh ``NAP_CACHE_DIR``, so the cold compile
of the cubin is measured). Writes ``OUT/gpu-run.json`` (every figure, with its unit),
``OUT/gpu-run.md`` (a short table per section, PASS/FAIL against the targets) and
``OUT/sass.txt`` (the device cubin's machine code). Both reports are rewritten after every
section, so a run cut short keeps what it measured; each section is guarded: a failure is
recorded with its traceback and the next section runs.

Sections: versions (and the cold compile), sass (FFMA / .FTZ in the device's own cubin),
parity64 (Engine calls on 2^32 + 2^20 + 3 memories against the NumPy reference on windows at
the 32-bit boundaries; the full population and the metrics at 1e8 against the host), dense
(CUDA-event timings of the copy floor, nap_triad, the raw nap_step and Engine.step with and
without check_finite, and double-buffered, at 1e8 and 1e9), sparse (Engine.update: 1M/10M events over 1e8
memories, uniform, Zipf(1.1), one hot id), metrics (1e7-1e9, converged and uniform, by phase,
beside CuPy's sort), latency (per-call wall time at 1e3 and 1e5), torch (PyTorch CUDA
interop), pool (an Engine bigger than the driver's free memory that fits with CuPy's pool),
host_syncs (skipped: not measurable on a real device).

On the simulated device (``tests/simdevice``: run.sh --simulated) the same sections run with
small sizes (the "simulated" profile); its timings are CPU timings of the kernel source
compiled for the host, never GPU figures, and its performance verdicts read "n/a".

``--summarize`` (stdlib only: it runs even where nap_gpu did not install) merges run.sh's
phases and the pytest JUnit counts into both reports and prints the summary table.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import json
import math
import os
import pathlib
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
JSON_NAME, MD_NAME, SASS_NAME = "gpu-run.json", "gpu-run.md", "sass.txt"
SCHEMA = "nap-gpu-first-run/1"
KiB, MiB, GiB = 2**10, 2**20, 2**30

#: Sizes per profile. The simulated device runs the kernels one thread after another on one
#: CPU core (some 50-300 M elements/s): its profile keeps the whole run within ~3 minutes and
#: ~4 GiB, and its 64-bit boundaries are stand-ins (2^21, 2^22 for 2^31, 2^32).
PROFILES = {
    "real": {
        "parity_n": 2**32 + 2**20 + 3, "parity_marks": (2**31, 2**32), "parity_window": 4096,
        "parity_full_n": 10**8, "parity_events": 10**5,
        "dense_sizes": (10**8, 10**9),
        "sparse_n": 10**8, "sparse_events": (10**6, 10**7),
        "metrics_sizes": (10**7, 10**8, 10**9), "metrics_target_n": 10**9,
        "latency_sizes": (10**3, 10**5), "latency_calls": 400,
        "torch_n": 1 << 24, "torch_sleep_cycles": 200_000_000,
        "pool_headroom": 4 * GiB,
        "measure_budget_s": 1.0, "min_reps": 5, "max_reps": 30,
    },
    "simulated": {
        "parity_n": 2**22 + 2**16 + 3, "parity_marks": (2**21, 2**22), "parity_window": 4096,
        "parity_full_n": 10**6, "parity_events": 10**4,
        "dense_sizes": (10**6, 10**7),
        "sparse_n": 10**7, "sparse_events": (10**5, 10**6),
        "metrics_sizes": (10**5, 10**6, 4 * 10**6), "metrics_target_n": 4 * 10**6,
        "latency_sizes": (10**3, 10**5), "latency_calls": 60,
        "torch_n": 1 << 16, "torch_sleep_cycles": 0,
        "pool_headroom": 512 * MiB,
        "measure_budget_s": 0.4, "min_reps": 3, "max_reps": 7,
    },
}

#: The issue's targets.
STEP_VS_COPY_MIN = 0.9         # nap_step bandwidth / copy bandwidth, at least
CHECKED_VS_RAW_MAX = 1.35      # checked Engine.step time / raw nap_step time, at most
#: The prediction for Engine(double_buffer=True): its checked step is one kernel moving the raw
#: step's 12 bytes a memory (w and q read, the other buffer written) plus one 8-byte read back.
DOUBLE_BUFFER_VS_RAW_MAX = 1.1
METRICS_VS_SORT_MAX = 2.0      # metrics time / CuPy's sort of the same values, at most (1e9)
METRICS_VS_STEP_MAX = 10.0     # a converged population's metrics time / a dense step (1e9)


# ============================================================================================
# Report: JSON + Markdown, rewritten after every section
# ============================================================================================

def _jsonable(x):
    """JSON-safe copies: NumPy scalars as Python numbers, non-finite floats as strings."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, bytes):
        return x.decode(errors="replace")
    if isinstance(x, (bool, str)) or x is None:
        return x
    if isinstance(x, int):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else repr(x)
    try:
        import numpy as np  # noqa: PLC0415
        if isinstance(x, np.bool_):
            return bool(x)
        if isinstance(x, np.integer):
            return int(x)
        if isinstance(x, np.floating):
            return _jsonable(float(x))
    except ImportError:
        pass
    if hasattr(x, "__dataclass_fields__"):
        import dataclasses  # noqa: PLC0415
        return _jsonable(dataclasses.asdict(x))
    return repr(x)


def write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def save(out: pathlib.Path, data: dict) -> None:
    first = ("schema", "ran_on", "device", "profile")
    ordered = {k: data[k] for k in first if k in data} | {k: v for k, v in data.items()
                                                          if k not in first}
    write_atomic(out / JSON_NAME, json.dumps(_jsonable(ordered), indent=1) + "\n")
    write_atomic(out / MD_NAME, render_markdown(data))


def fig(value, unit: str, **extra) -> dict:
    """A measured figure with its unit."""
    return {"value": value, "unit": unit, **extra}


class Skip(Exception):
    """A section (or part) that cannot run here: the reason is recorded."""


class Section:
    def __init__(self, name: str, title: str, simulated: bool) -> None:
        self.name, self.title, self.simulated = name, title, simulated
        self.data: dict = {}
        self.checks: list[dict] = []
        self.tables: list[dict] = []
        self.skipped: list[dict] = []   # parts that did not run, with the reason
        self.notes: list[str] = []

    def check(self, name: str, ok, measured, target: str, *, kind: str = "correctness") -> bool:
        """A verdict against a target. Performance verdicts on the simulated device are n/a:
        its timings are of the CPU, not of a GPU."""
        if ok is None:
            verdict = "n/a"
        elif kind == "performance" and self.simulated:
            verdict = "n/a (simulated)"
        else:
            verdict = "PASS" if ok else "FAIL"
        self.checks.append({"check": name, "measured": measured, "target": target,
                            "kind": kind, "verdict": verdict})
        return bool(ok)

    def table(self, title: str, columns: list[str]) -> list:
        rows: list = []
        self.tables.append({"title": title, "columns": columns, "rows": rows})
        return rows

    def skip_part(self, what: str, reason: str) -> None:
        self.skipped.append({"what": what, "reason": reason})

    def as_dict(self) -> dict:
        return {"title": self.title, "data": self.data, "checks": self.checks,
                "tables": self.tables, "skipped_parts": self.skipped, "notes": self.notes}


def _status_of(sec: dict) -> str:
    verdicts = [c["verdict"] for c in sec.get("checks", [])]
    if "FAIL" in verdicts:
        return "fail"
    if "PASS" in verdicts:
        return "pass"
    return "done"


# ============================================================================================
# Measurement helpers
# ============================================================================================

class Ctx:
    """What every section shares: the device, the profile, the deadline, the output."""

    def __init__(self, out: pathlib.Path, profile: str, simulated: bool, budget_s: float) -> None:
        import cupy  # noqa: PLC0415 - the real CuPy or the simulated one (run.sh decides)
        import numpy as np  # noqa: PLC0415

        import nap_gpu as nap  # noqa: PLC0415

        self.cupy, self.np, self.nap = cupy, np, nap
        self.out, self.profile_name, self.simulated = out, profile, simulated
        self.p = PROFILES[profile]
        self.start = time.monotonic()
        self.deadline = self.start + budget_s
        self._cuda = None
        #: what the "events" are: the simulated device's Event reads the host clock
        self.clock = ("simulated-device events (host clock around synchronous CPU kernels)"
                      if simulated else "CUDA events")

    @property
    def cuda(self):
        if self._cuda is None:
            from nap_gpu.backends import cuda  # noqa: PLC0415 - imports CuPy
            self._cuda = cuda
        return self._cuda

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        self.cupy.cuda.get_current_stream().synchronize()

    def release(self) -> None:
        """Give cached device blocks back to the driver between sections."""
        gc.collect()
        self.sync()
        self.cupy.get_default_memory_pool().free_all_blocks()

    def device_memory(self) -> tuple[int, int, int]:
        """(driver free, CuPy pool free, total) bytes."""
        free, total = self.cupy.cuda.runtime.memGetInfo()
        return int(free), int(self.cupy.get_default_memory_pool().free_bytes()), int(total)

    def fits(self, need: int, what: str, *, host_need: int = 0,
             min_left_s: float = 0) -> str | None:
        """None if ``need`` device bytes (and ``host_need`` host bytes) fit and at least
        ``min_left_s`` seconds of the budget are left, else why not."""
        if self.left() < min_left_s:
            return f"out of time ({self.left():.0f} s left)"
        free, pooled, total = self.device_memory()
        margin = 256 * MiB if not self.simulated else 16 * MiB
        if need + margin > free + pooled:
            return (f"{what} needs {need / GiB:.2f} GiB on the device; {free / GiB:.2f} GiB free "
                    f"(+ {pooled / GiB:.2f} GiB in CuPy's pool) of {total / GiB:.2f} GiB")
        avail = host_available()
        if host_need and avail is not None and host_need + GiB > avail:
            return (f"{what} needs {host_need / GiB:.2f} GiB of host memory; MemAvailable is "
                    f"{avail / GiB:.2f} GiB")
        return None

    def time_calls(self, fn, *, reps: int | None = None, budget_s: float | None = None,
                   setup=None, warmup: int = 1, min_reps: int | None = None) -> dict:
        """CUDA-event times of ``fn`` (ms), after ``warmup`` untimed calls; reps planned from
        the first timed call to fit ``budget_s`` (between the profile's min and max reps).
        Each call is bracketed by events on the current stream, so a call's host gaps (its
        own synchronisations) count, as its caller sees them."""
        cupy = self.cupy
        for _ in range(warmup):
            if setup:
                setup()
            fn()
            self.sync()
        events, walls = [], []

        def once():
            if setup:
                setup()
                self.sync()
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            t0 = time.perf_counter()
            start.record()
            fn()
            end.record()
            end.synchronize()
            walls.append((time.perf_counter() - t0) * 1e3)
            events.append(float(cupy.cuda.get_elapsed_time(start, end)))

        once()
        if reps is None:
            budget = self.p["measure_budget_s"] if budget_s is None else budget_s
            per = max(events[0], walls[0], 1e-3) / 1e3
            low = self.p["min_reps"] if min_reps is None else min_reps
            reps = int(min(self.p["max_reps"], max(low, budget / per)))
        for _ in range(reps - 1):
            once()
        return timing(events, walls, self.clock)

    def interleaved(self, fns: dict, rounds: int) -> dict:
        """CUDA-event times of several calls timed in alternation (each round runs each once,
        in a rotating order): drift between them cancels. One warm-up round first."""
        cupy = self.cupy
        for fn in fns.values():
            fn()
        self.sync()
        names = list(fns)
        events = {k: [] for k in names}
        walls = {k: [] for k in names}
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                start, end = cupy.cuda.Event(), cupy.cuda.Event()
                t0 = time.perf_counter()
                start.record()
                fns[name]()
                end.record()
                end.synchronize()
                walls[name].append((time.perf_counter() - t0) * 1e3)
                events[name].append(float(cupy.cuda.get_elapsed_time(start, end)))
        return {k: timing(events[k], walls[k], self.clock) for k in names}


def timing(events: list[float], walls: list[float], clock: str) -> dict:
    return {"median": statistics.median(events), "min": min(events), "max": max(events),
            "unit": "ms", "reps": len(events), "clock": clock,
            "wall_median": statistics.median(walls)}


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def host_available() -> int | None:
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * KiB
    except OSError:
        pass
    return None


def gbps(nbytes: int, stats: dict) -> float:
    return nbytes / (stats["median"] / 1e3) / 1e9


def device_uniform(ctx: Ctx, n: int, seed: int):
    """n float32 values in [0, 1), multiples of 2^-24 as NumPy's float32 ``random()``, made on
    the device from a hash of the index (integer operations, an exact conversion and an exact
    scaling: the same bits on every device, no host copy)."""
    cupy, np = ctx.cupy, ctx.np
    x = cupy.arange(n, dtype=cupy.uint32)
    x *= np.uint32(0x9E3779B1)
    x += np.uint32((seed * 0x632BE5AB + 0x1234567) & 0xFFFFFFFF)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x85EBCA6B)
    x ^= x >> np.uint32(13)
    x *= np.uint32(0xC2B2AE35)
    x ^= x >> np.uint32(16)
    x >>= np.uint32(8)               # 24 bits
    w = x.astype(cupy.float32)       # exact below 2^24
    del x
    w *= np.float32(2.0**-24)        # exact: [0, 1), never subnormal
    return w


def device_quality(ctx: Ctx, n: int, seed: int):
    """Qualities shaped like the reference workload's: R (even ids) in [0.6, 1), P (odd) in
    [0, 0.4), interleaved, made on the device."""
    np = ctx.np
    q = device_uniform(ctx, n, seed)
    q *= np.float32(0.4)
    q[0::2] += np.float32(0.6)
    return q


def device_labels(ctx: Ctx, n: int):
    labels = ctx.cupy.zeros(n, dtype=ctx.cupy.uint8)
    labels[0::2] = 1
    return labels


def host_reference_backend(ctx: Ctx):
    """The host backend to compare with at scale: cpp (bit-identical, fast), else numpy."""
    reason = ctx.nap.available_backends()["cpp"]
    return ("cpp", None) if reason is None else ("numpy", reason)


def bits_equal(np, a, b) -> int:
    """How many float32 elements of a and b differ in their bits."""
    a = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    b = np.ascontiguousarray(b, dtype=np.float32).view(np.uint32)
    return int(np.count_nonzero(a != b))


def label(n: int) -> str:
    from nap_gpu._sizes import size_label  # noqa: PLC0415 - the script runs before nap_gpu is proven

    return size_label(n)


# ============================================================================================
# Sections
# ============================================================================================

def sec_versions(ctx: Ctx, sec: Section) -> None:
    cupy, np, nap = ctx.cupy, ctx.np, ctx.nap
    from nap_gpu import _nvrtc  # noqa: PLC0415
    from nap_gpu.backends import _kernels  # noqa: PLC0415

    d = sec.data
    d["ran_on"] = "simulated device" if ctx.simulated else "real GPU"
    d["python"] = sys.version.split()[0]
    d["numpy"] = np.__version__
    d["cupy"] = {"version": cupy.__version__, "module": cupy.__file__,
                 "simulated": bool(getattr(cupy, "SIMULATED", False))}
    d["nap_gpu"] = {"version": nap.__version__, "module": nap.__file__}
    t0 = time.perf_counter()
    count = int(cupy.cuda.runtime.getDeviceCount())
    device = cupy.cuda.Device()
    cupy.zeros(1, dtype=cupy.float32)
    ctx.sync()
    d["context_init"] = fig((time.perf_counter() - t0) * 1e3, "ms")
    props = cupy.cuda.runtime.getDeviceProperties(device.id)
    name = props.get("name", b"?")
    cc = int(device.compute_capability)
    free, pooled, total = ctx.device_memory()
    d["device"] = {
        "name": name.decode(errors="replace") if isinstance(name, bytes) else str(name),
        "index": device.id, "count": count, "compute_capability": f"{cc // 10}.{cc % 10}",
        "total_memory": fig(int(props.get("totalGlobalMem", total)), "bytes"),
        "free_memory_at_start": fig(free, "bytes"),
        "multiprocessors": props.get("multiProcessorCount"),
        "l2_cache": fig(props.get("l2CacheSize"), "bytes"),
    }
    d["driver_version"] = int(cupy.cuda.runtime.driverGetVersion())
    d["cuda_runtime_version"] = int(cupy.cuda.runtime.runtimeGetVersion())
    try:
        from nap_gpu.telemetry import gpu_status  # noqa: PLC0415
        nvml = gpu_status()
        d["nvml"] = {k: nvml.get(k) for k in ("available", "reason", "driver", "cuda")}
        d["nvml"]["devices"] = [{k: dev.get(k) for k in ("index", "name", "memory_total_bytes")}
                                for dev in nvml.get("devices", [])]
    except Exception as exc:  # noqa: BLE001 - recorded
        d["nvml"] = {"error": repr(exc)}
    d["nvrtc"] = {"version": ".".join(map(str, _nvrtc.version())), "build_id": _nvrtc.build_id(),
                  "supported_archs": list(_nvrtc.supported_archs())}
    arch = _kernels.arch_for(cc)
    d["cubin_arch"] = f"sm_{arch}"
    d["compile_options"] = list(_kernels.options(arch))

    cache = _kernels.cache_dir()
    before = sorted(p.name for p in cache.glob("*.cubin")) if cache.is_dir() else []
    d["kernel_cache"] = {"dir": str(cache), "cubins_before": before}
    t0 = time.perf_counter()
    path = _kernels.device_cubin(cupy)
    cold = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    _kernels.device_cubin(cupy)
    warm = (time.perf_counter() - t0) * 1e3
    d["cubin"] = {"path": str(path), "size": fig(path.stat().st_size, "bytes")}
    d["cold_compile"] = fig(cold, "ms", cache_was_empty=not before)
    d["cached_lookup"] = fig(warm, "ms")
    t0 = time.perf_counter()
    probe = nap.available_backends()
    d["probe"] = probe
    d["probe_time"] = fig((time.perf_counter() - t0) * 1e3, "ms")
    if probe["cuda"] is None:
        w = cupy.zeros(1024, dtype=cupy.float32)
        q = cupy.full(1024, 0.75, dtype=cupy.float32)
        t0 = time.perf_counter()
        ctx.cuda.step(w, q, nap.Params())
        ctx.sync()
        d["first_launch"] = fig((time.perf_counter() - t0) * 1e3, "ms",
                                note="module load from the cubin + the first nap_step launch")
    rows = sec.table("versions", ["item", "value"])
    rows += [["ran on", d["ran_on"] + (" (tests/simdevice: NOT a GPU)" if ctx.simulated else "")],
             ["GPU", f"{d['device']['name']} (cc {d['device']['compute_capability']}, "
                     f"{d['device']['total_memory']['value'] / GiB:.1f} GiB)"],
             ["driver / CUDA runtime", f"{d['driver_version']} / {d['cuda_runtime_version']}"
                                       + (f" (NVML driver {d['nvml'].get('driver')})"
                                          if d["nvml"].get("driver") else "")],
             ["CuPy", d["cupy"]["version"]], ["NVRTC", d["nvrtc"]["build_id"]],
             ["nap_gpu", f"{d['nap_gpu']['version']} ({d['nap_gpu']['module']})"],
             ["cubin", f"{d['cubin_arch']}, {d['cubin']['size']['value']:,} bytes"],
             ["cold compile",
              f"{cold:.0f} ms" + ("" if not before else " (cache NOT empty: not cold)")],
             ["probe", ", ".join(f"{k}: {'usable' if v is None else v}" for k, v in probe.items())]]
    if "first_launch" in d:
        rows.append(["first launch", f"{d['first_launch']['value']:.1f} ms"])
    sec.check("kernel cache empty before the compile (the compile was cold)", not before,
              f"{len(before)} cubins", "0")
    sec.check("cuda backend usable (probe)", probe["cuda"] is None,
              probe["cuda"] or "usable", "usable")


def _find_cuobjdump() -> tuple[str | None, dict]:
    bins = []
    try:
        import nvidia  # noqa: PLC0415 - the nvidia-cuda-cuobjdump / -nvdisasm wheels
        bins = [pathlib.Path(p) / sub / "bin" for p in nvidia.__path__ for sub in ("cu13", "cu12")]
    except ImportError:
        pass
    bins += [pathlib.Path("/usr/local/cuda/bin")]
    env = {**os.environ, "PATH": os.pathsep.join([os.environ.get("PATH", ""), *map(str, bins)])}
    tool = shutil.which("cuobjdump", path=env["PATH"])
    return tool, env


_SASS_LINE = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?"
                        r"([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)\s*([^;]*);")


def sass_counts(text: str) -> dict[str, dict]:
    """Per function: instructions, FFMA-like fused float ops, .FTZ instructions, and others."""
    out: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"Function : (\w+)", line)
        if m:
            current = out.setdefault(m.group(1), {"instructions": 0, "FFMA": 0, "DFMA": 0,
                                                  "HFMA2": 0, "HFMA2_constant_moves": 0,
                                                  "FTZ": 0, "FADD": 0, "FMUL": 0, "ftz_ops": []})
            continue
        m = _SASS_LINE.match(line)
        if not m or current is None:
            continue
        op, operands = m.group(1), m.group(2)
        base = op.split(".")[0]
        current["instructions"] += 1
        if base.startswith("FFMA"):
            current["FFMA"] += 1
        elif base.startswith("DFMA"):
            current["DFMA"] += 1
        elif base.startswith("HFMA2"):
            current["HFMA2"] += 1
            if re.match(r"\s*R\d+,\s*-?RZ,\s*RZ,", operands):  # HFMA2.MMA Rx, -RZ, RZ, c, c
                current["HFMA2_constant_moves"] += 1
        elif base == "FADD":
            current["FADD"] += 1
        elif base == "FMUL":
            current["FMUL"] += 1
        if ".FTZ" in op:
            current["FTZ"] += 1
            current["ftz_ops"].append(op)
    return out


def sec_sass(ctx: Ctx, sec: Section) -> None:
    from nap_gpu.backends import _kernels  # noqa: PLC0415

    path = _kernels.device_cubin(ctx.cupy)
    tool, env = _find_cuobjdump()
    if tool is None:
        raise Skip("cuobjdump not found (PATH, the nvidia-cuda-cuobjdump wheel, /usr/local/cuda)")
    done = subprocess.run([tool, "-sass", str(path)], capture_output=True, text=True, env=env,
                          timeout=120)
    if done.returncode != 0:
        if "nvdisasm" in done.stderr:
            raise Skip(f"cuobjdump needs nvdisasm, which is missing: {done.stderr.strip()[:300]}")
        raise RuntimeError(f"cuobjdump failed ({done.returncode}): {done.stderr.strip()[:2000]}")
    header = (f"# cuobjdump -sass {path}\n# {tool}\n# options: "
              f"{' '.join(_kernels.PRODUCTION_OPTIONS)}\n")
    write_atomic(ctx.out / SASS_NAME, header + done.stdout)
    counts = sass_counts(done.stdout)
    total = {k: sum(c[k] for c in counts.values())
             for k in ("instructions", "FFMA", "DFMA", "HFMA2", "HFMA2_constant_moves", "FTZ",
                       "FADD", "FMUL")}
    sec.data.update({"cuobjdump": tool, "cubin": str(path), "sass_file": SASS_NAME,
                     "functions": counts, "total": total})
    rows = sec.table("machine code per kernel", ["kernel", "instructions", "FFMA", "DFMA",
                                                 "HFMA2 (const moves)", ".FTZ", "FADD", "FMUL"])
    for name, c in sorted(counts.items()):
        rows.append([name, c["instructions"], c["FFMA"], c["DFMA"],
                     f"{c['HFMA2']} ({c['HFMA2_constant_moves']})", c["FTZ"], c["FADD"], c["FMUL"]])
    sec.check("every kernel is in the cubin", sorted(counts) == sorted(_kernels.KERNELS),
              ", ".join(sorted(counts)), f"the {len(_kernels.KERNELS)} kernels of _kernels.KERNELS")
    sec.check("no FFMA (fused float multiply-add)", total["FFMA"] == 0, total["FFMA"], "0")
    sec.check("no DFMA (fused double multiply-add)", total["DFMA"] == 0, total["DFMA"], "0")
    other_hfma = total["HFMA2"] - total["HFMA2_constant_moves"]
    sec.check("no HFMA2 on data (HFMA2.MMA Rx, -RZ, RZ, c, c only moves constants)",
              other_hfma == 0, other_hfma, "0")
    sec.check("no .FTZ instruction", total["FTZ"] == 0, total["FTZ"], "0")
    sec.check("the law's FADD and FMUL are there", total["FADD"] > 0 and total["FMUL"] > 0,
              f"FADD {total['FADD']}, FMUL {total['FMUL']}", "> 0 each")


def _spans(n: int, marks, width: int) -> list[tuple[int, int]]:
    spans = [(0, min(n, width))]
    for m in marks:
        lo = max(0, m - width // 2)
        spans.append((lo, min(n, lo + width)))
    spans.append((max(0, n - width), n))
    spans.sort()
    merged: list[list[int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(lo, hi) for lo, hi in merged]


def _diverse_weights(np, rng, size: int):
    w = rng.random(size, dtype=np.float32)
    specials = np.array([0.0, 1.0, 2.0**-149, 2.0**-127, 2.0**-126, 0.02, 0.98, 0.5, 0.04,
                         np.nextafter(np.float32(0.02), np.float32(0)),
                         np.nextafter(np.float32(1), np.float32(0)), 1e-30, 0.97],
                        dtype=np.float32)
    w[::7] = np.resize(specials, w[::7].size)
    return w


def _diverse_quality(np, rng, size: int):
    q = rng.uniform(-1.5, 2.5, size).astype(np.float32)
    specials = np.array([0.5, np.nextafter(np.float32(0.5), np.float32(1)),
                         np.nextafter(np.float32(0.5), np.float32(0)), 0.0, -0.0, 1.0, 2.0, -1.0,
                         3.0, 2.0**-149, -(2.0**-149), 1e-40, 0.6, 0.4], dtype=np.float32)
    q[::5] = np.resize(specials, q[::5].size)
    return q


def sec_parity64(ctx: Ctx, sec: Section) -> None:
    cupy, np, nap = ctx.cupy, ctx.np, ctx.nap
    p = ctx.p
    P = nap.Params()
    n, width = p["parity_n"], p["parity_window"]
    marks = p["parity_marks"]
    sec.data["n"] = n
    sec.data["boundaries"] = list(marks)
    if ctx.simulated:
        sec.notes.append(f"simulated profile: n = {n:,} (not 2^32 + 2^20 + 3); the windows at "
                         f"2^21 and 2^22 stand in for 2^31 and 2^32: the 64-bit boundaries are "
                         f"NOT exercised here")
    spans = _spans(n, marks, width)
    sec.data["windows"] = [list(s) for s in spans]
    need = 8 * n + 64 * MiB
    why = ctx.fits(need, f"the parity population ({n:,} memories: weights + qualities)",
                   host_need=4 * n)
    rows = sec.table("Engine calls vs the NumPy reference (bits)",
                     ["call", "window elements", "window mismatches", "background sample",
                      "sample mismatches", "verdict"])
    if why:
        sec.skip_part(f"parity at n = {n:,}", why)
    else:
        _parity_windows(ctx, sec, rows, n, spans, marks, P)
    ctx.release()
    _parity_full(ctx, sec, P)


def _parity_windows(ctx, sec, rows, n, spans, marks, P) -> None:
    cupy, np, nap = ctx.cupy, ctx.np, ctx.nap
    rng = np.random.default_rng(2024)
    t0 = time.perf_counter()
    eng = nap.Engine(n, backend="cuda", init=0.5)  # a constant background (host array: fast)
    q = cupy.full(n, 0.7, dtype=cupy.float32)
    ctx.sync()
    sec.data["setup"] = fig(time.perf_counter() - t0, "s")
    w_dev = eng._w  # the engine's live weights (read, and windows seeded, through slices)
    win_q1, win_q2 = {}, {}
    for lo, hi in spans:
        w_dev[lo:hi].set(_diverse_weights(np, rng, hi - lo))
        win_q1[lo] = _diverse_quality(np, rng, hi - lo)
        win_q2[lo] = _diverse_quality(np, rng, hi - lo)
        q[lo:hi].set(win_q1[lo])

    def second_quality():  # the same array, other window values (the background stays 0.7)
        for lo, hi in spans:
            q[lo:hi].set(win_q2[lo])
        eng.step(q)
    # Events at the boundaries (and duplicates), in order, plus random ones in the windows.
    tail = n - 1
    boundary_ids = [m - 1 for m in marks] + list(marks) + [0, tail]
    ids = list(boundary_ids) * 3
    pool_ids = np.concatenate([np.arange(lo, hi) for lo, hi in spans])
    ids += rng.choice(rng.choice(pool_ids, 48, replace=False), 400).tolist()
    ids = np.array(ids, dtype=np.int64)
    rng.shuffle(ids)
    ids = np.concatenate([ids, np.array(boundary_ids, dtype=np.int64)])  # last: boundaries again
    qs = _diverse_quality(np, rng, ids.size)
    sec.data["update_ids"] = {"count": int(ids.size), "boundary_ids": boundary_ids,
                              "distinct": int(np.unique(ids).size)}
    in_window = np.zeros(0, dtype=np.int64)
    for lo, hi in spans:
        in_window = np.concatenate([in_window, np.arange(lo, hi)])
    # The background sample: about 4096 positions spread over the population, off the windows.
    sample = np.unique(np.concatenate([np.linspace(0, n - 1, 4096).astype(np.int64),
                                       np.array([m + k for m in marks for k in (-4096, 4096)])]))
    sample = sample[(sample >= 0) & (sample < n)]
    sample = np.setdiff1d(sample, in_window)
    sample_dev = cupy.asarray(sample)
    background = np.array([0.5], dtype=np.float32)
    bg_q = np.float32(0.7)
    big_k = 2**40

    def ref_engine(w):
        return nap.Engine(w.size, backend="numpy", init=w, params=P)

    ops = [
        ("step(quality array)", lambda: eng.step(q),
         lambda r, lo: r.step(win_q1[lo]), lambda r: r.step(np.array([bg_q]))),
        ("step(0.9) scalar", lambda: eng.step(0.9), lambda r, lo: r.step(0.9),
         lambda r: r.step(0.9)),
        ("update(ids at the boundaries, duplicates)", lambda: eng.update(ids, qs),
         lambda r, lo: _window_update(np, r, lo, ids, qs), None),
        ("decay(7)", lambda: eng.decay(7), lambda r, lo: r.decay(7), lambda r: r.decay(7)),
        ("step(quality array, new windows)", second_quality,
         lambda r, lo: r.step(win_q2[lo]), lambda r: r.step(np.array([bg_q]))),
        ("step(0.3) scalar", lambda: eng.step(0.3), lambda r, lo: r.step(0.3),
         lambda r: r.step(0.3)),
        ("update(ids) again", lambda: eng.update(ids[::-1].copy(), qs[::-1].copy()),
         lambda r, lo: _window_update(np, r, lo, ids[::-1], qs[::-1]), None),
        ("decay(2**40)", lambda: eng.decay(big_k), lambda r, lo: r.decay(big_k),
         lambda r: r.decay(big_k)),
    ]
    all_ok = True
    timings = {}
    for name, device_op, window_ref, background_ref in ops:
        before = {lo: w_dev[lo:hi].get() for lo, hi in spans}
        t0 = time.perf_counter()
        device_op()
        ctx.sync()
        timings[name] = fig((time.perf_counter() - t0) * 1e3, "ms")
        mismatches = elements = 0
        where = []
        for lo, hi in spans:
            ref = ref_engine(before[lo])
            window_ref(ref, lo)
            got = w_dev[lo:hi].get()
            bad = bits_equal(np, got, ref.to_numpy())
            if bad:
                diff = np.flatnonzero(got.view(np.uint32) != ref.to_numpy().view(np.uint32))
                where.append(f"[{lo + int(diff[0])}]: 0x{int(got.view(np.uint32)[diff[0]]):08x} "
                             f"!= 0x{int(ref.to_numpy().view(np.uint32)[diff[0]]):08x}")
            mismatches += bad
            elements += hi - lo
        if background_ref is not None:
            ref = ref_engine(background)
            background_ref(ref)
            background = ref.to_numpy()
        got_sample = w_dev[sample_dev].get()
        sample_bad = int(np.count_nonzero(got_sample.view(np.uint32)
                                          != background.view(np.uint32)[0]))
        ok = mismatches == 0 and sample_bad == 0
        all_ok &= ok
        rows.append([name, elements, mismatches, sample.size, sample_bad, "PASS" if ok else "FAIL"])
        if where:
            sec.notes.append(f"{name}: first mismatches {'; '.join(where[:4])}")
    sec.data["call_wall"] = timings
    sec.check(f"Engine.step/step(scalar)/decay(k)/update bit-equal to the reference on the "
              f"windows and a background sample (n = {n:,})", all_ok,
              f"{len(ops)} calls", "0 mismatches")
    del eng, q, w_dev


def _window_update(np, ref, lo: int, ids, qs) -> None:
    mask = (ids >= lo) & (ids < lo + ref.n)
    if mask.any():
        ref.update(ids[mask] - lo, qs[mask])


def _parity_full(ctx, sec, P) -> None:
    """The whole population at 1e8: three dense steps, a sparse batch and decay on the device
    and on the host backend, every bit compared; then the metrics, compared with ==."""
    cupy, np, nap = ctx.cupy, ctx.np, ctx.nap
    n = ctx.p["parity_full_n"]
    host_name, host_reason = host_reference_backend(ctx)
    sec.data["full"] = {"n": n, "host_backend": host_name}
    if host_reason:
        sec.notes.append(f"cpp backend unusable ({host_reason}): the host side uses numpy")
    why = ctx.fits(16 * n, f"the full-population parity ({n:,})", host_need=20 * n)
    if why:
        sec.skip_part(f"full-population parity and metrics at {label(n)}", why)
        return
    rng = np.random.default_rng(7)
    host_w = _diverse_weights(np, rng, n)
    workload = nap.ReferenceWorkload(n, seed=3)
    labels = workload.labels
    dev = nap.Engine(n, backend="cuda", init=host_w, params=P)
    host = nap.Engine(n, backend=host_name, init=host_w, params=P)
    m = ctx.p["parity_events"]
    ids = rng.integers(0, n, m)
    ids[: m // 10] = rng.integers(0, 64, m // 10)  # duplicates
    qs = rng.random(m, dtype=np.float32)
    t0 = time.perf_counter()
    for _ in range(3):
        qh = workload.next_quality()
        dev.step(cupy.asarray(qh))
        host.step(qh)
    dev.update(ids, qs)
    host.update(ids, qs)
    dev.decay(2)
    host.decay(2)
    dev_w = dev.to_numpy()
    bad = bits_equal(np, dev_w, host.to_numpy())
    sec.data["full"]["calls_wall"] = fig(time.perf_counter() - t0, "s")
    sec.check(f"3 steps + update({m:,} events) + decay(2) at {label(n)}: every weight "
              f"bit-equal to the {host_name} backend", bad == 0, f"{bad:,} mismatches", "0")
    t0 = time.perf_counter()
    m_dev = dev.metrics(labels)
    t_dev = time.perf_counter() - t0
    t0 = time.perf_counter()
    m_host = host.metrics(labels)
    t_host = time.perf_counter() - t0
    sec.data["full"]["metrics_device"] = m_dev.as_dict()
    sec.data["full"]["metrics_host"] = m_host.as_dict()
    sec.data["full"]["metrics_wall"] = {"device": fig(t_dev * 1e3, "ms"),
                                        "host": fig(t_host * 1e3, "ms")}
    sec.check(f"metrics at {label(n)} == the {host_name} backend's (Metrics dataclass ==)",
              m_dev == m_host, f"separation {m_dev.separation!r}, ratio {m_dev.inversion_ratio!r}",
              "equal")
    del dev, host, dev_w


def sec_dense(ctx: Ctx, sec: Section) -> None:
    cupy, np, nap = ctx.cupy, ctx.np, ctx.nap
    from gpu_floor import STEP_BYTES_PER_MEMORY, CopyFloor  # noqa: PLC0415 - beside this file

    from nap_gpu.backends import numpy as reference  # noqa: PLC0415

    cuda, P = ctx.cuda, nap.Params()
    rows = sec.table("dense step (median of CUDA-event times; GB/s = 12 bytes/memory)",
                     ["n", "call", "median ms", "GB/s", "x copy time", "x raw nap_step time",
                      "reps"])
    sec.data["sizes"] = {}
    sec.notes.append("weights are not restored between rounds: the kernels are branch free, "
                     "their cost does not depend on the values; calls are timed in alternation")
    for n in ctx.p["dense_sizes"]:
        need = 4 * n + 4 * n + 12 * n + 4 * n + 8 * n  # ... and the double-buffered engine's
        why = ctx.fits(need, f"dense timings at {label(n)}", host_need=4 * n, min_left_s=20)
        if why:
            sec.skip_part(f"dense timings at {label(n)}", why)
            continue
        eng = nap.Engine(n, backend="cuda", init=0.5, params=P)
        w = eng._w  # the raw kernel steps the engine's own weights: one population
        cupy.copyto(w, device_uniform(ctx, n, 1))
        q = device_quality(ctx, n, 2)
        twin = nap.Engine(n, backend="cuda", init=0.5, params=P, double_buffer=True)
        floor = CopyFloor(cupy, n)
        # the kernel alone: its function looked up once and launched with cuda.step's geometry
        # and arguments (cuda.step looks the kernel up on every call: that host time shows as
        # the difference between the two rows)
        be = cuda._backend
        kernel = be.kernels.nap_step
        grid = (min(max(1, -(-n // be.block)), be.max_blocks),)
        args = (w, q, np.uint64(n), *P.float32())
        fns = {"copy (6n bytes, D2D)": floor.run,
               "nap_triad": lambda: cuda.triad(w, q, 0.25),
               "nap_step kernel (direct launch)": lambda: kernel(grid, (be.block,), args),
               "nap_step (raw kernel)": lambda: cuda.step(w, q, P),
               "Engine.step (check_finite)": lambda: eng.step(q),
               "Engine.step (check_finite=False)": lambda: eng.step(q, check_finite=False),
               "Engine.step (check_finite, double_buffer)": lambda: twin.step(q)}
        ctx.sync()
        # rounds: enough for the budget, from one round's cost
        t0 = time.perf_counter()
        for fn in fns.values():
            fn()
        ctx.sync()
        per_round = time.perf_counter() - t0
        rounds = int(min(ctx.p["max_reps"], max(ctx.p["min_reps"],
                                                 2 * ctx.p["measure_budget_s"] / per_round)))
        stats = ctx.interleaved(fns, rounds)
        moved = STEP_BYTES_PER_MEMORY * n
        copy = stats["copy (6n bytes, D2D)"]["median"]
        raw = stats["nap_step (raw kernel)"]["median"]
        entry = {}
        for name, s in stats.items():
            s = dict(s)
            s["GB_per_s"] = fig(gbps(moved, s), "GB/s", bytes=moved)
            s["x_copy_time"] = s["median"] / copy
            s["x_raw_step_time"] = s["median"] / raw
            entry[name] = s
            rows.append([label(n), name, f"{s['median']:.3f}", f"{s['GB_per_s']['value']:.0f}",
                         f"{s['x_copy_time']:.2f}", f"{s['x_raw_step_time']:.2f}", s["reps"]])
        step_vs_copy = copy / raw  # bandwidth ratio (same bytes)
        direct = stats["nap_step kernel (direct launch)"]["median"]
        kernel_vs_copy = copy / direct
        checked = stats["Engine.step (check_finite)"]["median"] / raw
        double = stats["Engine.step (check_finite, double_buffer)"]["median"] / raw
        entry["nap_step_bandwidth_vs_copy"] = step_vs_copy
        entry["nap_step_kernel_bandwidth_vs_copy"] = kernel_vs_copy
        entry["cuda_step_host_overhead"] = fig(raw - direct, "ms",
                                               note="cuda.step minus the direct launch")
        entry["checked_engine_step_vs_raw"] = checked
        entry["double_buffered_step_vs_raw"] = double
        sec.check(f"{label(n)}: nap_step (cuda.step) bandwidth vs the copy's",
                  step_vs_copy >= STEP_VS_COPY_MIN,
                  f"{step_vs_copy:.3f}x", f">= {STEP_VS_COPY_MIN}x", kind="performance")
        sec.check(f"{label(n)}: nap_step kernel alone (direct launch) bandwidth vs the copy's",
                  kernel_vs_copy >= STEP_VS_COPY_MIN,
                  f"{kernel_vs_copy:.3f}x", f">= {STEP_VS_COPY_MIN}x", kind="performance")
        sec.check(f"{label(n)}: checked Engine.step time vs the raw kernel's",
                  checked <= CHECKED_VS_RAW_MAX, f"{checked:.3f}x", f"<= {CHECKED_VS_RAW_MAX}x",
                  kind="performance")
        sec.check(f"{label(n)}: double-buffered checked Engine.step time vs the raw kernel's",
                  double <= DOUBLE_BUFFER_VS_RAW_MAX, f"{double:.3f}x",
                  f"<= {DOUBLE_BUFFER_VS_RAW_MAX}x", kind="performance")
        # and the raw kernel's bits, on the first 2^20 memories
        k = min(n, 1 << 20)
        w0, q0 = w[:k].get(), q[:k].get()
        cuda.step(w, q, P)
        expected = w0.copy()
        reference.step(expected, q0, P)
        bad = bits_equal(np, w[:k].get(), expected)
        sec.check(f"{label(n)}: nap_step bits on the first {k:,} memories (after the timings)",
                  bad == 0, f"{bad} mismatches", "0")
        before = twin._w[:k].get()  # the live buffer (before the swap)
        twin.step(q)  # nap_step_into, then the swap
        expected = before.copy()
        reference.step(expected, q0, P)
        bad = bits_equal(np, twin._w[:k].get(), expected)
        sec.check(f"{label(n)}: double-buffered step bits on the first {k:,} memories",
                  bad == 0, f"{bad} mismatches", "0")
        sec.data["sizes"][label(n)] = entry
        del eng, twin, w, q, floor, fns, args, kernel
        ctx.release()


def _zipf_ids(np, rng, m: int, n: int):
    return ((rng.zipf(1.1, m) - 1) % n).astype(np.int64)


def sec_sparse(ctx: Ctx, sec: Section) -> None:
    cupy, np, nap = ctx.cupy, ctx.np, ctx.nap
    cuda, P = ctx.cuda, nap.Params()
    n = ctx.p["sparse_n"]
    events = ctx.p["sparse_events"]
    why = ctx.fits(8 * n + 16 * max(events) * 4, f"sparse batches over {label(n)}",
                   host_need=8 * n)
    if why:
        raise Skip(why)
    host_name, host_reason = host_reference_backend(ctx)
    host_backend = ctx.nap.backends.get(host_name)
    rng = np.random.default_rng(11)
    eng = nap.Engine(n, backend="cuda", init=0.5, params=P)
    pristine = eng._w.copy()
    rows = sec.table(f"Engine.update over {label(n)} memories (median of CUDA-event times)",
                     ["events", "ids", "distinct ids", "max per id", "Engine.update ms",
                      "events/s", "raw update ms", "raw events/s", "reps"])
    sec.data["n"] = n
    sec.data["cases"] = {}
    hot_per_event = None
    for m in events:
        for kind in ("uniform", "zipf1.1", "hot id"):
            case = f"{label(m)} {kind}"
            if ctx.left() < 15:
                sec.skip_part(case, f"out of time ({ctx.left():.0f} s left)")
                continue
            if kind == "hot id" and hot_per_event is not None:
                estimate = hot_per_event * m * (2 + 2 * ctx.p["min_reps"])
                if estimate > min(30.0, ctx.left() / 4):
                    sec.skip_part(case, f"one hot id is a serial chain: estimated {estimate:.0f} s "
                                        f"from the {label(events[0])} case")
                    continue
            if kind == "uniform":
                ids = rng.integers(0, n, m, dtype=np.int64)
            elif kind == "zipf1.1":
                ids = _zipf_ids(np, rng, m, n)
            else:
                ids = np.full(m, 123_457 % n, dtype=np.int64)
            qs = rng.random(m, dtype=np.float32)
            s_ids = np.sort(ids)
            starts = np.flatnonzero(np.concatenate(([True], s_ids[1:] != s_ids[:-1])))
            distinct = int(starts.size)
            longest = int(np.diff(np.append(starts, m)).max())
            del s_ids, starts
            ids_d, qs_d = cupy.asarray(ids), cupy.asarray(qs)
            t_eng = ctx.time_calls(lambda: eng.update(ids_d, qs_d))
            t_raw = ctx.time_calls(lambda: cuda.update(eng._w, ids_d, qs_d, P))
            if kind == "hot id" and m == events[0]:
                hot_per_event = t_eng["median"] / 1e3 / m
            eps = m / (t_eng["median"] / 1e3)
            eps_raw = m / (t_raw["median"] / 1e3)
            sec.data["cases"][case] = {"events": m, "ids": kind, "distinct_ids": distinct,
                                       "max_events_per_id": longest, "engine_update": t_eng,
                                       "raw_update": t_raw,
                                       "engine_events_per_s": fig(eps, "events/s"),
                                       "raw_events_per_s": fig(eps_raw, "events/s")}
            rows.append([label(m), kind, f"{distinct:,}", f"{longest:,}",
                         f"{t_eng['median']:.3f}", f"{eps:.3g}", f"{t_raw['median']:.3f}",
                         f"{eps_raw:.3g}", t_eng["reps"]])
            if m == events[0] and not (host_name == "numpy" and kind != "uniform"):
                # the result of one batch from the pristine weights, against the host backend
                cupy.copyto(eng._w, pristine)
                eng.update(ids_d, qs_d)
                host_w = np.full(n, 0.5, dtype=np.float32)
                host_backend.update(host_w, ids, qs, P)
                touched = np.unique(ids)
                probe = np.concatenate([touched, rng.integers(0, n, 4096)])
                got = eng._w[cupy.asarray(probe)].get()
                bad = bits_equal(np, got, host_w[probe])
                sec.check(f"{case}: weights after one batch == the {host_name} backend's",
                          bad == 0, f"{bad} mismatches of {probe.size:,} probed", "0")
                del host_w
            elif m == events[0]:
                sec.skip_part(f"{case} result check", f"the numpy reference is too slow for "
                                                      f"hot ids (cpp unusable: {host_reason})")
            del ids_d, qs_d
    del eng, pristine
    ctx.release()


def sec_metrics(ctx: Ctx, sec: Section) -> None:
    cupy, np, nap = ctx.cupy, ctx.np, ctx.nap
    from nap_gpu import metrics as M  # noqa: PLC0415

    cuda, P = ctx.cuda, nap.Params()
    phases = ("rank_bins", "across", "gather_mixed", "sorts", "within", "compute",
              "summarize", "dense step", "cupy.sort(w)")
    rows = sec.table("metrics by phase (median ms of CUDA-event times): the histogram path of "
                     "compute, the sorting path of summarize (shards), and two yardsticks",
                     ["n", "population", *phases, "compute / step", "compute / sort",
                      "mixed R/P"])
    sec.data["sizes"] = {}
    target_n = ctx.p["metrics_target_n"]
    keys = M._saturation_keys(M.DEFAULT_EPS)
    for n in ctx.p["metrics_sizes"]:
        why = ctx.fits(44 * n, f"metrics at {label(n)}", min_left_s=20)
        if why:
            sec.skip_part(f"metrics at {label(n)}", why)
            continue
        labels = device_labels(ctx, n)
        sec.data["sizes"][label(n)] = {}
        for population in ("uniform", "converged"):
            w = device_uniform(ctx, n, 5)
            q = cupy.full(n, 0.01, dtype=cupy.float32)
            q[0::2] = np.float32(0.99)
            if population == "converged":
                # the law itself converges them: R (even ids) to 1 - decay, P to 0
                for _ in range(45):
                    cuda.step(w, q, P)
            ctx.sync()
            ranks = cuda.rank_bins(w, labels, *keys)[0]
            mixed = (ranks[0] > 0) & (ranks[1] > 0)
            in_mixed = ranks * mixed
            sizes = tuple(int(c) for c in in_mixed.sum(axis=1))
            starts = cupy.cumsum(in_mixed, axis=1) - in_mixed
            flags = mixed.astype(cupy.uint8)
            kp, kr = cuda.gather_mixed(w, labels, flags, starts, sizes)
            dr, dp = M._distinct(cupy.sort(kr), cupy), M._distinct(cupy.sort(kp), cupy)
            scratch = w.copy()

            def timed(fn):  # the phases: fewer rounds where one call is long
                return ctx.time_calls(fn, budget_s=ctx.p["measure_budget_s"] / 2, min_reps=3)
            t = {"rank_bins": timed(lambda: cuda.rank_bins(w, labels, *keys)),
                 "across": timed(lambda: M._gather(cupy, [M._across_bins(ranks, cupy),
                                                           M._across_bins(in_mixed, cupy)])),
                 "gather_mixed": timed(lambda: cuda.gather_mixed(w, labels, flags, starts, sizes)),
                 "sorts": timed(lambda: (cupy.sort(kr), cupy.sort(kp))),
                 "within": timed(lambda: M._twice_u(dr, dp, cupy)),
                 "summarize": timed(lambda: M.summarize(w, labels, cuda)),
                 # the total and its yardsticks: the full number of rounds
                 "compute": ctx.time_calls(lambda: M.compute(w, labels, cuda)),
                 "dense step": ctx.time_calls(lambda: cuda.step(scratch, q, P)),
                 "cupy.sort(w)": ctx.time_calls(lambda: cupy.sort(w))}
            result = M.compute(w, labels, cuda)
            vs_step = t["compute"]["median"] / t["dense step"]["median"]
            vs_sort = t["compute"]["median"] / t["cupy.sort(w)"]["median"]
            sec.data["sizes"][label(n)][population] = {
                "phases": t, "compute_vs_step": vs_step, "compute_vs_sort": vs_sort,
                "mixed": {"reinforced": sizes[1], "punished": sizes[0]},
                "metrics": result.as_dict()}
            rows.append([label(n), population] + [f"{t[k]['median']:.3f}" for k in phases]
                        + [f"{vs_step:.2f}", f"{vs_sort:.2f}", f"{sizes[1]:,}/{sizes[0]:,}"])
            if population == "converged":
                sec.check(f"{label(n)} converged population: no bin holds both labels",
                          sizes == (0, 0), f"{sizes[1]}/{sizes[0]}", "0/0")
            if n == target_n:
                if population == "converged":
                    sec.check(f"{label(n)} converged: metrics time vs a dense step",
                              vs_step <= METRICS_VS_STEP_MAX, f"{vs_step:.2f}x",
                              f"<= {METRICS_VS_STEP_MAX}x", kind="performance")
                sec.check(f"{label(n)} {population}: metrics time vs cupy.sort of the same values",
                          vs_sort <= METRICS_VS_SORT_MAX, f"{vs_sort:.2f}x",
                          f"<= {METRICS_VS_SORT_MAX}x", kind="performance")
            del w, q, scratch, ranks, mixed, in_mixed, starts, flags, kp, kr, dr, dp
            ctx.release()
        del labels
        ctx.release()
    if target_n not in ctx.p["metrics_sizes"] or label(target_n) not in sec.data["sizes"]:
        sec.check(f"metrics within {METRICS_VS_SORT_MAX}x of cupy.sort at {label(target_n)}", None,
                  "not measured", f"<= {METRICS_VS_SORT_MAX}x", kind="performance")


def sec_latency(ctx: Ctx, sec: Section) -> None:
    cupy, np, nap = ctx.cupy, ctx.np, ctx.nap
    rows = sec.table("per-call wall time (call + synchronize)",
                     ["n", "call", "median us", "p99 us", "max us", "calls"])
    sec.data["sizes"] = {}
    kernels = ctx.cuda._backend.kernels
    kernels.nap_step  # noqa: B018 - loaded once
    k = 2000
    t0 = time.perf_counter()
    for _ in range(k):
        kernels.nap_step  # noqa: B018 - what every launch does (CupyKernels.__getattr__)
    lookup = (time.perf_counter() - t0) / k * 1e6
    sec.data["kernel_lookup_per_launch"] = fig(lookup, "us", calls=k, note=(
        "CupyKernels.__getattr__ -> _kernels.device_cubin: every launch reads and hashes the "
        "kernel source (cache_key) and asks NVRTC and the driver for versions"))
    rows.append(["-", "kernel lookup per launch (host only)", f"{lookup:.0f}", "", "", k])
    rng = np.random.default_rng(5)
    for n in ctx.p["latency_sizes"]:
        eng = nap.Engine(n, backend="cuda", seed=0)
        q_dev = device_quality(ctx, n, 3)
        q_host = q_dev.get()
        ids = rng.integers(0, n, 10)
        q10 = rng.random(10, dtype=np.float32)
        labels = nap.ReferenceWorkload(n).labels
        calls = {"Engine.step(device q)": lambda: eng.step(q_dev),
                 "Engine.step(host q)": lambda: eng.step(q_host),
                 "Engine.step(0.9)": lambda: eng.step(0.9),
                 "Engine.update(10 events, host)": lambda: eng.update(ids, q10),
                 "Engine.metrics(host labels)": lambda: eng.metrics(labels)}
        entry = {}
        for name, call in calls.items():
            for _ in range(10):
                call()
            eng.synchronize()
            t0 = time.perf_counter()
            call()
            eng.synchronize()
            one = time.perf_counter() - t0
            k = int(min(ctx.p["latency_calls"], max(30, 2.0 / max(one, 1e-6))))
            times = []
            for _ in range(k):
                t0 = time.perf_counter()
                call()
                eng.synchronize()
                times.append((time.perf_counter() - t0) * 1e6)
            entry[name] = {"median": statistics.median(times), "p99": percentile(times, 99),
                           "max": max(times), "unit": "us", "calls": k,
                           "clock": "host wall (perf_counter)"}
            rows.append([label(n), name, f"{entry[name]['median']:.0f}",
                         f"{entry[name]['p99']:.0f}", f"{entry[name]['max']:.0f}", k])
        sec.data["sizes"][label(n)] = entry
        del eng, q_dev
    ctx.release()


def sec_torch(ctx: Ctx, sec: Section) -> None:
    cupy, np, nap = ctx.cupy, ctx.np, ctx.nap
    from nap_gpu.backends import numpy as reference  # noqa: PLC0415

    try:
        import torch  # noqa: PLC0415
    except ImportError as exc:
        raise Skip(f"torch is not installed ({exc})") from None
    sec.data["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda}
    if not torch.cuda.is_available():
        raise Skip(f"torch {torch.__version__} has no usable CUDA (torch.version.cuda = "
                   f"{torch.version.cuda}, torch.cuda.is_available() is False)"
                   + ("; and the simulated device is not CUDA memory" if ctx.simulated else ""))
    if ctx.simulated:
        raise Skip("the simulated device is not CUDA memory: torch CUDA tensors cannot be "
                   "exchanged with it")
    sec.data["torch"]["device"] = torch.cuda.get_device_name()
    P = nap.Params()
    n = ctx.p["torch_n"]
    g = torch.Generator(device="cuda")
    g.manual_seed(0)

    def host(t):
        return t.detach().cpu().numpy().copy()

    def sleep(stream_cycles):
        if stream_cycles and hasattr(torch.cuda, "_sleep"):
            torch.cuda._sleep(stream_cycles)

    # 1. qualities written on a side stream, right before the call, inside that stream
    w = torch.rand(n, device="cuda", dtype=torch.float32, generator=g)
    torch.cuda.synchronize()
    w0 = host(w)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        sleep(ctx.p["torch_sleep_cycles"])  # the side stream is busy: q is written late
        q = torch.rand(n, device="cuda", dtype=torch.float32, generator=g)
        t0 = time.perf_counter()
        nap.step(w, q, P)  # torch's current stream is `side`: DLPack orders it before CuPy's
        call_ms = (time.perf_counter() - t0) * 1e3
    torch.cuda.synchronize()
    ctx.sync()
    expected = w0.copy()
    reference.step(expected, host(q), P)
    bad = bits_equal(np, host(w), expected)
    sec.data["side_stream_call_wall"] = fig(call_ms, "ms", note="includes the finite scan's "
                                            "read back, which waits for q")
    sec.check("torch weights + qualities from a side stream (call inside the stream): "
              "== reference", bad == 0, f"{bad} mismatches of {n:,}", "0")

    # 1b. the same without ordering (call after leaving the side stream): shows whether the
    # check above is sensitive to the ordering at all (information, no verdict)
    w2 = torch.rand(n, device="cuda", dtype=torch.float32, generator=g)
    torch.cuda.synchronize()
    w2_0 = host(w2)
    with torch.cuda.stream(side):
        sleep(ctx.p["torch_sleep_cycles"])
        q2 = torch.rand(n, device="cuda", dtype=torch.float32, generator=g)
    try:
        nap.step(w2, q2, P)
        torch.cuda.synchronize()
        ctx.sync()
        expected2 = w2_0.copy()
        reference.step(expected2, host(q2), P)
        unordered = f"{bits_equal(np, host(w2), expected2)} mismatches"
    except Exception as exc:  # noqa: BLE001 - e.g. a NaN read before q was written
        unordered = f"raised {type(exc).__name__}: {exc}"
    torch.cuda.synchronize()
    sec.data["unordered_call"] = unordered
    sec.notes.append(f"control (q from the side stream, call made after leaving it, no ordering "
                     f"asked): {unordered}; mismatches here mean the check above is sensitive")

    # 2. Engine.step with a torch quality
    small = 1 << 12
    eng = nap.Engine(small, backend="cuda", seed=1, params=P)
    before = eng.to_numpy()
    qt = torch.rand(small, device="cuda", dtype=torch.float32, generator=g)
    eng.step(qt)
    expected = before.copy()
    reference.step(expected, host(qt), P)
    bad = bits_equal(np, eng.to_numpy(), expected)
    sec.check("Engine.step(torch CUDA quality) == reference", bad == 0, f"{bad} mismatches", "0")

    # 3. refusals
    def refusal(what, fn, must_name):
        try:
            fn()
        except TypeError as exc:
            ok = must_name is None or must_name in str(exc)
            sec.check(f"{what}: TypeError" + (f" naming '{must_name}'" if must_name else ""),
                      ok, f"TypeError: {str(exc)[:160]}", "TypeError")
        except Exception as exc:  # noqa: BLE001
            sec.check(f"{what}: TypeError", False, f"{type(exc).__name__}: {str(exc)[:160]}",
                      "TypeError")
        else:
            sec.check(f"{what}: TypeError", False, "accepted", "TypeError")

    wf = torch.rand(small, device="cuda", dtype=torch.float32, generator=g)
    refusal("bf16 weights", lambda: nap.step(wf.to(torch.bfloat16), 0.5, P), None)
    refusal("bf16 quality", lambda: nap.step(wf, wf.to(torch.bfloat16), P), "quality")
    refusal("requires_grad weights", lambda: nap.step(wf.clone().requires_grad_(True), 0.5, P),
            "weights")
    refusal("requires_grad quality",
            lambda: nap.step(wf, torch.rand(small, device="cuda", requires_grad=True), P),
            "quality")
    del w, q, w2, q2, qt, wf, eng
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    ctx.release()


def sec_pool(ctx: Ctx, sec: Section) -> None:
    cupy, np, nap = ctx.cupy, ctx.np, ctx.nap
    cuda = ctx.cuda
    pool = cupy.get_default_memory_pool()
    ctx.release()
    free0, _, total = ctx.device_memory()
    headroom = min(ctx.p["pool_headroom"], free0 // 2)
    ballast = None
    ballast_bytes = (free0 - headroom) // (2 * MiB) * (2 * MiB)
    for _ in range(8):  # a driver may not hand out every last block in one piece
        if ballast_bytes <= 0:
            break
        try:
            ballast = cupy.empty(ballast_bytes, dtype=cupy.uint8)
            break
        except Exception:  # noqa: BLE001 - OutOfMemoryError: try a little less
            ballast_bytes -= 256 * MiB
    block = cupy.empty(int(headroom * 0.75), dtype=cupy.uint8)
    del block  # its bytes stay in CuPy's pool: free to reuse, not free to the driver
    ctx.sync()
    driver_free, pooled, _ = ctx.device_memory()
    n = (driver_free + pooled // 2) // cuda.BYTES_PER_MEMORY
    need = n * cuda.BYTES_PER_MEMORY
    sec.data.update({"free_at_start": fig(free0, "bytes"),
                     "ballast": fig(ballast_bytes if ballast is not None else 0, "bytes"),
                     "driver_free": fig(driver_free, "bytes"), "pool_free": fig(pooled, "bytes"),
                     "n": n, "engine_needs": fig(need, "bytes")})
    setup_ok = driver_free < need <= driver_free + pooled
    sec.check("set-up: the engine needs more than the driver's free memory, less than free + pool",
              setup_ok, f"need {need / GiB:.2f} GiB, driver free {driver_free / GiB:.2f} GiB, "
              f"pool {pooled / GiB:.2f} GiB", "driver free < need <= driver free + pool")
    try:
        avail = host_available()
        if avail is not None and avail < 4 * n + GiB:
            raise Skip(f"the host has no room for the {4 * n / GiB:.2f} GiB initial weights "
                       f"(MemAvailable {avail / GiB:.2f} GiB)")
        try:
            eng = nap.Engine(n, backend="cuda", init=0.25)
            eng.step(0.9)
            eng.synchronize()
            got = eng._w[cupy.asarray(np.array([0, n - 1]))].get()
            expected = np.full(2, 0.25, dtype=np.float32)
            from nap_gpu.backends import numpy as reference  # noqa: PLC0415
            reference.step_scalar(expected, 0.9, nap.Params())
            sec.check("Engine(n) accepted (it used to be refused) and steps",
                      bits_equal(np, got, expected) == 0,
                      f"accepted, w[0], w[n-1] = {got.tolist()}",
                      "accepted")
            del eng
        except MemoryError as exc:
            sec.check("Engine(n) accepted (it used to be refused)", False,
                      f"MemoryError: {str(exc)[:200]}", "accepted")
    finally:
        del ballast
        ctx.release()


def sec_host_syncs(ctx: Ctx, sec: Section) -> None:
    raise Skip("host synchronisations are not measurable on a real device (the simulated device "
               "counts them: see the test suite)")


SECTIONS = [
    ("versions", "Versions and the cold compile", sec_versions, 5),
    ("sass", "Machine code of the device's cubin (FFMA, .FTZ)", sec_sass, 5),
    ("parity64", "Parity at the 64-bit boundaries", sec_parity64, 30),
    ("torch", "PyTorch CUDA interop", sec_torch, 10),
    ("pool", "Engine sized with CuPy's pool", sec_pool, 10),
    ("dense", "Dense step: bandwidth against the copy floor", sec_dense, 20),
    ("sparse", "Sparse batches", sec_sparse, 20),
    ("metrics", "Metrics by phase", sec_metrics, 20),
    ("latency", "Per-call latency", sec_latency, 10),
    ("host_syncs", "Host synchronisations", sec_host_syncs, 0),
]


# ============================================================================================
# Markdown
# ============================================================================================

def _cell(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x).replace("|", "\\|").replace("\n", " ")


def _md_table(columns, rows) -> list[str]:
    out = ["| " + " | ".join(map(_cell, columns)) + " |",
           "|" + "|".join("---" for _ in columns) + "|"]
    out += ["| " + " | ".join(map(_cell, r)) + " |" for r in rows]
    return out


def headline(data: dict) -> str:
    dev = data.get("device", {})
    if dev.get("simulated"):
        return ("SIMULATED device (tests/simdevice: the kernels' source compiled for the CPU)"
                " - NOT a GPU")
    if dev.get("simulated") is False:
        return f"REAL GPU: {dev.get('name', '?')} (cc {dev.get('compute_capability', '?')})"
    mode = data.get("run", {}).get("mode")
    return f"device unknown: first_run.py did not run{f' ({mode})' if mode else ''}"


def render_markdown(data: dict) -> str:
    out = [f"# nap_gpu first GPU run: {headline(data)}", ""]
    meta = data.get("meta", {})
    out.append(f"profile **{data.get('profile', '?')}**, started {meta.get('started', '?')}, "
               f"first_run wall {meta.get('wall_s', '?')} s, tree {meta.get('tree', '?')}")
    out.append("")
    run = data.get("run")
    if run:
        out += ["## Run (benchmarks/gpu/run.sh)", ""]
        out += _md_table(["phase", "exit", "seconds", "limit s", "note"],
                         [[p["phase"], p["rc"], p["seconds"], p["limit"], p.get("note", "")]
                          for p in run.get("phases", [])])
        out.append("")
        pt = run.get("pytest")
        if pt:
            out.append(f"pytest -m gpu: **{pt.get('summary', '?')}**")
            for f in pt.get("failures", [])[:20]:
                out.append(f"- {f}")
            out.append("")
    out += ["## Sections", ""]
    srows = []
    for name, sec in data.get("sections", {}).items():
        verdicts = [c["verdict"] for c in sec.get("checks", [])]
        counts = ", ".join(f"{verdicts.count(v)} {v}" for v in dict.fromkeys(verdicts)) or "-"
        srows.append([name, sec.get("status", "?"), counts, sec.get("seconds", ""),
                      sec.get("reason", "")[:120]])
    out += _md_table(["section", "status", "checks", "seconds", "reason"], srows)
    out.append("")
    for name, sec in data.get("sections", {}).items():
        out += [f"## {name}: {sec.get('title', '')}", "",
                f"status **{sec.get('status', '?')}**" + (f": {sec['reason']}" if sec.get("reason")
                                                           else ""), ""]
        if sec.get("checks"):
            out += _md_table(["check", "measured", "target", "verdict"],
                             [[c["check"], c["measured"], c["target"], c["verdict"]]
                              for c in sec["checks"]])
            out.append("")
        for t in sec.get("tables", []):
            if t["rows"]:
                out += [f"*{t['title']}*", ""] + _md_table(t["columns"], t["rows"]) + [""]
        for s in sec.get("skipped_parts", []):
            out.append(f"- not run: {s['what']}: {s['reason']}")
        for note in sec.get("notes", []):
            out.append(f"- {note}")
        if sec.get("traceback"):
            lines = sec["traceback"].rstrip().splitlines()
            out += ["", "```", *lines[-25:], "```"]
        out.append("")
    return "\n".join(out) + "\n"


# ============================================================================================
# Main: the sections, then --summarize
# ============================================================================================

def tree_id() -> str:
    """The git commit of the tree (where .git came along) and a hash of its sources."""
    parts = []
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                                   capture_output=True, text=True, timeout=20).stdout
            parts.append(f"git {head.stdout.strip()}"
                         + (f" + {len(dirty.splitlines())} changed files" if dirty else ""))
    except (OSError, subprocess.SubprocessError):
        pass
    digest = hashlib.sha256()
    for folder in ("src", "cuda", "cpp", "benchmarks/gpu"):
        for p in sorted((ROOT / folder).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".so", ".pyc"):
                digest.update(str(p.relative_to(ROOT)).encode() + b"\0" + p.read_bytes())
    parts.append(f"sources sha256 {digest.hexdigest()[:16]}")
    return ", ".join(parts)


def run_sections(args) -> int:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    data: dict = {"schema": SCHEMA, "meta": {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "platform": platform.platform(), "argv": sys.argv,
        "budget_s": args.budget_s, "tree": tree_id(),
        "nap_cache_dir": os.environ.get("NAP_CACHE_DIR")}, "sections": {}}
    try:
        import cupy  # noqa: PLC0415
    except Exception as exc:  # noqa: BLE001
        data["device"] = {"simulated": None, "error": f"import cupy failed: {exc!r}"}
        data["profile"] = "none"
        save(out, data)
        print(f"first_run: cannot import cupy: {exc!r}", file=sys.stderr)
        return 3
    simulated = bool(getattr(cupy, "SIMULATED", False))
    data["ran_on"] = "SIMULATED device (tests/simdevice), not a GPU" if simulated else "real GPU"
    data["device"] = {"simulated": simulated, "cupy_module": cupy.__file__,
                      "what": ("the SIMULATED device of tests/simdevice (CPU): no figure here is "
                               "a GPU figure") if simulated else "a real GPU through CuPy"}
    profile = "simulated" if simulated else "real"
    data["profile"] = profile
    data["profile_sizes"] = PROFILES[profile]
    if args.expect and args.expect != profile:
        data["device"]["error"] = (f"run.sh expected the {args.expect} device, but CuPy is "
                                   f"{'the simulated one' if simulated else 'the real one'}")
        save(out, data)
        print(f"first_run: {data['device']['error']}", file=sys.stderr)
        return 3
    try:
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props.get("name", b"?")
        data["device"]["name"] = name.decode() if isinstance(name, bytes) else str(name)
        cc = int(cupy.cuda.Device().compute_capability)
        data["device"]["compute_capability"] = f"{cc // 10}.{cc % 10}"
    except Exception as exc:  # noqa: BLE001
        data["device"]["error"] = f"no device: {exc!r}"
    ctx = Ctx(out, profile, simulated, args.budget_s)
    only = set(args.sections.split(",")) if args.sections else None
    interrupted = False
    for name, title, fn, min_s in SECTIONS:
        if only and name not in only:
            continue
        sec = Section(name, title, simulated)
        entry = {"title": title, "status": "running"}
        data["sections"][name] = entry
        save(out, data)
        t0 = time.monotonic()
        print(f"first_run: {name} ...", file=sys.stderr, flush=True)
        try:
            if ctx.left() < min_s:
                raise Skip(f"out of time: {ctx.left():.0f} s of the {args.budget_s:.0f} s budget "
                           f"left, the section needs about {min_s} s")
            fn(ctx, sec)
            entry.update(sec.as_dict())
            entry["status"] = _status_of(entry)
        except Skip as exc:
            entry.update(sec.as_dict())
            entry["status"], entry["reason"] = "skipped", str(exc)
        except KeyboardInterrupt:
            entry.update(sec.as_dict())
            entry["status"] = "interrupted"
            entry["reason"] = "stopped by run.sh's time limit (SIGTERM/SIGINT) while running"
            interrupted = True
        except BaseException as exc:  # noqa: BLE001 - a failed section is recorded, the next runs
            entry.update(sec.as_dict())
            entry["status"] = "error"
            entry["reason"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            entry["traceback"] = traceback.format_exc()
        entry["seconds"] = round(time.monotonic() - t0, 1)
        data["meta"]["wall_s"] = round(time.monotonic() - started, 1)
        save(out, data)
        print(f"first_run: {name}: {entry['status']} ({entry['seconds']} s)"
              + (f": {entry.get('reason')}" if entry.get("reason") else ""),
              file=sys.stderr, flush=True)
        if interrupted:
            break
        try:
            ctx.release()
        except Exception:  # noqa: BLE001 - a broken context shows in the next section
            pass
    if interrupted:
        return 124
    return 1 if any(s.get("status") in ("fail", "error") for s in data["sections"].values()) else 0


# -- --summarize -----------------------------------------------------------------------------

def _junit(path: pathlib.Path) -> dict:
    """pytest's JUnit XML: counts, the failures (first line of each message), skip reasons."""
    import xml.etree.ElementTree as ET  # noqa: PLC0415

    if not path.is_file():
        return {"summary": f"no JUnit file ({path.name} was not written)"}
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return {"summary": f"unreadable JUnit file: {exc}"}
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    tests = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) for s in suites)
    errors = sum(int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    seconds = round(sum(float(s.get("time", 0) or 0) for s in suites), 1)
    failures, skip_reasons = [], {}
    for case in root.iter("testcase"):
        for kind in ("failure", "error"):
            el = case.find(kind)
            if el is not None:
                msg = (el.get("message") or el.text or "").strip().splitlines()
                failures.append(f"{kind}: {case.get('classname')}::{case.get('name')}: "
                                f"{(msg[0] if msg else '')[:200]}")
        el = case.find("skipped")
        if el is not None:
            reason = (el.get("message") or "").strip()[:150]
            skip_reasons[reason] = skip_reasons.get(reason, 0) + 1
    passed = tests - failed - errors - skipped
    return {"tests": tests, "passed": passed, "failed": failed, "errors": errors,
            "skipped": skipped, "time_s": seconds,
            "summary": (f"{passed} passed, {failed} failed, {errors} errors, {skipped} skipped "
                        f"of {tests} ({seconds} s)"),
            "failures": failures[:200],
            "skip_reasons": dict(sorted(skip_reasons.items(), key=lambda kv: -kv[1])[:10])}


def summarize(args) -> int:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / JSON_NAME
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            data = {"schema": SCHEMA, "sections": {}, "meta": {"error": f"unreadable: {exc}"}}
    else:
        data = {"schema": SCHEMA, "sections": {}, "profile": "none",
                "meta": {"error": "first_run.py wrote no report (see run.log)"}}
    for sec in data.get("sections", {}).values():
        if sec.get("status") == "running":  # killed outright (no chance to say so itself)
            sec["status"] = "killed"
            sec["reason"] = "the process ended while this section ran (time limit or crash)"
    phases = []
    if args.phases and pathlib.Path(args.phases).is_file():
        for line in pathlib.Path(args.phases).read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 4:
                phases.append({"phase": parts[0], "rc": parts[1], "seconds": parts[2],
                               "limit": parts[3], "note": parts[4] if len(parts) > 4 else ""})
    run = {"phases": phases,
           "mode": "run.sh --simulated" if args.simulated else "run.sh (real GPU)"}
    if args.junit:
        run["pytest"] = pt = _junit(pathlib.Path(args.junit))
        if args.collected is not None:
            pt["selected"] = args.collected
            if "tests" in pt and pt["tests"] < args.collected:
                pt["not_run"] = args.collected - pt["tests"]
                pt["summary"] += f"; {pt['not_run']} of {args.collected} selected did NOT run"
    files = sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith("."))
    run["files"] = files
    data["run"] = run
    save(out, data)
    # the summary table, last on stdout
    print()
    print("=" * 100)
    print(f"nap_gpu first GPU run: {headline(data)}")
    print(f"profile {data.get('profile', '?')}; tree {data.get('meta', {}).get('tree', '?')}")
    print("-" * 100)
    print(f"{'phase':<22}{'exit':>6}{'seconds':>9}{'limit':>7}  note")
    for p in phases:
        print(f"{p['phase']:<22}{p['rc']:>6}{p['seconds']:>9}{p['limit']:>7}  {p['note'][:54]}")
    if "pytest" in run:
        print(f"pytest -m gpu: {run['pytest'].get('summary')}")
        for f in run["pytest"].get("failures", [])[:8]:
            print(f"  {f[:96]}")
    print("-" * 100)
    print(f"{'section':<12}{'status':<13}{'checks':<26}{'s':>6}  headline")
    for name, sec in data.get("sections", {}).items():
        verdicts = [c["verdict"] for c in sec.get("checks", [])]
        counts = ", ".join(f"{verdicts.count(v)} {v}" for v in dict.fromkeys(verdicts)) or "-"
        print(f"{name:<12}{sec.get('status', '?'):<13}{counts[:25]:<26}"
              f"{sec.get('seconds', ''):>6}  {_headline_of(name, sec)[:60]}")
    failed = [(name, c) for name, sec in data.get("sections", {}).items()
              for c in sec.get("checks", []) if c["verdict"] == "FAIL"]
    for name, c in failed[:12]:
        print(f"  FAIL {name}: {c['check'][:60]} (measured {str(c['measured'])[:40]})")
    print("-" * 100)
    print(f"files in {out}: {', '.join(files)}")
    print("=" * 100)
    return 0


def _headline_of(name: str, sec: dict) -> str:
    d = sec.get("data", {})
    try:
        if sec.get("status") in ("skipped", "error", "killed", "interrupted"):
            return sec.get("reason", "")
        if name == "versions":
            return (f"{d['device']['name']}, NVRTC {d['nvrtc']['version']}, cold compile "
                    f"{d['cold_compile']['value']:.0f} ms")
        if name == "sass":
            t = d["total"]
            return f"FFMA {t['FFMA']}, .FTZ {t['FTZ']}, {t['instructions']} instructions"
        if name == "dense":
            parts = []
            for size, e in d.get("sizes", {}).items():
                parts.append(f"{size}: kernel {e['nap_step_kernel_bandwidth_vs_copy']:.2f}x/"
                             f"step {e['nap_step_bandwidth_vs_copy']:.2f}x copy bw, "
                             f"checked {e['checked_engine_step_vs_raw']:.2f}x, "
                             f"double-buffered {e['double_buffered_step_vs_raw']:.2f}x")
            return "; ".join(parts)
        if name == "metrics":
            sizes = d.get("sizes", {})
            if sizes:
                last = list(sizes)[-1]
                return "; ".join(f"{last} {pop}: {v['compute_vs_sort']:.2f}x sort"
                                 for pop, v in sizes[last].items())
        if name == "sparse":
            cases = d.get("cases", {})
            biggest = label(max(v["events"] for v in cases.values()))
            last = [k for k in cases if k.startswith(biggest + " ")]
            return "; ".join(f"{k}: {cases[k]['engine_events_per_s']['value']:.2g}/s" for k in last)
        if name == "parity64":
            full = d.get("full", {})
            return (f"n = {d.get('n', 0):,}, {len(d.get('windows', []))} windows; full check at "
                    f"{label(full['n']) if full.get('n') else '-'} vs "
                    f"{full.get('host_backend', '-')}")
        if name == "latency":
            sizes = d.get("sizes", {})
            if sizes:
                last = list(sizes)[-1]
                e = sizes[last]
                return "; ".join(f"{k.split('(')[0]} {v['median']:.0f}/{v['p99']:.0f} us"
                                 for k, v in e.items() if k in (
                                     "Engine.step(device q)", "Engine.update(10 events, host)",
                                     "Engine.metrics(host labels)")) + f" (median/p99 at {last})"
        if name == "pool":
            return (f"need {d['engine_needs']['value'] / 2**30:.2f} GiB > driver free "
                    f"{d['driver_free']['value'] / 2**30:.2f} GiB, pool "
                    f"{d['pool_free']['value'] / 2**30:.2f} GiB")
    except (KeyError, TypeError, IndexError, ValueError):
        pass
    return ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--expect", choices=("real", "simulated"),
                    help="the device run.sh set up (a mismatch stops the run)")
    ap.add_argument("--budget-s", type=float, default=180.0, help="time for all sections")
    ap.add_argument("--sections", default="", help="comma-separated subset of the sections")
    ap.add_argument("--summarize", action="store_true",
                    help="merge run.sh's phases and the JUnit counts; print the summary")
    ap.add_argument("--phases", help="(--summarize) run.sh's phase table (TSV)")
    ap.add_argument("--junit", help="(--summarize) the pytest JUnit XML")
    ap.add_argument("--simulated", action="store_true", help="(--summarize) run.sh --simulated")
    ap.add_argument("--collected", type=int, help="(--summarize) tests pytest selected")
    args = ap.parse_args(argv)
    if args.summarize:
        return summarize(args)
    sys.path.insert(0, str(HERE))  # gpu_floor
    # run.sh's time limit (timeout sends SIGTERM) stops the run as Ctrl-C would: the section
    # running is recorded as interrupted and both reports are written. SIGINT too, even where
    # a non-interactive parent left it ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return run_sections(args)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
