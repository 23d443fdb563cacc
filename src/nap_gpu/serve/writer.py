"""The single writer: every mutating request goes through one thread, in arrival order.

Requests are validated in the event loop, then queued here. The writer takes everything
queued, merges consecutive feedback requests into one ordered batch (one log record, one
fsync for all of them: group commit across requests), applies it through the durable engine,
and only then resolves each request's future, so a request is answered once its events are
in the log. Reads take ``lock`` too, so they never see half of a batch.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Op", "QueueFullError", "Writer", "WriterStoppedError"]

log = logging.getLogger("nap_gpu.serve")

#: Events merged into one batch at most (bounds one record's size and the lock's hold time).
MAX_BATCH_EVENTS = 1 << 20


class QueueFullError(RuntimeError):
    """More events are waiting than ``max_queued`` allows: back off and retry."""


class WriterStoppedError(RuntimeError):
    """The writer is stopping or has failed: no more writes are taken."""


@dataclass
class Op:
    """One mutating request: ``kind`` is "feedback" (ids, qualities), "decay" (k) or
    "snapshot"; ``future`` receives the log sequence after it (or the snapshot path)."""

    kind: str
    ids: np.ndarray | None = None
    quality: np.ndarray | None = None
    k: int = 1
    future: Future = field(default_factory=Future)

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
            if self._queued_events + op.events > self.max_queued:
                raise QueueFullError(f"{self._queued_events:,} events are queued (limit "
                                     f"{self.max_queued:,}); retry later")
            self._queue.append(op)
            self._queued_events += op.events
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
        self._queued_events -= sum(op.events for op in group)
        return group

    def _apply(self, group: list[Op]) -> None:
        kind = group[0].kind
        start = time.perf_counter()
        try:
            with self.lock:  # on_applied too: the health check reads what it records
                result = self._call(kind, group)
                if self.on_applied is not None:
                    self.on_applied(kind, sum(op.events for op in group),
                                    time.perf_counter() - start)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            log.error("write failed", extra={"kind": kind, "error": repr(exc)})
            if not isinstance(exc, (ValueError, TypeError, IndexError)):
                self.failure = exc  # e.g. the disk: the engine refuses writes until reopened
            for op in group:
                op.future.set_exception(exc)
            return
        for op in group:
            op.future.set_result(result)

    def _call(self, kind: str, group: list[Op]):
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
