"""The C++ core's OpenMP defaults: how many threads it runs, and how its idle threads wait.

Threads: ``NAP_NUM_THREADS`` when set; else ``OMP_NUM_THREADS`` when set (OpenMP's own
setting, left to OpenMP); else the CPUs this process may actually use: the smaller of its
affinity mask (``os.sched_getaffinity``) and its cgroup CPU quota rounded up (cgroup v2
``cpu.max``, cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, of the process's own
cgroup and its ancestors). OpenMP's own default counts the affinity mask but not the quota: a
container limited to 2 CPUs on a 64-core host would run 64 threads on 2 CPUs' worth of time.

Waiting: OpenMP threads that finish their slice of a loop *spin* before they sleep (libgomp:
up to 300,000 iterations, about 3 ms, when ``OMP_WAIT_POLICY`` is unset). On a loaded
machine a spinning thread burns the CPU time the thread still working needs, and the step
collapses (a 1M dense step on a 2-core host with a busy loop per core: p50 0.12 ms -> 11 ms,
40x one thread; benchmarks/README.md "Threads and waiting" has the measurements). nap_gpu
therefore sets ``OMP_WAIT_POLICY=PASSIVE`` (honoured by libgomp and LLVM's libomp alike) when
it is imported, before its core can load the OpenMP runtime, unless the user set any of the
wait variables (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``, ``KMP_BLOCKTIME``): theirs win. The
runtime reads its environment once, when it is loaded; if another library loaded it first,
nap_gpu cannot change it, and ``nap-gpu info`` says so. Once the core is loaded, the variable
nap_gpu set is removed again, so that OpenMP runtimes loaded later by other libraries (and
child processes) see the user's environment, not nap_gpu's.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Literal

from . import _env

#: The variables that decide how idle OpenMP threads wait (libgomp, LLVM libomp / Intel).
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
#: What nap_gpu sets when the user set none of them (measured: benchmarks/README.md).
DEFAULT_WAIT = {"OMP_WAIT_POLICY": "PASSIVE"}
#: File names of the OpenMP runtimes a core can link (libgomp.so.1, libomp.so.5, libiomp5.so).
_RUNTIME = re.compile(r"lib(gomp|omp|iomp5)\.so[.0-9]*$")

_state: dict = {}  # what prepare() found and did; read by wait_policy()


# -- threads --------------------------------------------------------------------------------------

def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _ancestors(mount: Path, cgroup_path: str) -> list[Path]:
    """The process's cgroup directory under ``mount`` and every parent up to the mount's root.
    A path that does not exist under the mount (a container without a cgroup namespace sees
    the host's path, with its own cgroup mounted as the root) leaves the root alone."""
    parts = [p for p in cgroup_path.strip().split("/") if p and p != ".."]
    dirs = [mount.joinpath(*parts[:i]) for i in range(len(parts), 0, -1)]
    return [d for d in dirs if d.is_dir()] + [mount]


def _v2_limit(directory: Path) -> float | None:
    text = _read(directory / "cpu.max")  # "max 100000" or "150000 100000"
    if text is None:
        return None
    fields = text.split()
    if len(fields) < 1 or fields[0] == "max":
        return None
    try:
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_limit(directory: Path) -> float | None:
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None  # -1: no quota


def cgroup_cpu_limit(root: str | os.PathLike = "/sys/fs/cgroup",
                     proc_cgroup: str | os.PathLike = "/proc/self/cgroup") -> float | None:
    """The CPU quota of this process's cgroup, in CPUs (1.5 = 150 ms a 100 ms period), the
    smallest along its ancestors in every hierarchy that has the cpu controller; None when
    there is no quota or no cgroup file system. ``root`` and ``proc_cgroup`` are parameters for
    the tests (real files written to a tmp dir)."""
    text = _read(Path(proc_cgroup))
    if text is None:
        return None
    root = Path(root)
    limits: list[float] = []
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy, controllers, path = fields
        if hierarchy == "0" and controllers == "":  # cgroup v2: unified at the root, or hybrid
            mount = root if (root / "cgroup.controllers").exists() else root / "unified"
            found = (_v2_limit(d) for d in _ancestors(mount, path))
        elif "cpu" in controllers.split(","):  # cgroup v1: the cpu controller's hierarchy
            names = [controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu"]
            mounts = [root / n for n in dict.fromkeys(names) if (root / n).is_dir()]
            found = (_v1_limit(d) for mount in mounts[:1] for d in _ancestors(mount, path))
        else:
            continue
        limits.extend(limit for limit in found if limit is not None)
    return min(limits) if limits else None


def affinity_cpus() -> int:
    """CPUs this process may run on (its affinity mask), or os.cpu_count() where unknown."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose_threads(environ=None, affinity: int | None = None,
                   quota: float | None | Literal["read"] = "read") -> tuple[int | None, str]:
    """(threads, why). ``threads`` is None when OMP_NUM_THREADS decides (left to OpenMP).
    Raises ValueError for a NAP_NUM_THREADS that is not a positive integer."""
    environ = os.environ if environ is None else environ
    requested = _env.requested_threads(environ)
    if requested is not None:
        return requested, f"NAP_NUM_THREADS={environ['NAP_NUM_THREADS'].strip()}"
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp:
        return None, f"OMP_NUM_THREADS={omp} (OpenMP's own setting)"
    affinity = affinity_cpus() if affinity is None else affinity
    quota = cgroup_cpu_limit() if quota == "read" else quota
    cpus = f"affinity {affinity} CPU{'s' * (affinity != 1)}"
    if quota is None:
        return max(1, affinity), f"{cpus}, no cgroup CPU quota"
    threads = max(1, min(affinity, math.ceil(quota)))
    return threads, f"min({cpus}, cgroup CPU quota {quota:g}) = {threads}"


# -- waiting --------------------------------------------------------------------------------------

def loaded_runtimes(maps: str | os.PathLike = "/proc/self/maps") -> list[str]:
    """Paths of the OpenMP runtimes mapped into this process now (empty where /proc is not)."""
    text = _read(Path(maps)) or ""
    found = []
    for line in text.splitlines():
        path = line.split(maxsplit=5)[5] if len(line.split(maxsplit=5)) == 6 else ""
        if _RUNTIME.match(os.path.basename(path)) and path not in found:
            found.append(path)
    return found


def prepare() -> None:
    """Called by ``nap_gpu/__init__`` before anything can load the core: note the OpenMP
    runtimes already loaded and set nap_gpu's wait policy unless the user set one."""
    if _state:
        return
    user = {k: os.environ[k] for k in WAIT_VARIABLES if os.environ.get(k, "").strip()}
    _state["preloaded"] = loaded_runtimes()
    _state["user"] = user
    _state["set"] = {}
    if not user:
        for key, value in DEFAULT_WAIT.items():
            os.environ[key] = value
            _state["set"][key] = value


def core_loaded(compiler: str = "") -> None:
    """Called once the core is loaded: record whether its runtime read nap_gpu's setting, and
    take nap_gpu's variables out of the environment again (other libraries' runtimes, loaded
    later, and child processes see the user's environment)."""
    if not _state or "runtime" in _state:
        return
    wanted = "libgomp" if compiler.startswith("GCC") else ""  # clang: libomp or libiomp5
    now = loaded_runtimes()
    mine = [p for p in now if os.path.basename(p).startswith(wanted)] if wanted else now
    _state["runtime"] = mine[0] if mine else None
    _state["runtime_preloaded"] = bool(mine) and mine[0] in _state["preloaded"]
    # What the runtime read: the environment now (the user may have changed it since import).
    _state["read"] = {k: os.environ[k] for k in WAIT_VARIABLES if os.environ.get(k, "").strip()}
    for key, value in _state["set"].items():
        if os.environ.get(key) == value:
            del os.environ[key]


def wait_policy() -> tuple[str, str]:
    """(the wait setting in effect, where it came from), for ``nap-gpu info``."""
    if not _state:
        return "OpenMP's default", "nap_gpu's import did not run its OpenMP setup"
    read = _state.get("read", {**_state["user"], **_state["set"]})
    setting = " ".join(f"{k}={v}" for k, v in read.items()) or "unset (OpenMP's default)"
    source = "nap_gpu's default" if read and read == _state["set"] else "the environment"
    runtime = _state.get("runtime")
    if runtime is None:
        where = ("its OpenMP runtime not found in /proc/self/maps" if "runtime" in _state
                 else "the core is not loaded yet")
        return setting, f"{source}; {where}"
    name = os.path.basename(runtime)
    if _state["runtime_preloaded"]:
        return (f"unknown: whatever {name} read when it was loaded",
                f"{runtime} was already loaded by another library when nap_gpu was imported, "
                f"and read OMP_WAIT_POLICY / GOMP_SPINCOUNT then ({setting} came too late); "
                f"set OMP_WAIT_POLICY=PASSIVE before starting Python, or import nap_gpu first")
    return setting, f"{source}, read by {name} when the core loaded it"
