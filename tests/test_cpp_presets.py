"""The C++ stack a host service builds: cpp/CMakePresets.json (configure, build, test on every
platform) and cpp/build_invariants.ps1 (the same through the Visual Studio 2022 presets).

The release workflow runs here end to end, on a copy of the sources (presets build inside the
source tree); the Windows presets are checked for what a Windows host needs, since no Visual
Studio runs here.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRESETS = json.loads((ROOT / "cpp" / "CMakePresets.json").read_text())


def _cmake_or_skip() -> str:
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not on PATH")
    version = subprocess.run([cmake, "--version"], capture_output=True, text=True).stdout
    major, minor = map(int, re.search(r"(\d+)\.(\d+)", version).groups())
    if (major, minor) < (3, 25):
        pytest.skip(f"workflow presets need CMake >= 3.25 (found {major}.{minor})")
    return cmake


def test_presets_parse_and_every_step_names_a_preset():
    cmake = _cmake_or_skip()
    done = subprocess.run([cmake, "--list-presets=all"], cwd=ROOT / "cpp", capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr  # CMake validates the file against its schema
    configure = {p["name"] for p in PRESETS["configurePresets"]}
    for kind in ("buildPresets", "testPresets"):
        assert {p["configurePreset"] for p in PRESETS[kind]} <= configure
    for flow in PRESETS["workflowPresets"]:
        steps = {s["type"]: s["name"] for s in flow["steps"]}
        assert list(steps) == ["configure", "build", "test"], flow
    tests = {p["name"]: p for p in PRESETS["testPresets"]}
    assert all(t["output"]["outputOnFailure"] for t in tests.values())


def test_the_visual_studio_presets_are_the_guides_stack():
    """Visual Studio 2022, x64, Release, ``ctest -C Release``: what build_invariants.ps1 runs."""
    vs = next(p for p in PRESETS["configurePresets"] if p["name"] == "vs2022")
    assert vs["generator"] == "Visual Studio 17 2022" and vs["architecture"]["value"] == "x64"
    assert {p["configuration"] for p in PRESETS["buildPresets"] + PRESETS["testPresets"]
            if p["configurePreset"] == "vs2022"} == {"Release"}
    script = (ROOT / "cpp" / "build_invariants.ps1").read_text()
    assert '$Preset = "vs2022"' in script
    for step in ('"cmake", "--preset"', '"cmake", "--build", "--preset"',
                 '"ctest", "--preset", $Preset, "--output-on-failure"', "$LASTEXITCODE"):
        assert step in script, step


def test_release_workflow_configures_builds_and_passes_ctest(tmp_path):
    cmake = _cmake_or_skip()
    shutil.copytree(ROOT / "cpp", tmp_path / "cpp", ignore=shutil.ignore_patterns("build"))
    shutil.copytree(ROOT / "tests" / "golden", tmp_path / "tests" / "golden")
    done = subprocess.run([cmake, "--workflow", "--preset", "release"], cwd=tmp_path / "cpp",
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "100% tests passed" in done.stdout, done.stdout[-2000:]
