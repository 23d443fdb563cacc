"""Recovery: what opening a state finds and does. The newest snapshot that verifies, then the
log after it, replayed record by record; every break that would lose an acknowledged call is
a `RecoveryError` naming the file and offset (and the repair ``accept_loss`` would make). The
dry run (`recover_plan`, `recover_report`) reads and verifies the same and changes nothing.
"""

from __future__ import annotations

import os
import pathlib
import struct
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import snapshot
from . import calls
from .errors import DamagedSnapshotError, FormatTooNewError, RecoveryError
from .format import (
    SEG_HEADER_SIZE,
    DamagedRecord,
    intact_records,
    list_state,
    meta_crc,
    read_records,
    read_segment_header,
    record_offset,
)
from .lock import held_elsewhere
from .repairs import CutLog, DropSegments, DropSnapshot, Repair, TrimOverlap, describe

if TYPE_CHECKING:
    from .._types import StrPath
    from ..engine import Engine

__all__ = ["recover_plan", "recover_report"]


def _overlap_error(segs: list[tuple[int, pathlib.Path]], a: int, b: int) -> RecoveryError:
    """Segment ``a`` holds records at or past segment ``b``'s first sequence: two segments
    claim the same sequence numbers (e.g. a rotation failed and the log went on in the old
    segment). Recovery cannot know which holds the acknowledged calls, so it refuses."""
    (first_a, path_a), (first_b, path_b) = segs[a], segs[b]
    offset = record_offset(path_a, first_b - first_a)
    later = segs[b:]
    repair: Repair | None
    if all(p.stat().st_size <= SEG_HEADER_SIZE for _, p in later):
        # the later segments hold no record: the trace of a failed rotation; dropping them
        # loses nothing
        repair = DropSegments(tuple(p for _, p in later))
    elif offset is None:
        repair = None
    else:  # the later segment wins (what recovery reads); the older one's overlap is dropped
        repair = TrimOverlap(path_a, offset, first_b)
    return RecoveryError(
        f"{path_a} and {path_b} overlap: {path_a.name} holds a record with sequence "
        f"{first_b} (offset {offset}) or later, but {path_b.name} starts at sequence "
        f"{first_b}: the log forked (two segments claim the same sequence numbers); "
        "recovery cannot tell which holds the acknowledged calls", path_a, offset,
        repair=repair)


def _check_older_segment(segs: list[tuple[int, pathlib.Path]], i: int) -> None:
    """A segment before the one replay starts in: its records are covered by the snapshot,
    so damage in it is no error (it matters only for a fallback, and is reported then); but
    an intact one that runs past the next segment's start, or whose header names another
    first sequence, means the log is not one sequence: RecoveryError naming the files."""
    first, path = segs[i]
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            try:
                header_first = read_segment_header(path, fh, size)
            except RecoveryError:
                return  # damaged: the snapshot covers it
            if header_first != first:
                raise RecoveryError(f"{path}: header says first sequence {header_first}, the "
                                    f"file name {first}: out of order (offset 16)", path, 16,
                                    repair=DropSegments((path,)))
            holds = segs[i + 1][0] - first  # records it may hold before the next one starts
            for count, _ in enumerate(intact_records(fh, size), 1):
                if count > holds:
                    raise _overlap_error(segs, i, i + 1)
    except OSError:
        return


