"""Snapshots: real files, real processes. Round trips continue bit for bit on every backend;
every kind of damage is a clear SnapshotError naming the file; a failed save leaves the
previous file intact."""

from __future__ import annotations

import json
import os
import pathlib
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import nap_gpu as nap
from nap_gpu import snapshot
from nap_gpu.cli import main as cli_main

from conftest import BACKENDS, assert_same_bits

N = 10_007


def trained(backend: str, n: int = N, steps: int = 7) -> tuple[nap.Engine, nap.ReferenceWorkload]:
    eng = nap.Engine(n, backend=backend, seed=5, params=nap.Params(lr=0.07, gate=0.45, decay=0.01))
    workload = nap.ReferenceWorkload(n, sigma=0.1, seed=5)
    for _ in range(steps):
        eng.step(workload.next_quality())
    eng.update(np.arange(0, n, 3), 0.9)
    return eng, workload


@pytest.mark.parametrize("saver", BACKENDS)
@pytest.mark.parametrize("loader", BACKENDS)
def test_round_trip_continues_bit_for_bit(tmp_path, saver, loader):
    eng, workload = trained(saver)
    path = eng.save(tmp_path / "pop.nap")
    assert path.exists() and not list(tmp_path.glob(".*tmp*"))
    back = nap.load(path, backend=loader)
    assert back.backend == loader and back.n == N
    assert back.params == eng.params and back.iteration == eng.iteration
    assert_same_bits(back.to_numpy(), eng.to_numpy(), "loaded weights")
    for _ in range(3):  # both go on with the same inputs: same bits
        q = workload.next_quality().copy()
        eng.step(q)
        back.step(q)
    eng.decay(2)
    back.decay(2)
    assert_same_bits(back.to_numpy(), eng.to_numpy(), f"saved on {saver}, continued on {loader}")


def test_file_is_standard_safetensors(tmp_path):
    safetensors = pytest.importorskip("safetensors.numpy", reason="safetensors not installed")
    eng, _ = trained("numpy")
    eng.save(tmp_path / "pop.nap")
    tensors = safetensors.load_file(str(tmp_path / "pop.nap"))
    assert set(tensors) == {"weights"}
    assert_same_bits(tensors["weights"], eng.to_numpy(), "read by the safetensors package")


def test_metadata(tmp_path):
    eng, _ = trained("numpy")
    info = snapshot.inspect(eng.save(tmp_path / "pop.nap"))
    assert info.checksum_ok and info.format_version == snapshot.FORMAT_VERSION
    assert (info.n, info.iteration, info.backend) == (N, 7, "numpy")
    assert info.params == eng.params and info.nap_gpu_version == nap.__version__
    assert info.data_offset % 64 == 0 and info.created.endswith("+00:00")


def test_saving_over_a_snapshot_replaces_it(tmp_path):
    eng, workload = trained("numpy")
    path = eng.save(tmp_path / "pop.nap")
    eng.step(workload.next_quality())
    eng.save(path)
    assert nap.load(path).iteration == eng.iteration


def _damaged(tmp_path, change) -> str:
    eng, _ = trained("numpy", n=1000)
    path = eng.save(tmp_path / "pop.nap")
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(change(data, snapshot.inspect(path).data_offset)))
    return str(path)


def _flip(offset):
    def change(data, data_offset):
        data[offset(data_offset)] ^= 0x01
        return data
    return change


@pytest.mark.parametrize("where, message", [
    (lambda off: off, "checksum mismatch"),            # first weight byte
    (lambda off: off + 2001, "checksum mismatch"),     # a middle weight byte
    (lambda off: off + 3999, "checksum mismatch"),     # last weight byte
    (lambda off: 0, "not a nap snapshot|header"),      # header length
    (lambda off: 20, "header"),                         # inside the JSON
], ids=["first-weight", "middle-weight", "last-weight", "length-prefix", "json"])
def test_flipped_bytes_are_reported(tmp_path, where, message):
    path = _damaged(tmp_path, _flip(where))
    with pytest.raises(nap.SnapshotError, match=message) as info:
        nap.load(path)
    assert path in str(info.value)
    if "checksum" in message:
        assert snapshot.inspect(path).checksum_ok is False


