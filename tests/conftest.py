"""Shared test helpers: the device the ``cuda`` tests run on, the backend matrix and bitwise
comparison.

The ``cuda`` device (see ``pytest``'s header): where a usable GPU is present, every test marked
``gpu`` runs on it through CuPy. Where none is (CI, laptops), they run on the simulated device
of ``tests/simdevice/``: a CuPy stand-in on ``sys.path`` and ``PYTHONPATH`` (so subprocesses
see it too) that runs the real ``cuda`` backend code and the real kernel source compiled for
the CPU, and flushes float32 subnormals in its own elementwise operations as CuPy does.
``NAP_TEST_DEVICE=real`` keeps the real environment (the cuda tests then skip without a GPU);
``NAP_TEST_DEVICE=simulated`` uses the simulated device even beside a GPU.

Comparison policy (every parity test): float32 results are compared as bit patterns
(``.view(np.uint32)``), never with a tolerance. The law never produces -0.0, so bitwise
equality is plain equality of values. NaN only arises from NaN inputs (the caller's own
weights, or ``check_finite=False``); there the contract is NaN in the same places, while the
payload is unspecified (IEEE leaves it open: NumPy's SIMD loops and GPUs pick different ones),
so tests that feed NaN compare with ``nan_payloads=False``.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

SIMULATOR = pathlib.Path(__file__).with_name("simdevice")

# The C++ core's dense loops go parallel from a size it measures (what waking its threads
# costs: 65K-500K elements on the VMs here). The tests pin the least, 2^16, so that the sizes
# they use take the parallel paths on every machine; subprocesses inherit it.
os.environ.setdefault("NAP_PARALLEL_FROM", str(1 << 16))


def _real_environment() -> dict[str, str]:
    """The environment without the simulated device on PYTHONPATH."""
    env = dict(os.environ)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and pathlib.Path(p) != SIMULATOR]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def _real_cuda_reason() -> str | None:
    """Why the real cuda backend is unusable here (None: a usable GPU), asked in a clean
    subprocess so that this process never imports the real CuPy."""
    code = "import nap_gpu; print(nap_gpu.available_backends()['cuda'] or '')"
    done = subprocess.run([sys.executable, "-c", code], env=_real_environment(),
                          capture_output=True, text=True, check=True)
    return done.stdout.strip() or None


def _choose_cuda_device() -> tuple[bool, str | None]:
    """(simulated?, the real backend's reason) for NAP_TEST_DEVICE = auto | real | simulated."""
    choice = os.environ.get("NAP_TEST_DEVICE", "auto").strip().lower()
    if choice not in ("auto", "real", "simulated"):
        raise ValueError(f"NAP_TEST_DEVICE must be auto, real or simulated, got {choice!r}")
    reason = _real_cuda_reason()
    simulated = choice == "simulated" or (choice == "auto" and reason is not None)
    if simulated:
        sys.path.insert(0, str(SIMULATOR))
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(SIMULATOR), *filter(None, _real_environment()["PYTHONPATH"].split(os.pathsep))])
    return simulated, reason


#: Whether the cuda tests run on the simulated device, and why the real GPU path cannot.
SIMULATED_DEVICE, REAL_CUDA_REASON = _choose_cuda_device()
needs_simulated_device = pytest.mark.skipif(
    not SIMULATED_DEVICE, reason="checks a property of the simulated device")

import nap_gpu as nap  # noqa: E402 - after the device is chosen (the probe is cached)

#: For tests of the cuda backend itself (mark them ``gpu`` too).
needs_cuda = pytest.mark.skipif(nap.available_backends()["cuda"] is not None,
                                reason=f"cuda unusable here: {nap.available_backends()['cuda']}")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line with what ran on the cuda device: the gpu-marked tests by outcome."""
    counts: dict[str, int] = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            if "gpu" in getattr(report, "keywords", {}) and (report.when == "call" or outcome != "passed"):
                counts[outcome] = counts.get(outcome, 0) + 1
    if counts:
        device = "the simulated device" if SIMULATED_DEVICE else "the GPU"
        summary = ", ".join(f"{n} {outcome}" for outcome, n in counts.items())
        terminalreporter.write_line(f"gpu-marked tests on {device}: {summary}")


def pytest_report_header(config):
    if SIMULATED_DEVICE:
        return (f"cuda: simulated device (tests/simdevice: the kernels' source compiled for the "
                f"CPU, CuPy's flush-to-zero); real GPU unusable: {REAL_CUDA_REASON}")
    return "cuda: the real GPU through CuPy"

GOLDEN_DIR = pathlib.Path(__file__).parent / "golden"
#: Golden vectors of an independent scalar implementation of the law (docs/law.md §5).
SHARED_GOLDEN = GOLDEN_DIR / "law_vectors.json"

ALL_BACKENDS = ("cuda", "cpp", "numpy")


def backend_param(name: str):
    """A pytest param for backend ``name`` that skips with the probe's reason when unusable."""
    reason = nap.available_backends()[name]
    marks = [pytest.mark.gpu] if name == "cuda" else []
    if reason is not None:
        marks.append(pytest.mark.skip(reason=f"backend {name!r} unusable here: {reason}"))
    return pytest.param(name, marks=marks, id=name)


