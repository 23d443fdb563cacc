"""The repairs a refusal names, and what each would change: the segments moved aside whole,
the segment cut, the snapshot set aside, the sequences lost, and a sentence saying so. The dry
run shows it; ``accept_loss`` does it.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field, replace

from .format import SEG_HEADER_SIZE, last_sequence, list_state

__all__ = ["Changes", "CutLog", "DropSegments", "DropSnapshot", "Repair", "TrimOverlap",
           "describe"]


@dataclass(frozen=True)
class CutLog:
    """A break at ``offset`` of segment ``file`` (a corrupt or out-of-order record, a damaged
    header, a gap): keep what is before it, drop the rest of it and every later segment."""

    file: pathlib.Path
    offset: int
    from_sequence: int


@dataclass(frozen=True)
class TrimOverlap:
    """Segment ``file`` runs into the next one's sequences from ``offset``: drop its tail from
    there (the later segment, what recovery reads, stays)."""

    file: pathlib.Path
    offset: int
    from_sequence: int


@dataclass(frozen=True)
class DropSegments:
    """Segments recovery must not read (a failed rotation's empty trace, an out-of-order
    segment the snapshot covers): moved aside whole."""

    files: tuple[pathlib.Path, ...]


@dataclass(frozen=True)
class DropSnapshot:
    """A damaged snapshot the log does not reach: set aside, losing the calls
    ``from_sequence..to_sequence`` it covered."""

    file: pathlib.Path
    from_sequence: int
    to_sequence: int


#: What ``accept_loss`` would do to get past one refusal.
Repair = CutLog | TrimOverlap | DropSegments | DropSnapshot


@dataclass(frozen=True)
class Changes:
    """What a repair changes in the directory, and the sentence that says so."""

    move: list[pathlib.Path] = field(default_factory=list)  # segments moved aside whole
    cut: tuple[pathlib.Path, int] | None = None  # a segment cut at an offset
    snapshot: pathlib.Path | None = None  # a snapshot set aside
    sequences: tuple[int, int] | None = None  # lost: first, last as far as intact headers show
    text: str = ""


def describe(directory: pathlib.Path, repair: Repair) -> Changes:
    """What ``repair`` would change in ``directory`` now."""
    if isinstance(repair, DropSnapshot):
        return _said(Changes(snapshot=repair.file,
                             sequences=(repair.from_sequence, repair.to_sequence)))
    if isinstance(repair, DropSegments):
        return _said(Changes(move=list(repair.files)))
    return _said(_cut(directory, repair))


def _cut(directory: pathlib.Path, repair: CutLog | TrimOverlap) -> Changes:
    """A cut at ``repair.offset`` (the whole segment when that is inside its header), and for
    a `CutLog` every later segment too."""
    path = repair.file
    segs = list_state(directory)[1]
    mine = next(first for first, p in segs if p == path)
    move = [p for first, p in segs if first > mine] if isinstance(repair, CutLog) else []
    last = max([last_sequence(p, first) for first, p in segs if p in move]
               + [last_sequence(path, mine)])
    cut = None
    if repair.offset < SEG_HEADER_SIZE:
        move.insert(0, path)
    else:
        cut = (path, repair.offset)
    lost = (repair.from_sequence, last) if last >= repair.from_sequence else None
    return Changes(move=move, cut=cut, sequences=lost)


def _said(changes: Changes) -> Changes:
    """``changes`` with its sentence (sizes as the files are now, before anything is done)."""
    parts = []
    lost, snap, cut, move = changes.sequences, changes.snapshot, changes.cut, changes.move
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
    return replace(changes, text="; ".join(parts))
