"""The state directory's files and the log's binary format: names, the segment header, the
record framing, and reading records back.

Directory layout::

    LOCK                          an flock held while an engine has the directory open
    snap-<sequence:020d>-<meta crc32:08x>.nap
                                  nap snapshots (nap_gpu.snapshot), named by the log sequence
                                  they cover and a CRC-32 of the state-relevant metadata
    wal-<first sequence:020d>.log log segments, named by the sequence of their first record

Segment: a 32-byte header ``b"NAPWAL\\r\\n"``, format version u32, flags u32, first sequence
u64, reserved u32 (0), CRC-32 of the preceding 28 bytes u32; then records. Record: body length
u64, CRC-32 of the body u32, CRC-32 of the preceding 12 bytes u32; body = sequence u64, kind u8,
flags u8 (bit 0: payload data zlib-compressed), reserved u16, payload. All little-endian. What
a payload holds for each kind of call is `nap_gpu.durable.calls`'.
"""

from __future__ import annotations

import os
import pathlib
import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

from .errors import FormatTooNewError, RecoveryError

if TYPE_CHECKING:
    from ..params import Params

    #: A record's parts, written in order (the header, then the payload's pieces).
    Parts = Sequence[bytes | memoryview]

LOG_FORMAT_VERSION = 1
SEG_MAGIC = b"NAPWAL\r\n"
SEG_HEADER = struct.Struct("<8sIIQI")  # magic, version, flags, first sequence, reserved
SEG_HEADER_SIZE = SEG_HEADER.size + 4  # + CRC-32 of the above
REC_HEADER = struct.Struct("<QII")  # body length, body CRC-32, CRC-32 of the first 12 bytes
BODY_HEAD = struct.Struct("<QBBH")  # sequence, kind, flags, reserved

SNAP_RE = re.compile(r"^snap-(\d{20})-([0-9a-f]{8})\.nap$")
SEG_RE = re.compile(r"^wal-(\d{20})\.log$")
_SEG_TMP_RE = re.compile(r"^\.wal-\d{20}\.log\.tmp-\d+$")
_SNAP_TMP_RE = re.compile(r"^\.snap-\d{20}-[0-9a-f]{8}\.nap\.tmp-\d+$")


# -- names ----------------------------------------------------------------------------------
def meta_crc(n: int, params: Params, iteration: int, sequence: int) -> int:
    """The CRC-32 a snapshot's name carries of its state-relevant metadata."""
    return zlib.crc32(struct.pack("<QIIIQQ", n, *params.to_bits(), iteration, sequence))


def snap_name(sequence: int, n: int, params: Params, iteration: int) -> str:
    return f"snap-{sequence:020d}-{meta_crc(n, params, iteration, sequence):08x}.nap"


def seg_name(first: int) -> str:
    return f"wal-{first:020d}.log"


class SnapshotFile(NamedTuple):
    """A snapshot in the directory: the log sequence it covers, its name's metadata CRC."""

    sequence: int
    meta_crc: int
    path: pathlib.Path


class SegmentFile(NamedTuple):
    """A log segment in the directory: the sequence of its first record (from its name)."""

    first: int
    path: pathlib.Path


def list_state(directory: pathlib.Path) -> tuple[list[SnapshotFile], list[SegmentFile]]:
    """The directory's snapshots, newest first, and its log segments, oldest first."""
    snaps: list[SnapshotFile] = []
    segs: list[SegmentFile] = []
    for entry in os.scandir(directory):
        if m := SNAP_RE.match(entry.name):
            snaps.append(SnapshotFile(int(m.group(1)), int(m.group(2), 16), pathlib.Path(entry.path)))
        elif m := SEG_RE.match(entry.name):
            segs.append(SegmentFile(int(m.group(1)), pathlib.Path(entry.path)))
    snaps.sort(key=lambda s: s.sequence, reverse=True)
    segs.sort()
    return snaps, segs


def remove_temporaries(directory: pathlib.Path) -> None:
    """Remove the temporary files of snapshot and segment writes a crash interrupted."""
    for entry in os.scandir(directory):
        if _SEG_TMP_RE.match(entry.name) or _SNAP_TMP_RE.match(entry.name):
            os.unlink(entry.path)


# -- writing --------------------------------------------------------------------------------
def segment_header(first: int) -> bytes:
    """The header of a new segment whose first record will have sequence ``first``."""
    head = SEG_HEADER.pack(SEG_MAGIC, LOG_FORMAT_VERSION, 0, first, 0)
    return head + struct.pack("<I", zlib.crc32(head))


def encode_record(sequence: int, kind: int, flags: int, parts: Parts) -> list[bytes | memoryview]:
    """A record framed for the log: its header and body head, then the payload's parts."""
    body_len = BODY_HEAD.size + sum(len(p) for p in parts)
    head = BODY_HEAD.pack(sequence, kind, flags, 0)
    crc = zlib.crc32(head)
    for p in parts:
        crc = zlib.crc32(p, crc)
    first = struct.pack("<QI", body_len, crc)
    return [first + struct.pack("<I", zlib.crc32(first)) + head, *parts]


