"""Durable file writes, written once for every writer: a file appears whole or not at all.

A file is written to a temporary name beside it (``.NAME.tmp-PID``: recovery and cleanup
recognise the pattern), fsynced, renamed over the final name, and the directory fsynced so the
rename survives a power loss. Snapshots, log segments, the sharded manifest, the kernel cache
and the scaling report all write through `atomic_file`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import threading
from collections.abc import Iterator
from typing import BinaryIO, cast

__all__ = ["atomic_file", "fsync_directory", "temporary_name", "write_all"]


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a creation, rename or removal in ``directory`` durable. Raises OSError when the
    directory cannot be opened (EMFILE) or synced (EIO): a skipped sync would let a power loss
    undo the rename, so callers must know. (Windows: directories cannot be opened, and a
    rename is durable there.)"""
    if os.name == "nt":  # pragma: no cover
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(path: pathlib.Path) -> pathlib.Path:
    """Where `atomic_file` writes ``path`` first: ``.NAME.tmp-PID`` beside it. Threads of one
    process writing the same file take turns (`atomic_file` holds a lock per name)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


#: Threads writing the same name must take turns (they share its temporary name). A fixed set
#: of locks, picked by the name's hash: a lock per name would grow with every snapshot a
#: long-running service writes; two names sharing a lock only wait for each other.
_LOCKS = tuple(threading.Lock() for _ in range(64))


def _lock_for(path: pathlib.Path) -> threading.Lock:
    return _LOCKS[hash(path.absolute()) % len(_LOCKS)]


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], *, sync_directory: bool = True) -> Iterator[BinaryIO]:
    """An unbuffered binary file that becomes ``path`` when the block ends without error.

    The data is fsynced before the rename; with ``sync_directory`` (default) the directory is
    fsynced after it, so the new name is durable when the block returns. A caller that must
    handle a failed directory sync itself (the log withdraws a segment it cannot make durable)
    passes ``sync_directory=False`` and calls `fsync_directory`. On any error the temporary
    file is removed and ``path`` is untouched.
    """
    path = pathlib.Path(path)
    tmp = temporary_name(path)
    with _lock_for(path):
        try:
            with open(tmp, "wb", buffering=0) as fh:
                yield cast(BinaryIO, fh)
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    if sync_directory:
        fsync_directory(path.parent)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` to the file descriptor ``fd`` (``os.write`` may write less)."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        if written <= 0:  # pragma: no cover - a regular file never returns 0 for a non-empty write
            raise OSError(errno.EIO, "write returned 0")
        view = view[written:]
