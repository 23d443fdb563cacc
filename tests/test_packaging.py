"""Packaging: a machine without a C++ compiler still gets a working package (numpy backend),
and the wheel carries the law header for the CUDA loader."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_without_compiler(tmp_path_factory) -> pathlib.Path:
    """Build the wheel with the C++ compiler made unusable (CXX=false), as on a bare laptop."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake not installed: cannot build a wheel here")
    out = tmp_path_factory.mktemp("wheel")
    env = {**os.environ, "CXX": "/bin/false", "CC": "/bin/false"}
    cmd = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
           "-w", str(out), f"-Cbuild-dir={out / 'build'}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = out.glob("nap_gpu-*.whl")
    return wheel


def test_wheel_without_compiler_has_no_core_but_the_header(wheel_without_compiler):
    names = zipfile.ZipFile(wheel_without_compiler).namelist()
    assert not any("/_core" in name for name in names), names
    assert "nap_gpu/include/nap/law.h" in names
    assert "nap_gpu/backends/numpy.py" in names


def test_wheel_carries_the_license_and_the_typing_marker(wheel_without_compiler):
    """Apache-2.0 as pyproject says, with its text; py.typed so type checkers read the API."""
    wheel = zipfile.ZipFile(wheel_without_compiler)
    names = wheel.namelist()
    assert "nap_gpu/py.typed" in names
    license_file = next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
    assert "Apache License" in wheel.read(license_file).decode()
    metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata


def test_package_without_core_runs_on_numpy(wheel_without_compiler, tmp_path):
    zipfile.ZipFile(wheel_without_compiler).extractall(tmp_path / "site")
    script = (
        "import nap_gpu as nap, numpy as np\n"
        "reason = nap.available_backends()['cpp']\n"
        "assert reason and 'not built' in reason, reason\n"
        "eng = nap.Engine(1000, seed=0)\n"
        "assert eng.backend == 'numpy', eng.backend\n"
        "eng.step(np.full(1000, 0.9, np.float32)); eng.update([1, 1], [0.1, 0.9])\n"
        "print(eng.to_numpy().view(np.uint32).sum(dtype=np.uint64))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    env.pop("NAP_BACKEND", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # The same population on the installed package (with its core) gives the same bits.
    import numpy as np

    import nap_gpu as nap

    eng = nap.Engine(1000, seed=0)
    eng.step(np.full(1000, 0.9, np.float32))
    eng.update([1, 1], [0.1, 0.9])
    assert int(done.stdout) == int(eng.to_numpy().view(np.uint32).sum(dtype=np.uint64))
