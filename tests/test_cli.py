"""The nap-gpu command: simulate (the main job) and info, run as a user would."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

import nap_gpu as nap
from nap_gpu.cli import count, main


def test_simulate_prints_a_table_and_a_healthy_verdict(capsys):
    assert main(["simulate", "--memories", "10k", "--iterations", "50", "--no-progress"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line[:5].strip().isdigit()]
    assert [int(r[0]) for r in rows] == list(range(1, 51))
    separation, inversion = float(rows[-1][1]), float(rows[-1][2])
    assert separation > 0.2 and inversion > 0.9
    assert "health: OK" in out


def test_simulate_json_matches_an_engine_run(tmp_path):
    path = tmp_path / "run.json"
    code = main(["simulate", "--memories", "2000", "--iterations", "12", "--noise", "0.1",
                 "--seed", "4", "--backend", "numpy", "--json", str(path), "--no-progress"])
    data = json.loads(path.read_text())
    assert code == (0 if data["health"]["ok"] else 1)
    assert data["backend"] == "numpy" and len(data["iterations"]) == 12
    # The same run through the API gives the same final metrics, exactly.
    eng = nap.Engine(2000, backend="cpp" if nap.available_backends()["cpp"] is None else "numpy",
                     seed=4)
    workload = nap.ReferenceWorkload(2000, sigma=0.1, seed=4)
    for _ in range(12):
        eng.step(workload.next_quality())
    final = eng.metrics(workload.labels)
    assert data["final"]["separation"] == final.separation
    assert data["final"]["inversion_ratio"] == final.inversion_ratio


def test_simulate_reports_an_unhealthy_run_with_exit_code_1(capsys):
    # Noise of std 5 drowns the qualities' signal: no separation after the warm-up.
    code = main(["simulate", "--memories", "2000", "--iterations", "12", "--noise", "5",
                 "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1 and "health: FAILED" in out and "separation" in out


@pytest.mark.parametrize("args, message", [
    (["simulate", "--backend", "cuda"], "not usable here"),
    (["simulate", "--backend", "bogus"], "unknown backend"),
    (["simulate", "--iterations", "0"], "--iterations"),
])
def test_simulate_bad_arguments_exit_2_with_a_message(capsys, request, args, message):
    if args[-1] == "cuda":
        request.getfixturevalue("cuda_unusable")
    assert main([*args, "--memories", "100", "--no-progress"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("text, value", [("10000", 10_000), ("10k", 10_000), ("1M", 10**6),
                                         ("1e6", 10**6), ("1_000", 1000), ("1G", 10**9)])
def test_counts(text, value):
    assert count(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "ten", "1.5k5"])
def test_bad_counts(text):
    with pytest.raises(argparse.ArgumentTypeError):
        count(text)


def test_info_as_json_in_a_subprocess():
    done = subprocess.run([sys.executable, "-m", "nap_gpu.cli", "info", "--json"],
                          capture_output=True, text=True, check=True)
    info = json.loads(done.stdout)
    assert set(info["backends"]) == {"cuda", "cpp", "numpy"}
    assert info["backends"]["numpy"] == "usable"
    assert "--fmad=false" in info["cuda_kernels"]["options"]
    assert "available" in info["gpu"]
    assert info["auto"] in ("cuda", "cpp", "numpy")


def test_simulate_with_state_continues_where_it_stopped(tmp_path, capsys):
    state = tmp_path / "state"
    common = ["simulate", "--memories", "3000", "--seed", "9", "--no-progress", "--state", str(state)]
    assert main([*common, "--iterations", "4"]) == 0
    assert main([*common, "--iterations", "3", "--json", str(tmp_path / "run.json")]) in (0, 1)
    out = capsys.readouterr().out
    assert "state" in out and "(iteration 4)" in out
    data = json.loads((tmp_path / "run.json").read_text())
    assert [r["iteration"] for r in data["iterations"]] == [5, 6, 7]
    eng = nap.Engine.open(state)  # recovered: 7 steps, as an uninterrupted run gives
    twin = nap.Engine(3000, seed=9)
    workload = nap.ReferenceWorkload(3000, seed=9)
    qualities = [workload.next_quality().copy() for _ in range(4)]
    for q in qualities + qualities[:3]:  # the second run replays the workload from its start
        twin.step(q)
    assert eng.iteration == 7
    assert (eng.to_numpy().view("u4") == twin.to_numpy().view("u4")).all()
    eng.close()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "nap_gpu.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_recover_refuses_damage_and_accept_loss_drops_it_logged(tmp_path):
    """`nap-gpu recover DIR` on a log with a corrupt final record: exit 1, the error, what
    --accept-loss would drop, and nothing changed. `--accept-loss`: exit 0, the sequences
    and files dropped (also logged as JSON on stderr), the tail kept aside, and the state
    opens at the record before, bit for bit. Run again, it has nothing to do."""
    import numpy as np

    from nap_gpu import durable

    state, n = tmp_path / "state", 500
    rng = np.random.default_rng(5)
    calls = [(rng.integers(0, n, 10), rng.random(10)) for _ in range(10)]
    twin = nap.Engine(n, backend="numpy", seed=1)
    with nap.Engine.open(state, n=n, seed=1, backend="numpy", snapshot_every=4) as eng:
        for i, (ids, q) in enumerate(calls):
            eng.update(ids, q)
            if i < 9:
                twin.update(ids, q)
    seg = sorted(state.glob("wal-*.log"))[-1]  # records 9 and 10
    data = bytearray(seg.read_bytes())
    offset = 32 + 16 + int.from_bytes(data[32:40], "little")  # record 10's
    data[offset + 40] ^= 0x01  # one of its ids
    seg.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in state.iterdir()}

    done = _cli("recover", state)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "status: error" in done.stdout and f"offset {offset}" in done.stdout
    assert "--accept-loss would: drop sequences 10..10" in done.stdout
    assert {p.name: p.read_bytes() for p in state.iterdir()} == before

    done = _cli("recover", state, "--accept-loss")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "accept-loss: drop sequences 10..10" in done.stdout
    assert f"{seg.name}.dropped-from-{offset}" in done.stdout
    assert "status: ok" in done.stdout and "result: sequence 9" in done.stdout
    logged = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [e["dropped_sequences"] for e in logged] == [{"from": 10, "to": 10}]
    assert json.loads((state / durable.LOSS_JOURNAL).read_text()) == logged[0]

    done = _cli("recover", state, "--accept-loss", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["dropped"] == []
    with nap.Engine.open(state, backend="numpy") as eng:
        assert eng.sequence == 9
        assert (eng.to_numpy().view("u4") == twin.to_numpy().view("u4")).all()
