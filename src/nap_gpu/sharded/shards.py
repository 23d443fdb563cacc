"""The shards as the client sees them: a handle on each (``Shard``), the description of one
shard's part of a call (``ShardCall``, ``ShardMutation``), and placing shard actors on the
cluster's workers within deadlines (``Cluster``).

Owns creating and releasing actors, the deadlines of shard calls and waiting for a shard's
answer by one (``answer``, ``Stalled``). Knows nothing of faults (``supervisor``'s) or of the
engine. Imports ``dask.distributed`` only when a cluster is used (``distributed()``).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import distributed as _distributed

_PING_TIMEOUT = 10.0  # seconds a live worker has to answer "are you there?" after a failure
_WORKER_TIMEOUT = 60.0  # seconds to wait for a worker to place a shard on


def distributed() -> ModuleType:
    """``dask.distributed``, imported on first use: only a ShardedEngine needs it."""
    try:
        import distributed  # noqa: PLC0415 - only ShardedEngine needs Dask
    except ImportError as exc:
        raise ImportError("ShardedEngine needs dask.distributed: "
                          "pip install 'nap_gpu[dask]'") from exc
    return distributed


@dataclasses.dataclass
class Shard:
    """The client's handle on one shard: where its actor lives, and what it last reported."""

    index: int
    ids: range
    worker: str
    actor: Any  # a dask Actor proxy of ShardActor: its methods return futures
    future: _distributed.Future  # holds the actor alive
    backend: str = ""
    sequence: int | None = None  # the last acknowledged log sequence (durable shards)
    pid: int | None = None  # the worker's process (what its nanny kills to fence it)

    def logged(self) -> int:
        # Recovery and rollbacks run only with state=, where every shard is durable.
        assert self.sequence is not None, f"shard {self.index} is not durable: no log sequence"
        return self.sequence

    def adopt(self, report: dict) -> None:
        """Take in what the shard's actor reported (``ShardActor._report``)."""
        self.backend = report["backend"]
        self.sequence = report["sequence"]
        self.pid = report["pid"]


#: One shard's part of a call: given the shard, start it there (returns a future).
Part: TypeAlias = Callable[[Shard], Any]


class ShardCall:
    """One shard's part of a call that reads or fills it: ``method(*args)`` on its actor.
    Calling it with the shard starts it there and returns the actor's future."""

    def __init__(self, method: str, *args: Any) -> None:
        self.method = method
        self.args = args

    def __call__(self, shard: Shard) -> Any:
        return getattr(shard.actor, self.method)(*self.args)


class ShardMutation(ShardCall):
    """One shard's part of a mutating call: ``ShardActor.mutate`` at the shard's log sequence
    acknowledged when it starts (a shard reopened by recovery brings its own)."""

    def __call__(self, shard: Shard) -> Any:
        return shard.actor.mutate(shard.sequence, self.method, *self.args)


class Stalled(Exception):
    """A shard did not answer within the call's deadline."""


def answer(future: Any, deadline: float | None) -> Any:
    """A shard future's result; ``Stalled`` if it has none by ``deadline`` (monotonic)."""
    if deadline is None or future.done():
        return future.result()
    try:  # a timeout of 0 would fail even a finished future: at least a millisecond
        return future.result(timeout=max(deadline - time.monotonic(), 1e-3))
    except TimeoutError:
        if future.done():  # the shard itself raised a TimeoutError
            return future.result()
        raise Stalled() from None


class Cluster:
    """Where the shards live: makes their actors (instances of ``actor_class``, a ShardActor)
    on the client's workers and lets them go; every shard call has ``call_timeout`` seconds."""

    def __init__(self, client: _distributed.Client, actor_class: type, ranges: Sequence[range],
                 call_timeout: float | None) -> None:
        self.client = client
        self.actor_class = actor_class
        self.ranges = ranges
        self.call_timeout = call_timeout

    def deadline(self) -> float | None:
        """The deadline of a shard call started now (None: no ``call_timeout``)."""
        return None if self.call_timeout is None else time.monotonic() + self.call_timeout

    def ping_timeout(self) -> float:
        """Seconds a worker that should be alive has to answer."""
        if self.call_timeout is None:
            return _PING_TIMEOUT
        return min(_PING_TIMEOUT, self.call_timeout)

    def workers(self, avoid: frozenset = frozenset()) -> list[str]:
        """The cluster's workers but ``avoid``, waiting (up to a minute) for one to exist:
        after a loss the scheduler may still list the dead worker, and a restarted one may
        not be registered yet."""
        deadline = time.monotonic() + _WORKER_TIMEOUT
        while not (workers := sorted(set(self.client.scheduler_info()["workers"]) - avoid)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no worker to place shards on within {_WORKER_TIMEOUT:.0f} s")
            time.sleep(0.1)
        return workers

    def spawn(self, placement: dict[int, str], avoid: frozenset = frozenset()) -> dict[int, Shard]:
        """Empty shard actors, created concurrently: shard index -> worker. An actor whose
        worker leaves the cluster before the actor exists (one the scheduler still listed
        just after it died, or a fenced one) is placed again on a live worker, not waited
        for: a worker restricted to a task that is gone would hold it forever."""
        placement = dict(placement)

        def submit(i: int) -> _distributed.Future:
            return self.client.submit(self.actor_class, actor=True, workers=[placement[i]],
                                      pure=False, key=f"nap-shard-{i:04d}-{uuid.uuid4().hex[:8]}")

        futures = {i: submit(i) for i in placement}
        deadline = time.monotonic() + _WORKER_TIMEOUT
        while pending := [f for f in futures.values() if not f.done()]:
            if time.monotonic() > deadline:
                raise TimeoutError("no worker created a shard actor within "
                                   f"{_WORKER_TIMEOUT:.0f} s")
            try:
                distributed().wait(pending, timeout=0.5)
            except TimeoutError:
                pass
            live = sorted(set(self.client.scheduler_info()["workers"]) - avoid)
            for i, future in futures.items():
                if not future.done() and live and placement[i] not in live:
                    future.cancel()
                    placement[i] = live[i % len(live)]
                    futures[i] = submit(i)
        return {i: Shard(i, self.ranges[i], placement[i], future.result(), future)
                for i, future in futures.items()}

    def retire(self, shard: Shard, close: bool = True) -> None:
        """Let go of a shard's actor: close it if its worker still answers (a durable shard
        releases its directory), then release it."""
        if close:
            try:
                answer(shard.actor.close(), time.monotonic() + self.ping_timeout())
            except Exception:  # its worker is gone: nothing to close
                pass
        shard.future.release()

    def release(self, shards: Iterable[Shard]) -> None:
        """Close every shard that answers and release all their actors."""
        shards = list(shards)
        closing = {}
        for shard in shards:  # all at once: one deadline, not one per shard
            try:
                closing[shard.index] = shard.actor.close()
            except Exception:
                pass
        deadline = time.monotonic() + self.ping_timeout()
        for future in closing.values():
            try:
                answer(future, deadline)
            except Exception:
                pass
        for shard in shards:
            shard.future.release()
