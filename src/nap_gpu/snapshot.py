"""Snapshots: one population in one file, written atomically, verified on load.

The file is a standard safetensors file (8-byte little-endian header length, a JSON header, then
the raw little-endian float32 weights), so any safetensors reader can open it; nap's metadata
lives in the header's ``__metadata__``: format name and version, n, the law's parameters (as
float32 bit patterns), the iteration and log sequence number, the backend and nap_gpu version
that wrote it, the creation time, and a CRC-32 over the weights' bytes and the metadata. See docs/snapshots.md
for the layout and the reasons behind it.

nap reads and writes the format itself rather than through the safetensors package: writing
streams the caller's weights straight to the file (the package builds the whole payload in
memory first: a second copy of a billion weights) and reading fills the engine's own buffer
with ``readinto`` (one copy in memory, none extra). The tests check that the safetensors
package reads nap's files.

Writes are atomic: a temporary file in the same directory, fsync, rename over the target, fsync
of the directory. A crash leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import pathlib
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from .params import Params

__all__ = ["FORMAT", "FORMAT_VERSION", "SnapshotError", "SnapshotInfo", "inspect", "read", "write"]

FORMAT = "nap-snapshot"
FORMAT_VERSION = 1
_TENSOR = "weights"
_ALIGN = 64  # the weights start on a 64-byte boundary (cache lines; memory-mapping friendly)
_MAX_HEADER = 1 << 20
_IO_CHUNK = 1 << 24  # bytes per write/read/checksum step (16 MiB)


class SnapshotError(ValueError):
    """A snapshot file cannot be used; the message names the file and what is wrong where."""


@dataclass(frozen=True)
class SnapshotInfo:
    """What a snapshot's header says (``inspect``), and whether its checksum holds."""

    path: str
    n: int
    params: Params
    iteration: int
    sequence: int
    backend: str
    nap_gpu_version: str
    created: str
    checksum: str
    format_version: int
    data_offset: int
    metadata: dict = dataclasses.field(repr=False, compare=False, default_factory=dict)
    checksum_ok: bool | None = None  # None: not verified


def _f32_hex(value: float) -> str:
    return f"0x{np.array([value], np.float32).view(np.uint32)[0]:08x}"


def _from_f32_hex(text: str) -> float:
    return float(np.array([int(text, 16)], np.uint32).view(np.float32)[0])


def _crc32(data: memoryview) -> int:
    crc = 0
    for lo in range(0, len(data), _IO_CHUNK):
        crc = zlib.crc32(data[lo:lo + _IO_CHUNK], crc)
    return crc


def _seal(weights_crc: int, metadata: dict) -> str:
    """The checksum: CRC-32 of the weights' bytes, continued over the rest of the metadata
    (canonical JSON), so a damaged iteration or parameter is caught as surely as a weight."""
    rest = {k: v for k, v in metadata.items() if k != "checksum"}
    crc = zlib.crc32(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode(), weights_crc)
    return f"crc32:{crc:08x}"


