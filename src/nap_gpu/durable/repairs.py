"""What a refusal's repair would change: the segments moved aside whole, the segment cut, the
snapshot set aside, the sequences lost, and a sentence saying so. The dry run shows it;
``accept_loss`` does it.
"""

from __future__ import annotations

import pathlib

from .format import SEG_HEADER_SIZE, last_sequence, list_state


def describe(directory: pathlib.Path, repair: dict) -> dict:
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
        segs = list_state(directory)[1]
        mine = next(first for first, p in segs if p == path)
        if kind == "cut":  # this segment from offset, and every later one
            move = [p for first, p in segs if first > mine]
        last = max([last_sequence(p, first) for first, p in segs if p in move]
                   + [last_sequence(path, mine)])
        if offset < SEG_HEADER_SIZE:
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
