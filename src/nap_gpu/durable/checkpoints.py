"""The state's snapshots: when a durable engine takes one (`Checkpoints`), writing one
recovery will accept, and retention (the snapshots and log segments a checkpoint leaves).
"""

from __future__ import annotations

import pathlib
import time
from typing import TYPE_CHECKING

import numpy as np

from .. import __version__, snapshot
from .._files import fsync_directory
from ..engine import Engine
from .format import list_state, snap_name

if TYPE_CHECKING:
    from .writer import LogWriter

__all__ = ["Checkpoints", "UnsnapshotableWeights", "newest_snapshot", "retain", "write_snapshot"]


class UnsnapshotableWeights(ValueError):
    """The weights are not in [0, 1] (NaN included): a snapshot of them would be rejected."""


def write_snapshot(directory: pathlib.Path, eng: Engine, sequence: int) -> pathlib.Path:
    """Snapshot ``eng`` into ``directory`` as the state at log ``sequence``, durably (the
    directory synced too). Raises UnsnapshotableWeights, writing nothing, for weights outside
    [0, 1]: recovery would reject the file as damaged, so a later open would fall back past
    it, or fail under ``wal_retention="newest"``."""
    host = eng.weights
    if not isinstance(host, np.ndarray):
        host = eng.to_numpy()
    if host.size and not (host.min() >= 0 and host.max() <= 1):  # NaN fails too
        bad = int(np.argmax(~((host >= 0) & (host <= 1))))
        raise UnsnapshotableWeights(f"weight {bad} = {float(host[bad])!r} is not in [0, 1]: no "
                                    "snapshot is written of weights recovery would reject")
    name = snap_name(sequence, eng.n, eng.params, eng.iteration)
    path = snapshot.write(directory / name, host, eng.params, iteration=eng.iteration,
                          sequence=sequence, backend=eng.backend, version=__version__)
    # snapshot.write skips it when the directory cannot be opened
    fsync_directory(directory)
    return path


def newest_snapshot(directory: pathlib.Path) -> tuple[int, float | None]:
    """The newest snapshot's log sequence and modification time (0 and None: none)."""
    snaps, _ = list_state(directory)
    return (snaps[0].sequence, snaps[0].path.stat().st_mtime) if snaps else (0, None)


def retain(directory: pathlib.Path, keep: int, retention: str, active: int | None) -> None:
    """Keep the ``keep`` newest snapshots, and the log back to the oldest of them
    (``retention="kept"``) or the newest (``"newest"``); the active segment (first sequence
    ``active``) and the last one always stay."""
    snaps, segs = list_state(directory)
    for snap in snaps[keep:]:
        snap.path.unlink(missing_ok=True)
    kept = [s.sequence for s in snaps[:keep]]
    if not kept:
        return
    covered = min(kept) if retention == "kept" else max(kept)
    for i, (first, path) in enumerate(segs[:-1]):
        if first != active and segs[i + 1].first - 1 <= covered:
            path.unlink(missing_ok=True)


class Checkpoints:
    """A state's snapshot policy: one every ``every`` logged calls (0: only when asked),
    ``keep`` kept, the log retained as ``retention`` says; and the newest one's sequence and
    time."""

    def __init__(self, directory: pathlib.Path, *, every: int, keep: int, retention: str) -> None:
        self.directory, self.every, self.keep, self.retention = directory, every, keep, retention
        self.sequence: int = 0  # the newest snapshot's (`refresh` reads it from disk)
        self.time: float | None = None

    def refresh(self) -> None:
        """Read the newest snapshot's sequence and time from the directory."""
        self.sequence, self.time = newest_snapshot(self.directory)

    def due(self, sequence: int) -> bool:
        """Whether the call just logged at ``sequence`` is followed by an automatic snapshot."""
        return bool(self.every) and sequence - self.sequence >= self.every

    def postpone(self, sequence: int) -> None:
        """An automatic snapshot at ``sequence`` failed: try again ``every`` calls later."""
        self.sequence = sequence

    def write(self, eng: Engine, sequence: int) -> pathlib.Path:
        """Snapshot ``eng`` as the state at ``sequence`` (`write_snapshot`)."""
        path = write_snapshot(self.directory, eng, sequence)
        self.sequence, self.time = sequence, time.time()
        return path

    def take(self, eng: Engine, sequence: int, log: LogWriter | None) -> pathlib.Path:
        """A checkpoint: the log synced (a snapshot never runs ahead of the log it may fall
        back on), the snapshot, a new log segment, retention."""
        if log is not None:
            log.sync()
        path = self.write(eng, sequence)
        if log is not None:
            log.rotate(sequence + 1)
        retain(self.directory, self.keep, self.retention, None if log is None else log.first)
        return path
