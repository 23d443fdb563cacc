"""Dropping log data on purpose, from a closed state, holding its LOCK: ``accept_loss`` makes
a state that open refuses openable at its newest consistent point, keeping what it drops as
evidence beside the state and journaling each repair (`LOSS_JOURNAL`); `cut_log_after` rolls
back a last call that was never acknowledged (a sharded call cut short across shards).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time
from typing import TYPE_CHECKING, Any

from .._files import fsync_directory, write_all
from .errors import RecoveryError
from .format import SEG_HEADER_SIZE, DamagedRecord, list_state, read_records, read_segment_header
from .lock import locked
from .recovery import Recovery, recover_plan
from .repairs import describe

if TYPE_CHECKING:
    from .._types import StrPath

__all__ = ["LOSS_JOURNAL", "accept_loss", "cut_log_after"]

log = logging.getLogger("nap_gpu.durable")

#: What ``accept_loss`` did, one JSON object a line, kept in the state directory.
LOSS_JOURNAL = "accepted-losses.log"


def _aside(path: pathlib.Path, suffix: str) -> pathlib.Path:
    """A free name for evidence kept beside the state (never overwriting earlier evidence)."""
    target, i = path.with_name(path.name + suffix), 0
    while target.exists():
        i += 1
        target = path.with_name(f"{path.name}{suffix}.{i}")
    return target


def _apply_repair(directory: pathlib.Path, exc: RecoveryError) -> dict[str, Any]:
    """Do what the refusal's repair says, keeping every dropped byte as evidence; journal it.
    Returns the journal entry."""
    assert exc.repair is not None, "accept_loss repairs only a refusal that has a repair"
    changes = describe(directory, exc.repair)
    evidence = []
    for path in reversed(changes.move):  # newest first: a crash midway leaves a shorter log
        evidence.append(_rename_aside(path, ".dropped"))
    if changes.cut is not None:
        evidence.append(_cut_aside(*changes.cut))
    if changes.snapshot is not None:
        evidence.append(_rename_aside(changes.snapshot, ".damaged"))
    fsync_directory(directory)
    lost = changes.sequences
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": "accept_loss",
             "directory": str(directory), "refused_because": str(exc),
             "dropped_sequences": None if lost is None else {"from": lost[0], "to": lost[1]},
             "done": changes.text, "evidence": evidence}
    _journal(directory, entry)
    return entry


def _rename_aside(path: pathlib.Path, suffix: str) -> str:
    target = _aside(path, suffix)
    os.replace(path, target)
    return target.name


def _cut_aside(path: pathlib.Path, offset: int) -> str:
    """Truncate ``path`` at ``offset``, its tail first copied (synced) beside it."""
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
    return target.name


def _journal(directory: pathlib.Path, entry: dict[str, Any]) -> None:
    """Log the repair (logger ``nap_gpu.durable``, WARNING) and append it, synced, to the
    directory's `LOSS_JOURNAL`."""
    line = json.dumps(entry)
    log.warning(line)
    fd = os.open(directory / LOSS_JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        write_all(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


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
    refusal (`FormatTooNewError`: upgrade; no usable snapshot), RuntimeError while an engine
    has the directory open, FileNotFoundError for a missing directory."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such state directory")
    with locked(directory):
        dropped = []
        # each repair removes a file, a tail or a snapshot from what recovery reads: bounded
        for _ in range(2 * sum(1 for _ in os.scandir(directory)) + 2):
            try:
                Recovery(directory).run()
                break
            except RecoveryError as exc:
                if exc.repair is None:
                    raise type(exc)(f"{exc} (accept_loss cannot get past this)", exc.path,
                                    exc.offset) from None
                dropped.append(_apply_repair(directory, exc))
        else:  # pragma: no cover - every repair shrinks what recovery reads
            raise RuntimeError(f"{directory}: accept_loss made no progress")
    return {"directory": str(directory), "dropped": dropped, "plan": recover_plan(directory)}


def cut_log_after(directory: pathlib.Path, sequence: int) -> None:
    """Truncate a closed state's log just before record ``sequence + 1``, which must be its
    last (a sharded call cut short across shards is rolled back so), holding the LOCK
    meanwhile. The empty segments later opens started after it are removed."""
    with locked(directory):
        _, segments = list_state(directory)
        later = [path for first, path in segments if first > sequence + 1]
        for path in later:  # each open after the call started one, empty
            if path.stat().st_size > SEG_HEADER_SIZE:
                raise RecoveryError(f"{path}: records after {sequence + 1}", path, 0)
        for path in later:
            path.unlink()
        holding = [path for first, path in segments if first <= sequence + 1]
        if not holding:
            raise RecoveryError(f"{directory}: no log segment holds record {sequence + 1}")
        _truncate_before(holding[-1], sequence + 1)
        fsync_directory(directory)  # the unlinked empty segments


def _truncate_before(path: pathlib.Path, sequence: int) -> None:
    """Cut segment ``path`` at record ``sequence``, its last; RecoveryError if it is not."""
    with open(path, "r+b") as fh:
        size = os.fstat(fh.fileno()).st_size
        read_segment_header(path, fh, size)
        cut = None
        for item in read_records(fh, size):
            if isinstance(item, DamagedRecord):  # open already dropped a torn tail, or raised
                raise RecoveryError(f"{path}: {item.reason} at offset {item.offset}", path,
                                    item.offset)
            if item.sequence == sequence:
                cut = item.offset
            elif item.sequence > sequence:
                raise RecoveryError(f"{path}: record {item.sequence} follows {sequence}")
        if cut is None:
            raise RecoveryError(f"{path}: no record {sequence} to roll back")
        fh.truncate(cut)
        os.fsync(fh.fileno())
