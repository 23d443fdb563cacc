"""Packaging: a machine without a C++ compiler still gets a working package (numpy backend),
and the wheel carries the law header for the CUDA loader; the Linux release wheel, repaired by
auditwheel, loads its own core and passes the golden vectors; one version everywhere; the
release matrix is what cibuildwheel reads."""

from __future__ import annotations

import json
import os
import pathlib
import re
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


#: Put ``site`` first, even before an editable install's import hook (which would otherwise
#: serve the source tree's nap_gpu whatever sys.path says), then run the rest of argv.
_ISOLATE = ("import runpy, sys; site = sys.argv.pop(1); "
            "sys.meta_path[:] = [f for f in sys.meta_path "
            "if not type(f).__name__.endswith('RedirectingFinder')]; "
            "sys.path.insert(0, site); "
            "sys.argv[:] = sys.argv[1:] if sys.argv[1] != '-c' else ['-c', *sys.argv[3:]]; ")


def run_from(site: pathlib.Path, args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``python ARGS`` with the package unpacked in ``site`` importable before any other."""
    if args[0] == "-c":
        code = _ISOLATE + f"exec(compile({args[1]!r}, '<test>', 'exec'))"
    else:
        code = _ISOLATE + f"runpy.run_path({args[0]!r}, run_name='__main__')"
    env = {**os.environ}
    for name in ("NAP_BACKEND", "PYTHONPATH"):  # PYTHONPATH: the tests' simulated CuPy
        env.pop(name, None)
    return subprocess.run([sys.executable, "-c", code, str(site), *args], env=env,
                          capture_output=True, text=True, **kwargs)


def test_wheel_without_compiler_has_no_core_but_the_header(wheel_without_compiler):
    names = zipfile.ZipFile(wheel_without_compiler).namelist()
    assert not any("/_core." in name and not name.endswith(".pyi") for name in names), names
    assert "nap_gpu/include/nap/law.h" in names
    assert "nap_gpu/backends/numpy.py" in names


def test_wheel_carries_the_license_and_the_typing_marker(wheel_without_compiler):
    """Apache-2.0 as pyproject says, with its text; py.typed so type checkers read the API."""
    wheel = zipfile.ZipFile(wheel_without_compiler)
    names = wheel.namelist()
    assert "nap_gpu/py.typed" in names
    assert "nap_gpu/_core.pyi" in names  # the extension's types, even where it is not built
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
    done = run_from(tmp_path / "site", ["-c", script], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # The same population on the installed package (with its core) gives the same bits.
    import numpy as np

    import nap_gpu as nap

    eng = nap.Engine(1000, seed=0)
    eng.step(np.full(1000, 0.9, np.float32))
    eng.update([1, 1], [0.1, 0.9])
    assert int(done.stdout) == int(eng.to_numpy().view(np.uint32).sum(dtype=np.uint64))


@pytest.fixture(scope="module")
def repaired_wheel(tmp_path_factory) -> pathlib.Path:
    """The Linux wheel as a release ships it: built with the C++ core, then ``auditwheel
    repair`` (the OpenMP runtime vendored, the manylinux tag checked against the symbols)."""
    auditwheel = shutil.which("auditwheel")
    if not sys.platform.startswith("linux") or auditwheel is None or shutil.which("cmake") is None:
        pytest.skip("needs Linux, cmake and auditwheel (test extra)")
    out = tmp_path_factory.mktemp("release")
    cmd = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
           "-w", str(out / "raw"), f"-Cbuild-dir={out / 'build'}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    (raw,) = (out / "raw").glob("nap_gpu-*.whl")
    done = subprocess.run([auditwheel, "repair", "-w", str(out / "repaired"), str(raw)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (out / "repaired").glob("nap_gpu-*.whl")
    return wheel


def test_the_repaired_wheel_is_manylinux_and_carries_its_openmp_runtime(repaired_wheel):
    assert "manylinux" in repaired_wheel.name, repaired_wheel.name
    names = zipfile.ZipFile(repaired_wheel).namelist()
    assert any(n.startswith("nap_gpu.libs/libgomp") for n in names), names
    assert any(n.startswith("nap_gpu/_core") for n in names)


def test_the_repaired_wheel_passes_its_smoke_test(repaired_wheel, tmp_path):
    """What cibuildwheel runs on every wheel it builds: the golden vectors, bit for bit, on the
    wheel's own core (loaded from the unpacked wheel, with its vendored OpenMP runtime)."""
    zipfile.ZipFile(repaired_wheel).extractall(tmp_path / "site")
    done = run_from(tmp_path / "site", [str(ROOT / "tests" / "wheel_smoke.py")], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"from {tmp_path / 'site' / 'nap_gpu'}" in done.stdout, done.stdout
    assert "cpp: 0 of the golden cases differ" in done.stdout, done.stdout


# -- one version, the release matrix ------------------------------------------------------------
def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="Python 3.10 has no tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_one_version_everywhere():
    """pyproject.toml is the one source; everything else that states a version must agree
    (a bump that forgets one fails here)."""
    import nap_gpu  # noqa: PLC0415

    version = _pyproject()["project"]["version"]
    stated = {
        "nap_gpu.__version__ (installed metadata)": nap_gpu.__version__,
        "cpp/CMakeLists.txt project()": re.search(r"project\(nap VERSION ([\d.]+)",
                                                  (ROOT / "cpp/CMakeLists.txt").read_text())[1],
        "docs/openapi.json": json.loads((ROOT / "docs/openapi.json").read_text())["info"]["version"],
        "CHANGELOG.md top entry": re.search(r"^## \[([^\]]+)\]",
                                            (ROOT / "CHANGELOG.md").read_text(), re.M)[1],
    }
    for dockerfile in sorted((ROOT / "docker").glob("Dockerfile*")):
        stated[f"docker/{dockerfile.name} ARG VERSION"] = re.search(
            r"^ARG VERSION=(\S+)", dockerfile.read_text(), re.M)[1]
    wrong = {where: v for where, v in stated.items() if v != version}
    assert not wrong, f"pyproject.toml says {version}; these differ: {wrong}"


def test_classifiers_and_the_wheel_matrix_cover_the_supported_pythons():
    project = _pyproject()["project"]
    assert project["requires-python"] == ">=3.10"
    minors = {int(c.rsplit(".", 1)[1]) for c in project["classifiers"]
              if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)}
    assert minors == set(range(10, 15)), minors
    builds = _pyproject()["tool"]["cibuildwheel"]["build"]
    assert builds == [f"cp3{m}-*" for m in sorted(minors)]


def test_cibuildwheel_builds_the_platforms_users_have():
    """The identifiers cibuildwheel itself derives from pyproject.toml (no build runs)."""
    cibuildwheel = shutil.which("cibuildwheel")
    if cibuildwheel is None:
        pytest.skip("cibuildwheel not installed (test extra)")
    expected = {"linux": {"manylinux_x86_64", "manylinux_aarch64"}, "macos": {"macosx_arm64"},
                "windows": {"win_amd64"}}
    for platform, tags in expected.items():
        done = subprocess.run([cibuildwheel, "--platform", platform, "--print-build-identifiers",
                               str(ROOT)], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        ids = done.stdout.split()
        assert {i.split("-", 1)[1] for i in ids} == tags, ids
        assert {i.split("-", 1)[0] for i in ids} == {f"cp3{m}" for m in range(10, 15)}, ids
