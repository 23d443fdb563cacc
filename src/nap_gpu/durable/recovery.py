"""Recovery: what opening a state finds and does. The newest snapshot that verifies, then the
log after it, replayed record by record; every break that would lose an acknowledged call is
a `RecoveryError` naming the file and offset (and the repair ``accept_loss`` would make). The
dry run (`dry_run`, and its dict and text forms `recover_plan`, `recover_report`) reads and
verifies the same, changes nothing, and returns the `RecoveryPlan` instead of raising.
"""

from __future__ import annotations

import os
import pathlib
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

from .. import snapshot
from .._files import fsync_directory
from . import calls
from .errors import DamagedSnapshotError, FormatTooNewError, RecoveryError
from .format import (
    SEG_HEADER_SIZE,
    DamagedRecord,
    Record,
    SegmentFile,
    intact_records,
    list_state,
    meta_crc,
    read_records,
    read_segment_header,
    record_offset,
)
from .lock import held_elsewhere
from .plan import RecoveryPlan, Refusal, Replay, SegmentRead, SnapshotCheck, TornTail
from .repairs import CutLog, DropSegments, DropSnapshot, Repair, TrimOverlap, describe

if TYPE_CHECKING:
    from .._types import HostWeights, StrPath
    from ..engine import Engine
    from ..params import Params

__all__ = ["Recovery", "dry_run", "recover_plan", "recover_report"]


def _overlap_error(segs: list[SegmentFile], a: int, b: int) -> RecoveryError:
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


def _check_older_segment(segs: list[SegmentFile], i: int) -> None:
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
            if header_first != first:  # the snapshot covers it: dropping it loses nothing
                raise _out_of_order(path, header_first, first, DropSegments((path,)))
            holds = segs[i + 1].first - first  # records it may hold before the next one starts
            for count, _ in enumerate(intact_records(fh, size), 1):
                if count > holds:
                    raise _overlap_error(segs, i, i + 1)
    except OSError:
        return


class _Bypassed(NamedTuple):
    """A damaged snapshot recovery went past (newest first; ``max`` is the newest)."""

    sequence: int
    path: pathlib.Path
    reason: str


@dataclass
class _Progress:
    """Where the replay stands: the state reached so far and the records applied."""

    sequence: int
    iteration: int
    params: Params
    kinds: dict[str, int] = field(default_factory=dict)
    records: int = 0

    def count(self, kind: int, args: Any) -> None:
        if kind in (calls.STEP, calls.STEP_SCALAR):
            self.iteration += 1
        elif kind == calls.PARAMS:
            self.params = args
        name = calls.KIND_NAMES[kind]
        self.kinds[name] = self.kinds.get(name, 0) + 1
        self.records += 1