class Recovery:
    """What open would do: the snapshot it starts from and the log it replays. With
    ``engine_factory`` the snapshot is loaded and the log applied; without it (the dry run)
    everything is read and verified and nothing is changed."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self.snapshots, self.segments = list_state(directory)
        self.report: dict = {
            "directory": str(directory), "status": None, "snapshots": [], "segments": [],
            "snapshot": None, "replay": None, "torn_tail": None, "sequence": None,
            "iteration": None, "n": None, "params": None, "warnings": [], "actions": [],
            "error": None,
        }
        self.torn: tuple[pathlib.Path, int, int] | None = None  # (path, offset, size)
        self.damaged: list[pathlib.Path] = []

    def warn(self, message: str) -> None:
        self.report["warnings"].append(message)

    def run(self, load: bool,
            engine_factory: Callable[[Any, snapshot.SnapshotInfo], Engine] | None = None
            ) -> Engine | None:
        snaps, segs = self.snapshots, self.segments
        if not snaps:
            if segs:
                raise RecoveryError(f"{self.directory}: {len(segs)} log segment(s) but no "
                                    f"snapshot (e.g. {segs[0][1].name}): the state the log "
                                    "starts from is missing", segs[0][1])
            self.report["status"] = "empty"
            return None
        failures, chosen, weights = [], None, None
        for sequence, meta, path in snaps:
            entry = {"file": path.name, "sequence": sequence, "status": "not needed"}
            self.report["snapshots"].append(entry)
            if chosen is not None:
                continue
            try:
                if load:
                    weights, info = snapshot.read(path)
                else:
                    info = snapshot.inspect(path, verify=True)
                    if not info.checksum_ok:
                        raise snapshot.SnapshotError(f"{path}: checksum mismatch in the weights "
                                                     f"(bytes {info.data_offset}..)")
                if meta != meta_crc(info.n, info.params, info.iteration, info.sequence):
                    raise snapshot.SnapshotError(
                        f"{path}: the metadata (n, parameters, iteration, sequence) do not "
                        f"match the CRC-32 {meta:08x} in the file name (bytes 8..{info.data_offset})")
            except snapshot.SnapshotTooNewError as exc:
                raise FormatTooNewError(str(exc), path, 0) from None
            except snapshot.SnapshotError as exc:
                entry["status"] = f"damaged: {exc}"
                failures.append((sequence, path, str(exc)))
                continue
            entry.update(status="ok", iteration=info.iteration)
            chosen = info
        if chosen is None:
            raise RecoveryError(f"{self.directory}: no usable snapshot: "
                                + "; ".join(msg for _, _, msg in failures), failures[0][1])
        self.report.update(snapshot=pathlib.Path(chosen.path).name, n=chosen.n)
        engine = None if engine_factory is None else engine_factory(weights, chosen)
        weights = None
        try:
            return self._replay(chosen, engine, failures)
        except RecoveryError as exc:
            if not failures or isinstance(exc, DamagedSnapshotError):
                raise
            bad = max(failures)
            raise type(exc)(
                f"{bad[1]}: snapshot is damaged ({bad[2]}); falling back to "
                f"{pathlib.Path(chosen.path).name} needs the log after it, which cannot be "
                f"replayed: {exc}", exc.path, exc.offset, repair=exc.repair) from None

    def _replay(self, chosen: snapshot.SnapshotInfo, engine: Engine | None,
                failures: list[tuple[int, pathlib.Path, str]]) -> Engine | None:
        segs = self.segments
        sequence, iteration, params = chosen.sequence, chosen.iteration, chosen.params
        kinds: dict[str, int] = {}
        replayed = 0
        # the segment holding sequence + 1 and every later one, contiguous
        start = 0
        for i, (first, _) in enumerate(segs):
            if first <= sequence + 1:
                start = i
        for i in range(start):  # not replayed, but they must not overlap what is
            _check_older_segment(segs, i)
        for i in range(start, len(segs)):
            first, path = segs[i]
            last_segment = i == len(segs) - 1
            size = path.stat().st_size
            seg_entry: dict[str, Any] = {"file": path.name, "first_sequence": first, "bytes": size,
                                         "records": 0}
            self.report["segments"].append(seg_entry)
            if first > sequence + 1:
                raise RecoveryError(f"{path}: the log has a gap: records {sequence + 1}.."
                                    f"{first - 1} are missing before this segment (offset 0)",
                                    path, 0, repair=CutLog(path, 0, first))
            if i > start and first <= sequence:
                raise _overlap_error(segs, i - 1, i)
            with open(path, "rb") as fh:
                try:
                    header_first = read_segment_header(path, fh, size)
                except FormatTooNewError:
                    raise
                except RecoveryError as exc:
                    exc.repair = CutLog(path, 0, first)
                    raise
                if header_first != first:
                    raise RecoveryError(f"{path}: header says first sequence {header_first}, "
                                        f"the file name {first}: out of order (offset 16)",
                                        path, 16, repair=CutLog(path, 0, first))
                expected = first
                for item in read_records(fh, size):
                    if isinstance(item, DamagedRecord):
                        offset, reason = item.offset, item.reason
                        if item.torn and last_segment:
                            self.torn = (path, offset, size)
                            self.report["torn_tail"] = {"file": path.name, "offset": offset,
                                                        "bytes": size - offset, "reason": reason}
                            self.warn(f"{path}: dropped a torn final record at offset {offset} "
                                      f"({size - offset} bytes: {reason}): a write cut short by "
                                      "a crash, whose call had not returned")
                            break
                        where = "" if last_segment else " (not the last segment)"
                        raise RecoveryError(f"{path}: corrupt log record at offset {offset}: "
                                            f"{reason}{where}; records from sequence {expected} "
                                            "on cannot be replayed", path, offset,
                                            repair=CutLog(path, offset, expected))
                    offset, rec_seq, kind = item.offset, item.sequence, item.kind
                    cut = CutLog(path, offset, expected)
                    if rec_seq != expected:
                        raise RecoveryError(f"{path}: record at offset {offset} has sequence "
                                            f"{rec_seq}, expected {expected}", path, offset,
                                            repair=cut)
                    expected += 1
                    seg_entry["records"] += 1
                    if rec_seq <= sequence:
                        continue  # covered by the snapshot
                    try:
                        args = calls.decode(item)
                    except (ValueError, struct.error, zlib.error) as exc:
                        raise RecoveryError(f"{path}: undecodable record at offset {offset} "
                                            f"(sequence {rec_seq}): {exc}", path, offset,
                                            repair=cut) from None
                    if (problem := calls.misfit(kind, args, chosen.n)) is not None:
                        raise RecoveryError(f"{path}: record at offset {offset} {problem}", path,
                                            offset, repair=cut)
                    if engine is not None:
                        calls.apply(engine, kind, args)
                    if kind in (calls.STEP, calls.STEP_SCALAR):
                        iteration += 1
                    elif kind == calls.PARAMS:
                        params = args
                    kinds[calls.KIND_NAMES[kind]] = kinds.get(calls.KIND_NAMES[kind], 0) + 1
                    replayed += 1
                sequence = max(sequence, expected - 1)
        needed = max((s for s, _, _ in failures), default=0)
        if sequence < needed:
            bad = max(failures)
            raise DamagedSnapshotError(
                f"{bad[1]}: snapshot is damaged ({bad[2]}) and the log from "
                f"{pathlib.Path(chosen.path).name} reaches only sequence {sequence}, not "
                f"{bad[0]}: falling back would lose acknowledged calls; restore the file from "
                "a backup", bad[1], 0,
                repair=DropSnapshot(bad[1], sequence + 1, bad[0]))
        for _, path, msg in failures:
            self.damaged.append(path)
            self.warn(f"{path}: damaged snapshot bypassed ({msg}); recovered from "
                      f"{pathlib.Path(chosen.path).name} and the log")
        self.report.update(status="ok", sequence=sequence, iteration=iteration,
                           params=str(params),
                           replay={"from": chosen.sequence + 1, "to": sequence,
                                   "records": replayed, "kinds": kinds})
        self.sequence, self.iteration, self.params = sequence, iteration, params
        return engine


def recover_plan(directory: StrPath) -> dict[str, Any]:
    """What ``DurableEngine.open(directory)`` would do, as a dict; a dry run (reads and
    verifies everything it would use, changes nothing). ``status`` is ``"ok"``, ``"empty"``
    (open creates a new state), ``"missing"`` or ``"error"`` (``error`` says why)."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return {"directory": str(directory), "status": "missing", "error": None,
                "warnings": [], "actions": ["create the directory and a new state (n required)"]}
    rec = Recovery(directory)
    report = rec.report
    try:
        rec.run(load=False)
    except RecoveryError as exc:
        report.update(status="error", error=str(exc), error_file=exc.path, error_offset=exc.offset,
                      accept_loss=None if exc.repair is None
                      else describe(directory, exc.repair).text)
        return report
    actions = report["actions"]
    if report["status"] == "empty":
        actions.append("create a new state (n required)")
        return report
    if rec.torn:
        actions.append(f"truncate {rec.torn[0].name} to {rec.torn[1]} bytes (drop the torn record)")
    for path in rec.damaged:
        actions.append(f"rename {path.name} to {path.name}.damaged and write a fresh snapshot")
    actions.append(f"replay {report['replay']['records']} record(s); continue at sequence "
                   f"{report['sequence'] + 1}")
    if held_elsewhere(directory):
        report["warnings"].append("the directory is open in a running process: "
                                  "this report may already be out of date")
    return report


