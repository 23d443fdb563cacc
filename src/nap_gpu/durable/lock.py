"""The state directory's LOCK: one process at a time opens or repairs a state (an flock on
``LOCK``, released when its file is closed, or when the holder dies). POSIX only: without
fcntl (Windows) nothing is locked.
"""

from __future__ import annotations

import contextlib
import pathlib
import time
from collections.abc import Iterator
from typing import BinaryIO

try:  # POSIX: one process per state directory
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]  # no fcntl module to type: mypy checks POSIX

_LOCK_WAIT = 2.0  # seconds lock_directory waits for a LOCK held by someone else


def lock_directory(directory: pathlib.Path) -> BinaryIO | None:
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


@contextlib.contextmanager
def locked(directory: pathlib.Path) -> Iterator[None]:
    """Hold the directory's LOCK (`lock_directory`) for the block: repairs of a closed state."""
    lock = lock_directory(directory)
    try:
        yield
    finally:
        if lock is not None:
            lock.close()


def held_elsewhere(directory: pathlib.Path) -> bool:
    """Whether a running process holds the directory's LOCK now (a probe: takes nothing)."""
    if fcntl is None:  # pragma: no cover
        return False
    try:
        with open(directory / "LOCK", "rb") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return True
    except FileNotFoundError:
        pass
    return False