class Recovery:
    """One scan of a state directory: the snapshot open starts from and the log it replays,
    written into `plan` as it goes. ``run(engine_factory)`` loads the snapshot and applies the
    log; ``run()`` (the dry run) reads and verifies everything and changes nothing."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self.snapshots, self.segments = list_state(directory)
        self.plan = RecoveryPlan(str(directory), status="empty")  # until a snapshot is found
        self.sequence = 0  # the last record replayed (0: empty)
        self.torn: tuple[pathlib.Path, int] | None = None  # the torn final record's (segment, offset)
        self.damaged: list[pathlib.Path] = []  # the snapshots bypassed

    def run(self, engine_factory: Callable[[Any, snapshot.SnapshotInfo], Engine] | None = None
            ) -> Engine | None:
        """The recovered engine (None: empty, or a dry run); RecoveryError if open refuses."""
        if not self.snapshots:
            if self.segments:
                oldest = self.segments[0].path
                raise RecoveryError(f"{self.directory}: {len(self.segments)} log segment(s) but "
                                    f"no snapshot (e.g. {oldest.name}): the state the log starts "
                                    "from is missing", oldest)
            return None
        weights, chosen, bypassed = self._choose_snapshot(load=engine_factory is not None)
        self.plan.snapshot, self.plan.n = pathlib.Path(chosen.path).name, chosen.n
        engine = None if engine_factory is None else engine_factory(weights, chosen)
        weights = None  # the engine holds its own copy: free this one before the replay
        try:
            self._replay(chosen, engine, bypassed)
        except RecoveryError as exc:
            if not bypassed or isinstance(exc, DamagedSnapshotError):
                raise
            bad = max(bypassed)
            raise type(exc)(
                f"{bad.path}: snapshot is damaged ({bad.reason}); falling back to "
                f"{pathlib.Path(chosen.path).name} needs the log after it, which cannot be "
                f"replayed: {exc}", exc.path, exc.offset, repair=exc.repair) from None
        return engine

    def clear_damage(self) -> bool:
        """Do what open does before the log goes on: truncate the torn final record, rename
        the bypassed snapshots ``*.damaged``. Returns whether any snapshot was set aside."""
        if self.torn is not None:
            path, offset = self.torn
            with open(path, "r+b") as fh:
                fh.truncate(offset)
                os.fsync(fh.fileno())
        for path in self.damaged:
            os.replace(path, path.with_name(path.name + ".damaged"))
        if self.damaged:
            fsync_directory(self.directory)
        return bool(self.damaged)

    # -- the snapshot ----------------------------------------------------------------------
    def _choose_snapshot(self, load: bool
                         ) -> tuple[HostWeights | None, snapshot.SnapshotInfo, list[_Bypassed]]:
        """The newest snapshot that verifies (its weights if ``load``), and those bypassed."""
        chosen, weights, bypassed = None, None, []
        for sequence, meta, path in self.snapshots:
            check = SnapshotCheck(path.name, sequence)
            self.plan.snapshots.append(check)
            if chosen is not None:
                continue
            try:
                weights, info = _read_snapshot(path, meta, load)
            except snapshot.SnapshotTooNewError as exc:
                raise FormatTooNewError(str(exc), path, 0) from None
            except snapshot.SnapshotError as exc:
                check.status = f"damaged: {exc}"
                bypassed.append(_Bypassed(sequence, path, str(exc)))
                continue
            check.status, check.iteration = "ok", info.iteration
            chosen = info
        if chosen is None:
            raise RecoveryError(f"{self.directory}: no usable snapshot: "
                                + "; ".join(b.reason for b in bypassed), bypassed[0].path)
        return weights, chosen, bypassed

    # -- the log ---------------------------------------------------------------------------
    def _replay(self, chosen: snapshot.SnapshotInfo, engine: Engine | None,
                bypassed: list[_Bypassed]) -> None:
        segs = self.segments
        progress = _Progress(chosen.sequence, chosen.iteration, chosen.params)
        # the segment holding sequence + 1 and every later one, contiguous
        start = max([i for i, (first, _) in enumerate(segs) if first <= chosen.sequence + 1],
                    default=0)
        for i in range(start):  # not replayed, but they must not overlap what is
            _check_older_segment(segs, i)
        for i in range(start, len(segs)):
            self._replay_segment(i, progress, chosen.n, engine, follows=i > start)
        _check_reaches(chosen, bypassed, progress.sequence)
        for bad in bypassed:
            self.damaged.append(bad.path)
            self.plan.warnings.append(f"{bad.path}: damaged snapshot bypassed ({bad.reason}); "
                                      f"recovered from {pathlib.Path(chosen.path).name} and the log")
        self.sequence = progress.sequence
        self.plan.status = "ok"
        self.plan.sequence, self.plan.iteration = progress.sequence, progress.iteration
        self.plan.params = progress.params
        self.plan.replay = Replay(chosen.sequence + 1, progress.sequence, progress.records,
                                  progress.kinds)

    def _replay_segment(self, i: int, progress: _Progress, n: int, engine: Engine | None, *,
                        follows: bool) -> None:
        """Read segment ``i`` (applying its records past the snapshot) and advance
        ``progress`` to its last record; ``follows``: after another replayed segment."""
        first, path = self.segments[i]
        read = SegmentRead(path.name, first, path.stat().st_size)
        self.plan.segments.append(read)
        if first > progress.sequence + 1:
            raise RecoveryError(f"{path}: the log has a gap: records {progress.sequence + 1}.."
                                f"{first - 1} are missing before this segment (offset 0)",
                                path, 0, repair=CutLog(path, 0, first))
        if follows and first <= progress.sequence:
            raise _overlap_error(self.segments, i - 1, i)
        with open(path, "rb") as fh:
            _check_header(path, fh, read.size, first)
            expected = first
            for item in read_records(fh, read.size):
                if isinstance(item, DamagedRecord):
                    self._damaged_record(path, read.size, item, expected,
                                         last_segment=i == len(self.segments) - 1)
                    break
                if item.sequence != expected:
                    raise RecoveryError(f"{path}: record at offset {item.offset} has sequence "
                                        f"{item.sequence}, expected {expected}", path,
                                        item.offset, repair=CutLog(path, item.offset, expected))
                expected += 1
                read.records += 1
                if item.sequence <= progress.sequence:
                    continue  # covered by the snapshot
                args = _decoded(path, item, n)
                if engine is not None:
                    calls.apply(engine, item.kind, args)
                progress.count(item.kind, args)
            progress.sequence = max(progress.sequence, expected - 1)

    def _damaged_record(self, path: pathlib.Path, size: int, item: DamagedRecord, expected: int,
                        last_segment: bool) -> None:
        """A torn final record is dropped (noted in the plan); any other damage refuses."""
        if not (item.torn and last_segment):
            where = "" if last_segment else " (not the last segment)"
            raise RecoveryError(f"{path}: corrupt log record at offset {item.offset}: "
                                f"{item.reason}{where}; records from sequence {expected} on "
                                "cannot be replayed", path, item.offset,
                                repair=CutLog(path, item.offset, expected))
        self.torn = (path, item.offset)
        self.plan.torn_tail = TornTail(path.name, item.offset, size - item.offset, item.reason)
        self.plan.warnings.append(f"{path}: dropped a torn final record at offset {item.offset} "
                                  f"({size - item.offset} bytes: {item.reason}): a write cut "
                                  "short by a crash, whose call had not returned")


def _check_reaches(chosen: snapshot.SnapshotInfo, bypassed: list[_Bypassed], sequence: int) -> None:
    """The log must reach every bypassed snapshot's sequence, or falling back loses the calls
    between: DamagedSnapshotError."""
    if sequence >= max((b.sequence for b in bypassed), default=0):
        return
    bad = max(bypassed)
    raise DamagedSnapshotError(
        f"{bad.path}: snapshot is damaged ({bad.reason}) and the log from "
        f"{pathlib.Path(chosen.path).name} reaches only sequence {sequence}, not "
        f"{bad.sequence}: falling back would lose acknowledged calls; restore the file from "
        "a backup", bad.path, 0, repair=DropSnapshot(bad.path, sequence + 1, bad.sequence))


def _read_snapshot(path: pathlib.Path, meta: int, load: bool
                   ) -> tuple[HostWeights | None, snapshot.SnapshotInfo]:
    """A snapshot verified (checksum, and the metadata CRC its name carries): its weights
    (None unless ``load``) and header. SnapshotError if it is damaged."""
    weights = None
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
    return weights, info


def _check_header(path: pathlib.Path, fh: BinaryIO, size: int, first: int) -> None:
    """A replayed segment's header must be intact and name the first sequence its file name
    does; a damaged one cuts the log there (a newer format: no repair)."""
    try:
        header_first = read_segment_header(path, fh, size)
    except FormatTooNewError:
        raise
    except RecoveryError as exc:
        exc.repair = CutLog(path, 0, first)
        raise
    if header_first != first:
        raise _out_of_order(path, header_first, first, CutLog(path, 0, first))


def _out_of_order(path: pathlib.Path, header_first: int, first: int, repair: Repair) -> RecoveryError:
    return RecoveryError(f"{path}: header says first sequence {header_first}, the file name "
                         f"{first}: out of order (offset 16)", path, 16, repair=repair)


def _decoded(path: pathlib.Path, item: Record, n: int) -> Any:
    """The call a replayed record holds, checked to fit ``n`` memories; RecoveryError else."""
    cut = CutLog(path, item.offset, item.sequence)
    try:
        args = calls.decode(item)
    except (ValueError, struct.error, zlib.error) as exc:
        raise RecoveryError(f"{path}: undecodable record at offset {item.offset} (sequence "
                            f"{item.sequence}): {exc}", path, item.offset, repair=cut) from None
    if (problem := calls.misfit(item.kind, args, n)) is not None:
        raise RecoveryError(f"{path}: record at offset {item.offset} {problem}", path,
                            item.offset, repair=cut)
    return args


# -- the dry run ----------------------------------------------------------------------------
def dry_run(directory: StrPath) -> RecoveryPlan:
    """What ``DurableEngine.open(directory)`` would do, as a `RecoveryPlan`: reads and
    verifies everything it would use, changes nothing. A refusal is the plan's ``error``
    (``status`` ``"error"``), not an exception.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import nap_gpu as nap
    >>> from nap_gpu import durable
    >>> tmp = tempfile.TemporaryDirectory()
    >>> state = pathlib.Path(tmp.name) / "state"
    >>> durable.dry_run(state).status
    'missing'
    >>> with nap.DurableEngine.open(state, n=100, seed=0) as eng:
    ...     eng.step(0.9)
    >>> plan = durable.dry_run(state)
    >>> plan.status, plan.sequence, plan.replay.records
    ('ok', 1, 1)
    >>> print(durable.recover_report(plan).splitlines()[-1])
    open would: replay 1 record(s); continue at sequence 2
    >>> tmp.cleanup()
    """
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return RecoveryPlan(str(directory), "missing",
                            actions=["create the directory and a new state (n required)"])
    scan = Recovery(directory)
    plan = scan.plan
    try:
        scan.run()
    except RecoveryError as exc:
        plan.status = "error"
        plan.error = Refusal(str(exc), exc.path, exc.offset, None if exc.repair is None
                             else describe(directory, exc.repair).text)
        return plan
    plan.actions += _actions(scan)
    if plan.status == "ok" and held_elsewhere(directory):
        plan.warnings.append("the directory is open in a running process: this report may "
                             "already be out of date")
    return plan


def _actions(scan: Recovery) -> list[str]:
    """What open would do to the files, in order (a scan that found a state or none)."""
    if scan.plan.status == "empty":
        return ["create a new state (n required)"]
    actions = []
    if scan.torn is not None:
        path, offset = scan.torn
        actions.append(f"truncate {path.name} to {offset} bytes (drop the torn record)")
    actions += [f"rename {path.name} to {path.name}.damaged and write a fresh snapshot"
                for path in scan.damaged]
    assert scan.plan.replay is not None, "a scan that found a state replayed its log"
    return actions + [f"replay {scan.plan.replay.records} record(s); continue at sequence "
                      f"{scan.sequence + 1}"]


def recover_plan(directory: StrPath) -> dict[str, Any]:
    """What ``DurableEngine.open(directory)`` would do, as a dict; a dry run (reads and
    verifies everything it would use, changes nothing). ``status`` is ``"ok"``, ``"empty"``
    (open creates a new state), ``"missing"`` or ``"error"`` (``error`` says why). The same
    as ``dry_run(directory).to_dict()``."""
    return dry_run(directory).to_dict()


def recover_report(directory: StrPath | RecoveryPlan) -> str:
    """The dry run as text (what ``nap-gpu recover DIR`` prints): of ``directory``, or of a
    plan `dry_run` returned."""
    plan = directory if isinstance(directory, RecoveryPlan) else dry_run(directory)
    return plan.render()
