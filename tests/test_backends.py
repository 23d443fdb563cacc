"""Backend registry and selection (docs/architecture.md "Selection is explicit and explains itself").

``available_backends()`` says which backends run here and why the others do not, and never
raises; ``backend="auto"`` picks the best usable one and logs its choice and what it
skipped; ``NAP_BACKEND`` overrides ``auto``; naming an unusable backend is an error with the
reason. ``show_config()`` shows how the C++ core was built (no FMA contraction, no fast
math), and ``NAP_NUM_THREADS`` sets its thread count without changing a single bit.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import math
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import nap_gpu as nap
from nap_gpu import _env, _threads

from conftest import REAL_CUDA_REASON, _real_environment, assert_same_bits

CPP_USABLE = nap.available_backends()["cpp"] is None
needs_cpp = pytest.mark.skipif(not CPP_USABLE, reason=f"cpp backend unusable: "
                                                      f"{nap.available_backends()['cpp']}")
# A core built without OpenMP (Apple clang, -DNAP_OPENMP=OFF) always runs one thread.
SERIAL_CORE = CPP_USABLE and nap.backends.get("cpp").compile_options()["openmp"] == "off"
needs_threads = pytest.mark.skipif(SERIAL_CORE, reason="the C++ core was built without OpenMP: "
                                                       "one thread, whatever is asked")


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAP_")}
    env.update(extra)
    return env


def run_python(code: str, env: dict, cwd=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=cwd)
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


# -- available_backends ---------------------------------------------------------------------------

def test_available_backends_lists_every_backend_with_reasons():
    backends = nap.available_backends()
    assert list(backends) == ["cuda", "cpp", "numpy"]  # auto's order, best first
    assert backends["numpy"] is None
    for name, reason in backends.items():
        assert reason is None or (isinstance(reason, str) and reason.strip()), (name, reason)
    backends["numpy"] = "tampered"
    assert nap.available_backends()["numpy"] is None, "callers must get their own copy"


@pytest.mark.skipif(REAL_CUDA_REASON is None, reason="a real GPU is usable here")
def test_cuda_reason_here_mentions_cupy():
    """What this machine's real environment (without the simulated device) says."""
    reason = REAL_CUDA_REASON
    spec = subprocess.run([sys.executable, "-c",
                           "import importlib.util as u; print(u.find_spec('cupy') is None)"],
                          env=_real_environment(), capture_output=True, text=True, check=True)
    if spec.stdout.strip() == "True":
        assert "CuPy" in reason and "pip install" in reason, reason
    else:  # installed without a driver or device (as in CI)
        assert reason.startswith("CuPy installed but"), reason


FAKE_CUPY = {
    "import_fails": ('raise RuntimeError("libcudart.so.12: cannot open shared object file")',
                     "cannot be imported", "libcudart"),
    "no_driver": ("class _R:\n    @staticmethod\n    def getDeviceCount():\n"
                  "        raise RuntimeError('cudaErrorInsufficientDriver')\n"
                  "class cuda:\n    runtime = _R\n",
                  "no CUDA driver", "cudaErrorInsufficientDriver"),
    "no_device": ("class _R:\n    @staticmethod\n    def getDeviceCount():\n        return 0\n"
                  "class cuda:\n    runtime = _R\n",
                  "no CUDA device", "CuPy"),
    "broken_attributes": ("", "CuPy", "CuPy"),  # a cupy with no cuda attribute at all
}