@pytest.mark.parametrize("keep", [0, 5, 8, 100, -1, -4000])
def test_truncated_files_are_reported(tmp_path, keep):
    path = _damaged(tmp_path, lambda data, off: data[:keep] if keep >= 0 else data[:len(data) + keep])
    with pytest.raises(nap.SnapshotError, match="too short|not a nap snapshot|header|expected"):
        nap.load(path)


def test_extended_file_is_reported(tmp_path):
    path = _damaged(tmp_path, lambda data, off: data + b"\0" * 4)
    with pytest.raises(nap.SnapshotError, match="expected"):
        nap.load(path)


def _rewrite_metadata(tmp_path, **changes) -> str:
    eng, _ = trained("numpy", n=100)
    path = eng.save(tmp_path / "pop.nap")
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    header["__metadata__"].update(changes)
    text = json.dumps(header).encode()
    text += b" " * (length - len(text))
    assert len(text) == length
    path.write_bytes(raw[:8] + text + raw[8 + length:])
    return str(path)


@pytest.mark.parametrize("field, value", [("iteration", "8"), ("lr", "0x3d4ccccc"),
                                          ("sequence", "1"), ("backend", "cpp")])
def test_damaged_metadata_fails_the_checksum(tmp_path, field, value):
    path = _rewrite_metadata(tmp_path, **{field: value})
    with pytest.raises(nap.SnapshotError, match="checksum mismatch"):
        nap.load(path)
    assert snapshot.inspect(path).checksum_ok is False


def test_future_format_version_is_refused_with_the_version(tmp_path):
    future = snapshot.FORMAT_VERSION + 1
    path = _rewrite_metadata(tmp_path, format_version=str(future))
    with pytest.raises(nap.SnapshotError,
                       match=rf"format version {future}.*up to {snapshot.FORMAT_VERSION}.*upgrade"):
        nap.load(path)


def test_format_version_1_files_are_still_read():
    """A file written by format version 1 (CRC-32 checksum), committed as written then."""
    path = pathlib.Path(__file__).parent / "data" / "snapshot-v1.nap"
    eng = nap.load(path)
    assert eng.iteration == 12 and eng.params == nap.Params(lr=0.07, gate=0.45, decay=0.01)
    assert_same_bits(eng.to_numpy(), np.arange(100, dtype=np.float32) / np.float32(99), "v1 weights")
    info = snapshot.inspect(path)
    assert info.format_version == 1 and info.checksum.startswith("crc32:") and info.checksum_ok
    assert info.sequence == 34 and info.backend == "cpp"


def test_new_files_carry_crc32c(tmp_path):
    eng, _ = trained("numpy", n=100)
    info = snapshot.inspect(eng.save(tmp_path / "pop.nap"))
    assert info.checksum.startswith("crc32c:") and info.checksum_ok
    assert info.format_version == snapshot.FORMAT_VERSION == 2


# Several read chunks (4 MiB = 1 Mi weights each): the pipelined check must find the first
# fault wherever it lies, and only after the checksum has held.
MULTI_CHUNK = 2_500_000


@pytest.mark.parametrize("faults, first", [
    ({2_000_001: 1.5}, 2_000_001),
    ({2_400_000: np.nan, 2_000_000: -0.25}, 2_000_000),
    ({5: np.inf, MULTI_CHUNK - 1: 2.0}, 5),
    ({MULTI_CHUNK - 1: -1e-30}, MULTI_CHUNK - 1),
])
def test_weights_outside_the_unit_interval_are_refused(tmp_path, faults, first):
    w = np.full(MULTI_CHUNK, 0.5, np.float32)
    for index, value in faults.items():
        w[index] = value
    path = snapshot.write(tmp_path / "bad.nap", w, nap.Params())
    assert snapshot.inspect(path).checksum_ok  # a sound file holding unsound weights
    with pytest.raises(nap.SnapshotError, match=rf"weight {first} = .* is not in \[0, 1\]"):
        nap.load(path)


