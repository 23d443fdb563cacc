"""The package type-checks (mypy, configured in pyproject.toml), the C++ core's stub matches
the built extension (stubtest), and the sources lint clean (ruff, configured there too).

Each tool runs in a subprocess from the repository root, as a developer would run it; a
tool that is not installed skips its test with the reason (the `test` extra brings both).
"""

from __future__ import annotations

import importlib.util
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: The optional dependencies whose own types mypy checks the package against (the `test`
#: extra installs them all); pydantic also provides the mypy plugin pyproject.toml names.
TYPED_DEPENDENCIES = ("pydantic", "pydantic_settings", "fastapi", "uvicorn", "starlette",
                      "prometheus_client", "distributed", "matplotlib")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _run(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _report(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def _require_mypy() -> None:
    if not _installed("mypy"):
        pytest.skip("mypy is not installed (pip install 'mypy>=1.11', or the test extra)")


def test_mypy_is_clean():
    """``mypy`` with pyproject.toml's [tool.mypy] (files, Python 3.10, the overrides for the
    untyped optional modules): no error."""
    _require_mypy()
    missing = [m for m in TYPED_DEPENDENCIES if not _installed(m)]
    if missing:
        pytest.skip(f"mypy checks against these optional dependencies' types, not installed: "
                    f"{', '.join(missing)} (pip install -e '.[test]')")
    proc = _run([sys.executable, "-m", "mypy"])
    assert proc.returncode == 0, _report(proc)


def test_the_core_stub_matches_the_extension():
    """src/nap_gpu/_core.pyi says what the built C++ extension holds (mypy.stubtest)."""
    _require_mypy()
    if not _installed("nap_gpu._core"):
        pytest.skip("the C++ core is not built (nap_gpu._core): nothing to compare the stub with")
    proc = _run([sys.executable, "-m", "mypy.stubtest", "nap_gpu._core"])
    assert proc.returncode == 0, _report(proc)


def test_ruff_is_clean():
    """``ruff check src tests benchmarks`` with pyproject.toml's [tool.ruff]: no finding."""
    if _installed("ruff"):
        ruff = [sys.executable, "-m", "ruff"]
    elif shutil.which("ruff"):
        ruff = [str(shutil.which("ruff"))]
    else:
        pytest.skip("ruff is not installed (pip install 'ruff>=0.6', or the test extra)")
    proc = _run([*ruff, "check", "--no-cache", "--output-format=concise", "src", "tests", "benchmarks"])
    assert proc.returncode == 0, _report(proc)