@pytest.mark.parametrize("case", FAKE_CUPY)
def test_probe_never_raises_with_a_broken_cupy(tmp_path, case):
    """A CuPy that cannot import, finds no driver or no device: the probe explains, never
    raises; auto falls back to the next backend (with a log line); naming cuda raises
    BackendUnavailableError with the same reason."""
    source, expected, detail = FAKE_CUPY[case]
    package = tmp_path / "cupy"
    package.mkdir()
    (package / "__init__.py").write_text(source + "\n")
    code = """
    import json, logging
    import nap_gpu as nap
    reason = nap.available_backends()["cuda"]
    auto = nap.Engine(4).backend
    try:
        nap.Engine(4, backend="cuda")
    except nap.BackendUnavailableError as exc:
        error = str(exc)
    else:
        error = None
    print(json.dumps({"reason": reason, "auto": auto, "error": error}))
    """
    proc = run_python(code, clean_env(PYTHONPATH=str(tmp_path)))
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(result["reason"], str) and expected in result["reason"], result
    assert detail in result["reason"], result
    assert result["auto"] == ("cpp" if CPP_USABLE else "numpy")
    assert result["error"] is not None and result["reason"] in result["error"], result


# -- auto and NAP_BACKEND -------------------------------------------------------------------------

def _best_usable() -> str:
    return next(name for name, reason in nap.available_backends().items() if reason is None)


def test_auto_picks_the_best_usable_backend_and_logs_why(caplog):
    """cuda where a device is usable (the simulated one in CI), else cpp, else numpy."""
    caplog.set_level(logging.INFO, logger="nap_gpu")
    eng = nap.Engine(10)
    assert eng.backend == _best_usable()
    messages = [r.getMessage() for r in caplog.records if r.name == "nap_gpu"]
    chose = [m for m in messages if "auto" in m and f"'{eng.backend}'" in m]
    assert chose, f"no log line about auto's choice in {messages}"
    cuda_reason = nap.available_backends()["cuda"]
    if cuda_reason is not None:
        assert any(cuda_reason in m and "cuda" in m for m in chose), (
            f"auto's log line should say why cuda was skipped: {chose}")


def test_auto_for_none_too():
    w = np.zeros(4, np.float32)
    nap.step(w, 0.9, backend=None)
    assert w[0] > 0


@pytest.mark.parametrize("value", ["numpy", "NumPy", " numpy "])
def test_nap_backend_overrides_auto(monkeypatch, caplog, value):
    monkeypatch.setenv("NAP_BACKEND", value)
    caplog.set_level(logging.INFO, logger="nap_gpu")
    assert nap.Engine(10).backend == "numpy"
    assert nap.Engine(10, backend="auto").backend == "numpy"
    assert any("NAP_BACKEND" in r.getMessage() for r in caplog.records), "the override should be logged"


@needs_cpp
def test_explicit_backend_beats_nap_backend(monkeypatch):
    monkeypatch.setenv("NAP_BACKEND", "numpy")
    assert nap.Engine(10, backend="cpp").backend == "cpp"


@pytest.mark.parametrize("value", ["auto", "", "  "])
def test_nap_backend_auto_or_empty_means_auto(monkeypatch, value):
    monkeypatch.setenv("NAP_BACKEND", value)
    assert nap.Engine(10).backend == _best_usable()


def test_nap_backend_naming_an_unusable_backend_raises(monkeypatch, cuda_unusable):
    monkeypatch.setenv("NAP_BACKEND", "cuda")
    reason = cuda_unusable
    with pytest.raises(nap.BackendUnavailableError, match=re.escape(reason)):
        nap.Engine(10)
    w = np.full(4, 0.5, np.float32)
    with pytest.raises(nap.BackendUnavailableError):
        nap.step(w, 0.9)
    assert (w == 0.5).all()


@pytest.mark.parametrize("value, exc", [("cuda", nap.BackendUnavailableError), ("bogus", ValueError)])
def test_nap_backend_error_names_the_variable(monkeypatch, request, value, exc):
    """The caller asked for "auto": an error about a backend it never named should say
    that the name came from the NAP_BACKEND environment variable."""
    if value == "cuda":
        request.getfixturevalue("cuda_unusable")
    monkeypatch.setenv("NAP_BACKEND", value)
    with pytest.raises(exc, match="NAP_BACKEND"):
        nap.Engine(10)


# -- show_config ----------------------------------------------------------------------------------

