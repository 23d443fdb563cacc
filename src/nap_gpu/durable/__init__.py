"""Durable engines: a write-ahead log plus periodic snapshots in one directory.

``DurableEngine.open("state/", n=...)`` creates the state on first use and recovers it on every
later open: the newest valid snapshot, then a replay of the log records after its sequence
number, through the same Engine operations the live calls used, so the weights are bit for bit
those the last acknowledged call left. Every mutating call is validated first (a rejected call
logs nothing and changes nothing), then appended to the log as one checksummed record, then
applied; a failed append raises and applies nothing. See docs/durability.md.

The modules, one job each (their names are the implementation's; this package's ``__all__``
is the API):

* `format`: the state directory's files and the log's binary format (segments, records);
* `calls`: each mutating call as a record payload, its replay, and the ``decay(k)`` bound;
* `writer`: the log writer (appends, group commit, rotation, rollback of a failed append);
* `recovery`: the snapshot and log scan open runs, and the dry run (`dry_run`);
* `plan`: the `RecoveryPlan` the scan fills, as a dict (`recover_plan`) and as text;
* `repairs`: what a refusal's repair would change; `losses`: ``accept_loss``, which does it;
* `checkpoints`: when snapshots are taken, writing them, retention;
* `lock`: the directory's LOCK; `errors`: what the package raises and warns;
* `engine`: `DurableEngine`, the facade over all of it.
"""

from __future__ import annotations

from .calls import decay_rounds_bound
from .engine import DurableEngine
from .errors import (
    DamagedSnapshotError,
    DurabilityWarning,
    EngineFailedError,
    FormatTooNewError,
    RecoveryError,
)
from .format import LOG_FORMAT_VERSION
from .losses import LOSS_JOURNAL, accept_loss
from .plan import RecoveryPlan
from .recovery import dry_run, recover_plan, recover_report

__all__ = ["DamagedSnapshotError", "DurabilityWarning", "DurableEngine", "EngineFailedError",
           "FormatTooNewError", "LOG_FORMAT_VERSION", "LOSS_JOURNAL", "RecoveryError",
           "RecoveryPlan", "accept_loss", "decay_rounds_bound", "dry_run", "recover_plan",
           "recover_report"]