# -- reading --------------------------------------------------------------------------------
def read_segment_header(path: pathlib.Path, fh: BinaryIO, size: int) -> int:
    """The first sequence a segment's header names; RecoveryError if it is damaged,
    FormatTooNewError if a newer nap_gpu wrote it."""
    raw = fh.read(SEG_HEADER_SIZE)
    if len(raw) < SEG_HEADER_SIZE:
        raise RecoveryError(f"{path}: segment header truncated ({size} bytes, need "
                            f"{SEG_HEADER_SIZE}) at offset 0", path, 0)
    magic, version, _flags, first, _reserved = SEG_HEADER.unpack_from(raw)
    if magic != SEG_MAGIC:
        raise RecoveryError(f"{path}: not a nap log segment (bad magic at offset 0)", path, 0)
    (crc,) = struct.unpack_from("<I", raw, SEG_HEADER.size)
    if crc != zlib.crc32(raw[:SEG_HEADER.size]):
        raise RecoveryError(f"{path}: segment header checksum mismatch (bytes 0..32)", path, 0)
    if version > LOG_FORMAT_VERSION:
        raise FormatTooNewError(f"{path}: written in log format version {version}; this nap_gpu "
                                f"reads versions up to {LOG_FORMAT_VERSION}: upgrade nap_gpu",
                                path, 0)
    return first


def _zero_tail(fh: BinaryIO, offset: int) -> bool:
    fh.seek(offset)
    while chunk := fh.read(1 << 20):
        if chunk.count(0) != len(chunk):
            return False
    return True


@dataclass(frozen=True)
class Record:
    """A record whose framing and checksums hold, at byte ``offset`` of its segment."""

    offset: int
    sequence: int
    kind: int
    flags: int
    payload: bytes


@dataclass(frozen=True)
class DamagedRecord:
    """Where a segment stops holding valid records, and why. ``torn``: the damage is an
    unfinished final write (a short header or body, or a zero-filled tail), what a crash
    leaves; anything else is corruption."""

    offset: int
    reason: str
    torn: bool


def read_records(fh: BinaryIO, size: int) -> Iterator[Record | DamagedRecord]:
    """Each valid record of a segment (its header already read), in order; then, if the
    segment does not end cleanly, one `DamagedRecord`."""
    offset = SEG_HEADER_SIZE
    fh.seek(offset)
    while offset < size:
        head = fh.read(REC_HEADER.size)
        if len(head) < REC_HEADER.size:
            yield DamagedRecord(offset, f"record header cut short ({len(head)} of 16 bytes)", True)
            return
        length, body_crc, head_crc = REC_HEADER.unpack(head)
        if head_crc != zlib.crc32(head[:12]):
            yield DamagedRecord(offset, "record header checksum mismatch", _zero_tail(fh, offset))
            return
        if length < BODY_HEAD.size:
            yield DamagedRecord(offset, f"record length {length} too small", False)
            return
        if offset + REC_HEADER.size + length > size:
            yield DamagedRecord(offset, f"record body cut short ({size - offset - 16} of {length} "
                                "bytes)", True)
            return
        body = fh.read(length)
        if zlib.crc32(body) != body_crc:
            yield DamagedRecord(offset, "record checksum mismatch", False)
            return
        sequence, kind, flags, _ = BODY_HEAD.unpack_from(body)
        yield Record(offset, sequence, kind, flags, body[BODY_HEAD.size:])
        offset += REC_HEADER.size + length


def intact_records(fh: BinaryIO, size: int) -> Iterator[int]:
    """Offsets of a segment's records as far as their headers are intact (header checksum,
    length inside the file); bodies are not read. Used on segments that are not replayed,
    where only the count matters and damage is no error."""
    offset = SEG_HEADER_SIZE
    while offset + REC_HEADER.size <= size:
        fh.seek(offset)
        head = fh.read(REC_HEADER.size)
        length, _, head_crc = REC_HEADER.unpack(head)
        if (head_crc != zlib.crc32(head[:12]) or length < BODY_HEAD.size
                or offset + REC_HEADER.size + length > size):
            return
        yield offset
        offset += REC_HEADER.size + length


def record_offset(path: pathlib.Path, index: int) -> int | None:
    """Byte offset of the ``index``-th record (from 0) of a segment, if its headers reach it."""
    with open(path, "rb") as fh:
        for i, offset in enumerate(intact_records(fh, path.stat().st_size)):
            if i == index:
                return offset
    return None


def last_sequence(path: pathlib.Path, first: int) -> int:
    """The sequence of a segment's last record as far as intact headers show (first - 1 for
    none): how far dropping it reaches, for the journal."""
    try:
        with open(path, "rb") as fh:
            return first + sum(1 for _ in intact_records(fh, os.fstat(fh.fileno()).st_size)) - 1
    except OSError:
        return first - 1