def test_show_config_lists_backends(capsys):
    nap.show_config()
    out = capsys.readouterr().out
    for name, reason in nap.available_backends().items():
        line = next((ln for ln in out.splitlines() if ln.strip().startswith(name + " ")), None)
        assert line is not None, f"no line for backend {name}:\n{out}"
        if reason is None:
            assert "usable" in line and "unusable" not in line, line
        else:
            assert "unusable" in line and reason in line, line
    assert re.search(r"auto.*picks:?\s+(cuda|cpp|numpy)", out), out


def test_show_config_to_a_file():
    buf = io.StringIO()
    nap.show_config(file=buf)
    assert "numpy" in buf.getvalue()


@needs_cpp
def test_show_config_shows_the_cpp_compile_options(capsys):
    nap.show_config()
    out = capsys.readouterr().out
    assert "-ffp-contract=off" in out, out
    assert re.search(r"fast_math\W+off\b", out), out
    assert "-ffast-math" not in out and "-Ofast" not in out, out
    options = nap.backends.get("cpp").compile_options()
    assert options["fast_math"] == "off"
    assert "-ffp-contract=off" in options["flags"].split()
    assert not re.search(r"-ffp-contract=(fast|on)\b", options["flags"]), options["flags"]


def test_show_config_survives_a_bad_nap_backend(monkeypatch, capsys, cuda_unusable):
    """show_config is what one runs to find out what is wrong: a bad NAP_BACKEND must be
    reported in its output, not crash it."""
    monkeypatch.setenv("NAP_BACKEND", "bogus")
    nap.show_config()
    out = capsys.readouterr().out
    assert "bogus" in out and "numpy" in out, out


# -- NAP_NUM_THREADS ------------------------------------------------------------------------------

@needs_cpp
@pytest.mark.parametrize("threads", ["1", pytest.param("3", marks=needs_threads)])
def test_nap_num_threads_is_honoured(threads):
    proc = run_python("import nap_gpu.backends.cpp as c; print(c.num_threads())",
                      clean_env(NAP_NUM_THREADS=threads))
    assert proc.stdout.strip() == threads


@needs_cpp
def test_nap_num_threads_not_an_integer_is_an_error():
    code = """
    import nap_gpu as nap
    try:
        nap.Engine(4, backend="cpp")
    except ValueError as exc:
        print("ValueError:", exc)
    """
    proc = run_python(code, clean_env(NAP_NUM_THREADS="two"))
    assert "NAP_NUM_THREADS" in proc.stdout and "two" in proc.stdout, proc.stdout



# -- NAP_PARALLEL_FROM and the measured parallel threshold ---------------------------------------

@needs_cpp
@needs_threads
def test_parallel_threshold_is_measured_within_its_bounds():
    """Unpinned, the core measures what waking its threads costs against one thread's step,
    once, and goes parallel from there: never below 2^16 elements nor above 2^24."""
    code = """
    import json
    import nap_gpu.backends.cpp as cpp
    from nap_gpu import _core
    first = _core.parallel_threshold()
    print(json.dumps({"first": first, "again": _core.parallel_threshold(),
                      "config": cpp.thread_config()}))
    """
    out = json.loads(run_python(code, clean_env(NAP_NUM_THREADS="2")).stdout)
    assert 1 << 16 <= out["first"] <= 1 << 24, out
    assert out["again"] == out["first"]  # measured once per process
    assert out["config"]["parallel_from"] == f"{out['first']:,} elements"
    assert out["config"]["parallel_from_why"].startswith("measured")


