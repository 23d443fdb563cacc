"""Snapshots: one population in one file, written atomically, verified on load.

The file is a standard safetensors file (8-byte little-endian header length, a JSON header, then
the raw little-endian float32 weights), so any safetensors reader can open it; nap's metadata
lives in the header's ``__metadata__``: format name and version, n, the law's parameters (as
float32 bit patterns), the iteration and log sequence number, the backend and nap_gpu version
that wrote it, the creation time, and a CRC-32C over the weights' bytes and the metadata. See
docs/snapshots.md for the layout and the reasons behind it.

nap reads and writes the format itself rather than through the safetensors package: writing
streams the caller's weights straight to the file (the package builds the whole payload in
memory first: a second copy of a billion weights) and reading fills the engine's own buffer
with ``readinto`` (one copy in memory, none extra). The tests check that the safetensors
package reads nap's files.

Writes are atomic: a temporary file in the same directory, fsync, rename over the target, fsync
of the directory. A crash leaves either the old file or the new one, never a torn one.

Verification costs next to nothing: the checksum is CRC-32C (the ``crc32c`` package: the CPU's
CRC instructions, ~15 GB/s on one core, against ~4 GB/s for zlib's CRC-32) and runs in a
worker thread, one chunk behind the reads (or beside the writes), together with the range
check; both release the GIL.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import json
import os
import pathlib
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import crc32c
import numpy as np
import numpy.typing as npt

from ._files import atomic_file, write_all
from .params import Params

if TYPE_CHECKING:
    from ._types import HostWeights, StrPath

_T = TypeVar("_T")

__all__ = ["FORMAT", "FORMAT_VERSION", "SnapshotError", "SnapshotInfo", "SnapshotTooNewError", "inspect",
           "read", "write"]

FORMAT = "nap-snapshot"
FORMAT_VERSION = 2  # 2: CRC-32C ("crc32c:..."); 1 (CRC-32, "crc32:...") is still read
_TENSOR = "weights"
_ALIGN = 64  # the weights start on a 64-byte boundary (cache lines; memory-mapping friendly)
_MAX_HEADER = 1 << 20
_IO_CHUNK = 1 << 22  # bytes per read/verify step: 4 MiB, still in cache when it is verified


class SnapshotError(ValueError):
    """A snapshot file cannot be used; the message names the file and what is wrong where."""


class SnapshotTooNewError(SnapshotError):
    """The snapshot was written in a newer format version than this nap_gpu reads: upgrade."""


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


def params_fields(params: Params) -> dict[str, str]:
    """The parameters as a snapshot's (and a sharded manifest's) metadata stores them: each
    float32's bits in hex, ``{"lr": "0x3d4ccccd", ...}`` (`Params.to_bits`)."""
    return {name: f"0x{bits:08x}" for name, bits in zip(_PARAM_NAMES, params.to_bits())}


def params_from_fields(fields: dict) -> Params:
    """`params_fields`' inverse; KeyError or ValueError for a missing or malformed field."""
    return Params.from_bits(int(fields[name], 16) for name in _PARAM_NAMES)


_PARAM_NAMES = ("lr", "gate", "decay")


#: checksum name -> (incremental function(data, crc) -> crc): the name prefixes the stored value
_CHECKSUMS = {
    "crc32c": lambda data, crc: crc32c.crc32c(data, value=crc),
    "crc32": lambda data, crc: zlib.crc32(data, crc),  # format version 1
}
_WRITE_CHECKSUM = "crc32c"


def _checksum_of(text: str) -> str:
    """The algorithm named by a stored checksum ``name:hex`` (unknown names fail the check)."""
    name = text.partition(":")[0]
    return name if name in _CHECKSUMS else _WRITE_CHECKSUM


def _crc(name: str, data: bytes | memoryview, crc: int = 0) -> int:
    update = _CHECKSUMS[name]
    for lo in range(0, len(data), _IO_CHUNK):
        crc = update(data[lo:lo + _IO_CHUNK], crc)
    return crc


def _seal(name: str, weights_crc: int, metadata: dict) -> str:
    """The checksum: the CRC of the weights' bytes, continued over the rest of the metadata
    (canonical JSON), so a damaged iteration or parameter is caught as surely as a weight."""
    rest = {k: v for k, v in metadata.items() if k != "checksum"}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()
    return f"{name}:{_CHECKSUMS[name](text, weights_crc):08x}"


