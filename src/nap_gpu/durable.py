"""Durable engines: a write-ahead log plus periodic snapshots in one directory.

``DurableEngine.open("state/", n=...)`` creates the state on first use and recovers it on every
later open: the newest valid snapshot, then a replay of the log records after its sequence
number, through the same Engine operations the live calls used, so the weights are bit for bit
those the last acknowledged call left. Every mutating call is validated first (a rejected call
logs nothing and changes nothing), then appended to the log as one checksummed record, then
applied; a failed append raises and applies nothing. See docs/durability.md.

Directory layout::

    LOCK                          an flock held while an engine has the directory open
    snap-<sequence:020d>-<meta crc32:08x>.nap
                                  nap snapshots (nap_gpu.snapshot), named by the log sequence
                                  they cover and a CRC-32 of the state-relevant metadata
    wal-<first sequence:020d>.log log segments, named by the sequence of their first record

Segment: a 32-byte header ``b"NAPWAL\\r\\n"``, format version u32, flags u32, first sequence
u64, reserved u32 (0), CRC-32 of the preceding 28 bytes u32; then records. Record: body length
u64, CRC-32 of the body u32, CRC-32 of the preceding 12 bytes u32; body = sequence u64, kind u8,
flags u8 (bit 0: payload data zlib-compressed), reserved u16, payload. All little-endian.
"""

from __future__ import annotations

import fractions
import json
import logging
import numbers
import os
import pathlib
import re
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, SupportsFloat

import numpy as np

from . import __version__, _inputs, backends, snapshot
from ._files import atomic_file, fsync_directory, write_all
from .engine import Engine
from .monitor import WritesStoppedError
from .params import Params

if TYPE_CHECKING:
    from ._types import ArrayInput, BackendArray, HostWeights, InitialWeights, Labels, StrPath
    from .metrics import Metrics

    #: A record's parts, written in order (the header, then the payload's pieces).
    _Parts = Sequence[bytes | memoryview]

try:  # POSIX: one process per state directory
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]  # no fcntl module to type: mypy checks POSIX

__all__ = ["DurabilityWarning", "DurableEngine", "LOG_FORMAT_VERSION", "RecoveryError",
           "EngineFailedError", "accept_loss", "decay_rounds_bound", "recover_plan",
           "recover_report"]

log = logging.getLogger("nap_gpu.durable")

LOG_FORMAT_VERSION = 1
_SEG_MAGIC = b"NAPWAL\r\n"
_SEG_HEADER = struct.Struct("<8sIIQI")  # magic, version, flags, first sequence, reserved
_SEG_HEADER_SIZE = _SEG_HEADER.size + 4  # + CRC-32 of the above
_REC_HEADER = struct.Struct("<QII")  # body length, body CRC-32, CRC-32 of the first 12 bytes
_BODY_HEAD = struct.Struct("<QBBH")  # sequence, kind, flags, reserved
_U64 = struct.Struct("<Q")

STEP, STEP_SCALAR, UPDATE, DECAY, PARAMS = 1, 2, 3, 4, 5
_KIND_NAMES = {STEP: "step", STEP_SCALAR: "step(scalar)", UPDATE: "update", DECAY: "decay",
               PARAMS: "params"}
_ZLIB = 0x01
#: Payloads below this are never compressed: a small record costs one page-cache copy (or one
#: disk block) raw, while zlib costs ~0.1 ms per 10 KB. Measured on 1k-event batches: trying
#: zlib made a group-committed update 18x slower than no log; skipping it, 3x.
_COMPRESS_MIN = 1 << 20
_SAMPLE = 1 << 16
_LOCK_WAIT = 2.0  # seconds open waits for a LOCK held by someone else

_SNAP_RE = re.compile(r"^snap-(\d{20})-([0-9a-f]{8})\.nap$")
_SEG_RE = re.compile(r"^wal-(\d{20})\.log$")
_SEG_TMP_RE = re.compile(r"^\.wal-\d{20}\.log\.tmp-\d+$")
_SNAP_TMP_RE = re.compile(r"^\.snap-\d{20}-[0-9a-f]{8}\.nap\.tmp-\d+$")
#: What ``accept_loss`` did, one JSON object a line, kept in the state directory.
LOSS_JOURNAL = "accepted-losses.log"


class DurabilityWarning(UserWarning):
    """Recovery did something the user should know about (a torn record dropped, a damaged
    snapshot bypassed) or an automatic snapshot could not be written."""