@needs_cpp
def test_nap_parallel_from_pins_the_threshold_and_bad_values_are_errors():
    code = """
    import json
    import nap_gpu.backends.cpp as cpp
    from nap_gpu import _core
    pinned = _core.parallel_threshold()
    _core.set_parallel_threshold(12345)
    print(json.dumps({"pinned": pinned, "set": _core.parallel_threshold(),
                      "why": cpp.thread_config()["parallel_from_why"]}))
    """
    out = json.loads(run_python(code, clean_env(NAP_NUM_THREADS="2",
                                                NAP_PARALLEL_FROM="1M")).stdout)
    assert out == {"pinned": 1_000_000, "set": 12345, "why": "NAP_PARALLEL_FROM=1000000"}
    for bad in ("0", "lots", "-5", "1.5"):
        with pytest.raises(ValueError, match="NAP_PARALLEL_FROM"):
            _env.parallel_from({"NAP_PARALLEL_FROM": bad})
    assert _env.parallel_from({}) is None
    assert _env.parallel_from({"NAP_PARALLEL_FROM": "64K"}) == 64_000


@needs_cpp
def test_one_thread_never_goes_parallel():
    proc = run_python("from nap_gpu import _core; import nap_gpu.backends.cpp; "
                      "print(_core.parallel_threshold())", clean_env(NAP_NUM_THREADS="1"))
    assert int(proc.stdout) == 2**64 - 1


# -- default threads: affinity and cgroup CPU quota (nap_gpu/_threads.py) --------------------------

OPENMP_VARIABLES = ("OMP_NUM_THREADS", *_threads.WAIT_VARIABLES, "OMP_DISPLAY_ENV")


def openmp_env(**extra: str) -> dict:
    """clean_env without any OpenMP setting of the caller's: the defaults decide."""
    env = {k: v for k, v in clean_env().items() if k not in OPENMP_VARIABLES}
    env.update(extra)
    return env


def write_tree(root, files: dict) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cgroup_v2_quota_of_the_process_own_cgroup(tmp_path):
    root = tmp_path / "cgroup"
    write_tree(root, {"cgroup.controllers": "cpuset cpu io memory pids\n",
                      "cpu.max": "max 100000\n",  # (the root has none; a stray one is ignored)
                      "user.slice/cpu.max": "max 100000\n",
                      "user.slice/app.scope/cpu.max": "150000 100000\n",
                      "other.slice/cpu.max": "10000 100000\n"})  # another cgroup's: not ours
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text("0::/user.slice/app.scope\n")
    assert _threads.cgroup_cpu_limit(root, proc) == 1.5
    (root / "user.slice/app.scope/cpu.max").write_text("max 100000\n")
    assert _threads.cgroup_cpu_limit(root, proc) is None
    (root / "user.slice/cpu.max").write_text("50000 100000\n")  # an ancestor's quota binds too
    assert _threads.cgroup_cpu_limit(root, proc) == 0.5
    (root / "user.slice/app.scope/cpu.max").write_text("20000 100000\n")  # the smallest wins
    assert _threads.cgroup_cpu_limit(root, proc) == 0.2


def test_cgroup_v2_hybrid_and_container_without_namespace(tmp_path):
    root = tmp_path / "cgroup"
    # Hybrid: v2 mounted at <root>/unified, no v1 cpu controller line.
    write_tree(root, {"unified/cgroup.controllers": "cpu\n",
                      "unified/svc/cpu.max": "400000 100000\n"})
    proc = tmp_path / "cgroup_hybrid"
    proc.write_text("1:name=systemd:/svc\n0::/svc\n")
    assert _threads.cgroup_cpu_limit(root, proc) == 4.0
    # A container without a cgroup namespace sees the host's path; its own cgroup is the root.
    container = tmp_path / "container"
    write_tree(container, {"cgroup.controllers": "cpu\n", "cpu.max": "250000 100000\n"})
    proc.write_text("0::/system.slice/docker-0123abcd.scope\n")
    assert _threads.cgroup_cpu_limit(container, proc) == 2.5