def recover_report(directory: StrPath) -> str:
    """``recover_plan`` as text (what ``nap-gpu recover DIR`` prints)."""
    plan = recover_plan(directory)
    lines = [f"state directory: {plan['directory']}", f"status: {plan['status']}"]
    for s in plan.get("snapshots", []):
        lines.append(f"  snapshot {s['file']}: {s['status']}")
    if plan.get("snapshot"):
        lines.append(f"start from: {plan['snapshot']} (n = {plan['n']})")
    for s in plan.get("segments", []):
        lines.append(f"  log {s['file']}: first sequence {s['first_sequence']}, "
                     f"{s['records']} record(s) read, {s['bytes']} bytes")
    if plan.get("replay"):
        r = plan["replay"]
        kinds = ", ".join(f"{v} {k}" for k, v in sorted(r["kinds"].items())) or "nothing"
        lines.append(f"replay: sequences {r['from']}..{r['to']} ({r['records']} record(s): {kinds})")
        lines.append(f"result: sequence {plan['sequence']}, iteration {plan['iteration']}, "
                     f"{plan['params']}")
    for w in plan.get("warnings", []):
        lines.append(f"warning: {w}")
    if plan.get("error"):
        lines.append(f"error: {plan['error']}")
        if plan.get("accept_loss"):
            lines.append(f"open refuses; nap-gpu recover DIR --accept-loss would: "
                         f"{plan['accept_loss']} (then check again: there may be more)")
        elif plan.get("status") == "error":
            lines.append("no repair can get past this without a backup")
    for a in plan.get("actions", []):
        lines.append(f"open would: {a}")
    return "\n".join(lines)

