"""The benchmark suites in smoke mode, so that they never rot.

Runs ``pytest benchmarks/ --smoke`` in a subprocess: the smallest tier, one round of every
benchmark, peers skipped with their reason where they are not installed. The numbers mean
nothing; the suites must run, their bit-exactness checks must pass for nap's own paths, the
convergence tables must agree across backends, and the report generator must read the JSON.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytest.importorskip("pytest_benchmark", reason="pytest-benchmark is not installed (bench extra)")


@pytest.fixture(scope="module")
def smoke_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)   # they slow a current NumPy (benchmarks/README.md)
    env.pop("OPENBLAS_L2_SIZE", None)
    cmd = [sys.executable, "-m", "pytest", "benchmarks/", "--smoke", "-q", "-p",
           "no:cacheprovider", "--ignore=benchmarks/gpu", f"--benchmark-json={out}",
           "--benchmark-disable-gc", "-rs"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(out) as f:
        return json.load(f)


def test_every_operation_ran(smoke_json):
    ops = {b["extra_info"].get("op") for b in smoke_json["benchmarks"]}
    for op in ("dense-step", "sparse-batch", "decay", "metrics", "snapshot-save",
               "snapshot-load", "convergence", "wal"):
        assert op in ops
    assert all(b["stats"]["rounds"] == 1 for b in smoke_json["benchmarks"]
               if b["group"] != "machine")


def test_nap_paths_are_bit_exact(smoke_json):
    for b in smoke_json["benchmarks"]:
        e = b["extra_info"]
        if e.get("role") == "nap" and "bit_exact" in e:
            assert e["bit_exact"] is not False, b["name"]


def test_add_at_is_reported_not_bit_exact(smoke_json):
    rows = [b for b in smoke_json["benchmarks"] if b["extra_info"].get("impl") == "numpy-add-at"]
    assert rows and all(b["extra_info"]["bit_exact"] is False for b in rows)
    assert all(b["extra_info"]["mismatches"] > 0 for b in rows)


def test_convergence_identical_across_backends(smoke_json):
    by_sigma: dict[float, list[dict]] = {}
    for b in smoke_json["benchmarks"]:
        e = b["extra_info"]
        if e.get("op") == "convergence":
            by_sigma.setdefault(e["sigma"], []).append(e["convergence"])
    assert sorted(by_sigma) == [0.0, 0.1, 0.2]
    keys = ("checkpoints", "first_healthy", "healthy_at_50", "saturation_at_50", "weights_crc32")
    for recs in by_sigma.values():
        assert all({k: r[k] for k in keys} == {k: recs[0][k] for k in keys} for r in recs)


def test_every_benchmark_wrote_a_record(smoke_json):
    from benchmarks.report.schema import Record
    for b in smoke_json["benchmarks"]:
        Record.read(b["extra_info"])  # ValueError naming the stray or mistyped field


def test_report_reads_the_json(smoke_json, tmp_path):
    """The suites' own output, through the command line as run_scale.sh runs it."""
    path = tmp_path / "smoke.json"
    path.write_text(json.dumps(smoke_json))
    out = tmp_path / "SCALING.md"
    done = subprocess.run([sys.executable, "-m", "benchmarks.report", str(path), "-o", str(out),
                           "--no-plots"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    for section in ("## The machine", "## Headline", "## Dense step", "## Sparse ordered batch",
                    "## decay(k)", "## Metrics", "## Snapshot save", "## Snapshot load",
                    "## Write-ahead log", "## Peak memory, measured",
                    "## Convergence of the reference workload", "## Cost growth"):
        assert section in text
    assert "| dense-step | `cpp-raw` |" in text.split("## Peak memory, measured")[1]


def test_dense_step_targets_report_reads_the_json(smoke_json, tmp_path):
    path = tmp_path / "smoke.json"
    path.write_text(json.dumps(smoke_json))
    done = subprocess.run([sys.executable, "-m", "benchmarks.report", "targets", str(path)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "### dense-step-" in done.stdout and "### Targets" in done.stdout


def test_the_per_call_table_runs():
    """benchmarks/per_call.py (the fixed-cost table of benchmarks/README.md) on a few calls."""
    if __import__("nap_gpu").available_backends()["cpp"] is not None:
        pytest.skip("the C++ core is not built")
    proc = subprocess.run([sys.executable, "benchmarks/per_call.py", "--memories", "10000",
                           "--repeats", "5"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for row in ("| core: `_core.update`", "| validation: `_inputs.events`",
                "| public: `Engine.update(ids, q)`", "| public: `Engine.step(q)`"):
        assert row in proc.stdout, proc.stdout