class RecoveryError(ValueError):
    """The state cannot be recovered without losing acknowledged data (or it is from a newer
    nap_gpu); the message names the file and the byte offset at fault."""

    def __init__(self, message: str, path: StrPath | None = None, offset: int | None = None, *,
                 repair: dict | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.offset = offset
        self.fallback = False
        # what accept_loss would drop to get past this (None: nothing can: a newer format,
        # no usable snapshot)
        self.repair = repair

    @classmethod
    def fallback_error(cls, *args: Any, **kwargs: Any) -> RecoveryError:
        exc = cls(*args, **kwargs)
        exc.fallback = True  # already says which snapshot is damaged
        return exc


class _UnsnapshotableWeights(ValueError):
    """The weights are not in [0, 1] (NaN included): a snapshot of them would be rejected."""


class EngineFailedError(RuntimeError):
    """The log could not be made consistent after an I/O error (fsync or rollback failed):
    the engine refuses further calls; close it and open the directory again."""


# -- names ----------------------------------------------------------------------------------
def _meta_crc(n: int, params: Params, iteration: int, sequence: int) -> int:
    return zlib.crc32(struct.pack("<QIIIQQ", n, *params.to_bits(), iteration, sequence))


def _snap_name(sequence: int, n: int, params: Params, iteration: int) -> str:
    return f"snap-{sequence:020d}-{_meta_crc(n, params, iteration, sequence):08x}.nap"


def _seg_name(first: int) -> str:
    return f"wal-{first:020d}.log"


def _list(directory: pathlib.Path
          ) -> tuple[list[tuple[int, int, pathlib.Path]], list[tuple[int, pathlib.Path]]]:
    """(snapshots [(sequence, meta crc, path)] newest first, segments [(first, path)] oldest first)."""
    snaps: list[tuple[int, int, pathlib.Path]] = []
    segs: list[tuple[int, pathlib.Path]] = []
    for entry in os.scandir(directory):
        if m := _SNAP_RE.match(entry.name):
            snaps.append((int(m.group(1)), int(m.group(2), 16), pathlib.Path(entry.path)))
        elif m := _SEG_RE.match(entry.name):
            segs.append((int(m.group(1)), pathlib.Path(entry.path)))
    snaps.sort(key=lambda s: s[0], reverse=True)
    segs.sort()
    return snaps, segs


def _sync(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


# -- decay(k) -------------------------------------------------------------------------------
def decay_rounds_bound(decay: SupportsFloat) -> int:
    """A number of rounds after which decay(k) changes nothing more: ``decay(k)`` and
    ``decay(min(k, decay_rounds_bound(d)))`` give the same bits for every weight, so a
    durable engine logs the smaller k and a replay costs at most this many rounds.

    With d the float32 decay (0 < d <= 1) the bound is 2 + min(floor(3 / (2 d)), 3 * 2^24)
    (exactly, in rationals); d = 0 is the clamp: 1 round. Why (docs/durability.md):
    round 1 clamps every weight into [0, 1] (NaN stays NaN); after it a weight w moves only
    if d is at least half the float32 spacing below it, which is >= w 2^-24, so only
    w <= 2^25 d moves; a round that moves w and lands above 0 lowers it by at least 2d/3
    (by at least the spacing u below w, and by at least d - u/2 after rounding to nearest:
    max(u, d - u/2) >= 2d/3); a round that lands on 0 is the last. So at most
    1 + floor(min(1, 2^25 d) * 3 / (2 d)) rounds after the first move anything. (1/d rounds
    do not suffice: d = 1.4 * 2^-24 takes 14,100,130 rounds from w = 1, 1.18 / d.)
    """
    d = fractions.Fraction(float(np.float32(decay)))
    if d <= 0:
        return 1
    return 2 + min(int(fractions.Fraction(3, 2) / d), 3 << 24)


# -- records --------------------------------------------------------------------------------
def _maybe_compress(data: bytes | memoryview, enabled: bool) -> tuple[bytes | memoryview, int]:
    """(payload data, flags): zlib when a sample shows it pays (quantised or repeated values,
    sorted ids), raw otherwise (random float qualities barely compress)."""
    if not enabled or len(data) < _COMPRESS_MIN:
        return data, 0
    sample = data[:_SAMPLE]
    if len(zlib.compress(sample, 1)) > 0.8 * len(sample):
        return data, 0
    packed = zlib.compress(data, 1)
    if len(packed) > 0.9 * len(data):
        return data, 0
    return packed, _ZLIB


def _encode(sequence: int, kind: int, flags: int, parts: _Parts) -> list[bytes | memoryview]:
    body_len = _BODY_HEAD.size + sum(len(p) for p in parts)
    head = _BODY_HEAD.pack(sequence, kind, flags, 0)
    crc = zlib.crc32(head)
    for p in parts:
        crc = zlib.crc32(p, crc)
    first = struct.pack("<QI", body_len, crc)
    return [first + struct.pack("<I", zlib.crc32(first)) + head, *parts]


def _decode(kind: int, flags: int, payload: bytes) -> Any:
    """The call a record describes, as Engine arguments; raises ValueError if malformed."""
    def data(expected: int, offset: int) -> bytes:
        raw = payload[offset:]
        if flags & _ZLIB:
            raw = zlib.decompress(raw)
        if len(raw) != expected:
            raise ValueError(f"payload holds {len(raw)} bytes, expected {expected}")
        return raw
    if kind == STEP:
        (n,) = _U64.unpack_from(payload)
        return np.frombuffer(data(4 * n, 8), "<f4").astype(np.float32)
    if kind == STEP_SCALAR:
        return float(np.frombuffer(data(4, 0), "<f4")[0])
    if kind == UPDATE:
        (m,) = _U64.unpack_from(payload)
        raw = data(12 * m, 8)
        return (np.frombuffer(raw[:8 * m], "<i8").astype(np.int64),
                np.frombuffer(raw[8 * m:], "<f4").astype(np.float32))
    if kind == DECAY:
        (k,) = _U64.unpack_from(data(8, 0))
        return int(k)
    if kind == PARAMS:
        return Params.from_bits(struct.unpack("<3I", data(12, 0)))
    raise ValueError(f"unknown record kind {kind}")


def _apply(eng: Engine, kind: int, args: Any) -> None:
    """Apply one decoded call: the live path and replay both come here."""
    if kind in (STEP, STEP_SCALAR):
        eng.step(args, check_finite=False)
    elif kind == UPDATE:
        eng.update(args[0], args[1], check_finite=False)
    elif kind == DECAY:
        eng.decay(args)
    elif kind == PARAMS:
        eng.params = args


# -- the log writer -------------------------------------------------------------------------
class _SegmentLeftBehind(OSError):
    """A new segment could be neither used nor removed durably: appending to the old one
    would put records where recovery does not read them (it starts at the newest segment
    whose first sequence is not past the snapshot's), so the log must stop."""


def _withdraw_segment(path: pathlib.Path, cause: OSError) -> None:
    """Remove a new segment that will not be used, durably; raise _SegmentLeftBehind when
    that fails (the segment may then survive a crash beside records recovery would skip)."""
    try:
        path.unlink(missing_ok=True)
        fsync_directory(path.parent)
    except OSError as again:
        raise _SegmentLeftBehind(cause.errno, f"{path} was created but cannot be used ({cause}) "
                                 f"nor durably removed ({again})") from cause


def _create_segment(directory: pathlib.Path, first: int) -> pathlib.Path:
    """A new empty segment, created atomically (temporary file, fsync, rename, fsync dir).
    On failure no segment named ``first`` is left (or _SegmentLeftBehind is raised)."""
    path = directory / _seg_name(first)
    head = _SEG_HEADER.pack(_SEG_MAGIC, LOG_FORMAT_VERSION, 0, first, 0)
    with atomic_file(path, sync_directory=False) as fh:
        write_all(fh.fileno(), head + struct.pack("<I", zlib.crc32(head)))
    try:
        fsync_directory(directory)
    except OSError as exc:  # its name may not survive a power loss: records there could vanish
        _withdraw_segment(path, exc)
        raise
    return path


class _Log:
    """The active segment: appends, fsync policy, rotation, rollback of a failed append."""

    def __init__(self, directory: pathlib.Path, first: int, *, fsync: str, group_ms: float,
                 reuse: bool) -> None:
        self.directory = directory
        self.fsync = fsync
        self.lock = threading.Lock()
        self.error: BaseException | None = None  # a background fsync failure
        self.dirty = False
        self.fd = -1
        # callable(seconds) told of every fsync of the log (monitoring)
        self.on_sync: Callable[[float], object] | None = None
        self._open(first, reuse)
        self._stop = threading.Event()
        self._thread = None
        if fsync == "group":
            self._thread = threading.Thread(target=self._flusher, args=(group_ms / 1000.0,),
                                            name="nap-wal-flusher", daemon=True)
            self._thread.start()

    def _open(self, first: int, reuse: bool) -> None:
        path = self.directory / _seg_name(first)
        if not reuse:
            _create_segment(self.directory, first)
        fd = os.open(path, os.O_WRONLY)
        self.offset = os.lseek(fd, 0, os.SEEK_END)
        old, self.fd, self.path, self.first = self.fd, fd, path, first
        if old >= 0:
            os.close(old)

    def _fsync(self) -> None:
        start = time.perf_counter()
        _sync(self.fd)
        if self.on_sync is not None:
            self.on_sync(time.perf_counter() - start)

    def _flusher(self, period: float) -> None:
        while not self._stop.wait(period):
            self.sync(background=True)

    def sync(self, background: bool = False) -> None:
        with self.lock:
            if not self.dirty or self.fd < 0 or self.error is not None:
                return
            try:
                self._fsync()
                self.dirty = False
            except OSError as exc:
                self.error = exc
                if not background:
                    raise

    def append(self, parts: _Parts) -> None:
        """Write one record; on any failure truncate back to where it started and raise."""
        with self.lock:
            if self.error is not None:
                raise EngineFailedError(f"the log failed earlier ({self.error}; fsync of "
                                        f"{self.path} or its rotation); close and reopen "
                                        "the engine")
            start = self.offset
            try:
                if sum(len(p) for p in parts) <= 1 << 20:
                    write_all(self.fd, b"".join(parts))
                else:
                    for p in parts:
                        write_all(self.fd, p)
                if self.fsync == "always":
                    self._fsync()
            except OSError as exc:
                try:  # nothing of a failed record may stay in the log
                    os.ftruncate(self.fd, start)
                    os.lseek(self.fd, start, os.SEEK_SET)
                    self._fsync()
                except OSError as again:
                    self.error = again
                    raise EngineFailedError(f"appending to {self.path} failed ({exc}) and the "
                                            f"partial record could not be removed ({again}); "
                                            "close and reopen the engine") from exc
                raise
            self.offset = os.lseek(self.fd, 0, os.SEEK_CUR)
            self.dirty = self.fsync != "always"

    def rotate(self, first: int) -> None:
        """Continue in a new segment starting at ``first`` (the old one is synced first).

        If the new segment cannot be created, or opened once created, it is removed and the
        old one stays active: recovery then reads on from the old one, which ends where the
        new one would have begun, so appending there stays where recovery reads. If it cannot
        be removed either, the log fails (EngineFailedError from now on)."""
        with self.lock:
            if first == self.first:
                return
            if self.dirty:
                self._fsync()
                self.dirty = False
            try:
                path = _create_segment(self.directory, first)
                try:
                    fd = os.open(path, os.O_WRONLY)
                except OSError as exc:  # e.g. EMFILE: the segment exists but is not ours
                    _withdraw_segment(path, exc)
                    raise
            except _SegmentLeftBehind as exc:
                self.error = exc
                raise EngineFailedError(f"log rotation to {_seg_name(first)} failed and could "
                                        f"not be undone ({exc}); close and reopen the engine "
                                        "(every acknowledged call is in the log)") from exc
            self.offset = os.lseek(fd, 0, os.SEEK_END)
            old, self.fd, self.path, self.first = self.fd, fd, path, first
            os.close(old)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self.lock:
            if self.fd >= 0:
                try:
                    if self.dirty and self.error is None:
                        self._fsync()
                finally:
                    os.close(self.fd)
                    self.fd = -1


# -- reading the state ----------------------------------------------------------------------
def _read_segment_header(path: pathlib.Path, fh: BinaryIO, size: int) -> int:
    raw = fh.read(_SEG_HEADER_SIZE)
    if len(raw) < _SEG_HEADER_SIZE:
        raise RecoveryError(f"{path}: segment header truncated ({size} bytes, need "
                            f"{_SEG_HEADER_SIZE}) at offset 0", path, 0)
    magic, version, _flags, first, _reserved = _SEG_HEADER.unpack_from(raw)
    if magic != _SEG_MAGIC:
        raise RecoveryError(f"{path}: not a nap log segment (bad magic at offset 0)", path, 0)
    (crc,) = struct.unpack_from("<I", raw, _SEG_HEADER.size)
    if crc != zlib.crc32(raw[:_SEG_HEADER.size]):
        raise RecoveryError(f"{path}: segment header checksum mismatch (bytes 0..32)", path, 0)
    if version > LOG_FORMAT_VERSION:
        raise RecoveryError(f"{path}: written in log format version {version}; this nap_gpu "
                            f"reads versions up to {LOG_FORMAT_VERSION}: upgrade nap_gpu", path, 0)
    return first


def _zero_tail(fh: BinaryIO, offset: int) -> bool:
    fh.seek(offset)
    while chunk := fh.read(1 << 20):
        if chunk.count(0) != len(chunk):
            return False
    return True


def _records(path: pathlib.Path, fh: BinaryIO, size: int) -> Iterator[tuple[Any, ...]]:
    """Yield (offset, sequence, kind, flags, payload) for each valid record, then, if the
    segment does not end cleanly, ("bad", offset, reason, torn) where ``torn`` says the bad
    part is an unfinished final write (a short header or body, or a zero-filled tail)."""
    offset = _SEG_HEADER_SIZE
    fh.seek(offset)
    while offset < size:
        head = fh.read(_REC_HEADER.size)
        if len(head) < _REC_HEADER.size:
            yield "bad", offset, f"record header cut short ({len(head)} of 16 bytes)", True
            return
        length, body_crc, head_crc = _REC_HEADER.unpack(head)
        if head_crc != zlib.crc32(head[:12]):
            yield "bad", offset, "record header checksum mismatch", _zero_tail(fh, offset)
            return
        if length < _BODY_HEAD.size:
            yield "bad", offset, f"record length {length} too small", False
            return
        if offset + _REC_HEADER.size + length > size:
            yield ("bad", offset, f"record body cut short ({size - offset - 16} of {length} "
                   "bytes)", True)
            return
        body = fh.read(length)
        if zlib.crc32(body) != body_crc:
            yield "bad", offset, "record checksum mismatch", False
            return
        sequence, kind, flags, _ = _BODY_HEAD.unpack_from(body)
        yield offset, sequence, kind, flags, body[_BODY_HEAD.size:]
        offset += _REC_HEADER.size + length


def _intact_records(fh: BinaryIO, size: int) -> Iterator[int]:
    """Offsets of a segment's records as far as their headers are intact (header checksum,
    length inside the file); bodies are not read. Used on segments that are not replayed,
    where only the count matters and damage is no error."""
    offset = _SEG_HEADER_SIZE
    while offset + _REC_HEADER.size <= size:
        fh.seek(offset)
        head = fh.read(_REC_HEADER.size)
        length, _, head_crc = _REC_HEADER.unpack(head)
        if (head_crc != zlib.crc32(head[:12]) or length < _BODY_HEAD.size
                or offset + _REC_HEADER.size + length > size):
            return
        yield offset
        offset += _REC_HEADER.size + length


def _record_offset(path: pathlib.Path, index: int) -> int | None:
    """Byte offset of the ``index``-th record (from 0) of a segment, if its headers reach it."""
    with open(path, "rb") as fh:
        for i, offset in enumerate(_intact_records(fh, path.stat().st_size)):
            if i == index:
                return offset
    return None


def _last_sequence(path: pathlib.Path, first: int) -> int:
    """The sequence of a segment's last record as far as intact headers show (first - 1 for
    none): how far dropping it reaches, for the journal."""
    try:
        with open(path, "rb") as fh:
            return first + sum(1 for _ in _intact_records(fh, os.fstat(fh.fileno()).st_size)) - 1
    except OSError:
        return first - 1


def _cut(path: pathlib.Path, offset: int, from_sequence: int) -> dict:
    """accept_loss's repair for a break at ``offset`` of ``path``: keep what is before it,
    drop the rest of the segment and every later one."""
    return {"kind": "cut", "file": str(path), "offset": offset, "from_sequence": from_sequence}


def _overlap_error(segs: list[tuple[int, pathlib.Path]], a: int, b: int) -> RecoveryError:
    """Segment ``a`` holds records at or past segment ``b``'s first sequence: two segments
    claim the same sequence numbers (e.g. a rotation failed and the log went on in the old
    segment). Recovery cannot know which holds the acknowledged calls, so it refuses."""
    (first_a, path_a), (first_b, path_b) = segs[a], segs[b]
    offset = _record_offset(path_a, first_b - first_a)
    later = segs[b:]
    repair: dict[str, Any] | None
    if all(p.stat().st_size <= _SEG_HEADER_SIZE for _, p in later):
        # the later segments hold no record: the trace of a failed rotation; dropping them
        # loses nothing
        repair = {"kind": "drop", "files": [str(p) for _, p in later], "from_sequence": None}
    elif offset is None:
        repair = None
    else:  # the later segment wins (what recovery reads); the older one's overlap is dropped
        repair = {"kind": "trim", "file": str(path_a), "offset": offset, "from_sequence": first_b}
    return RecoveryError(
        f"{path_a} and {path_b} overlap: {path_a.name} holds a record with sequence "
        f"{first_b} (offset {offset}) or later, but {path_b.name} starts at sequence "
        f"{first_b}: the log forked (two segments claim the same sequence numbers); "
        "recovery cannot tell which holds the acknowledged calls", path_a, offset,
        repair=repair)


def _check_older_segment(segs: list[tuple[int, pathlib.Path]], i: int) -> None:
    """A segment before the one replay starts in: its records are covered by the snapshot,
    so damage in it is no error (it matters only for a fallback, and is reported then); but
    an intact one that runs past the next segment's start, or whose header names another
    first sequence, means the log is not one sequence: RecoveryError naming the files."""
    first, path = segs[i]
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            try:
                header_first = _read_segment_header(path, fh, size)
            except RecoveryError:
                return  # damaged: the snapshot covers it
            if header_first != first:
                raise RecoveryError(f"{path}: header says first sequence {header_first}, the "
                                    f"file name {first}: out of order (offset 16)", path, 16,
                                    repair={"kind": "drop", "files": [str(path)],
                                            "from_sequence": None})
            holds = segs[i + 1][0] - first  # records it may hold before the next one starts
            for count, _ in enumerate(_intact_records(fh, size), 1):
                if count > holds:
                    raise _overlap_error(segs, i, i + 1)
    except OSError:
        return


class _Recovery:
    """What open would do: the snapshot it starts from and the log it replays. With
    ``engine_factory`` the snapshot is loaded and the log applied; without it (the dry run)
    everything is read and verified and nothing is changed."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self.snapshots, self.segments = _list(directory)
        self.report: dict = {
            "directory": str(directory), "status": None, "snapshots": [], "segments": [],
            "snapshot": None, "replay": None, "torn_tail": None, "sequence": None,
            "iteration": None, "n": None, "params": None, "warnings": [], "actions": [],
            "error": None,
        }
        self.torn: tuple[pathlib.Path, int, int] | None = None  # (path, offset, size)
        self.damaged: list[pathlib.Path] = []

    def warn(self, message: str) -> None:
        self.report["warnings"].append(message)

    def run(self, load: bool,
            engine_factory: Callable[[Any, snapshot.SnapshotInfo], Engine] | None = None
            ) -> Engine | None:
        snaps, segs = self.snapshots, self.segments
        if not snaps:
            if segs:
                raise RecoveryError(f"{self.directory}: {len(segs)} log segment(s) but no "
                                    f"snapshot (e.g. {segs[0][1].name}): the state the log "
                                    "starts from is missing", segs[0][1])
            self.report["status"] = "empty"
            return None
        failures, chosen, weights = [], None, None
        for sequence, meta, path in snaps:
            entry = {"file": path.name, "sequence": sequence, "status": "not needed"}
            self.report["snapshots"].append(entry)
            if chosen is not None:
                continue
            try:
                if load:
                    weights, info = snapshot.read(path)
                else:
                    info = snapshot.inspect(path, verify=True)
                    if not info.checksum_ok:
                        raise snapshot.SnapshotError(f"{path}: checksum mismatch in the weights "
                                                     f"(bytes {info.data_offset}..)")
                if meta != _meta_crc(info.n, info.params, info.iteration, info.sequence):
                    raise snapshot.SnapshotError(
                        f"{path}: the metadata (n, parameters, iteration, sequence) do not "
                        f"match the CRC-32 {meta:08x} in the file name (bytes 8..{info.data_offset})")
            except snapshot.SnapshotError as exc:
                if "upgrade nap_gpu" in str(exc):
                    raise RecoveryError(str(exc), path, 0) from None
                entry["status"] = f"damaged: {exc}"
                failures.append((sequence, path, str(exc)))
                continue
            entry.update(status="ok", iteration=info.iteration)
            chosen = info
        if chosen is None:
            raise RecoveryError(f"{self.directory}: no usable snapshot: "
                                + "; ".join(msg for _, _, msg in failures), failures[0][1])
        self.report.update(snapshot=pathlib.Path(chosen.path).name, n=chosen.n)
        engine = None if engine_factory is None else engine_factory(weights, chosen)
        weights = None
        try:
            return self._replay(chosen, engine, failures)
        except RecoveryError as exc:
            if not failures or exc.fallback:
                raise
            bad = max(failures)
            raise RecoveryError(
                f"{bad[1]}: snapshot is damaged ({bad[2]}); falling back to "
                f"{pathlib.Path(chosen.path).name} needs the log after it, which cannot be "
                f"replayed: {exc}", exc.path, exc.offset, repair=exc.repair) from None

    def _replay(self, chosen: snapshot.SnapshotInfo, engine: Engine | None,
                failures: list[tuple[int, pathlib.Path, str]]) -> Engine | None:
        segs = self.segments
        sequence, iteration, params = chosen.sequence, chosen.iteration, chosen.params
        kinds: dict[str, int] = {}
        replayed = 0
        # the segment holding sequence + 1 and every later one, contiguous
        start = 0
        for i, (first, _) in enumerate(segs):
            if first <= sequence + 1:
                start = i
        for i in range(start):  # not replayed, but they must not overlap what is
            _check_older_segment(segs, i)
        for i in range(start, len(segs)):
            first, path = segs[i]
            last_segment = i == len(segs) - 1
            size = path.stat().st_size
            seg_entry: dict[str, Any] = {"file": path.name, "first_sequence": first, "bytes": size,
                                         "records": 0}
            self.report["segments"].append(seg_entry)
            if first > sequence + 1:
                raise RecoveryError(f"{path}: the log has a gap: records {sequence + 1}.."
                                    f"{first - 1} are missing before this segment (offset 0)",
                                    path, 0, repair=_cut(path, 0, first))
            if i > start and first <= sequence:
                raise _overlap_error(segs, i - 1, i)
            with open(path, "rb") as fh:
                try:
                    header_first = _read_segment_header(path, fh, size)
                except RecoveryError as exc:
                    if "upgrade nap_gpu" not in str(exc):
                        exc.repair = _cut(path, 0, first)
                    raise
                if header_first != first:
                    raise RecoveryError(f"{path}: header says first sequence {header_first}, "
                                        f"the file name {first}: out of order (offset 16)",
                                        path, 16, repair=_cut(path, 0, first))
                expected = first
                for item in _records(path, fh, size):
                    if item[0] == "bad":
                        _, offset, reason, torn = item
                        if torn and last_segment:
                            self.torn = (path, offset, size)
                            self.report["torn_tail"] = {"file": path.name, "offset": offset,
                                                        "bytes": size - offset, "reason": reason}
                            self.warn(f"{path}: dropped a torn final record at offset {offset} "
                                      f"({size - offset} bytes: {reason}): a write cut short by "
                                      "a crash, whose call had not returned")
                            break
                        where = "" if last_segment else " (not the last segment)"
                        raise RecoveryError(f"{path}: corrupt log record at offset {offset}: "
                                            f"{reason}{where}; records from sequence {expected} "
                                            "on cannot be replayed", path, offset,
                                            repair=_cut(path, offset, expected))
                    offset, rec_seq, kind, flags, payload = item
                    cut = _cut(path, offset, expected)
                    if rec_seq != expected:
                        raise RecoveryError(f"{path}: record at offset {offset} has sequence "
                                            f"{rec_seq}, expected {expected}", path, offset,
                                            repair=cut)
                    expected += 1
                    seg_entry["records"] += 1
                    if rec_seq <= sequence:
                        continue  # covered by the snapshot
                    try:
                        args = _decode(kind, flags, payload)
                    except (ValueError, struct.error, zlib.error) as exc:
                        raise RecoveryError(f"{path}: undecodable record at offset {offset} "
                                            f"(sequence {rec_seq}): {exc}", path, offset,
                                            repair=cut) from None
                    if kind == UPDATE and len(args[0]) and (args[0].min() < 0 or args[0].max() >= chosen.n):
                        raise RecoveryError(f"{path}: record at offset {offset} names ids "
                                            f"outside [0, {chosen.n})", path, offset, repair=cut)
                    if kind == STEP and args.size != chosen.n:
                        raise RecoveryError(f"{path}: record at offset {offset} holds "
                                            f"{args.size} qualities for {chosen.n} memories",
                                            path, offset, repair=cut)
                    if engine is not None:
                        _apply(engine, kind, args)
                    if kind in (STEP, STEP_SCALAR):
                        iteration += 1
                    elif kind == PARAMS:
                        params = args
                    kinds[_KIND_NAMES[kind]] = kinds.get(_KIND_NAMES[kind], 0) + 1
                    replayed += 1
                sequence = max(sequence, expected - 1)
        needed = max((s for s, _, _ in failures), default=0)
        if sequence < needed:
            bad = max(failures)
            raise RecoveryError.fallback_error(
                f"{bad[1]}: snapshot is damaged ({bad[2]}) and the log from "
                f"{pathlib.Path(chosen.path).name} reaches only sequence {sequence}, not "
                f"{bad[0]}: falling back would lose acknowledged calls; restore the file from "
                "a backup", bad[1], 0,
                repair={"kind": "snapshot", "file": bad[1], "from_sequence": sequence + 1,
                        "to_sequence": bad[0]})
        for _, path, msg in failures:
            self.damaged.append(path)
            self.warn(f"{path}: damaged snapshot bypassed ({msg}); recovered from "
                      f"{pathlib.Path(chosen.path).name} and the log")
        self.report.update(status="ok", sequence=sequence, iteration=iteration,
                           params=str(params),
                           replay={"from": chosen.sequence + 1, "to": sequence,
                                   "records": replayed, "kinds": kinds})
        self.sequence, self.iteration, self.params = sequence, iteration, params
        return engine


def recover_plan(directory: StrPath) -> dict[str, Any]:
    """What ``DurableEngine.open(directory)`` would do, as a dict; a dry run (reads and
    verifies everything it would use, changes nothing). ``status`` is ``"ok"``, ``"empty"``
    (open creates a new state), ``"missing"`` or ``"error"`` (``error`` says why)."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return {"directory": str(directory), "status": "missing", "error": None,
                "warnings": [], "actions": ["create the directory and a new state (n required)"]}
    rec = _Recovery(directory)
    report = rec.report
    try:
        rec.run(load=False)
    except RecoveryError as exc:
        report.update(status="error", error=str(exc), error_file=exc.path, error_offset=exc.offset,
                      accept_loss=None if exc.repair is None
                      else _repair_plan(directory, exc.repair)["text"])
        return report
    actions = report["actions"]
    if report["status"] == "empty":
        actions.append("create a new state (n required)")
        return report
    if rec.torn:
        actions.append(f"truncate {rec.torn[0].name} to {rec.torn[1]} bytes (drop the torn record)")
    for path in rec.damaged:
        actions.append(f"rename {path.name} to {path.name}.damaged and write a fresh snapshot")
    actions.append(f"replay {report['replay']['records']} record(s); continue at sequence "
                   f"{report['sequence'] + 1}")
    if fcntl is not None:
        try:
            with open(directory / "LOCK", "rb") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except OSError:
                    report["warnings"].append("the directory is open in a running process: "
                                              "this report may already be out of date")
        except FileNotFoundError:
            pass
    return report


def recover_report(directory: StrPath) -> str:
    """``recover_plan`` as text (what ``nap-gpu recover DIR`` prints)."""
    plan = recover_plan(directory)
    lines = [f"state directory: {plan['directory']}", f"status: {plan['status']}"]
    for s in plan.get("snapshots", []):
        lines.append(f"  snapshot {s['file']}: {s['status']}")
    if plan.get("snapshot"):
        lines.append(f"start from: {plan['snapshot']} (n = {plan['n']})")
    for s in plan.get("segments", []):
        lines.append(f"  log {s['file']}: first sequence {s['first_sequence']}, "
                     f"{s['records']} record(s) read, {s['bytes']} bytes")
    if plan.get("replay"):
        r = plan["replay"]
        kinds = ", ".join(f"{v} {k}" for k, v in sorted(r["kinds"].items())) or "nothing"
        lines.append(f"replay: sequences {r['from']}..{r['to']} ({r['records']} record(s): {kinds})")
        lines.append(f"result: sequence {plan['sequence']}, iteration {plan['iteration']}, "
                     f"{plan['params']}")
    for w in plan.get("warnings", []):
        lines.append(f"warning: {w}")
    if plan.get("error"):
        lines.append(f"error: {plan['error']}")
        if plan.get("accept_loss"):
            lines.append(f"open refuses; nap-gpu recover DIR --accept-loss would: "
                         f"{plan['accept_loss']} (then check again: there may be more)")
        elif plan.get("status") == "error":
            lines.append("no repair can get past this without a backup")
    for a in plan.get("actions", []):
        lines.append(f"open would: {a}")
    return "\n".join(lines)


# -- accepting a loss -----------------------------------------------------------------------
def _repair_plan(directory: pathlib.Path, repair: dict) -> dict:
    """What a repair changes: the segments moved aside whole, the segment cut (path, offset),
    the snapshot renamed, the sequences lost (first, last as far as intact headers show, or
    None), and a sentence saying so."""
    kind = repair["kind"]
    move, cut, snap, lost = [], None, None, None
    if kind == "snapshot":
        snap = pathlib.Path(repair["file"])
        lost = (repair["from_sequence"], repair["to_sequence"])
    elif kind == "drop":
        move = [pathlib.Path(f) for f in repair["files"]]
    else:
        path, offset = pathlib.Path(repair["file"]), repair["offset"]
        segs = _list(directory)[1]
        mine = next(first for first, p in segs if p == path)
        if kind == "cut":  # this segment from offset, and every later one
            move = [p for first, p in segs if first > mine]
        last = max([_last_sequence(p, first) for first, p in segs if p in move]
                   + [_last_sequence(path, mine)])
        if offset < _SEG_HEADER_SIZE:
            move.insert(0, path)
        else:
            cut = (path, offset)
        first_lost = repair["from_sequence"]
        lost = (first_lost, last) if last >= first_lost else None
    parts = []
    if lost:
        parts.append(f"drop sequences {lost[0]}..{lost[1]}")
    if snap is not None:
        parts.append(f"rename {snap.name} to {snap.name}.damaged (the log does not reach it)")
    if cut is not None:
        parts.append(f"cut {cut[0].name} at offset {cut[1]} ({cut[0].stat().st_size - cut[1]} "
                     f"bytes, kept as {cut[0].name}.dropped-from-{cut[1]})")
    if move:
        parts.append("move aside (*.dropped) " + ", ".join(p.name for p in move)
                     + ("" if lost else ": they hold no record the log needs"))
    return {"move": move, "cut": cut, "snapshot": snap, "sequences": lost,
            "text": "; ".join(parts)}


def _aside(path: pathlib.Path, suffix: str) -> pathlib.Path:
    """A free name for evidence kept beside the state (never overwriting earlier evidence)."""
    target, i = path.with_name(path.name + suffix), 0
    while target.exists():
        i += 1
        target = path.with_name(f"{path.name}{suffix}.{i}")
    return target


def _apply_repair(directory: pathlib.Path, exc: RecoveryError) -> dict:
    assert exc.repair is not None, "accept_loss repairs only a refusal that has a repair"
    plan = _repair_plan(directory, exc.repair)
    evidence = []
    for path in reversed(plan["move"]):  # newest first: a crash midway leaves a shorter log
        target = _aside(path, ".dropped")
        os.replace(path, target)
        evidence.append(target.name)
    if plan["cut"] is not None:
        path, offset = plan["cut"]
        target = _aside(path, f".dropped-from-{offset}")
        with open(path, "r+b") as fh, open(target, "wb") as out:
            fh.seek(offset)
            while chunk := fh.read(1 << 22):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
            fh.truncate(offset)
            fh.flush()
            os.fsync(fh.fileno())
        evidence.append(target.name)
    if plan["snapshot"] is not None:
        target = _aside(plan["snapshot"], ".damaged")
        os.replace(plan["snapshot"], target)
        evidence.append(target.name)
    fsync_directory(directory)
    lost = plan["sequences"]
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": "accept_loss",
             "directory": str(directory), "refused_because": str(exc),
             "dropped_sequences": None if lost is None else {"from": lost[0], "to": lost[1]},
             "done": plan["text"], "evidence": evidence}
    line = json.dumps(entry)
    log.warning(line)
    fd = os.open(directory / LOSS_JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        write_all(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return entry


def accept_loss(directory: StrPath) -> dict[str, Any]:
    """Make a state that ``open`` refuses openable at its newest consistent point, dropping
    what stands in the way; never done by ``open`` itself (``nap-gpu recover DIR
    --accept-loss``). Each break recovery finds is repaired in turn, with the least loss:

    * a corrupt or out-of-order record, a damaged segment header, a gap: the log is cut
      there (the rest of that segment and every later segment dropped);
    * two segments claiming the same sequences: later segments that hold no record (a
      failed rotation's trace) are dropped, else the older segment's overlapping tail;
    * a damaged newest snapshot the log does not reach: renamed ``*.damaged`` (the calls
      after the log's end up to it are lost).

    Nothing is deleted: dropped segments become ``*.dropped``, a cut tail
    ``*.dropped-from-OFFSET``. Every repair is logged (logger ``nap_gpu.durable``, WARNING,
    one JSON object: the refusal, the sequences dropped, the files) and appended to
    ``LOSS_JOURNAL`` in the directory. Returns ``{"directory", "dropped": [those objects],
    "plan": recover_plan afterwards}``. Raises RecoveryError when nothing can get past the
    refusal (a newer format: upgrade; no usable snapshot), RuntimeError while an engine has
    the directory open, FileNotFoundError for a missing directory."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such state directory")
    lock = _lock_directory(directory)
    try:
        dropped = []
        # each repair removes a file, a tail or a snapshot from what recovery reads: bounded
        for _ in range(2 * sum(1 for _ in os.scandir(directory)) + 2):
            try:
                _Recovery(directory).run(load=False)
                break
            except RecoveryError as exc:
                if exc.repair is None:
                    raise RecoveryError(f"{exc} (accept_loss cannot get past this)", exc.path,
                                        exc.offset) from None
                dropped.append(_apply_repair(directory, exc))
        else:  # pragma: no cover - every repair shrinks what recovery reads
            raise RuntimeError(f"{directory}: accept_loss made no progress")
    finally:
        if lock is not None:
            lock.close()
    return {"directory": str(directory), "dropped": dropped, "plan": recover_plan(directory)}


def _lock_directory(directory: pathlib.Path) -> BinaryIO | None:
    """The directory's LOCK held exclusively (an open file: closing it releases the flock),
    or None without flock. Waits up to _LOCK_WAIT for a killed owner's forked child."""
    if fcntl is None:  # pragma: no cover
        return None
    fh = open(directory / "LOCK", "a+b")
    deadline = time.monotonic() + _LOCK_WAIT
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fh
        except OSError:
            if time.monotonic() < deadline:
                time.sleep(0.01)
                continue
            fh.close()
            raise RuntimeError(f"{directory} is open in another DurableEngine (LOCK is held); "
                               "close that one first") from None


# -- the engine -----------------------------------------------------------------------------
class DurableEngine:
    """An Engine whose every acknowledged call survives a crash. Create with ``open``.

    Same methods as ``Engine`` (``step``, ``update``, ``decay``, ``params``, ``to_numpy``,
    ``metrics``, ``weights``, ``n``, ``backend``, ``iteration``, ``save``) plus ``sequence``
    (the log sequence of the last acknowledged call), ``checkpoint()`` and ``close()``; a
    context manager. Calls are serialised by a lock (log order is apply order).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import nap_gpu as nap
    >>> tmp = tempfile.TemporaryDirectory()
    >>> state = pathlib.Path(tmp.name) / "state"
    >>> with nap.DurableEngine.open(state, n=1000, seed=0) as eng:  # created
    ...     eng.step(0.9)
    ...     eng.update([3, 3], [0.9, 0.1])
    ...     before = eng.to_numpy()
    >>> with nap.DurableEngine.open(state) as eng:  # recovered: snapshot + log replay
    ...     bool((eng.to_numpy() == before).all()), eng.iteration, eng.sequence
    (True, 1, 2)
    >>> tmp.cleanup()
    """

    # Set by open(), on an instance made with __new__ (__init__ refuses).
    _directory: pathlib.Path
    _lock: threading.RLock
    _log: _Log | None  # None: wal=False
    _lockfile: BinaryIO | None  # the held LOCK (None: released, or no flock)
    _closed: bool
    _failed: str | None  # why the engine failed (EngineFailedError), if it did
    _stopped: str | None
    _snapshot_every: int
    _keep: int
    _wal: bool
    _compress: bool
    _retention: str

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("use DurableEngine.open(directory, ...)")

    @classmethod
    def open(cls, directory: StrPath, *, n: int | None = None, backend: str = "auto",
             seed: int | None = None, init: InitialWeights = "uniform", params: Params | None = None,
             snapshot_every: int | None = 50, keep: int = 5, wal: bool = True,
             fsync: str = "always", group_ms: float = 10.0, compress: bool = True,
             wal_retention: str = "kept") -> DurableEngine:
        """Open (and recover) or create the durable state in ``directory``.

        First open (no state yet): ``n`` is required; ``seed``, ``init`` and ``params`` make
        the initial population, which is snapshotted at sequence 0 before ``open`` returns.
        Later opens recover: newest valid snapshot + log replay; ``n`` and ``params``, if
        given, must match the recovered state (``seed``/``init`` are ignored); any
        ``backend`` may be used (replay is bit-identical on every backend).

        Parameters
        ----------
        directory : path
            The state's directory (created if missing); one process holds it at a time.
        n, backend, seed, init, params
            As for `Engine`; ``n`` is required on the first open only.
        snapshot_every : int or None
            A snapshot every this many logged calls (``None``/0: only on ``checkpoint()``).
        keep : int
            Snapshots kept (>= 1).
        wal : bool
            Log every call (False: calls after the newest snapshot are lost on a crash).
        fsync : {"always", "group"}
            ``"always"``: a call returns once its record is on disk; ``"group"``: in the OS
            page cache when the call returns, on disk within ``group_ms``.
        group_ms : float
            The group commit period.
        compress : bool
            zlib payloads where a sample shows it pays.
        wal_retention : {"kept", "newest"}
            ``"kept"`` (default) keeps the log back to the oldest kept snapshot, so every
            kept snapshot is a recovery point (disk: up to keep x snapshot_every records);
            ``"newest"`` only after the newest one (up to snapshot_every records), so the
            older snapshots are not recovery points: a damaged newest snapshot is then a
            `RecoveryError`, and only ``accept_loss`` gets past it, losing the calls after
            the previous snapshot. docs/durability.md has the table.
        """
        if fsync not in ("always", "group"):
            raise ValueError(f"fsync must be 'always' or 'group', got {fsync!r}")
        if wal_retention not in ("kept", "newest"):
            raise ValueError(f"wal_retention must be 'kept' or 'newest', got {wal_retention!r}")
        if isinstance(keep, bool) or not isinstance(keep, numbers.Integral) or keep < 1:
            raise ValueError(f"keep must be an integer >= 1, got {keep!r}")
        if snapshot_every is not None and (isinstance(snapshot_every, bool)
                                           or not isinstance(snapshot_every, numbers.Integral)
                                           or snapshot_every < 0):
            raise ValueError(f"snapshot_every must be an integer >= 0 or None, got {snapshot_every!r}")
        if not (isinstance(group_ms, numbers.Real) and 0 < float(group_ms) < 3.6e6):
            raise ValueError(f"group_ms must be a positive number of milliseconds, got {group_ms!r}")
        if params is not None and not isinstance(params, Params):
            raise TypeError(f"params must be a nap.Params, got {type(params).__name__}")
        # Probe the backends before taking the lock: probing may fork (CuPy's import runs
        # ldconfig), and a child forked while we hold the lock holds it until it execs.
        backends.resolve(backend)
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self = cls.__new__(cls)
        self._directory = directory
        self._lock = threading.RLock()
        self._log = None
        self._lockfile = None
        self._closed = False
        self._failed = None
        self._stopped = None  # why writes were stopped (stop_writes), if they were
        self._snapshot_every = int(snapshot_every or 0)
        self._keep = int(keep)
        self._wal = bool(wal)
        self._compress = bool(compress)
        self._retention = wal_retention
        self._acquire_lock()
        try:
            self._recover(n=n, backend=backend, seed=seed, init=init, params=params,
                          fsync=fsync, group_ms=float(group_ms))
        except BaseException:
            self._release_lock()
            raise
        return self

    def _acquire_lock(self) -> None:
        self._lockfile = _lock_directory(self._directory)

    def _release_lock(self) -> None:
        if self._lockfile is not None:
            self._lockfile.close()  # closing the file releases the flock
            self._lockfile = None

    def _recover(self, *, n: int | None, backend: str, seed: int | None, init: InitialWeights,
                 params: Params | None, fsync: str, group_ms: float) -> None:
        directory = self._directory
        for entry in os.scandir(directory):  # temporaries of writes a crash interrupted
            if _SEG_TMP_RE.match(entry.name) or _SNAP_TMP_RE.match(entry.name):
                os.unlink(entry.path)
        rec = _Recovery(directory)

        def factory(weights: HostWeights, info: snapshot.SnapshotInfo) -> Engine:
            if n is not None and int(n) != info.n:
                raise ValueError(f"{directory} holds n = {info.n} memories, not n = {n}")
            eng = Engine(info.n, backend=backend, init=weights, params=info.params)
            eng.iteration = info.iteration
            return eng

        eng = rec.run(load=True, engine_factory=factory)
        fresh = eng is None
        if eng is None:  # fresh (tested on eng itself, which narrows its type)
            if n is None:
                raise ValueError(f"{directory} holds no state yet: pass n to create one")
            eng = Engine(n, backend=backend, seed=seed, init=init, params=params)
            rec.sequence = 0
        elif params is not None and params != eng.params:
            raise ValueError(f"{directory} holds {eng.params}, not {params}: set "
                             "eng.params after opening to change them (the change is logged)")
        for message in rec.report["warnings"]:
            warnings.warn(message, DurabilityWarning, stacklevel=3)
        if rec.torn is not None:
            path, offset, _ = rec.torn
            with open(path, "r+b") as fh:
                fh.truncate(offset)
                os.fsync(fh.fileno())
        for path in rec.damaged:
            os.replace(path, path.with_name(path.name + ".damaged"))
        if rec.damaged:
            fsync_directory(directory)
        self._eng = eng
        self._bk = backends.get(eng.backend)
        self._sequence = rec.sequence
        self._snap_seq = rec.sequence
        if fresh or rec.damaged:
            try:
                self._write_snapshot()
            except _UnsnapshotableWeights as exc:
                if fresh:
                    raise ValueError(f"{directory}: the initial {exc}") from None
                warnings.warn(f"{directory}: no fresh snapshot after the fallback: {exc}",
                              DurabilityWarning, stacklevel=3)
        snaps, segs = _list(directory)
        self._snap_seq = snaps[0][0] if snaps else 0
        self._snap_time = snaps[0][2].stat().st_mtime if snaps else None
        if self._wal:
            first = self._sequence + 1
            reuse = bool(segs) and segs[-1][0] == first
            self._log = _Log(directory, first, fsync=fsync, group_ms=group_ms, reuse=reuse)

    # -- state ---------------------------------------------------------------------------
    @property
    def directory(self) -> pathlib.Path:
        """The state's directory."""
        return self._directory

    @property
    def sequence(self) -> int:
        """Log sequence number of the last acknowledged mutating call (0: none yet)."""
        return self._sequence

    @property
    def snapshot_sequence(self) -> int:
        """Log sequence covered by the newest snapshot (``sequence`` minus this: the records
        a recovery would replay)."""
        return self._snap_seq

    @property
    def snapshot_time(self) -> float | None:
        """When the newest snapshot was written (``time.time()`` seconds), if known."""
        return self._snap_time

    @property
    def fsync_observer(self) -> Callable[[float], object] | None:
        """``callable(seconds)`` told of every fsync of the log (e.g. a latency histogram)."""
        return None if self._log is None else self._log.on_sync

    @fsync_observer.setter
    def fsync_observer(self, callback: Callable[[float], object] | None) -> None:
        if self._log is not None:
            self._log.on_sync = callback

    @property
    def n(self) -> int:
        """Number of memories."""
        return self._eng.n

    def __len__(self) -> int:
        return self._eng.n

    @property
    def backend(self) -> str:
        """The backend's name (any backend may open a state: replay is bit-identical)."""
        return self._eng.backend

    @property
    def iteration(self) -> int:
        """Dense steps applied, as for `Engine`."""
        return self._eng.iteration

    @property
    def weights(self) -> BackendArray:
        """The weights, never writable (see ``Engine.weights``)."""
        return self._eng.weights

    def to_numpy(self) -> HostWeights:
        """A float32 copy of the weights on the host."""
        return self._eng.to_numpy()

    def synchronize(self) -> None:
        """Wait until queued device work is done (see ``Engine.synchronize``)."""
        self._eng.synchronize()

    def metrics(self, labels: Labels, **kwargs: Any) -> Metrics:
        """The population's metrics (see ``Engine.metrics``); reads log nothing."""
        return self._eng.metrics(labels, **kwargs)

    @property
    def params(self) -> Params:
        """The law's parameters; assigning a `Params` is a logged, durable call."""
        return self._eng.params

    @params.setter
    def params(self, value: Params) -> None:
        if not isinstance(value, Params):
            raise TypeError(f"params must be a nap.Params, got {type(value).__name__}")
        payload = struct.pack("<3I", *value.to_bits())
        self._call(PARAMS, 0, [payload], value)

    def __repr__(self) -> str:
        return (f"DurableEngine({str(self._directory)!r}, n={self.n}, backend={self.backend!r}, "
                f"params={self.params}, iteration={self.iteration}, sequence={self._sequence})")

    # -- the law (validated, logged, applied) -------------------------------------------
    def step(self, quality: ArrayInput, *, check_finite: bool = True) -> None:
        """Dense step (see ``Engine.step``), durable when it returns."""
        with self._lock:
            self._check_open()
            q = _inputs.quality(quality, self.n, self._bk, check_finite=check_finite)
            if isinstance(q, float):
                self._call(STEP_SCALAR, 0, [np.array([q], "<f4").tobytes()], q)
                return
            host = np.ascontiguousarray(self._host(q), "<f4")
            data, flags = _maybe_compress(host.data.cast("B"), self._compress)
            self._call(STEP, flags, [_U64.pack(host.size), data], q)

    def update(self, ids: ArrayInput, quality: ArrayInput, *, check_finite: bool = True) -> None:
        """Sparse ordered batch (see ``Engine.update``), durable when it returns."""
        with self._lock:
            self._check_open()
            ids_, q = _inputs.events(ids, quality, self.n, self._bk, check_finite=check_finite)
            hi = np.ascontiguousarray(self._host(ids_), "<i8")
            hq = np.ascontiguousarray(self._host(q), "<f4")
            raw = hi.tobytes() + hq.tobytes()
            data, flags = _maybe_compress(raw, self._compress)
            self._call(UPDATE, flags, [_U64.pack(hi.size), data], (ids_, q))

    def decay(self, k: int = 1) -> None:
        """Passive decay ``k`` times (see ``Engine.decay``: 0 <= k <= 2^64 - 1), durable when
        it returns. The log records min(k, decay_rounds_bound(params.decay)), which gives the
        same weights, so replaying it is bounded however large k was."""
        k = _inputs.repeat_count(k)
        with self._lock:  # the bound depends on the parameters the call will run under
            k = min(k, decay_rounds_bound(self._eng.params.decay))
            self._call(DECAY, 0, [_U64.pack(k)], k)

    def _host(self, a: BackendArray) -> HostWeights:
        return a if self._bk.xp is np else self._bk.to_host(a)

    # -- durability ----------------------------------------------------------------------
    def _check_open(self, writing: bool = True) -> None:
        if self._closed:
            raise ValueError(f"DurableEngine on {self._directory} is closed")
        if self._failed is not None:
            raise EngineFailedError(self._failed)
        if writing and self._stopped is not None:
            raise WritesStoppedError(self._stopped)

    def stop_writes(self, reason: str) -> None:
        """Refuse every later mutating call (``WritesStoppedError`` with ``reason``) until
        the engine is closed: the incident playbook's answer to corruption that restoring
        from disk does not repair. Reads, ``recover()`` and ``close()`` still work."""
        with self._lock:
            self._stopped = str(reason)

    @property
    def writes_stopped(self) -> str | None:
        """Why writes were stopped (``stop_writes``), or None."""
        return self._stopped

    def _call(self, kind: int, flags: int, payload: _Parts, args: Any) -> None:
        """Log (the record is durable per the fsync policy), then apply, then maybe snapshot."""
        with self._lock:
            self._check_open()
            sequence = self._sequence + 1
            if self._log is not None:
                try:
                    self._log.append(_encode(sequence, kind, flags, payload))
                except EngineFailedError as exc:
                    self._failed = str(exc)
                    raise
            try:
                _apply(self._eng, kind, args)
            except BaseException as exc:  # validated input cannot fail; a MemoryError can
                self._failed = (f"a logged call (sequence {sequence}) failed to apply ({exc!r}); "
                                "close and reopen the engine to replay it")
                raise
            self._sequence = sequence
            if self._snapshot_every and sequence - self._snap_seq >= self._snapshot_every:
                self._auto_checkpoint()

    def _auto_checkpoint(self) -> None:
        try:
            self._checkpoint()
        except EngineFailedError as exc:  # the call is durable; the next one is refused
            self._failed = str(exc)
            warnings.warn(f"{self._directory}: automatic checkpoint at sequence "
                          f"{self._sequence} failed and the log cannot go on ({exc}); this "
                          "call is in the log, later ones are refused", DurabilityWarning,
                          stacklevel=4)
        except (OSError, _UnsnapshotableWeights) as exc:  # the call is already durable
            self._snap_seq = self._sequence  # try again after snapshot_every more calls
            warnings.warn(f"{self._directory}: automatic snapshot at sequence {self._sequence} "
                          f"failed ({exc}); the log still holds every call", DurabilityWarning,
                          stacklevel=4)

    def _write_snapshot(self) -> pathlib.Path:
        eng = self._eng
        host = eng.weights
        if not isinstance(host, np.ndarray):
            host = eng.to_numpy()
        if host.size and not (host.min() >= 0 and host.max() <= 1):  # NaN fails too
            # recovery rejects such a file as damaged (snapshot.read): writing it would make a
            # later open fall back past it, or fail under wal_retention="newest"
            bad = int(np.argmax(~((host >= 0) & (host <= 1))))
            raise _UnsnapshotableWeights(f"weight {bad} = {float(host[bad])!r} is not in [0, 1]: "
                                         "no snapshot is written of weights recovery would "
                                         "reject")
        name = _snap_name(self._sequence, eng.n, eng.params, eng.iteration)
        path = snapshot.write(self._directory / name, host, eng.params, iteration=eng.iteration,
                              sequence=self._sequence, backend=eng.backend, version=__version__)
        # snapshot.write skips it when the directory cannot be opened
        fsync_directory(self._directory)
        self._snap_seq = self._sequence
        self._snap_time = time.time()
        return path

    def _checkpoint(self) -> pathlib.Path:
        if self._log is not None:
            self._log.sync()  # a snapshot never runs ahead of the log it may fall back on
        path = self._write_snapshot()
        if self._log is not None:
            self._log.rotate(self._sequence + 1)
        self._retain()
        return path

    def checkpoint(self) -> pathlib.Path:
        """Write a snapshot of the current state into the directory now, start a new log
        segment and apply retention. Returns the snapshot's path. Raises OSError if it could
        not (the log goes on where it was), ValueError for weights outside [0, 1] (nothing
        written), EngineFailedError if the log cannot go on."""
        with self._lock:
            self._check_open(writing=False)
            try:
                return self._checkpoint()
            except EngineFailedError as exc:
                self._failed = str(exc)
                raise

    def _retain(self) -> None:
        snaps, segs = _list(self._directory)
        for _, _, path in snaps[self._keep:]:
            path.unlink(missing_ok=True)
        kept = [s for s, _, _ in snaps[:self._keep]]
        if not kept:
            return
        covered = min(kept) if self._retention == "kept" else max(kept)
        active = None if self._log is None else self._log.first
        for i, (first, path) in enumerate(segs[:-1]):
            if first != active and segs[i + 1][0] - 1 <= covered:
                path.unlink(missing_ok=True)

    def recover(self) -> None:
        """Rebuild the weights from disk (the newest valid snapshot and the log), discarding
        the ones in memory: the incident playbook's answer to corruption in memory (the SLA
        monitor calls it). Every acknowledged call is on disk, so none is lost; without a log
        (``wal=False``) the calls since the newest snapshot would be, so it refuses."""
        with self._lock:
            self._check_open(writing=False)
            if self._log is None:
                raise RuntimeError("recover() needs the write-ahead log (opened with wal=False): "
                                   "it would lose the calls since the newest snapshot")
            self._log.sync()
            backend = self._eng.backend

            def factory(weights: HostWeights, info: snapshot.SnapshotInfo) -> Engine:
                eng = Engine(info.n, backend=backend, init=weights, params=info.params)
                eng.iteration = info.iteration
                return eng

            rec = _Recovery(self._directory)
            eng = rec.run(load=True, engine_factory=factory)
            if eng is None or rec.sequence != self._sequence:
                raise RecoveryError(f"{self._directory}: the disk holds sequence "
                                    f"{rec.sequence}, the engine acknowledged {self._sequence}")
            self._eng = eng

    def clamp(self) -> None:
        """Weights out of [0, 1] mean corruption in memory: restored from disk (``recover``),
        since a clamp outside the log would make the log replay to other weights."""
        self.recover()

    def save(self, path: StrPath) -> pathlib.Path:
        """Export a standalone snapshot (readable by ``nap.load``) at ``path``; its metadata
        records the current log sequence."""
        with self._lock:
            eng = self._eng
            return snapshot.write(path, eng.to_numpy(), eng.params, iteration=eng.iteration,
                                  sequence=self._sequence, backend=eng.backend, version=__version__)

    def close(self) -> None:
        """Flush the log to disk, stop the flusher and release the directory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._log is not None:
                    self._log.close()
            finally:
                self._release_lock()

    def __enter__(self) -> DurableEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not getattr(self, "_closed", True):
                self.close()
        except Exception:
            pass
