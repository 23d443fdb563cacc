"""The log writer: the active segment, its appends under the fsync policy (every call, or a
group commit by a background flusher), rotation to a new segment, and the rollback of a
failed append. A failure it cannot undo fails the log (`EngineFailedError` from then on).
"""

from __future__ import annotations

import os
import pathlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._files import atomic_file, fsync_directory, write_all
from .errors import EngineFailedError
from .format import seg_name, segment_header

if TYPE_CHECKING:
    from .format import Parts


def _sync(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


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


def create_segment(directory: pathlib.Path, first: int) -> pathlib.Path:
    """A new empty segment, created atomically (temporary file, fsync, rename, fsync dir).
    On failure no segment named ``first`` is left (or _SegmentLeftBehind is raised)."""
    path = directory / seg_name(first)
    with atomic_file(path, sync_directory=False) as fh:
        write_all(fh.fileno(), segment_header(first))
    try:
        fsync_directory(directory)
    except OSError as exc:  # its name may not survive a power loss: records there could vanish
        _withdraw_segment(path, exc)
        raise
    return path


class LogWriter:
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
        path = self.directory / seg_name(first)
        if not reuse:
            create_segment(self.directory, first)
        self._adopt(os.open(path, os.O_WRONLY), path, first)

    def _adopt(self, fd: int, path: pathlib.Path, first: int) -> None:
        """Make ``fd`` (``path``, open for writing) the active segment; close the old one."""
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

    def append(self, parts: Parts) -> None:
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
                path = create_segment(self.directory, first)
                try:
                    fd = os.open(path, os.O_WRONLY)
                except OSError as exc:  # e.g. EMFILE: the segment exists but is not ours
                    _withdraw_segment(path, exc)
                    raise
            except _SegmentLeftBehind as exc:
                self.error = exc
                raise EngineFailedError(f"log rotation to {seg_name(first)} failed and could "
                                        f"not be undone ({exc}); close and reopen the engine "
                                        "(every acknowledged call is in the log)") from exc
            self._adopt(fd, path, first)

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