def test_cgroup_v1_cfs_quota(tmp_path):
    root = tmp_path / "cgroup"
    write_tree(root, {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n",
                      "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
                      "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
                      "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
                      "memory/docker/abc/memory.limit_in_bytes": "1073741824\n"})
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n"
                    "0::/docker/abc\n")
    assert _threads.cgroup_cpu_limit(root, proc) == 2.0
    (root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us").write_text("-1\n")
    assert _threads.cgroup_cpu_limit(root, proc) is None
    # The controller mounted as plain "cpu" (e.g. this machine), the path not under it.
    other = tmp_path / "other"
    write_tree(other, {"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"})
    proc.write_text("3:cpu:/not/mounted/here\n")
    assert _threads.cgroup_cpu_limit(other, proc) == 0.5


def test_cgroup_absent_or_garbled_means_no_quota(tmp_path):
    assert _threads.cgroup_cpu_limit(tmp_path / "nothing", tmp_path / "no_such_file") is None
    root = tmp_path / "cgroup"
    write_tree(root, {"cgroup.controllers": "cpu\n", "a/cpu.max": "lots 100000\n"})
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text("garbage\n0::/a\n")
    assert _threads.cgroup_cpu_limit(root, proc) is None


def test_this_machine_cgroup_quota_reads():
    """The real files: whatever they say, they parse (None or a positive number of CPUs)."""
    quota = _threads.cgroup_cpu_limit()
    assert quota is None or quota > 0


@pytest.mark.parametrize("affinity, quota, threads", [
    (4, 1.5, 2), (4, None, 4), (2, 8.0, 2), (16, 0.2, 1), (1, None, 1), (8, 3.0, 3)])
def test_default_threads_are_min_of_affinity_and_quota(affinity, quota, threads):
    got, why = _threads.choose_threads({}, affinity=affinity, quota=quota)
    assert got == threads
    assert f"affinity {affinity} CPU" in why
    assert ("no cgroup CPU quota" in why) if quota is None else (f"quota {quota:g}" in why)


def test_nap_num_threads_and_omp_num_threads_win():
    assert _threads.choose_threads({"NAP_NUM_THREADS": "3", "OMP_NUM_THREADS": "7"},
                                   affinity=1, quota=0.5) == (3, "NAP_NUM_THREADS=3")
    got, why = _threads.choose_threads({"OMP_NUM_THREADS": "7"}, affinity=2, quota=None)
    assert got is None and "OMP_NUM_THREADS=7" in why  # left to OpenMP, as before
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(ValueError, match="NAP_NUM_THREADS"):
            _threads.choose_threads({"NAP_NUM_THREADS": bad})


THREAD_REPORT = """
import json, os
import nap_gpu as nap
cpp = nap.backends.get("cpp")
print(json.dumps({**cpp.thread_config(), "num_threads": cpp.num_threads(),
                  "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}}))
"""


def thread_report(env: dict, preexec_fn=None, prelude: str = "") -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-c", prelude + THREAD_REPORT], capture_output=True,
                          text=True, env=env, timeout=120, preexec_fn=preexec_fn)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@needs_cpp
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no sched_setaffinity here")
def test_a_process_pinned_to_one_cpu_defaults_to_one_thread():
    cpu = min(os.sched_getaffinity(0))
    report, _ = thread_report(openmp_env(), preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    assert report["num_threads"] == 1 and report["threads"] == "1", report
    assert "affinity 1 CPU" in report["threads_from"], report
    unpinned, _ = thread_report(openmp_env())  # positive control: the whole mask
    assert unpinned["num_threads"] == min(len(os.sched_getaffinity(0)),
                                          math.ceil(_threads.cgroup_cpu_limit() or 1e9))


# -- OpenMP's wait policy ----------------------------------------------------------------------

def runtime_spin_count(stderr: str) -> str | None:
    """libgomp's spin count as it printed it under OMP_DISPLAY_ENV=VERBOSE (None: not libgomp).
    Its OMP_WAIT_POLICY line says PASSIVE when the policy is unset too: the count tells."""
    found = re.search(r"GOMP_SPINCOUNT\s*=\s*'(\d+)'", stderr)
    return found.group(1) if found else None


@needs_cpp
def test_wait_policy_default_is_read_by_the_runtime_and_then_withdrawn():
    # OMP_DISPLAY_ENV makes libgomp / libomp print the settings it read when it was loaded.
    report, stderr = thread_report(openmp_env(OMP_DISPLAY_ENV="VERBOSE"))
    assert report["wait_policy"] == "OMP_WAIT_POLICY=PASSIVE", report
    assert "nap_gpu's default" in report["wait_from"] and "read by lib" in report["wait_from"]
    assert re.search(r"OMP_WAIT_POLICY\s*=\s*'PASSIVE'", stderr, re.I), stderr
    assert runtime_spin_count(stderr) in ("0", None), stderr  # passive: no spinning at all
    # Withdrawn once the core is loaded: later runtimes and child processes see the user's env.
    assert report["env"] == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}, report


