"""Building the C++ core alone for the tests: one CMake build of ``cpp/`` shared by the session
(tests/conftest.py's ``core_build`` and ``core_installed`` fixtures), and programs built against
the installed core the way a host service builds them (``find_package(nap)`` -> ``nap::core``).
Callers skip with the reason when CMake or a C++ compiler is missing.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shlex
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CPP_DIR = REPO / "cpp"
TIMEOUT = 900  # generous: a guard against a hung tool, not a speed assertion
# Extra CMake arguments for the core's build, e.g. "-DNAP_OPENMP=OFF -DCMAKE_CXX_FLAGS=-Werror"
# (cpp/ci/cross_checks.sh runs tests/test_cpp_core.py on a serial core that way).
EXTRA_CMAKE_ARGS = shlex.split(os.environ.get("NAP_CORE_CMAKE_ARGS", ""))

CONSUMER_CMAKE = """\
cmake_minimum_required(VERSION 3.18)
project(nap_consumer LANGUAGES CXX)
find_package(nap CONFIG REQUIRED)
add_executable(app main.cpp)
target_link_libraries(app PRIVATE nap::core)
"""


@dataclasses.dataclass
class CoreBuild:
    build_dir: pathlib.Path
    configure_log: str
    build_log: str
    compiler_id: str


def find_compiler() -> str | None:
    cxx = os.environ.get("CXX")
    if cxx:
        return shutil.which(cxx.split()[0])
    return next((found for name in ("c++", "g++", "clang++") if (found := shutil.which(name))),
                None)


def require_toolchain() -> None:
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not on PATH: cannot build the C++ core alone")
    if find_compiler() is None:
        pytest.skip("no C++ compiler found (CXX, c++, g++ or clang++): cannot build the C++ core")


def generator_args() -> list[str]:
    return ["-G", "Ninja"] if shutil.which("ninja") else []


def run(cmd: list, cwd: pathlib.Path | None = None) -> str:
    """Run a command, returning its combined output; fail with that output if it fails."""
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT)
    if proc.returncode != 0:
        pytest.fail(f"command failed with exit code {proc.returncode}: {' '.join(map(str, cmd))}\n"
                    f"--- output ---\n{proc.stdout}", pytrace=False)
    return proc.stdout


def _compiler_id(build_dir: pathlib.Path) -> str:
    for path in build_dir.glob("CMakeFiles/*/CMakeCXXCompiler.cmake"):
        match = re.search(r'set\(CMAKE_CXX_COMPILER_ID "([^"]*)"\)', path.read_text())
        if match:
            return match.group(1)
    return "unknown"


def build_core(build_dir: pathlib.Path) -> CoreBuild:
    """Configure and build ``cpp/`` (Release, with its ctest suite) in ``build_dir``."""
    require_toolchain()
    configure_log = run(["cmake", "-S", CPP_DIR, "-B", build_dir, *generator_args(),
                         "-DCMAKE_BUILD_TYPE=Release", "-DNAP_BUILD_TESTS=ON", *EXTRA_CMAKE_ARGS])
    build_log = run(["cmake", "--build", build_dir, "--config", "Release", "--parallel", "2"])
    return CoreBuild(build_dir, configure_log, build_log, _compiler_id(build_dir))


def install_core(core: CoreBuild, prefix: pathlib.Path) -> pathlib.Path:
    run(["cmake", "--install", core.build_dir, "--config", "Release", "--prefix", prefix])
    return prefix


def build_consumer(prefix: pathlib.Path, src: pathlib.Path, main: str) -> pathlib.Path:
    """The program ``main`` (C++ source) built in ``src`` against the core installed at
    ``prefix``, as a host service builds it; returns the executable."""
    src.mkdir(parents=True, exist_ok=True)
    (src / "main.cpp").write_text(main)
    (src / "CMakeLists.txt").write_text(CONSUMER_CMAKE)
    build = src / "build"
    run(["cmake", "-S", src, "-B", build, *generator_args(), "-DCMAKE_BUILD_TYPE=Release",
         f"-DCMAKE_PREFIX_PATH={prefix}"])
    run(["cmake", "--build", build, "--config", "Release"])
    apps = [p for p in build.rglob("app*") if p.is_file() and p.name in ("app", "app.exe")]
    assert apps, f"the consumer executable was not built in {build}"
    return apps[0]
