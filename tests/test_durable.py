"""Durable engines: real files, real processes, real SIGKILLs.

Every test compares weights bit for bit with an in-memory Engine that applied exactly the
calls the durable one acknowledged. The call stream is a deterministic function of the
sequence number (``make_call``), shared with the child processes, so a child killed at any
moment and restarted on the same directory continues the same stream.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pathlib
import random
import shutil
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import zlib

import numpy as np
import pytest

import nap_gpu as nap
from nap_gpu import durable, snapshot
from nap_gpu.durable import DurabilityWarning, DurableEngine, RecoveryError

from conftest import assert_same_bits

CALLS = textwrap.dedent("""
    import numpy as np
    import nap_gpu as nap

    def make_call(i, n):
        rng = np.random.default_rng([12345, i])
        r = rng.random()
        if r < 0.30:   # dense step, random qualities (not compressible)
            return ("step", rng.random(n, dtype=np.float32))
        if r < 0.40:   # dense step, quantised qualities (zlib pays)
            return ("step", (rng.integers(0, 11, n) / 10).astype(np.float32))
        if r < 0.50:
            return ("step", float(rng.random()))
        if r < 0.80:   # sparse batch with repeated ids, in order
            m = int(rng.integers(0, 300))
            ids = rng.integers(0, n, m)
            ids[: m // 4] = ids[0] if m else 0
            q = rng.random(m) if rng.random() < 0.7 else float(rng.random())
            return ("update", ids, q)
        if r < 0.93:
            return ("decay", int(rng.integers(0, 4)))
        return ("params", nap.Params(lr=float(rng.choice([0.05, 0.07, 0.1])),
                                     gate=float(rng.choice([0.5, 0.45])),
                                     decay=float(rng.choice([0.02, 0.01, 0.0]))))

    def apply_call(eng, call):
        kind = call[0]
        if kind == "step":
            eng.step(call[1])
        elif kind == "update":
            eng.update(call[1], call[2])
        elif kind == "decay":
            eng.decay(call[1])
        else:
            eng.params = call[1]
""")
_ns: dict = {}
exec(CALLS, _ns)
make_call, apply_call = _ns["make_call"], _ns["apply_call"]

N = 2_000
SEED = 7
PKG_ROOT = str(pathlib.Path(nap.__file__).resolve().parents[1])


def child_env() -> dict:
    env = dict(os.environ)
    # after what is there: the simulated device's cupy (tests/conftest.py) must stay ahead of
    # an installed CuPy, which sits beside the installed nap_gpu
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH", ""), PKG_ROOT]))
    env.pop("NAP_BACKEND", None)
    return env


class Reference:
    """An in-memory Engine advanced through the same call stream."""

    def __init__(self, n: int = N, seed: int = SEED) -> None:
        self.eng = nap.Engine(n, backend="numpy", seed=seed)
        self.sequence = 0
        self.n = n

    def advance(self, sequence: int) -> nap.Engine:
        assert sequence >= self.sequence, f"sequence went back: {sequence} < {self.sequence}"
        while self.sequence < sequence:
            self.sequence += 1
            apply_call(self.eng, make_call(self.sequence, self.n))
        return self.eng


def assert_matches(deng: DurableEngine, ref: nap.Engine, context: str = "") -> None:
    assert_same_bits(deng.to_numpy(), ref.to_numpy(), context)
    assert deng.params == ref.params, context
    assert deng.iteration == ref.iteration, context


def build_state(directory, calls: int, backend: str = "numpy", **options) -> Reference:
    options = {"snapshot_every": 6, "keep": 3, **options}
    ref = Reference()
    with DurableEngine.open(directory, n=N, seed=SEED, backend=backend, **options) as deng:
        for i in range(1, calls + 1):
            apply_call(deng, make_call(i, N))
        assert deng.sequence == calls
        ref.advance(calls)
        assert_matches(deng, ref.eng, "live")
    return ref


def listing(directory) -> list[str]:
    return sorted(p.name for p in pathlib.Path(directory).iterdir() if p.name != "LOCK")


# -- basics ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fsync", ["always", "group"])
def test_reopen_continues_bit_for_bit(tmp_path, backend, fsync):
    """Written on each backend, reopened on it, continued, then replayed on every backend."""
    ref = build_state(tmp_path / "s", 40, backend=backend, fsync=fsync, group_ms=1)
    with DurableEngine.open(tmp_path / "s", backend=backend) as deng:
        assert deng.sequence == 40 and deng.n == N
        assert_matches(deng, ref.eng, "reopened")
        for i in range(41, 50):
            apply_call(deng, make_call(i, N))
        ref.advance(49)
        assert_matches(deng, ref.eng, "continued")
    for backend, reason in nap.available_backends().items():  # replay is bit-identical anywhere
        if reason is None:
            with DurableEngine.open(tmp_path / "s", n=N, backend=backend) as deng:
                assert deng.backend == backend
                assert_matches(deng, ref.eng, f"reopened on {backend}")


def test_retention_and_rotation(tmp_path):
    build_state(tmp_path / "s", 40, snapshot_every=6, keep=3)
    names = listing(tmp_path / "s")
    snaps = [x for x in names if x.startswith("snap-")]
    segs = [x for x in names if x.startswith("wal-")]
    assert [int(x[5:25]) for x in snaps] == [24, 30, 36]
    # the log reaches back to the oldest kept snapshot, so each one is a recovery point
    assert [int(x[4:24]) for x in segs] == [25, 31, 37]
    build_state(tmp_path / "t", 40, snapshot_every=6, keep=3, wal_retention="newest")
    assert [int(x[4:24]) for x in listing(tmp_path / "t") if x.startswith("wal-")] == [37]


def test_snapshots_are_plain_nap_snapshots(tmp_path):
    ref = build_state(tmp_path / "s", 12, snapshot_every=6)
    newest = sorted((tmp_path / "s").glob("snap-*.nap"))[-1]
    info = snapshot.inspect(newest)
    assert info.sequence == 12 and info.checksum_ok
    ref12 = Reference()
    assert_matches(nap.load(newest), ref12.advance(12), "snapshot read by nap.load")
    with DurableEngine.open(tmp_path / "s") as deng:
        exported = deng.save(tmp_path / "export.nap")
        assert snapshot.inspect(exported).sequence == 12
        assert_same_bits(nap.load(exported).to_numpy(), ref.eng.to_numpy(), "export")


def test_payloads_are_compressed_only_when_it_helps(tmp_path):
    n = 300_000  # a dense step's payload (1.2 MB) is above the compression threshold
    small_ids = np.random.default_rng(1).integers(0, n, 1000)
    with DurableEngine.open(tmp_path / "s", n=n, seed=1, backend="numpy") as deng:
        seg = next((tmp_path / "s").glob("wal-*.log"))
        size = seg.stat().st_size
        deng.step(np.random.default_rng(0).random(n, dtype=np.float32))
        grown = seg.stat().st_size - size
        assert 4 * n <= grown <= 4 * n + 100  # random float32: stored raw
        deng.step(np.full(n, 0.7, np.float32))
        assert seg.stat().st_size - size - grown < 10_000  # constant: zlib
        size = seg.stat().st_size
        deng.update(np.arange(100_000), 0.9)  # sorted ids, one quality: zlib
        assert seg.stat().st_size - size < 250_000  # of 1_200_000 raw
        size = seg.stat().st_size
        deng.update(small_ids, 0.9)  # a small batch: raw (zlib would cost more than it saves)
        assert 12_000 <= seg.stat().st_size - size <= 12_100
        ref = nap.Engine(n, seed=1, backend="numpy")
        ref.step(np.random.default_rng(0).random(n, dtype=np.float32))
        ref.step(np.full(n, 0.7, np.float32))
        ref.update(np.arange(100_000), 0.9)
        ref.update(small_ids, 0.9)
    with DurableEngine.open(tmp_path / "s") as deng:
        assert_matches(deng, ref, "compressed and raw records replayed")


def test_rejected_calls_log_nothing_and_change_nothing(tmp_path, backend):
    with DurableEngine.open(tmp_path / "s", n=100, seed=1, backend=backend, snapshot_every=2) as deng:
        deng.step(0.9)
        seg = next((tmp_path / "s").glob("wal-*.log"))
        size, before, seq = seg.stat().st_size, deng.to_numpy(), deng.sequence
        bad_calls = [
            lambda: deng.step(np.full(100, np.nan, np.float32)),
            lambda: deng.step(np.ones(99, np.float32)),
            lambda: deng.step(float("inf")),
            lambda: deng.update([1, 100], [0.5, 0.5]),
            lambda: deng.update([1, -1], 0.5),
            lambda: deng.update([1, 2], [0.5]),
            lambda: deng.update([1.5], [0.5]),
            lambda: deng.decay(-1),
            lambda: deng.decay(1.0),
            lambda: setattr(deng, "params", (0.05, 0.5, 0.02)),
        ]
        for call in bad_calls:
            with pytest.raises((TypeError, ValueError, IndexError)):
                call()
        assert deng.sequence == seq and seg.stat().st_size == size
        assert_same_bits(deng.to_numpy(), before, "after rejected calls")


def test_open_arguments(tmp_path, monkeypatch):
    monkeypatch.setattr(durable.lock, "_LOCK_WAIT", 0.05)
    with pytest.raises(ValueError, match="pass n"):
        DurableEngine.open(tmp_path / "new")
    with DurableEngine.open(tmp_path / "s", n=100, params=nap.Params(lr=0.1)) as deng:
        with pytest.raises(RuntimeError, match="LOCK"):
            DurableEngine.open(tmp_path / "s")
        deng.step(0.9)
    with pytest.raises(ValueError, match="n = 100"):
        DurableEngine.open(tmp_path / "s", n=101)
    with pytest.raises(ValueError, match="eng.params"):
        DurableEngine.open(tmp_path / "s", params=nap.Params())
    with DurableEngine.open(tmp_path / "s", n=100, params=nap.Params(lr=0.1)) as deng:
        assert deng.sequence == 1 and deng.iteration == 1
    with pytest.raises(ValueError, match="fsync"):
        DurableEngine.open(tmp_path / "s", fsync="never")
    with pytest.raises(ValueError, match="keep"):
        DurableEngine.open(tmp_path / "s", keep=0)
    with pytest.raises(TypeError):
        DurableEngine(100)
    deng = DurableEngine.open(tmp_path / "s")
    deng.close()
    with pytest.raises(ValueError, match="closed"):
        deng.step(0.5)


def test_the_constructor_opens_as_open_does(tmp_path):
    """``DurableEngine(directory, ...)`` is ``DurableEngine.open(directory, ...)``; counts are
    checked as everywhere (`_inputs.whole`: TypeError for a non-integer, ValueError below
    the minimum)."""
    with DurableEngine(tmp_path / "s", n=100, seed=3, snapshot_every=2) as deng:
        for _ in range(3):
            deng.step(0.9)
        before = deng.to_numpy()
    with DurableEngine.open(tmp_path / "s") as deng:
        assert (deng.sequence, deng.snapshot_sequence) == (3, 2)
        assert_same_bits(deng.to_numpy(), before, "reopened")
        with pytest.raises(AttributeError, match="read-only"):
            deng.n = 5
    for bad, error in [(1.5, TypeError), (True, TypeError), (0, ValueError)]:
        with pytest.raises(error, match="keep"):
            DurableEngine(tmp_path / "s", keep=bad)
    for bad, error in [("2", TypeError), (-1, ValueError)]:
        with pytest.raises(error, match="snapshot_every"):
            DurableEngine(tmp_path / "s", snapshot_every=bad)
    with pytest.raises(TypeError, match="nap.Params"):
        DurableEngine(tmp_path / "s", params=(0.1, 0.5, 0.02))


def test_clamp_is_a_deprecated_name_for_recover(tmp_path):
    """``clamp()`` never clamped: it restores the weights from disk, as ``recover()`` does."""
    with DurableEngine.open(tmp_path / "s", n=100, seed=3, backend="numpy") as deng:
        deng.step(0.9)
        before = deng.to_numpy()
        deng._eng._w[:] = 2.0  # corruption in memory
        with pytest.warns(DeprecationWarning, match="recover"):
            deng.clamp()
        assert_same_bits(deng.to_numpy(), before, "restored")


def test_without_wal_only_snapshots_survive(tmp_path):
    with DurableEngine.open(tmp_path / "s", n=100, seed=1, wal=False, snapshot_every=3) as deng:
        for _ in range(5):
            deng.step(0.9)
    assert not list((tmp_path / "s").glob("wal-*"))
    with DurableEngine.open(tmp_path / "s") as deng:
        assert deng.sequence == 3 and deng.iteration == 3


# -- crashes --------------------------------------------------------------------------------
CHILD = textwrap.dedent("""
    import os, random, signal, sys
    import nap_gpu as nap
    from nap_gpu import durable
    {calls}
    directory, fsync, seed, self_kill = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    rng = random.Random(seed)

    def die():
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    if self_kill != "none":
        # die at a chosen kind of moment: halfway through a log write, a rename (snapshot or
        # segment creation), an unlink (retention), an fsync
        real = {{"write": os.write, "replace": os.replace, "unlink": os.unlink,
                 "fsync": os.fsync, "fdatasync": os.fdatasync}}
        p = float(sys.argv[5])
        def write(fd, data):
            if self_kill == "write" and rng.random() < p:
                data = memoryview(data)[: rng.randrange(0, len(data) + 1)]
                real["write"](fd, data)
                die()
            return real["write"](fd, data)
        def make(name):
            def hooked(*args, **kwargs):
                if self_kill == name and rng.random() < p:
                    if rng.random() < 0.5:
                        die()
                    real[name](*args, **kwargs)
                    die()
                return real[name](*args, **kwargs)
            return hooked
        os.write = write
        for name in ("replace", "unlink", "fsync", "fdatasync"):
            setattr(os, name, make(name))

    eng = durable.DurableEngine.open(directory, n={n}, seed={seed0}, snapshot_every=5, keep=2,
                                     fsync=fsync, group_ms=2)
    print("open", eng.sequence, flush=True)
    while True:
        apply_call(eng, make_call(eng.sequence + 1, {n}))
        print("ack", eng.sequence, flush=True)
""")


def run_child(directory, fsync: str, seed: int, self_kill: str = "none", p: float = 0.0,
              kill_after: float | None = None) -> tuple[int | None, int]:
    """Run the child until it dies; returns (sequence it opened at, last acknowledged)."""
    script = CHILD.format(calls=CALLS, n=N, seed0=SEED)
    proc = subprocess.Popen([sys.executable, "-c", script, str(directory), fsync, str(seed),
                             self_kill, str(p)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=child_env())
    timer = threading.Timer(kill_after if kill_after is not None else 20.0,
                            lambda: proc.send_signal(signal.SIGKILL))
    timer.start()
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        timer.cancel()
    assert proc.returncode == -signal.SIGKILL, f"child ended with {proc.returncode}: {err}"
    assert all(len(line.split()) == 2 for line in out.split("\n")[:-1]), (out, err)
    opened, acked = None, 0
    lines = out.split("\n")
    for line in lines[:-1]:  # only whole lines: a kill may cut the last one short
        word, value = line.split()
        if word == "open":
            opened = acked = int(value)
        else:
            assert int(value) == acked + 1, out
            acked = int(value)
    return opened, acked


@pytest.mark.parametrize("fsync", ["always", "group"])
def test_sigkill_at_random_moments(tmp_path, fsync):
    """A child acknowledges calls and is killed at random moments, from outside (a timer) or
    from inside at chosen kinds of moments; every reopen holds exactly the acknowledged calls
    (plus possibly the one in flight), bit for bit, and the next child continues from there."""
    directory = tmp_path / "state"
    rng = random.Random(f"kills-{fsync}")
    ref = Reference()
    recovered = None
    plan = [("none", 0.0)] * 6 + [("write", 0.05), ("replace", 0.2), ("unlink", 0.3),
                                  ("fsync", 0.1), ("fdatasync", 0.05)] * 2
    rng.shuffle(plan)
    for cycle, (self_kill, p) in enumerate(plan):
        kill_after = rng.uniform(0.05, 0.8) if self_kill == "none" else None
        opened, acked = run_child(directory, fsync, rng.randrange(1 << 30), self_kill, p,
                                  kill_after)
        if opened is not None and recovered is not None:
            assert opened == recovered, "the child recovered another state than the parent"
        acked = max(acked, recovered or 0)
        with warnings_allowed():
            deng = DurableEngine.open(directory, backend="numpy")
        with deng:
            assert acked <= deng.sequence <= acked + 1, (cycle, self_kill, acked, deng.sequence)
            assert_matches(deng, ref.advance(deng.sequence), f"cycle {cycle} ({self_kill})")
            recovered = deng.sequence
    assert recovered > 20, "the children made too little progress to test anything"


@contextlib.contextmanager
def warnings_allowed():
    """Recovery may warn (a torn final record dropped); nothing else may."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        assert issubclass(w.category, DurabilityWarning), w
        assert "torn final record" in str(w.message), w


# -- corruption -----------------------------------------------------------------------------
def segment_layout(path: pathlib.Path) -> list[tuple[int, int]]:
    """(offset, size) of each record in a segment (an independent reader of the format)."""
    data = path.read_bytes()
    out, offset = [], 32
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        out.append((offset, 16 + length))
        offset += 16 + length
    assert offset == len(data)
    return out


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A state at sequence 40: snapshots at 24, 30, 36 (keep 3); segments from 25, 31, 37."""
    directory = tmp_path_factory.mktemp("pristine") / "s"
    ref = build_state(directory, 40, snapshot_every=6, keep=3)
    return directory, ref


def damaged_copy(pristine, tmp_path, name: str, change) -> pathlib.Path:
    directory = tmp_path / "s"
    shutil.copytree(pristine[0], directory)
    path = next(directory.glob(name))
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(change(data)))
    return directory


def flip(offset):
    def change(data):
        data[offset] ^= 0x10
        return data
    return change


def truncate(size):
    return lambda data: data[:size]


def regions(layout) -> list[tuple[str, int]]:
    """Named byte offsets in every region of a segment."""
    points = [("magic", 0), ("version", 8), ("flags", 12), ("first-seq", 16), ("reserved", 24),
              ("header-crc", 28)]
    for r, (offset, size) in enumerate(layout):
        points += [(f"rec{r}-length", offset), (f"rec{r}-body-crc", offset + 8),
                   (f"rec{r}-head-crc", offset + 12), (f"rec{r}-seq", offset + 16),
                   (f"rec{r}-kind", offset + 24), (f"rec{r}-flags", offset + 25),
                   (f"rec{r}-payload", offset + 28), (f"rec{r}-last", offset + size - 1)]
    return points


def open_outcome(directory):
    """("ok", engine-state tuple) | ("warned", ...) | ("error", message)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            deng = DurableEngine.open(directory, backend="numpy")
        except RecoveryError as exc:
            return "error", str(exc), caught
    with deng:
        state = (deng.sequence, deng.to_numpy(), deng.params, deng.iteration)
    return ("warned" if caught else "ok"), state, caught


_REFERENCES: dict[int, nap.Engine] = {}


def check_state(state, sequence: int, context: str) -> None:
    if sequence not in _REFERENCES:
        _REFERENCES[sequence] = Reference().advance(sequence)
    ref = _REFERENCES[sequence]
    assert state[0] == sequence, context
    assert_same_bits(state[1], ref.to_numpy(), context)
    assert (state[2], state[3]) == (ref.params, ref.iteration), context


def test_flips_in_the_last_segment_are_errors_naming_file_and_offset(pristine, tmp_path):
    seg = sorted(pristine[0].glob("wal-*.log"))[-1]
    layout = segment_layout(seg)
    assert len(layout) == 4  # records 37..40
    for region, offset in regions(layout):
        directory = damaged_copy(pristine, tmp_path / region, seg.name, flip(offset))
        plan = durable.recover_plan(directory)
        outcome, detail, _ = open_outcome(directory)
        assert outcome == "error", (region, outcome)
        assert seg.name in detail, (region, detail)
        assert plan["status"] == "error" and plan["error_file"].endswith(seg.name)
        if region.startswith("rec"):
            record = int(region[3])
            assert f"offset {layout[record][0]}" in detail, (region, detail)


def test_truncations_of_the_last_segment(pristine, tmp_path):
    """Inside the final record: torn, dropped with a warning. At a record boundary: a
    shorter, valid log. Inside the segment header: an error (segments are created
    atomically, so a short header is damage, not a crash)."""
    seg = sorted(pristine[0].glob("wal-*.log"))[-1]
    layout = segment_layout(seg)
    cuts = [("inside-header", 20), ("after-header", 32)]
    for r, (offset, size) in enumerate(layout):
        cuts += [(f"rec{r}-in-head", offset + 7), (f"rec{r}-after-head", offset + 16),
                 (f"rec{r}-mid-body", offset + size // 2), (f"rec{r}-minus-1", offset + size - 1)]
    for name, size in cuts:
        directory = damaged_copy(pristine, tmp_path / name, seg.name, truncate(size))
        outcome, detail, caught = open_outcome(directory)
        if name == "inside-header":
            assert outcome == "error" and seg.name in detail and "offset 0" in detail
            continue
        complete = sum(1 for offset, rsize in layout if offset + rsize <= size)
        torn = size != 32 and all(size != offset for offset, _ in layout)
        assert outcome == ("warned" if torn else "ok"), (name, outcome, detail)
        if torn:
            assert "torn final record" in str(caught[0].message)
        check_state(detail, 36 + complete, name)
        # after the repair the directory opens cleanly and goes on
        with DurableEngine.open(directory, backend="numpy") as deng:
            assert deng.sequence == 36 + complete
            apply_call(deng, make_call(deng.sequence + 1, N))


def test_zero_filled_tail_is_torn(pristine, tmp_path):
    seg = sorted(pristine[0].glob("wal-*.log"))[-1]
    directory = damaged_copy(pristine, tmp_path, seg.name, lambda d: d + b"\0" * 4096)
    outcome, state, _ = open_outcome(directory)
    assert outcome == "warned"
    check_state(state, 40, "zero tail")


def test_older_segments_are_read_only_when_needed(pristine, tmp_path):
    """The log before the newest snapshot is not needed, so damage there does not stop
    recovery; once the newest snapshot is damaged too, it is needed and is an error."""
    snaps = sorted(pristine[0].glob("snap-*.nap"))
    old = sorted(pristine[0].glob("wal-*.log"))[1]  # records 31..36
    layout = segment_layout(old)
    for region, offset in regions(layout)[::3] + [("truncated", layout[2][0])]:
        change = truncate(offset) if region == "truncated" else flip(offset)
        directory = damaged_copy(pristine, tmp_path / region, old.name, change)
        outcome, state, _ = open_outcome(directory)
        assert outcome == "ok", (region, state)
        check_state(state, 40, region)
        directory = damaged_copy(pristine, tmp_path / (region + "-both"), old.name, change)
        newest = directory / snaps[-1].name
        newest.write_bytes(newest.read_bytes()[:-1])
        outcome, detail, _ = open_outcome(directory)
        assert outcome == "error" and newest.name in detail, (region, detail)
        assert old.name in detail or (region == "truncated" and "gap" in detail), detail


def snapshot_damages(path: pathlib.Path):
    data_offset = snapshot.inspect(path).data_offset
    size = path.stat().st_size
    for offset in [*range(0, 64), *range(64, data_offset, 2)]:  # the header, densely
        yield f"flip-{offset}", flip(offset)
    for offset in (data_offset, data_offset + 1001, size - 1):
        yield f"flip-weights-{offset}", flip(offset)
    for cut in (0, 7, 8, 100, data_offset, data_offset + 2, size - 1):
        yield f"cut-{cut}", truncate(cut)
    yield "extended", lambda d: d + b"\0\0\0\0"


def test_damaged_newest_snapshot_falls_back_only_when_the_log_covers(pristine, tmp_path):
    """Each damage of the newest snapshot either leaves the state exactly right (a byte the
    state does not depend on) or makes recovery fall back, with a warning naming the file,
    to the previous snapshot plus the log; never wrong weights."""
    newest = sorted(pristine[0].glob("snap-*.nap"))[-1]
    fell_back = 0
    for name, change in snapshot_damages(newest):
        directory = damaged_copy(pristine, tmp_path / name, newest.name, change)
        outcome, state, caught = open_outcome(directory)
        assert outcome in ("ok", "warned"), (name, state)
        check_state(state, 40, name)
        if outcome == "warned":
            fell_back += 1
            assert newest.name in str(caught[0].message) and "damaged" in str(caught[0].message)
            assert (directory / (newest.name + ".damaged")).exists()
        shutil.rmtree(tmp_path / name)
    assert fell_back > 20


def test_damaged_snapshot_without_log_is_an_error(tmp_path):
    build_state(tmp_path / "p", 40, snapshot_every=6, keep=3, wal_retention="newest")
    newest = sorted((tmp_path / "p").glob("snap-*.nap"))[-1]
    data_offset = snapshot.inspect(newest).data_offset
    for name, change in [("weights", flip(data_offset + 5)), ("cut", truncate(100)),
                         ("json", flip(30))]:
        directory = damaged_copy((tmp_path / "p",), tmp_path / name, newest.name, change)
        outcome, detail, _ = open_outcome(directory)
        assert outcome == "error", name
        assert newest.name in detail and "damaged" in detail, detail
    for snap in (tmp_path / "p").glob("snap-*.nap"):  # every snapshot damaged: an error
        snap.write_bytes(snap.read_bytes()[:-1])
    assert open_outcome(tmp_path / "p")[0] == "error"


def test_a_damaged_snapshot_the_log_does_not_reach_is_a_damaged_snapshot_error(tmp_path):
    """Falling back past a damaged snapshot whose calls the log no longer holds would lose
    them: `DamagedSnapshotError`, whose repair sets the snapshot aside (losing those calls)."""
    build_state(tmp_path / "p", 40, snapshot_every=6, keep=3, wal_retention="newest")
    newest = sorted((tmp_path / "p").glob("snap-*.nap"))[-1]  # 36; the log holds 37.. only
    directory = damaged_copy((tmp_path / "p",), tmp_path / "d", newest.name, truncate(100))
    for seg in directory.glob("wal-*.log"):
        seg.unlink()
    with pytest.raises(durable.DamagedSnapshotError, match="falling back would lose") as caught:
        DurableEngine.open(directory, backend="numpy")
    assert caught.value.fallback and caught.value.path == str(directory / newest.name)
    repair = caught.value.repair
    assert (repair.file.name, repair.from_sequence, repair.to_sequence) == (newest.name, 31, 36)


def test_future_versions_are_refused_with_the_version(pristine, tmp_path):
    import json
    newest = sorted(pristine[0].glob("snap-*.nap"))[-1]

    def future(data):
        (length,) = struct.unpack_from("<Q", data)
        header = json.loads(bytes(data[8:8 + length]))
        header["__metadata__"]["format_version"] = str(snapshot.FORMAT_VERSION + 1)
        text = json.dumps(header).encode()
        return data[:8] + text + b" " * (length - len(text)) + data[8 + length:]
    directory = damaged_copy(pristine, tmp_path / "snap", newest.name, future)
    with pytest.raises(durable.FormatTooNewError, match=rf"format version {snapshot.FORMAT_VERSION + 1}.*"
                                                        rf"up to {snapshot.FORMAT_VERSION}.*upgrade"):
        DurableEngine.open(directory)
    with pytest.raises(durable.FormatTooNewError, match="cannot get past"):
        durable.accept_loss(directory)
    seg = sorted(pristine[0].glob("wal-*.log"))[-1]

    def future_log(data):
        data[8:12] = struct.pack("<I", 2)
        data[28:32] = struct.pack("<I", zlib.crc32(bytes(data[:28])))
        return data
    directory = damaged_copy(pristine, tmp_path / "log", seg.name, future_log)
    with pytest.raises(durable.FormatTooNewError, match=r"log format version 2.*up to 1.*upgrade") as caught:
        DurableEngine.open(directory)
    assert caught.value.repair is None  # nothing but an upgrade gets past it


# -- full disk ------------------------------------------------------------------------------
def test_full_disk(tmp_path):
    """A file-size limit makes appends (and an automatic snapshot) fail midway: the failing
    call raises and changes nothing, no partial record stays in the log, a snapshot failure
    only warns (its call is in the log), and the engine works again once space returns."""
    directory = tmp_path / "s"
    script = textwrap.dedent(f"""
        import resource, signal, warnings, numpy as np
        from nap_gpu import durable
        {textwrap.indent(CALLS, "        ").strip()}
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        warnings.simplefilter("always")
        eng = durable.DurableEngine.open({str(directory)!r}, n={N}, seed={SEED},
                                         snapshot_every=4, keep=2)
        i = 0
        def call():
            global i
            apply_call(eng, make_call(i + 1, {N}))
            i += 1
            print("ack", eng.sequence, flush=True)
        for _ in range(6):
            call()
        eng.checkpoint()                         # a fresh, short segment
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (6000, hard))
        failures = warned = 0
        for _ in range(40):
            before, seq = eng.to_numpy(), eng.sequence
            try:
                with warnings.catch_warnings(record=True) as caught:
                    call()
                warned += sum("automatic snapshot" in str(w.message) for w in caught)
            except OSError as exc:
                assert exc.errno == 27, exc
                assert eng.sequence == seq
                assert (eng.to_numpy().view(np.uint32) == before.view(np.uint32)).all()
                failures += 1
                # skip this call in the stream (it was never acknowledged): mark it
                print("skip", i + 1, flush=True)
                i += 1
        print("failures", failures, "warned", warned, flush=True)
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        for _ in range(12):
            call()
        eng.close()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=child_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    summary = next(x.split() for x in lines if x.startswith("failures"))
    assert int(summary[1]) > 0 and int(summary[3]) > 0, done.stdout
    skipped = {int(x.split()[1]) for x in lines if x.startswith("skip")}
    acked = [int(x.split()[1]) for x in lines if x.startswith("ack")]
    # replay exactly the acknowledged calls (stream positions minus the skipped ones)
    ref = nap.Engine(N, backend="numpy", seed=SEED)
    position = 0
    for _ in acked:
        position += 1
        while position in skipped:
            position += 1
        apply_call(ref, make_call(position, N))
    with DurableEngine.open(directory, backend="numpy") as deng:
        assert deng.sequence == len(acked) == acked[-1]
        assert_matches(deng, ref, "after the disk was full")


# -- the dry run ----------------------------------------------------------------------------
def test_recover_report_is_a_dry_run(pristine, tmp_path):
    seg = sorted(pristine[0].glob("wal-*.log"))[-1]
    layout = segment_layout(seg)
    directory = damaged_copy(pristine, tmp_path, seg.name, truncate(layout[-1][0] + 20))
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    plan = durable.recover_plan(directory)
    text = durable.recover_report(directory)
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    assert plan["status"] == "ok" and plan["sequence"] == 39
    assert plan["torn_tail"]["offset"] == layout[-1][0]
    assert plan["snapshot"].startswith("snap-00000000000000000036")
    assert "torn" in text and "sequence 39" in text and f"truncate {seg.name}" in text
    outcome, state, _ = open_outcome(directory)
    assert outcome == "warned" and state[0] == 39
    assert durable.recover_plan(tmp_path / "none")["status"] == "missing"
    (tmp_path / "empty").mkdir()
    assert durable.recover_plan(tmp_path / "empty")["status"] == "empty"
    bad = damaged_copy(pristine, tmp_path / "bad", seg.name, flip(layout[1][0] + 30))
    plan = durable.recover_plan(bad)
    assert plan["status"] == "error" and plan["error_offset"] == layout[1][0]
    assert "error:" in durable.recover_report(bad)


def test_the_dry_run_is_a_typed_plan_with_the_dict_and_text_forms(pristine, tmp_path):
    """`dry_run` returns the `RecoveryPlan` that `recover_plan` (``to_dict``) and
    `recover_report` render; a refusal is its ``error``, not an exception."""
    seg = sorted(pristine[0].glob("wal-*.log"))[-1]
    layout = segment_layout(seg)
    torn = damaged_copy(pristine, tmp_path / "torn", seg.name, truncate(layout[-1][0] + 20))
    bad = damaged_copy(pristine, tmp_path / "bad", seg.name, flip(layout[1][0] + 30))
    for directory in (torn, bad, tmp_path / "none"):
        plan = durable.dry_run(directory)
        assert isinstance(plan, durable.RecoveryPlan)
        assert plan.to_dict() == durable.recover_plan(directory)
        assert durable.recover_report(plan) == durable.recover_report(directory) == plan.render()
    plan = durable.dry_run(torn)
    assert (plan.status, plan.sequence, plan.error) == ("ok", 39, None)
    assert plan.torn_tail.offset == layout[-1][0] and isinstance(plan.params, nap.Params)
    assert plan.replay.last == 39 and plan.replay.records == sum(plan.replay.kinds.values())
    plan = durable.dry_run(bad)
    assert plan.status == "error" and plan.error.offset == layout[1][0]
    assert plan.error.file == str(bad / seg.name) and plan.error.accept_loss.startswith("drop")
    assert durable.dry_run(tmp_path / "none").status == "missing"


# -- fsync failures and group commit ----------------------------------------------------------
def test_failed_fsync_rolls_back_or_fails_the_engine(tmp_path, monkeypatch):
    """An fsync error on an append removes the record and raises (nothing applied); if the
    rollback cannot be made durable either, the engine refuses further calls until reopened.
    Either way a reopen holds exactly the acknowledged calls."""
    real = durable.writer._sync
    ref = Reference()
    deng = DurableEngine.open(tmp_path / "s", n=N, seed=SEED, backend="numpy")
    for i in (1, 2):
        apply_call(deng, make_call(i, N))
    failures = iter([True])

    def flaky(fd):
        if next(failures, False):
            raise OSError(5, "Input/output error")
        real(fd)
    monkeypatch.setattr(durable.writer, "_sync", flaky)
    before = deng.to_numpy()
    with pytest.raises(OSError, match="Input/output"):
        apply_call(deng, make_call(3, N))
    assert deng.sequence == 2
    assert_same_bits(deng.to_numpy(), before, "after a failed fsync")
    apply_call(deng, make_call(3, N))  # the engine goes on
    assert deng.sequence == 3

    def broken(fd):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(durable.writer, "_sync", broken)
    with pytest.raises(durable.EngineFailedError, match="reopen"):
        apply_call(deng, make_call(4, N))
    with pytest.raises(durable.EngineFailedError):
        deng.decay(1)
    monkeypatch.setattr(durable.writer, "_sync", real)
    deng.close()
    with DurableEngine.open(tmp_path / "s", backend="numpy") as again:
        assert again.sequence == 3  # the rolled-back record is gone
        assert_matches(again, ref.advance(3), "after fsync failures")


def test_group_commit_flushes_in_the_background(tmp_path):
    with DurableEngine.open(tmp_path / "s", n=100, fsync="group", group_ms=5) as deng:
        deng.step(0.9)
        assert deng._log.dirty  # in the page cache when the call returns
        deadline = time.monotonic() + 5
        while deng._log.dirty and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not deng._log.dirty  # on disk within group_ms


def test_lock_held_by_a_dying_owners_fork_is_waited_for(tmp_path):
    """A process killed while a child it forked has not yet exec'd (CuPy's probe runs
    ldconfig) leaves the LOCK held by that child for a moment: open waits for it."""
    script = textwrap.dedent(f"""
        import os, signal, time
        from nap_gpu import durable
        eng = durable.DurableEngine.open({str(tmp_path / "s")!r}, n=100, backend="numpy")
        eng.step(0.9)
        if os.fork() == 0:
            time.sleep(0.4)
            os._exit(0)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], env=child_env(), timeout=60)
    assert done.returncode == -signal.SIGKILL
    with DurableEngine.open(tmp_path / "s", backend="numpy") as deng:
        assert deng.sequence == 1


# -- failed log rotation ----------------------------------------------------------------------
class RotationFaults:
    """Real OS errors injected at the exact moments of a log rotation (installed with
    monkeypatch on os): EMFILE when the new segment is opened after its creation, or when
    the directory is opened for its fsync; EIO from that directory fsync (after the new
    segment's rename); ``also`` makes the next directory fsync fail too (the one that would
    make the removal of the unusable segment durable)."""

    def __init__(self, monkeypatch) -> None:
        self.plan: list[str] = []
        self.done: list[str] = []
        self._after_rename = False
        self._also = False
        real_open, real_replace, real_fsync = os.open, os.replace, os.fsync

        def is_dir_fd(fd):
            return stat.S_ISDIR(os.fstat(fd).st_mode)

        def fake_open(path, flags, *args, **kwargs):
            name = os.path.basename(os.fspath(path))
            if self.plan and self.plan[0] == "emfile-open" and durable.format.SEG_RE.match(name) \
                    and flags == os.O_WRONLY:
                self.done.append(self.plan.pop(0))
                raise OSError(errno.EMFILE, "Too many open files", os.fspath(path))
            if self._after_rename and self.plan and self.plan[0] == "emfile-dir" \
                    and os.path.isdir(path):
                self._after_rename = False
                self.done.append(self.plan.pop(0))
                raise OSError(errno.EMFILE, "Too many open files", os.fspath(path))
            return real_open(path, flags, *args, **kwargs)

        def fake_replace(src, dst, *args, **kwargs):
            result = real_replace(src, dst, *args, **kwargs)
            self._after_rename = os.path.basename(os.fspath(src)).startswith(".wal-")
            return result

        def fake_fsync(fd):
            if (self._after_rename or self._also) and self.plan \
                    and self.plan[0] in ("eio-dir", "eio-dir-twice") and is_dir_fd(fd):
                if self._also:
                    self._also = False
                    self.done.append(self.plan.pop(0))
                else:
                    self._after_rename = False
                    self._also = self.plan[0] == "eio-dir-twice"
                    if not self._also:
                        self.done.append(self.plan.pop(0))
                raise OSError(errno.EIO, "Input/output error")
            return real_fsync(fd)

        monkeypatch.setattr(os, "open", fake_open)
        monkeypatch.setattr(os, "replace", fake_replace)
        monkeypatch.setattr(os, "fsync", fake_fsync)


def test_failed_rotation_keeps_the_log_where_recovery_reads(tmp_path, monkeypatch):
    """A rotation whose new segment cannot be opened (EMFILE), whose directory fsync fails
    (EIO) or whose directory cannot be opened for the fsync (EMFILE): the new segment is
    withdrawn, the engine warns and goes on in the old one, and a reopen holds every
    acknowledged call. (It used to go on in the old segment beside the new, empty one, which
    recovery started from: every call after the failed rotation was lost.) If the withdrawal
    cannot be made durable either, the call still returns (it is in the log) and the engine
    fails from the next call on."""
    directory = tmp_path / "s"
    ref = Reference()
    deng = DurableEngine.open(directory, n=N, seed=SEED, backend="numpy", snapshot_every=3,
                              keep=2)
    faults = RotationFaults(monkeypatch)
    sequence = 0

    def call():
        nonlocal sequence
        apply_call(deng, make_call(sequence + 1, N))
        sequence += 1
        assert deng.sequence == sequence

    for kind in ("emfile-open", "eio-dir", "emfile-dir"):
        while deng.sequence % 3 != 2:
            call()
        faults.plan = [kind]
        with pytest.warns(DurabilityWarning, match="automatic snapshot"):
            call()  # the checkpoint at this call: snapshot written, rotation failed
        assert faults.done[-1] == kind and not faults.plan
        segs = [int(x[4:24]) for x in listing(directory) if x.startswith("wal-")]
        assert sequence + 1 not in segs, (kind, segs)  # the unusable segment is gone
        for _ in range(4):  # on in the old segment, then a good rotation
            call()
        assert durable.recover_plan(directory)["sequence"] == sequence
    while deng.sequence % 3 != 2:
        call()
    faults.plan = ["eio-dir-twice"]
    with pytest.warns(DurabilityWarning, match="cannot go on"):
        call()  # acknowledged: its record was synced before the checkpoint
    with pytest.raises(durable.EngineFailedError, match="rotation"):
        call()  # refused: nothing logged (sequence not advanced)
    monkeypatch.undo()
    deng.close()
    with DurableEngine.open(directory, backend="numpy") as again:
        assert again.sequence == sequence
        assert_matches(again, ref.advance(sequence), "after failed rotations")
        plan = durable.recover_plan(directory)
    assert plan["status"] == "ok" and plan["sequence"] == sequence


ROTATION_CHILD = textwrap.dedent("""
    import errno, os, random, signal, stat, sys, warnings
    from nap_gpu import durable
    {calls}
    directory, seed, twice = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "twice"
    rng = random.Random(seed)

    def die():
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    eng = durable.DurableEngine.open(directory, n={n}, seed={seed0}, snapshot_every=3, keep=2,
                                     backend="numpy")
    print("open", eng.sequence, flush=True)
    # From here on, each rotation may meet a real OS error at one of its moments.
    real_open, real_replace, real_fsync = os.open, os.replace, os.fsync
    fault = [None]

    def fake_replace(src, dst, *args, **kwargs):
        out = real_replace(src, dst, *args, **kwargs)
        if os.path.basename(os.fspath(src)).startswith(".wal-"):  # a new segment's rename
            r = rng.random()
            fault[0] = ("emfile-open" if r < 0.3 else "eio-dir" if r < 0.55 else
                        "emfile-dir" if r < 0.7 else
                        "eio-dir-twice" if r < 0.78 and twice else None)
            if fault[0]:
                print("inject", fault[0], flush=True)
        return out

    def fake_open(path, flags, *args, **kwargs):
        name = os.path.basename(os.fspath(path))
        if fault[0] == "emfile-open" and durable.format.SEG_RE.match(name) and flags == os.O_WRONLY:
            fault[0] = None
            raise OSError(errno.EMFILE, "Too many open files", os.fspath(path))
        if fault[0] == "emfile-dir" and os.path.isdir(path):
            fault[0] = None
            raise OSError(errno.EMFILE, "Too many open files", os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_fsync(fd):
        if fault[0] in ("eio-dir", "eio-dir-twice") and stat.S_ISDIR(os.fstat(fd).st_mode):
            fault[0] = "eio-dir" if fault[0] == "eio-dir-twice" else None
            raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    os.open, os.replace, os.fsync = fake_open, fake_replace, fake_fsync
    warnings.simplefilter("ignore", durable.DurabilityWarning)
    while True:
        try:
            apply_call(eng, make_call(eng.sequence + 1, {n}))
        except durable.EngineFailedError:
            print("failed 0", flush=True)
            die()
        print("ack", eng.sequence, flush=True)
""")

#: Figures of the last run of test_sigkill_after_failed_rotations (printed with -s).
ROTATION_FIGURES: dict = {}


def test_sigkill_after_failed_rotations(tmp_path):
    """Children acknowledge calls while rotations fail at random (EMFILE at the new segment's
    open or at the directory's, EIO at the directory fsync after the rename, once or twice)
    and are SIGKILLed at random moments (or, in every other round, kill themselves once a
    twice-failed rotation has failed the engine); after each kill the reopened state holds
    every acknowledged call, bit for bit. NAP_TEST_ROTATION_ROUNDS sets the rounds (10)."""
    directory = tmp_path / "state"
    rng = random.Random("rotation-faults")
    ref = Reference()
    recovered = rounds = acks = lost = 0
    injected: dict[str, int] = {}
    script = ROTATION_CHILD.format(calls=CALLS, n=N, seed0=SEED)
    for rounds in range(1, int(os.environ.get("NAP_TEST_ROTATION_ROUNDS", 10)) + 1):
        proc = subprocess.Popen([sys.executable, "-c", script, str(directory),
                                 str(rng.randrange(1 << 30)), "twice" if rounds % 2 else "once"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=child_env())
        timer = threading.Timer(rng.uniform(0.8, 2.0), proc.send_signal, (signal.SIGKILL,))
        timer.start()
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            timer.cancel()
        assert proc.returncode == -signal.SIGKILL, err
        acked = recovered
        for line in out.split("\n")[:-1]:  # whole lines only
            word, value = line.split()
            if word == "open":
                assert int(value) == recovered, "the child recovered another state"
            elif word == "ack":
                assert int(value) == acked + 1, out
                acked += 1
                acks += 1
            elif word == "inject":
                injected[value] = injected.get(value, 0) + 1
        with warnings_allowed():  # (n and seed: a child killed before it created the state)
            deng = DurableEngine.open(directory, n=N, seed=SEED, backend="numpy")
        with deng:
            lost += max(0, acked - deng.sequence)
            assert acked <= deng.sequence <= acked + 1, (rounds, acked, deng.sequence, out[-300:])
            assert_matches(deng, ref.advance(deng.sequence), f"round {rounds}")
            recovered = deng.sequence
    ROTATION_FIGURES.update(rounds=rounds, acknowledged=acks, injected=injected, lost=lost,
                            final_sequence=recovered, in_flight_kept=recovered - acks)
    print(f"\nrotation faults: {ROTATION_FIGURES}")
    assert lost == 0
    assert sum(injected.values()) >= 10 and len(injected) == 4, injected


# -- overlapping segments and accepting a loss ----------------------------------------------------
def segment_header(first: int) -> bytes:
    """A segment header (an independent writer of the format: docs/durability.md)."""
    head = struct.pack("<8sIIQI", b"NAPWAL\r\n", 1, 0, first, 0)
    return head + struct.pack("<I", zlib.crc32(head))


def nap_gpu_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nap_gpu.cli", *map(str, args)],
                          capture_output=True, text=True, env=child_env(), timeout=120)


def test_overlapping_segments_are_refused_and_reported(pristine, tmp_path):
    """Hand-built forks: (a) the trace the failed rotation used to leave, wal-31 holding
    31..40 beside an empty wal-37 (recovery started from wal-37 and silently lost 37..40);
    (b) wal-39 holding 39..40 again beside wal-37 holding 37..40; (c) an older segment whose
    intact header names another first sequence. Each is refused by open and reported by
    `nap-gpu recover`, naming the files; accept_loss then opens (a) and (b) losing nothing
    that (a)'s empty segment or (b)'s duplicate held."""
    segs = sorted(pristine[0].glob("wal-*.log"))
    w25, w31, w37 = (s.name for s in segs)
    records = (pristine[0] / w37).read_bytes()[32:]
    layout = segment_layout(pristine[0] / w37)

    a = tmp_path / "a"
    shutil.copytree(pristine[0], a)
    with open(a / w31, "ab") as fh:
        fh.write(records)
    (a / w37).write_bytes(segment_header(37))
    b = tmp_path / "b"
    shutil.copytree(pristine[0], b)
    (b / durable.format.seg_name(39)).write_bytes(segment_header(39) + records[layout[2][0] - 32:])
    c = tmp_path / "c"
    shutil.copytree(pristine[0], c)
    data = bytearray((c / w25).read_bytes())
    data[:32] = segment_header(26)
    (c / w25).write_bytes(bytes(data))

    for directory, names in ((a, (w31, w37)), (b, (w37, durable.format.seg_name(39))), (c, (w25,))):
        before = {p.name: p.read_bytes() for p in directory.iterdir()}
        with pytest.raises(RecoveryError) as caught:
            DurableEngine.open(directory, backend="numpy")
        assert all(name in str(caught.value) for name in names), str(caught.value)
        assert ("overlap" if directory != c else "out of order") in str(caught.value)
        done = nap_gpu_cli("recover", directory)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "status: error" in done.stdout and all(name in done.stdout for name in names)
        assert "--accept-loss" in done.stdout
        assert {p.name: p.read_bytes() for p in directory.iterdir()} == before  # a dry run
    for directory in (a, b):
        result = durable.accept_loss(directory)
        assert result["plan"]["status"] == "ok" and len(result["dropped"]) == 1
        with DurableEngine.open(directory, backend="numpy") as deng:
            check_state((deng.sequence, deng.to_numpy(), deng.params, deng.iteration), 40,
                        str(directory))
    assert result["dropped"][0]["dropped_sequences"] == {"from": 39, "to": 40}  # b's copy
    assert (b / f"{w37}.dropped-from-{layout[2][0]}").read_bytes() == records[layout[2][0] - 32:]


def test_accept_loss_opens_at_the_newest_consistent_point(pristine, tmp_path, caplog):
    """A corrupt record in the log: open refuses, and so does the default dry run (which
    says what --accept-loss would drop); accept_loss cuts the log there, keeps the tail as
    evidence, logs and journals the sequences dropped, and the state then opens at the
    record before it, bit for bit, and goes on."""
    seg = sorted(pristine[0].glob("wal-*.log"))[-1]
    layout = segment_layout(seg)  # records 37..40
    directory = damaged_copy(pristine, tmp_path / "corrupt", seg.name, flip(layout[1][0] + 30))
    tail = (directory / seg.name).read_bytes()[layout[1][0]:]
    with pytest.raises(RecoveryError, match=f"offset {layout[1][0]}"):
        DurableEngine.open(directory, backend="numpy")
    plan = durable.recover_plan(directory)
    assert plan["status"] == "error" and plan["accept_loss"].startswith("drop sequences 38..40")
    with caplog.at_level(logging.WARNING, logger="nap_gpu.durable"):
        result = durable.accept_loss(directory)
    (entry,) = result["dropped"]
    assert entry["dropped_sequences"] == {"from": 38, "to": 40}
    assert f"offset {layout[1][0]}" in entry["refused_because"]
    evidence = directory / f"{seg.name}.dropped-from-{layout[1][0]}"
    assert entry["evidence"] == [evidence.name] and evidence.read_bytes() == tail
    journal = [json.loads(line) for line in
               (directory / durable.LOSS_JOURNAL).read_text().splitlines()]
    assert journal == [entry]
    assert [json.loads(r.getMessage()) for r in caplog.records if r.name == "nap_gpu.durable"] \
        == [entry]
    assert result["plan"]["status"] == "ok" and result["plan"]["sequence"] == 37
    with DurableEngine.open(directory, backend="numpy") as deng:
        check_state((deng.sequence, deng.to_numpy(), deng.params, deng.iteration), 37, "cut")
        for i in range(38, 43):
            apply_call(deng, make_call(i, N))
    with DurableEngine.open(directory, backend="numpy") as deng:
        check_state((deng.sequence, deng.to_numpy(), deng.params, deng.iteration), 42, "on")
    assert durable.accept_loss(directory)["dropped"] == []  # nothing refused: nothing done


def test_accept_loss_past_a_damaged_snapshot_and_where_it_cannot(tmp_path):
    """With wal_retention="newest" a damaged newest snapshot cannot be recovered past (the
    log after the older ones is gone): accept_loss drops the log after it and the snapshot,
    and opens at the newest older snapshot. With every snapshot damaged there is no
    consistent point: it refuses and changes nothing. While an engine is open it refuses."""
    build_state(tmp_path / "p", 40, snapshot_every=6, keep=3, wal_retention="newest")
    newest = sorted((tmp_path / "p").glob("snap-*.nap"))[-1]
    directory = damaged_copy((tmp_path / "p",), tmp_path / "d", newest.name, truncate(100))
    with pytest.raises(RecoveryError, match=newest.name):
        DurableEngine.open(directory, backend="numpy")
    result = durable.accept_loss(directory)
    lost = [e["dropped_sequences"] for e in result["dropped"]]
    assert lost == [{"from": 37, "to": 40}, {"from": 31, "to": 36}], result["dropped"]
    assert (directory / (newest.name + ".damaged")).exists()
    with DurableEngine.open(directory, backend="numpy") as deng:
        check_state((deng.sequence, deng.to_numpy(), deng.params, deng.iteration), 30, "fell")
        with pytest.raises(RuntimeError, match="LOCK"):
            durable.accept_loss(directory)
    for snap in (tmp_path / "p").glob("snap-*.nap"):
        snap.write_bytes(snap.read_bytes()[:-1])
    before = {p.name: p.read_bytes() for p in (tmp_path / "p").iterdir()}
    with pytest.raises(RecoveryError, match="cannot get past"):
        durable.accept_loss(tmp_path / "p")
    assert {p.name: p.read_bytes() for p in (tmp_path / "p").iterdir()} == before


# -- decay(k) beyond every fixpoint ----------------------------------------------------------------
def decay_records(directory) -> list[int]:
    """The k of every decay record in the log (an independent reader: kind 4, u64 k)."""
    out = []
    for seg in sorted(pathlib.Path(directory).glob("wal-*.log")):
        data = seg.read_bytes()
        for offset, _ in segment_layout(seg):
            if data[offset + 24] == 4:
                out.append(struct.unpack_from("<Q", data, offset + 28)[0])
    return out


def test_decay_rounds_bound_is_sound():
    """No float32 weight moves after decay_rounds_bound(d) rounds (a quarter of a million
    starting weights across [0, 1] and every power of two's neighbours, rounds counted until
    the fixpoint), and 1/d + 1 rounds would not be enough: d = 1.4 * 2^-24 takes 1.18/d."""
    starts = np.arange(0, 0x3F800001, 1 << 12, dtype=np.uint32)
    near = (np.arange(-127, 1, dtype=np.int64)[:, None] * (1 << 23) + 0x3F800000
            + np.arange(-3, 4)[None, :]).ravel()
    starts = np.concatenate([starts, near[(near >= 0) & (near <= 0x3F800000)].astype(np.uint32),
                             np.array([0x7FC00000, 0x3FC00000, 0x80000000], np.uint32)])
    for d in (1.0, 0.999, 0.3, 0.02, 0.0123, 1e-3):
        bound = durable.decay_rounds_bound(d)
        w, d32 = starts.view(np.float32).copy(), np.float32(d)
        with np.errstate(invalid="ignore"):
            for rounds in range(bound + 1):  # noqa: B007 - read after the loop
                nxt = np.minimum(np.float32(1), np.maximum(np.float32(0), w - d32)) + np.float32(0)
                nxt[np.isnan(w)] = w[np.isnan(w)]  # NaN passes through the law's clamp
                if (nxt.view(np.uint32) == w.view(np.uint32)).all():
                    break
                w = nxt
        assert rounds < bound, (d, rounds, bound)  # round `rounds` changed nothing
    assert durable.decay_rounds_bound(0.0) == 1
    assert durable.decay_rounds_bound(1e-9) == 2 + 3 * 2**24
    if nap.available_backends()["cpp"] is None:
        d = 1.4 * 2.0**-24
        bound = durable.decay_rounds_bound(d)
        naive = int(np.ceil(1 / float(np.float32(d)))) + 1
        result = {}
        for k in (naive, bound, 2**64 - 1):
            eng = nap.Engine(1, backend="cpp", init=np.ones(1, np.float32),
                             params=nap.Params(lr=0.05, gate=0.5, decay=d))
            eng.decay(k)
            result[k] = eng.to_numpy()
        assert result[naive][0] > 0 and result[bound][0] == 0 == result[2**64 - 1][0]


def test_huge_decay_is_capped_logged_and_replayed_in_bounded_time(tmp_path, backend):
    """decay(2**62) under decay 1e-9 (it hung live and on every reopen before the fixpoint
    stop) and decay(2**64 - 1): logged as k capped to decay_rounds_bound (the same weights),
    bit-identical to an in-memory Engine; a child process reopens the state well within its
    timeout, on this backend and on numpy. decay(2**64) (struct.error before) is the
    ValueError Engine.decay gives on every backend, and logs nothing."""
    params = nap.Params(lr=0.05, gate=0.5, decay=1e-9)
    init = np.full(256, 0.5, np.float32)  # 0.5 never moves under 1e-9; the first 8 do
    init[:8] = [0.0, 1.0, 3e-6, 1e-7, 1.4e-45, 2e-9, 1e-9, 5e-6]
    # The step keeps every weight above 2^-5 (where 1e-9 moves nothing): a weight just below
    # it would take ~2.5e7 rounds, minutes on numpy, live as on replay.
    q = np.random.default_rng(3).random(init.size, dtype=np.float32)
    q[:8] = 1.0
    calls = [("decay", 2**62), ("step", q),
             ("params", nap.Params(lr=0.05, gate=0.5, decay=1e-3)),  # the cap follows it
             ("decay", 2**64 - 1), ("decay", 5)]
    ref = nap.Engine(init.size, backend="numpy", init=init, params=params)
    with DurableEngine.open(tmp_path / "s", n=init.size, init=init, params=params,
                            backend=backend, snapshot_every=0) as deng:
        for call in calls:
            apply_call(deng, call)
            apply_call(ref, call)
        before, sequence = deng.to_numpy(), deng.sequence
        for k in (2**64, 2**100):
            with pytest.raises(ValueError, match=r"\bk\b.*beyond 2\*\*64 - 1"):
                deng.decay(k)
        assert deng.sequence == sequence == len(calls)
        assert_same_bits(deng.to_numpy(), before, "after refused decays")
        assert_matches(deng, ref, "live")
    cap, cap3 = durable.decay_rounds_bound(1e-9), durable.decay_rounds_bound(1e-3)
    assert (cap, cap3) == (2 + 3 * 2**24, 1501)  # float32(1e-3) is a little above 1e-3
    assert decay_records(tmp_path / "s") == [cap, cap3, 5]
    for b in (backend, "numpy"):
        script = textwrap.dedent(f"""
            import numpy as np
            from nap_gpu import durable
            with durable.DurableEngine.open({str(tmp_path / "s")!r}, backend={b!r}) as eng:
                np.save({str(tmp_path / f"w-{b}.npy")!r}, eng.to_numpy())
                print(eng.sequence, eng.iteration)
        """)
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env=child_env(), timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [str(len(calls)), "1"]  # sequence, iteration
        assert_same_bits(np.load(tmp_path / f"w-{b}.npy"), ref.to_numpy(), f"reopened on {b}")
        assert time.monotonic() - start < 60
    for b, reason in nap.available_backends().items():  # every backend agrees
        if reason is None:
            eng = nap.Engine(init.size, backend=b, init=init, params=params)
            eng.decay(2**64 - 1)
            twin = nap.Engine(init.size, backend="numpy", init=init, params=params)
            twin.decay(cap)
            assert_same_bits(eng.to_numpy(), twin.to_numpy(), f"Engine.decay(2**64 - 1) on {b}")
            with pytest.raises(ValueError, match=r"\bk\b"):
                eng.decay(2**64)