@needs_cpp
@pytest.mark.parametrize("variable, value, libgomp_spins", [
    ("OMP_WAIT_POLICY", "ACTIVE", "30000000000"),
    ("GOMP_SPINCOUNT", "1000", "1000"),
    ("KMP_BLOCKTIME", "0", "300000")])  # libgomp ignores KMP_BLOCKTIME: its own default then
def test_wait_policy_set_by_the_user_is_left_alone(variable, value, libgomp_spins):
    report, stderr = thread_report(openmp_env(**{variable: value}, OMP_DISPLAY_ENV="VERBOSE"))
    assert report["wait_policy"] == f"{variable}={value}", report
    assert "the environment" in report["wait_from"], report
    assert runtime_spin_count(stderr) in (libgomp_spins, None), stderr
    assert report["env"][variable if variable != "KMP_BLOCKTIME" else "GOMP_SPINCOUNT"] == (
        value if variable != "KMP_BLOCKTIME" else None), report  # the user's: kept, unchanged
    if variable != "OMP_WAIT_POLICY":
        assert report["env"]["OMP_WAIT_POLICY"] is None, report  # nothing added beside it


@needs_cpp
def test_wait_policy_changed_after_import_is_what_is_reported():
    """The runtime reads the environment when the core loads, not when nap_gpu is imported."""
    prelude = "import os, nap_gpu\nos.environ['OMP_WAIT_POLICY'] = 'ACTIVE'\n"
    report, stderr = thread_report(openmp_env(OMP_DISPLAY_ENV="VERBOSE"), prelude=prelude)
    assert report["wait_policy"] == "OMP_WAIT_POLICY=ACTIVE", report
    assert "the environment" in report["wait_from"], report
    assert runtime_spin_count(stderr) in ("30000000000", None), stderr
    assert report["env"]["OMP_WAIT_POLICY"] == "ACTIVE", report  # the user's: not withdrawn


@needs_cpp
def test_a_runtime_loaded_before_nap_gpu_is_reported():
    first, _ = thread_report(openmp_env())
    runtime = first["wait_from"].split("read by ")[-1].split(" when")[0]  # libgomp.so.1.0.0
    if not runtime.startswith("libgomp"):
        pytest.skip(f"the core uses {runtime}, not libgomp")
    # Another library loads the core's runtime first (here ctypes, by the soname).
    report, _ = thread_report(openmp_env(), prelude="import ctypes\nctypes.CDLL('libgomp.so.1')\n")
    assert "already loaded by another library" in report["wait_from"], report
    assert "libgomp" in report["wait_from"], report
    assert report["wait_policy"].startswith("unknown"), report


def test_loaded_runtimes_reads_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0\n"
        "7f01-7f02 r--p 00001000 08:01 1 /usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0\n"
        "7f02-7f03 r-xp 00000000 08:01 2 /opt/torch.libs/libgomp-a34b3233.so.1\n"
        "7f03-7f04 r-xp 00000000 08:01 3 /opt/llvm/lib/libomp.so.5\n"
        "7f04-7f05 rw-p 00000000 00:00 0 \n"
        "7f05-7f06 r-xp 00000000 08:01 4 /usr/lib/libgompish.so\n")
    assert _threads.loaded_runtimes(maps) == ["/usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0",
                                              "/opt/llvm/lib/libomp.so.5"]


