"""The recovery plan: what opening a state would do (`RecoveryPlan`, filled by the scan in
`nap_gpu.durable.recovery`), and its two renderings: the dict ``recover_plan`` returns and
``nap-gpu recover --json`` prints, and the text ``nap-gpu recover`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ..params import Params

__all__ = ["RecoveryPlan", "Refusal", "Replay", "SegmentRead", "SnapshotCheck", "Status",
           "TornTail"]

#: ``"ok"``: open recovers; ``"empty"``: it creates a new state; ``"missing"``: no directory
#: yet; ``"error"``: it refuses (`RecoveryPlan.error` says why).
Status = Literal["ok", "empty", "missing", "error"]


@dataclass
class SnapshotCheck:
    """One snapshot, newest first: ``"ok"`` (the one open starts from), ``"not needed"`` (an
    older one), or ``"damaged: why"`` (bypassed)."""

    file: str
    sequence: int
    status: str = "not needed"
    iteration: int | None = None  # the chosen snapshot's

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "sequence": self.sequence, "status": self.status}
        if self.iteration is not None:
            out["iteration"] = self.iteration
        return out


@dataclass
class SegmentRead:
    """One log segment replay read (``records``: how many, as far as it got)."""

    file: str
    first_sequence: int
    size: int
    records: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "first_sequence": self.first_sequence, "bytes": self.size,
                "records": self.records}


@dataclass(frozen=True)
class Replay:
    """The records replayed after the snapshot: sequences ``first..last``, and how many of
    each kind (in the order first met)."""

    first: int
    last: int
    records: int
    kinds: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.first, "to": self.last, "records": self.records,
                "kinds": dict(self.kinds)}


@dataclass(frozen=True)
class TornTail:
    """A torn final record (a write a crash cut short; its call never returned): open drops
    it, ``size`` bytes from ``offset``."""

    file: str
    offset: int
    size: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "offset": self.offset, "bytes": self.size, "reason": self.reason}


@dataclass(frozen=True)
class Refusal:
    """Why open refuses (a `RecoveryError`'s message, file and offset), and what
    ``accept_loss`` would drop to get past it (None: nothing can without a backup)."""

    message: str
    file: str | None
    offset: int | None
    accept_loss: str | None


@dataclass
class RecoveryPlan:
    """What ``DurableEngine.open(directory)`` would do, found by a dry run (`dry_run`).

    ``status`` says whether it would recover, create or refuse; the snapshots checked and the
    segments read follow, then (on ``"ok"``) the snapshot it starts from, the replay and the
    state it reaches, the warnings it would give, the actions it would take, and (on
    ``"error"``) the refusal.
    """

    directory: str
    status: Status
    snapshots: list[SnapshotCheck] = field(default_factory=list)
    segments: list[SegmentRead] = field(default_factory=list)
    snapshot: str | None = None  # the file open starts from
    n: int | None = None
    replay: Replay | None = None
    torn_tail: TornTail | None = None
    sequence: int | None = None  # the state reached: the next call gets sequence + 1
    iteration: int | None = None
    params: Params | None = None
    warnings: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    error: Refusal | None = None

    def to_dict(self) -> dict[str, Any]:
        """The plan as ``recover_plan`` returns it (JSON-ready; ``params`` as text; a
        refusal as ``error``, ``error_file``, ``error_offset`` and ``accept_loss``)."""
        if self.status == "missing":
            return {"directory": self.directory, "status": self.status, "error": None,
                    "warnings": list(self.warnings), "actions": list(self.actions)}
        out: dict[str, Any] = {
            "directory": self.directory, "status": self.status,
            "snapshots": [s.to_dict() for s in self.snapshots],
            "segments": [s.to_dict() for s in self.segments], "snapshot": self.snapshot,
            "replay": None if self.replay is None else self.replay.to_dict(),
            "torn_tail": None if self.torn_tail is None else self.torn_tail.to_dict(),
            "sequence": self.sequence, "iteration": self.iteration, "n": self.n,
            "params": None if self.params is None else str(self.params),
            "warnings": list(self.warnings), "actions": list(self.actions),
            "error": None if self.error is None else self.error.message,
        }
        if self.error is not None:
            out.update(error_file=self.error.file, error_offset=self.error.offset,
                       accept_loss=self.error.accept_loss)
        return out

    def render(self) -> str:
        """The plan as text: what ``nap-gpu recover DIR`` prints."""
        lines = [f"state directory: {self.directory}", f"status: {self.status}"]
        lines += [f"  snapshot {s.file}: {s.status}" for s in self.snapshots]
        if self.snapshot:
            lines.append(f"start from: {self.snapshot} (n = {self.n})")
        lines += [f"  log {s.file}: first sequence {s.first_sequence}, {s.records} record(s) "
                  f"read, {s.size} bytes" for s in self.segments]
        if self.replay is not None:
            r = self.replay
            kinds = ", ".join(f"{v} {k}" for k, v in sorted(r.kinds.items())) or "nothing"
            lines.append(f"replay: sequences {r.first}..{r.last} ({r.records} record(s): {kinds})")
            lines.append(f"result: sequence {self.sequence}, iteration {self.iteration}, "
                         f"{self.params}")
        lines += [f"warning: {w}" for w in self.warnings]
        if self.error is not None:
            lines.append(f"error: {self.error.message}")
            if self.error.accept_loss:
                lines.append(f"open refuses; nap-gpu recover DIR --accept-loss would: "
                             f"{self.error.accept_loss} (then check again: there may be more)")
            else:
                lines.append("no repair can get past this without a backup")
        lines += [f"open would: {a}" for a in self.actions]
        return "\n".join(lines)
