"""The single writer: every mutating request goes through one thread, in arrival order.

Requests are validated in the event loop, then queued here. The writer takes everything
queued, merges consecutive feedback requests into one ordered batch (one log record, one
fsync for all of them: group commit across requests), applies it through the durable engine,
and only then resolves each request's future, so a request is answered once its events are
in the log. Reads take ``lock`` too, so they never see half of a batch.

The applied order is (sequence, index): requests merged into one record share its sequence
and each learns the index of its first event in the record, so a client can rebuild the
exact order of every write.

The queue is bounded in events; a decay or a snapshot touches every memory, so each counts
as ``n`` events (at most the whole limit: one always fits in an empty queue), and a snapshot
asked for while another is the last thing queued shares that one (nothing can come between).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from ..durable import EngineFailedError

__all__ = ["Op", "QueueFullError", "Writer", "WriterStoppedError"]

log = logging.getLogger("nap_gpu.serve")

#: Events merged into one batch at most (bounds one record's size and the lock's hold time).
MAX_BATCH_EVENTS = 1 << 20
#: Errors after which the engine is as it was before the call (the durable engine rolls a
#: failed append back; the input is validated before it is queued): the writer goes on.
_CONSISTENT = (OSError, ValueError, TypeError, IndexError)


class QueueFullError(RuntimeError):
    """More events are waiting than ``max_queued`` allows: back off and retry."""


class WriterStoppedError(RuntimeError):
    """The writer is stopping or has failed: no more writes are taken."""


@dataclass
class Op:
    """One mutating request: ``kind`` is "feedback" (ids, qualities), "decay" (k) or
    "snapshot"; ``future`` receives (sequence, index of the first event in the record) for
    feedback, the sequence for decay, the snapshot's path for a snapshot."""

    kind: str
    ids: np.ndarray | None = None
    quality: np.ndarray | None = None
    k: int = 1
    future: Future = field(default_factory=Future)
    cost: int = 0  # queue units it holds (set by submit)

    @property
    def events(self) -> int:
        return 0 if self.ids is None else int(self.ids.size)


class Writer:
    def __init__(self, engine, *, max_queued: int, on_applied=None) -> None:
        self.engine = engine
        self.lock = threading.Lock()  # the engine's state: the writer applies, readers read
        self.max_queued = max_queued
        self.on_applied = on_applied  # callable(kind, events, seconds) after each apply
        self.failure: BaseException | None = None
        self.last_error: str | None = None  # the last failed write (the writer went on)
        self._queue: collections.deque[Op] = collections.deque()
        self._queued_events = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="nap-writer", daemon=True)

    # -- the request side (event loop) ----------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping and self.failure is None

    @property
    def queued_events(self) -> int:
        return self._queued_events

    def submit(self, op: Op) -> Future:
        with self._cond:
            if self._stopping or self.failure is not None:
                raise WriterStoppedError("the service is shutting down or its writer failed")
            if op.kind == "snapshot" and self._queue and self._queue[-1].kind == "snapshot":
                return self._queue[-1].future  # taken after this request arrived: it serves
            cost = op.events if op.kind == "feedback" else min(self.engine.n, self.max_queued)
            if self._queued_events + cost > self.max_queued:
                raise QueueFullError(f"{self._queued_events:,} events are queued (limit "
                                     f"{self.max_queued:,}; a decay or snapshot counts as "
                                     f"{min(self.engine.n, self.max_queued):,}); retry later")
            # Running from now on: a cancelled request task cannot cancel the future under
            # the writer (whose set_result would then raise and kill the thread).
            op.future.set_running_or_notify_cancel()
            op.cost = cost
            self._queue.append(op)
            self._queued_events += cost
            self._cond.notify()
        return op.future

    def stop(self, timeout: float | None = None) -> None:
        """Take no more requests, apply everything queued, then return."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    # -- the writer thread ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                group = self._take()
            self._apply(group)

    def _take(self) -> list[Op]:
        """The next ops to apply together: consecutive feedback (up to MAX_BATCH_EVENTS
        events), or one other op. Called with the condition held."""
        group = [self._queue.popleft()]
        if group[0].kind == "feedback":
            events = group[0].events
            while (self._queue and self._queue[0].kind == "feedback"
                   and events + self._queue[0].events <= MAX_BATCH_EVENTS):
                group.append(self._queue.popleft())
                events += group[-1].events
        self._queued_events -= sum(op.cost for op in group)
        return group

    def _apply(self, group: list[Op]) -> None:
        kind = group[0].kind
        start = time.perf_counter()
        try:
            with self.lock:  # on_applied too: the health check reads what it records
                result = self._run_on_engine(kind, group)
                if self.on_applied is not None:
                    self.on_applied(kind, sum(op.events for op in group),
                                    time.perf_counter() - start)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            if isinstance(exc, EngineFailedError) or not isinstance(exc, _CONSISTENT):
                # The engine refuses writes until reopened (e.g. a rollback that did not
                # reach the disk): stop taking writes, /readyz says so.
                self.failure = exc
                log.error("write failed; the writer stops", extra={"kind": kind,
                                                                   "error": repr(exc)})
            else:  # rolled back: nothing of it was applied, the next write may succeed
                self.last_error = repr(exc)
                log.error("write failed; nothing of it was applied", extra={
                    "kind": kind, "error": repr(exc)})
            for op in group:
                op.future.set_exception(exc)
            return
        if kind == "feedback":
            index = 0
            for op in group:
                op.future.set_result((result, index))
                index += op.events
        else:
            group[0].future.set_result(result)

    def _run_on_engine(self, kind: str, group: list[Op]) -> object:
        """One merged group applied through the durable engine: its log sequence (or, for a
        snapshot, the snapshot's path)."""
        eng = self.engine
        if kind == "feedback":
            ids = group[0].ids if len(group) == 1 else np.concatenate([op.ids for op in group])
            q = (group[0].quality if len(group) == 1
                 else np.concatenate([op.quality for op in group]))
            eng.update(ids, q, check_finite=False)  # validated when the request arrived
            return eng.sequence
        if kind == "decay":
            eng.decay(group[0].k)
            return eng.sequence
        if kind == "snapshot":
            return eng.checkpoint()
        raise ValueError(f"unknown op {kind!r}")