@needs_cpp
def test_show_config_shows_threads_and_wait_policy(capsys):
    nap.show_config()
    out = capsys.readouterr().out
    for key in ("threads", "threads_from", "wait_policy", "wait_from"):
        assert re.search(rf"^\s+{key}\s+\S", out, re.M), out
    info = nap._config.config()["cpp"]
    assert int(info["threads"]) == nap.backends.get("cpp").num_threads()

WORKLOAD = """
import json, sys
import numpy as np
import nap_gpu as nap
import nap_gpu.backends.cpp as cpp

out = sys.argv[1]
n, m = 200_000, 100_000
rng = np.random.default_rng(2024)
q = rng.uniform(-0.1, 1.1, n).astype(np.float32)
q[:: 997] = 0.5                                        # exactly at the gate
spread = rng.integers(0, n, m // 2)                    # ids over the whole range (all owners)
hot = rng.integers(0, 64, m - m // 2)                  # and a hot set: many duplicates
ids = np.empty(m, np.int64)
ids[0::2], ids[1::2] = spread, hot
rng.shuffle(ids[: m // 3])
qb = rng.random(m, dtype=np.float32)

eng = nap.Engine(n, backend="cpp", seed=7)
eng.step(q)
eng.update(ids, qb)
eng.step(0.93)
eng.update(ids[::-1].copy(), qb)
eng.decay(3)
labels = (np.arange(n) % 3 == 0)
metrics = eng.metrics(labels).as_dict()

w = np.random.default_rng(8).random(n, dtype=np.float32)  # the functional form too
nap.step(w, q, backend="cpp")
nap.update(w, ids, qb, backend="cpp")

np.save(out + "_engine.npy", eng.to_numpy())
np.save(out + "_functional.npy", w)
with open(out + "_info.json", "w") as f:
    json.dump({"threads": cpp.num_threads(), "metrics": repr(metrics)}, f)
"""