def write(path: StrPath, weights: npt.NDArray[np.float32], params: Params, *,
          iteration: int = 0, sequence: int = 0, backend: str = "", version: str = "") -> pathlib.Path:
    """Write host float32 ``weights`` and their metadata to ``path`` atomically and durably.

    Parameters
    ----------
    path : path
        The file; its directory must exist. A crash leaves the old file or the new one.
    weights : numpy.ndarray
        Host float32 weights (``Engine.save`` writes an engine's).
    params : Params
        The law's parameters, kept with the weights.
    iteration, sequence : int
        The population's dense steps and the log sequence the snapshot covers.
    backend, version : str
        Recorded as the writer's backend and nap_gpu version.

    Returns
    -------
    pathlib.Path
        ``path``, once the file and its directory entry are on disk.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import numpy as np
    >>> import nap_gpu as nap
    >>> from nap_gpu import snapshot
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = snapshot.write(pathlib.Path(tmp) / "w.nap", np.full(8, 0.5, np.float32),
    ...                           nap.Params(), iteration=3)
    ...     info = snapshot.inspect(path)         # the header, the checksum verified
    ...     weights, _ = snapshot.read(path)
    >>> info.n, info.iteration, info.params, info.checksum_ok
    (8, 3, Params(lr=0.05, gate=0.5, decay=0.02), True)
    >>> print(weights)
    [0.5 0.5 0.5 0.5 0.5 0.5 0.5 0.5]
    """
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"snapshot directory {path.parent} does not exist")
    data = np.ascontiguousarray(weights, dtype="<f4").data.cast("B")
    metadata = {
        "format": FORMAT, "format_version": str(FORMAT_VERSION), "n": str(weights.size),
        **params_fields(params),
        "iteration": str(iteration), "sequence": str(sequence), "backend": backend,
        "nap_gpu_version": version,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    with _worker(len(data)) as pool, atomic_file(path) as fh:
        # The checksum is computed beside the writes and patched into the header at the end:
        # it has a fixed width, so the header's length does not change.
        weights_crc = pool.submit(_crc, _WRITE_CHECKSUM, data)
        metadata["checksum"] = _seal(_WRITE_CHECKSUM, 0, metadata)
        prefix = _header_bytes(metadata, len(data))
        write_all(fh.fileno(), prefix)
        write_all(fh.fileno(), data)
        metadata["checksum"] = _seal(_WRITE_CHECKSUM, weights_crc.result(), metadata)
        sealed = _header_bytes(metadata, len(data))
        assert len(sealed) == len(prefix)
        os.pwrite(fh.fileno(), sealed, 0)
    return path


def _header_bytes(metadata: dict, nbytes: int) -> bytes:
    """The 8-byte length and the JSON header, padded so the weights start aligned."""
    header = json.dumps({_TENSOR: {"dtype": "F32", "shape": [nbytes // 4],
                                   "data_offsets": [0, nbytes]},
                         "__metadata__": metadata}, separators=(",", ":")).encode()
    header += b" " * (-(8 + len(header)) % _ALIGN)  # safetensors pads its header with spaces
    return struct.pack("<Q", len(header)) + header


class _Inline:
    """An executor that runs each call at once in the caller's thread: for small files, where
    starting a thread costs more than it could hide (~0.3 ms against a 10K file's 15 µs read)."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Callable[..., _T], *args: Any) -> Future[_T]:
        future: Future[_T] = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future
            future.set_exception(exc)
        return future


def _worker(nbytes: int) -> ThreadPoolExecutor | _Inline:
    """One worker thread for the checksum and checks, or none below two chunks."""
    if nbytes > 2 * _IO_CHUNK:
        return ThreadPoolExecutor(1, thread_name_prefix="nap-snapshot")
    return _Inline()


def _pipelined(chunks: Iterable[_T], verify: Callable[[_T], object], nbytes: int) -> None:
    """Run ``verify(chunk)`` in a worker thread on each chunk that ``chunks`` reads, one chunk
    behind: reading the next chunk overlaps verifying this one (both release the GIL), and
    the single worker verifies chunks in order, so a running checksum can be carried."""
    with _worker(nbytes) as pool:
        pending = None
        for chunk in chunks:
            if pending is not None:
                pending.result()
            pending = pool.submit(verify, chunk)
        if pending is not None:
            pending.result()


def _read_into(path: pathlib.Path, fh: io.FileIO, buffer: memoryview, offset: int) -> None:
    done = 0
    while done < len(buffer):
        got = fh.readinto(buffer[done:])
        if not got:
            raise SnapshotError(f"{path}: truncated at byte {offset + done}, "
                                f"expected {offset + len(buffer)} bytes")
        done += got


def inspect(path: StrPath, *, verify: bool = True) -> SnapshotInfo:
    """The snapshot's metadata; with ``verify``, its checksum checked (``checksum_ok``).
    Raises `SnapshotError` for a file that is not a readable snapshot. See `write` for an
    example."""
    path = pathlib.Path(path)
    with open(path, "rb", buffering=0) as fh:
        info = _header(path, fh)
        if not verify:
            return info
        name = _checksum_of(info.checksum)
        crc = 0

        def chunks() -> Iterator[memoryview]:  # two buffers in turn: one is read while the other is checked
            buffers = [memoryview(bytearray(_IO_CHUNK)) for _ in range(2)]
            for i, lo in enumerate(range(0, 4 * info.n, _IO_CHUNK)):
                view = buffers[i % 2][:min(_IO_CHUNK, 4 * info.n - lo)]
                _read_into(path, fh, view, info.data_offset + lo)
                yield view

        def verify_chunk(view: memoryview) -> None:
            nonlocal crc
            crc = _CHECKSUMS[name](view, crc)

        _pipelined(chunks(), verify_chunk, 4 * info.n)
    return _replace(info, checksum_ok=_seal(name, crc, info.metadata) == info.checksum)


def read(path: StrPath) -> tuple[HostWeights, SnapshotInfo]:
    """The weights (a fresh host float32 array, the only copy made) and the metadata; raises
    ``SnapshotError`` for a damaged, truncated or foreign file, naming what and where.
    See `write` for an example."""
    path = pathlib.Path(path)
    with open(path, "rb", buffering=0) as fh:
        info = _header(path, fh)
        weights = np.empty(info.n, np.float32)
        buffer = weights.data.cast("B")
        name = _checksum_of(info.checksum)
        crc, outside = 0, -1

        def chunks() -> Iterator[tuple[int, HostWeights]]:
            for lo in range(0, len(buffer), _IO_CHUNK):
                _read_into(path, fh, buffer[lo:lo + _IO_CHUNK], info.data_offset + lo)
                yield lo // 4, weights[lo // 4:(lo + _IO_CHUNK) // 4]

        def verify_chunk(item: tuple[int, Any]) -> None:  # (first index, a float32 chunk)
            nonlocal crc, outside
            first, chunk = item
            crc = _CHECKSUMS[name](memoryview(chunk).cast("B"), crc)
            if not np.dtype("<f4").isnative:
                chunk.byteswap(inplace=True)
            if outside < 0 and not (chunk.min() >= 0 and chunk.max() <= 1):  # NaN fails too
                outside = first + int(np.argmax(~((chunk >= 0) & (chunk <= 1))))
            np.add(chunk, np.float32(0), out=chunk)  # -0.0 never enters an engine

        _pipelined(chunks(), verify_chunk, len(buffer))
    sealed = _seal(name, crc, info.metadata)
    if sealed != info.checksum:  # reported before any range fault: the bytes are not the ones written
        raise SnapshotError(f"{path}: checksum mismatch over the weights (bytes "
                            f"{info.data_offset}..{info.data_offset + len(buffer)}) and the "
                            f"metadata: header says {info.checksum}, contents give {sealed}")
    if outside >= 0:
        raise SnapshotError(f"{path}: weight {outside} = {float(weights[outside])!r} is not in [0, 1]")
    return weights, _replace(info, checksum_ok=True)


def _header(path: pathlib.Path, fh: io.FileIO) -> SnapshotInfo:
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
            raise SnapshotTooNewError(f"{path}: written in snapshot format version {version}; "
                                      f"this nap_gpu reads versions up to {FORMAT_VERSION}: "
                                      "upgrade nap_gpu (the file was written by nap_gpu "
                                      f"{meta.get('nap_gpu_version')})")
        n = int(meta["n"])
        begin, end = (int(v) for v in tensor["data_offsets"])
        params = params_from_fields(meta)
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


def _replace(info: SnapshotInfo, **changes: Any) -> SnapshotInfo:
    return dataclasses.replace(info, **changes)