def write(path, weights: np.ndarray, params: Params, *, iteration: int = 0, sequence: int = 0,
          backend: str = "", version: str = "") -> pathlib.Path:
    """Write host float32 ``weights`` and their metadata to ``path`` atomically and durably."""
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"snapshot directory {path.parent} does not exist")
    data = memoryview(np.ascontiguousarray(weights, dtype="<f4")).cast("B")
    metadata = {
        "format": FORMAT, "format_version": str(FORMAT_VERSION), "n": str(weights.size),
        "lr": _f32_hex(params.lr), "gate": _f32_hex(params.gate), "decay": _f32_hex(params.decay),
        "iteration": str(iteration), "sequence": str(sequence), "backend": backend,
        "nap_gpu_version": version,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    metadata["checksum"] = _seal(_crc32(data), metadata)
    header = json.dumps({_TENSOR: {"dtype": "F32", "shape": [weights.size],
                                   "data_offsets": [0, len(data)]},
                         "__metadata__": metadata}, separators=(",", ":")).encode()
    header += b" " * (-(8 + len(header)) % _ALIGN)  # safetensors pads its header with spaces
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<Q", len(header)) + header)
            for lo in range(0, len(data), _IO_CHUNK):
                fh.write(data[lo:lo + _IO_CHUNK])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def _fsync_directory(directory: pathlib.Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened; rename is durable there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def inspect(path, *, verify: bool = True) -> SnapshotInfo:
    """The snapshot's metadata; with ``verify``, its checksum checked (``checksum_ok``)."""
    path = pathlib.Path(path)
    with open(path, "rb") as fh:
        info = _header(path, fh)
        if not verify:
            return info
        fh.seek(info.data_offset)
        crc = 0
        while chunk := fh.read(_IO_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return _replace(info, checksum_ok=_seal(crc, info.metadata) == info.checksum)


def read(path) -> tuple[np.ndarray, SnapshotInfo]:
    """The weights (a fresh host float32 array, the only copy made) and the metadata; raises
    ``SnapshotError`` for a damaged, truncated or foreign file, naming what and where."""
    path = pathlib.Path(path)
    with open(path, "rb") as fh:
        info = _header(path, fh)
        weights = np.empty(info.n, np.float32)
        buffer = memoryview(weights).cast("B")
        fh.seek(info.data_offset)
        crc, done = 0, 0
        while done < len(buffer):
            got = fh.readinto(buffer[done:done + _IO_CHUNK])
            if not got:
                raise SnapshotError(f"{path}: truncated at byte {info.data_offset + done}, "
                                    f"expected {info.data_offset + len(buffer)} bytes")
            crc = zlib.crc32(buffer[done:done + got], crc)
            done += got
    if _seal(crc, info.metadata) != info.checksum:
        raise SnapshotError(f"{path}: checksum mismatch over the weights (bytes "
                            f"{info.data_offset}..{info.data_offset + len(buffer)}) and the "
                            f"metadata: header says {info.checksum}, contents give "
                            f"{_seal(crc, info.metadata)}")
    if not np.dtype("<f4").isnative:
        weights.byteswap(inplace=True)
    for lo in range(0, weights.size, _IO_CHUNK):  # chunks: no n-sized temporaries
        chunk = weights[lo:lo + _IO_CHUNK]
        outside = ~((chunk >= 0) & (chunk <= 1))
        if outside.any():
            bad = lo + int(np.argmax(outside))
            raise SnapshotError(f"{path}: weight {bad} = {float(weights[bad])!r} is not in [0, 1]")
        np.add(chunk, np.float32(0), out=chunk)  # -0.0 never enters an engine
    return weights, _replace(info, checksum_ok=True)


def _header(path: pathlib.Path, fh) -> SnapshotInfo:
    size = os.fstat(fh.fileno()).st_size
    prefix = fh.read(8)
    if len(prefix) < 8:
        raise SnapshotError(f"{path}: too short to be a snapshot ({size} bytes)")
    (length,) = struct.unpack("<Q", prefix)
    if length > min(_MAX_HEADER, size - 8):
        raise SnapshotError(f"{path}: not a nap snapshot (header length {length} at byte 0 "
                            f"does not fit the file's {size} bytes)")
    try:
        header = json.loads(fh.read(length))
        meta = header["__metadata__"]
        tensor = header[_TENSOR]
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"{path}: unreadable header (bytes 8..{8 + length}): {exc!r}") from None
    if meta.get("format") != FORMAT:
        raise SnapshotError(f"{path}: not a nap snapshot (format {meta.get('format')!r})")
    try:
        version = int(meta["format_version"])
        if version > FORMAT_VERSION:
            raise SnapshotError(f"{path}: written in snapshot format version {version}; this "
                                f"nap_gpu reads versions up to {FORMAT_VERSION}: upgrade nap_gpu "
                                f"(the file was written by nap_gpu {meta.get('nap_gpu_version')})")
        n = int(meta["n"])
        begin, end = (int(v) for v in tensor["data_offsets"])
        params = Params(lr=_from_f32_hex(meta["lr"]), gate=_from_f32_hex(meta["gate"]),
                        decay=_from_f32_hex(meta["decay"]))
        info = SnapshotInfo(
            path=str(path), n=n, params=params, iteration=int(meta["iteration"]),
            sequence=int(meta["sequence"]), backend=meta["backend"],
            nap_gpu_version=meta["nap_gpu_version"], created=meta["created"],
            checksum=meta["checksum"], format_version=version, data_offset=8 + length + begin,
            metadata=dict(meta))
    except SnapshotError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"{path}: bad metadata in the header (bytes 8..{8 + length}): "
                            f"{exc!r}") from None
    if tensor.get("dtype") != "F32" or tensor.get("shape") != [n] or end - begin != 4 * n:
        raise SnapshotError(f"{path}: the weights are not {n} float32 values "
                            f"(dtype {tensor.get('dtype')}, shape {tensor.get('shape')})")
    if info.data_offset + 4 * n != size:
        raise SnapshotError(f"{path}: file is {size} bytes, expected "
                            f"{info.data_offset + 4 * n} (truncated or extended)")
    return info


def _replace(info: SnapshotInfo, **changes) -> SnapshotInfo:
    return dataclasses.replace(info, **changes)