@needs_cpp
@pytest.mark.slow
def test_results_identical_whatever_the_thread_count(tmp_path):
    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD)
    runs = {"1": "1", "default": None, "4": "4"}
    results = {}
    for label, threads in runs.items():
        # the core's parallel paths from 2^16 elements, as the suite pins them (conftest.py)
        env = clean_env(NAP_PARALLEL_FROM=str(1 << 16),
                        **({"NAP_NUM_THREADS": threads} if threads else {}))
        prefix = str(tmp_path / f"run_{label}")
        proc = subprocess.run([sys.executable, str(script), prefix], capture_output=True,
                              text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        info = json.loads((tmp_path / f"run_{label}_info.json").read_text())
        results[label] = (np.load(prefix + "_engine.npy"), np.load(prefix + "_functional.npy"), info)
    assert results["1"][2]["threads"] == 1
    assert results["4"][2]["threads"] == 4
    engine_1, functional_1, info_1 = results["1"]
    assert not np.array_equal(engine_1, np.random.default_rng(7).random(200_000, dtype=np.float32))
    for label in ("default", "4"):
        engine, functional, info = results[label]
        assert_same_bits(engine, engine_1, f"Engine: {label} threads vs 1 thread")
        assert_same_bits(functional, functional_1, f"functional: {label} threads vs 1 thread")
        assert info["metrics"] == info_1["metrics"], f"metrics: {label} threads vs 1 thread"


@needs_cpp
@pytest.mark.parametrize("simd", ["baseline", "avx2", "avx512"])
def test_results_identical_whatever_the_instruction_set(tmp_path, simd):
    """NAP_SIMD forces one of the core's vector paths: the same bits as the numpy backend."""
    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD.replace('backend="cpp"', 'backend=BACKEND')
                      .replace("out = sys.argv[1]", "out, BACKEND = sys.argv[1], sys.argv[2]"))
    results = {}
    for backend, env in (("numpy", clean_env()), ("cpp", clean_env(NAP_SIMD=simd))):
        prefix = str(tmp_path / backend)
        proc = subprocess.run([sys.executable, str(script), prefix, backend], capture_output=True,
                              text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        results[backend] = (np.load(prefix + "_engine.npy"), np.load(prefix + "_functional.npy"))
    options = subprocess.run([sys.executable, "-c", "import nap_gpu.backends.cpp as c; "
                              "print(c.compile_options()['simd'])"], capture_output=True,
                             text=True, env=clean_env(NAP_SIMD=simd)).stdout.strip()
    if simd != "baseline" and options == "SSE2":
        pytest.skip(f"this CPU cannot run the {simd} loops (NAP_SIMD={simd} fell back to SSE2)")
    assert_same_bits(results["cpp"][0], results["numpy"][0], f"Engine on {options}")
    assert_same_bits(results["cpp"][1], results["numpy"][1], f"functional on {options}")


@needs_cpp
@needs_threads
def test_thread_count_changes_no_bit_in_process():
    """The same, in process, through set_num_threads (restored afterwards)."""
    cpp = nap.backends.get("cpp")
    n, m = 150_000, 80_000
    rng = np.random.default_rng(5)
    q = rng.random(n, dtype=np.float32)
    ids = rng.integers(0, n // 100, m).astype(np.int64)
    qb = rng.random(m, dtype=np.float32)
    saved = int(os.environ.get("NAP_NUM_THREADS") or 0)  # 0: the OpenMP default
    before = cpp.num_threads()
    results = []
    try:
        for threads in (1, 2, 5):
            cpp.set_num_threads(threads)
            assert cpp.num_threads() == threads
            eng = nap.Engine(n, backend="cpp", seed=1)
            eng.step(q)
            eng.update(ids, qb)
            eng.decay(2)
            results.append(eng.to_numpy())
    finally:
        cpp.set_num_threads(saved)
    assert cpp.num_threads() == before
    reference = nap.Engine(n, backend="numpy", seed=1)
    reference.step(q)
    reference.update(ids, qb)
    reference.decay(2)
    for threads, w in zip((1, 2, 5), results):
        assert_same_bits(w, reference.to_numpy(), f"cpp with {threads} threads vs numpy")


# -- the C++ core absent, or present but not loadable ---------------------------------------------
def test_an_absent_core_says_it_was_not_built():
    from nap_gpu import backends  # noqa: PLC0415
    reason = backends._probe_cpp("nap_gpu._no_such_core")
    assert reason.startswith("C++ core not built") and "C++ compiler" in reason


def test_a_core_that_fails_to_load_names_the_missing_library(tmp_path, monkeypatch):
    """A wheel whose core needs a runtime the machine lacks (a Windows wheel without the OpenMP
    DLL, a Linux one without libgomp) must say which library failed, not "not built"."""
    import shutil  # noqa: PLC0415
    patchelf = shutil.which("patchelf")
    spec = importlib.util.find_spec("nap_gpu._core")
    if patchelf is None or spec is None or not sys.platform.startswith("linux"):
        pytest.skip("needs Linux, the built C++ core and patchelf (test extra)")
    package = tmp_path / "brokencore"
    package.mkdir()
    (package / "__init__.py").write_text("")
    core = package / pathlib.Path(spec.origin).name
    shutil.copy(spec.origin, core)
    subprocess.run([patchelf, "--add-needed", "libnap_test_missing_omp.so.1", str(core)],
                   check=True)
    monkeypatch.syspath_prepend(str(tmp_path))
    from nap_gpu import backends  # noqa: PLC0415
    reason = backends._probe_cpp("brokencore._core")
    assert reason.startswith("C++ core built but failed to load"), reason
    assert "libnap_test_missing_omp.so.1" in reason and str(core) in reason
    assert "reinstall" not in reason