BACKENDS = [backend_param(name) for name in ALL_BACKENDS]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Each backend by name; unusable ones are skipped with the reason."""
    return request.param


@pytest.fixture(params=[p for p in BACKENDS if p.id != "cuda"])
def host_backend(request) -> str:
    """Each backend that works on host memory (cases about host arrays: NumPy flags, PyTorch
    CPU tensors)."""
    return request.param


def on_backend(host: np.ndarray, backend: str):
    """A copy of host data where ``backend`` works in place: a NumPy array on host backends,
    a device (CuPy) array on cuda."""
    if backend == "cuda":
        import cupy  # noqa: PLC0415 - the real or the simulated one (see the module docstring)

        return cupy.asarray(host)
    return np.array(host, copy=True)


def data_pointer(a) -> int:
    """The address of an array's first element (host or device)."""
    return a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr


def to_host(a) -> np.ndarray:
    """A host copy of any array (device arrays through their explicit ``.get()``)."""
    if not isinstance(a, np.ndarray) and hasattr(a, "get") and hasattr(a, "__cuda_array_interface__"):
        return a.get()
    return np.array(a, copy=True)


def bits(a) -> np.ndarray:
    """The float32 bit patterns of an array (host copy)."""
    return np.ascontiguousarray(to_host(a).astype(np.float32, copy=False)).view(np.uint32)


_CANONICAL_NAN = np.uint32(0x7FC00000)


def assert_same_bits(actual, expected, context: str = "", *, nan_payloads: bool = True) -> None:
    """Bitwise equality; with ``nan_payloads=False`` every NaN counts as the same NaN."""
    a, e = bits(actual), bits(expected)
    if not nan_payloads:
        a = np.where(np.isnan(a.view(np.float32)), _CANONICAL_NAN, a)
        e = np.where(np.isnan(e.view(np.float32)), _CANONICAL_NAN, e)
    assert a.shape == e.shape, f"{context}: shapes {a.shape} != {e.shape}"
    diff = np.flatnonzero(a != e)
    assert diff.size == 0, (f"{context}: {diff.size} weights differ, first at [{diff[0]}]: "
                            f"0x{a[diff[0]]:08x} != 0x{e[diff[0]]:08x}")


def finishes_within(seconds: float, fn, *args) -> None:
    """fn(*args) on a daemon thread: fails instead of hanging the suite if it has not returned
    after ``seconds``."""
    import threading  # noqa: PLC0415

    done, failure = threading.Event(), []

    def run():
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(seconds), f"did not return within {seconds} s"
    if failure:
        raise failure[0]


def f32(hex_bits: str) -> np.float32:
    return np.array([int(hex_bits, 16)], np.uint32).view(np.float32)[0]


def load_shared_golden() -> dict:
    return json.loads(SHARED_GOLDEN.read_text())


def _forget_probes() -> None:
    nap.backends._probe_all.cache_clear()
    nap.backends.get.cache_clear()


@pytest.fixture
def cuda_unusable(monkeypatch) -> str:
    """A process where the cuda backend is unusable, and why: the simulated device with no
    device present (CuPy importable, ``getDeviceCount() == 0``), or the real environment
    where it has no usable GPU; skipped beside a real GPU (it cannot be made unusable)."""
    if SIMULATED_DEVICE:
        import cupy  # noqa: PLC0415 - the simulated one

        monkeypatch.setattr(cupy._state, "DEVICES", 0)
    elif REAL_CUDA_REASON is None:
        pytest.skip("a real GPU is usable here: cuda cannot be made unusable")
    _forget_probes()
    reason = nap.available_backends()["cuda"]
    assert reason is not None
    yield reason
    monkeypatch.undo()
    _forget_probes()


@pytest.fixture(scope="session")
def core_build(tmp_path_factory):
    """One CMake build of cpp/ (Release, with ctest) for the session (tests/cpp_build.py)."""
    import cpp_build  # noqa: PLC0415 - only the C++ tests need CMake

    return cpp_build.build_core(tmp_path_factory.mktemp("nap_core") / "build")


@pytest.fixture(scope="session")
def core_installed(core_build, tmp_path_factory) -> pathlib.Path:
    """That build installed under a prefix, for find_package(nap) consumers."""
    import cpp_build  # noqa: PLC0415

    return cpp_build.install_core(core_build, tmp_path_factory.mktemp("nap_prefix"))


@pytest.fixture(autouse=True)
def _no_backend_override(monkeypatch):
    """Tests choose backends explicitly; a developer's NAP_BACKEND must not leak in."""
    monkeypatch.delenv("NAP_BACKEND", raising=False)
    yield