def test_negative_zero_is_loaded_as_positive_zero(tmp_path):
    w = np.full(MULTI_CHUNK, 0.25, np.float32)
    w[[0, 1_500_000, MULTI_CHUNK - 1]] = -0.0
    eng = nap.load(snapshot.write(tmp_path / "z.nap", w, nap.Params()))
    assert_same_bits(eng.to_numpy(), np.where(w == 0, np.float32(0), w), "-0.0 loaded")


def test_checksum_fault_is_reported_before_a_range_fault(tmp_path):
    w = np.full(MULTI_CHUNK, 0.5, np.float32)
    path = snapshot.write(tmp_path / "pop.nap", w, nap.Params())
    data = bytearray(path.read_bytes())
    offset = snapshot.inspect(path).data_offset + 4 * 1_200_000
    data[offset + 3] = 0x7F  # the weight becomes a huge float: out of range and a bad checksum
    path.write_bytes(bytes(data))
    with pytest.raises(nap.SnapshotError, match="checksum mismatch"):
        nap.load(path)


def test_foreign_safetensors_file_is_refused(tmp_path):
    path = _rewrite_metadata(tmp_path, format="something-else")
    with pytest.raises(nap.SnapshotError, match="not a nap snapshot"):
        nap.load(path)


def test_failed_save_keeps_the_previous_snapshot(tmp_path):
    """A file-size limit makes the write fail midway (as a full disk would): the call raises,
    the old snapshot is untouched, no temporary file is left, and the engine still works."""
    eng, _ = trained("numpy", n=200_000)
    path = eng.save(tmp_path / "pop.nap")
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import resource, signal, numpy as np, nap_gpu as nap
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of a killing signal
        eng = nap.load({str(path)!r})
        eng.step(0.9)
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))  # the soft limit only
        try:
            eng.save({str(path)!r})
        except OSError as exc:
            print("raised", exc.errno)
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        eng.step(0.1)                                    # the engine keeps working
        eng.save({str(tmp_path / "after.nap")!r})      # and saves once space returns
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "raised 27" in done.stdout  # EFBIG
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["after.nap", "pop.nap"]
    assert nap.load(tmp_path / "after.nap").iteration == eng.iteration + 2


@pytest.mark.parametrize("fault", ["open", "fsync"])
def test_a_failed_directory_fsync_is_raised_never_skipped(tmp_path, monkeypatch, fault):
    """The rename is durable only once its directory is synced: when the directory cannot be
    opened (EMFILE) or synced (EIO), the save says so instead of returning as if it were."""
    import errno  # noqa: PLC0415
    eng, _ = trained("numpy", n=100)
    real_open, real_fsync, directory_fds = os.open, os.fsync, set()

    def fake_open(path, flags, *args, **kwargs):
        if pathlib.Path(path) == tmp_path:
            if fault == "open":
                raise OSError(errno.EMFILE, "Too many open files", os.fspath(path))
            fd = real_open(path, flags, *args, **kwargs)
            directory_fds.add(fd)
            return fd
        return real_open(path, flags, *args, **kwargs)

    def fake_fsync(fd):
        if fd in directory_fds:
            raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "fsync", fake_fsync)
    with pytest.raises(OSError) as raised:
        eng.save(tmp_path / "pop.nap")
    assert raised.value.errno == (errno.EMFILE if fault == "open" else errno.EIO)


def test_missing_directory_is_an_error_and_changes_nothing(tmp_path):
    eng, _ = trained("numpy", n=100)
    before = eng.to_numpy()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        eng.save(tmp_path / "missing" / "pop.nap")
    assert_same_bits(eng.to_numpy(), before, "engine after a failed save")


def test_cli_inspect(tmp_path, capsys):
    eng, _ = trained("numpy", n=100)
    path = eng.save(tmp_path / "pop.nap")
    assert cli_main(["snapshot", "inspect", str(path)]) == 0
    assert "checksum OK" in capsys.readouterr().out
    damaged = _damaged(tmp_path, _flip(lambda off: off + 7))
    assert cli_main(["snapshot", "inspect", damaged]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    assert cli_main(["snapshot", "inspect", str(tmp_path / "none.nap")]) == 2
    os.remove(damaged)
