"""The worker side of a sharded population: ``ShardActor``, one shard held by a Dask actor.

Owns a shard's engine (an ``Engine``, or with ``state=`` a ``DurableEngine``), filling it
(create, open, load from old shard files), applying the calls the client validated, its
checkpoints, and rolling back its last call (``rollback``, through the durable package's
``cut_log_after``).

Imports the engines, ``snapshot``, ``metrics``, ``backends``, ``seeding`` and ``durable``'s
names. Never Dask: the worker calls it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import backends, snapshot
from .. import metrics as _metrics
from ..durable import DurableEngine, RecoveryError
from ..durable.losses import cut_log_after
from ..engine import Engine
from ..params import Params
from .seeding import shard_weights

if TYPE_CHECKING:
    from .._types import ArrayInput, HostWeights
    from .seeding import ShardInit

__all__ = ["ShardActor"]


class ShardActor:
    """One shard on a Dask worker: an Engine (or a DurableEngine) over ids [start, stop).

    Created empty, then filled by ``create``/``open``/``load``: the population travels as a
    method argument, never inside the task graph. Mutating methods return the shard's log
    sequence (durable shards; ``None`` otherwise), which is what recovery compares.
    """

    def __init__(self) -> None:
        self._eng: Engine | DurableEngine | None = None  # create/open/load make it
        self._options: dict = {}  # a durable shard's DurableEngine.open options (reopen)
        self._every = 0  # checkpoint every this many acknowledged calls (durable)
        self._next_try = 0  # after a failed checkpoint: the sequence to try again at

    def _engine(self) -> Engine | DurableEngine:
        # The client calls a shard only after create/open/load filled it.
        assert self._eng is not None, "the shard holds no population yet"
        return self._eng

    def _durable(self) -> DurableEngine:
        # Log sequences (mutate's check, rollback) exist only on a shard open() made durable.
        assert isinstance(self._eng, DurableEngine), "not a durable shard"
        return self._eng

    def _report(self) -> dict:
        eng = self._engine()
        return {"backend": eng.backend, "iteration": eng.iteration, "params": eng.params,
                "sequence": self._sequence(), "pid": os.getpid()}

    def _sequence(self) -> int | None:
        return getattr(self._eng, "sequence", None)

    # -- population
    def create(self, init: ShardInit, size: int, backend: str, params: Params) -> dict:
        self._eng = Engine(size, backend=backend, init=shard_weights(init, size), params=params)
        return self._report()

    def open(self, directory: str, init: ShardInit | None, size: int, backend: str,
             params: Params | None, options: dict, every: int = 0) -> dict:
        """Open (recover) or create a durable shard; ``init=None`` means "recover only": a
        directory without state is then an error (no ``n``), never a fresh population.
        ``options`` go to ``DurableEngine.open`` (its own snapshots off: see ``mutate``)."""
        self._options, self._every = dict(options, snapshot_every=0), int(every)
        options = self._options
        if init is None:
            self._eng = DurableEngine.open(directory, backend=backend, params=params, **options)
        else:
            self._eng = DurableEngine.open(directory, n=size, backend=backend, params=params,
                                           init=shard_weights(init, size), **options)
        if self._eng.n != size:
            n = self._eng.n
            self.close()
            raise RecoveryError(f"{directory} holds {n} memories, the shard has {size}")
        return self._report()

    def load(self, pieces: Sequence[tuple[str, str, int, int]], backend: str, params: Params,
             iteration: int) -> dict:
        """Adopt ids from old shard snapshots: ``pieces`` are (path, checksum, first, stop)
        ranges of those files, in id order; each file is read whole and verified
        (``snapshot.read``), and must carry the checksum the manifest recorded for it."""
        parts = []
        for path, checksum, first, stop in pieces:
            weights, info = snapshot.read(path)
            if info.checksum != checksum:
                raise snapshot.SnapshotError(f"{path}: checksum {info.checksum} is not the "
                                             f"{checksum} the manifest recorded for it: the "
                                             "file belongs to another save")
            parts.append(weights[first:stop])
        weights = parts[0] if len(parts) == 1 else np.concatenate(parts)
        self._eng = Engine(weights.size, backend=backend, init=weights, params=params)
        self._eng.iteration = iteration
        return self._report()

    # -- the law (inputs validated by the client)
    def mutate(self, expected: int | None, method: str, *args: Any) -> int | None:
        """Apply one mutating call (``method(*args)``). A durable shard must be at log
        sequence ``expected``, the one the client knows acknowledged by every shard; it
        checkpoints here, before the call, never after: a snapshot then never covers a call
        that another shard may not have, so a call cut short can always be rolled back by
        cutting it off the log (``rollback``)."""
        if expected is not None:
            eng = self._durable()
            if eng.sequence != expected:
                raise RecoveryError(f"{eng.directory} is at log sequence {eng.sequence}, the "
                                    f"client expected {expected}")
            if (self._every and eng.sequence - eng.snapshot_sequence >= self._every
                    and eng.sequence >= self._next_try):
                try:
                    eng.checkpoint()
                except OSError:  # the log still holds every call: try again later
                    self._next_try = eng.sequence + self._every
        return getattr(self, method)(*args)

    def rollback(self, sequence: int) -> dict:
        """Undo this durable shard's last call, ``sequence + 1``, which was never
        acknowledged (a call cut short across shards): close, cut its record off the end of
        the log, reopen at ``sequence``."""
        eng = self._durable()
        if eng.sequence == sequence:
            return self._report()
        if eng.sequence != sequence + 1:
            raise RecoveryError(f"{eng.directory} is at log sequence {eng.sequence}: cannot "
                                f"roll back to {sequence} (only one call can be cut short)")
        if eng.snapshot_sequence > sequence:
            raise RecoveryError(f"{eng.directory}: a snapshot covers sequence "
                                f"{eng.snapshot_sequence}, so the call cannot be rolled back "
                                f"to {sequence}")
        directory, backend = eng.directory, eng.backend
        eng.close()
        self._eng = None
        cut_log_after(directory, sequence)
        self._eng = DurableEngine.open(directory, backend=backend, **self._options)
        if self._eng.sequence != sequence:
            raise RecoveryError(f"{directory}: reopened at sequence {self._eng.sequence} after "
                                f"the rollback, not {sequence}")
        return self._report()

    def step(self, quality: ArrayInput, check_finite: bool = False) -> int | None:
        self._engine().step(quality, check_finite=check_finite)
        return self._sequence()

    def update(self, ids: np.ndarray, quality: np.ndarray) -> int | None:
        self._engine().update(ids, quality, check_finite=False)
        return self._sequence()

    def decay(self, k: int) -> int | None:
        self._engine().decay(k)
        return self._sequence()

    def set_params(self, params: Params) -> int | None:
        self._engine().params = params
        return self._sequence()

    # -- reading
    def summary(self, packed_labels: np.ndarray, eps: float) -> _metrics.Summary:
        """The shard's mergeable metrics summary, for its labels packed 8 to a byte."""
        eng = self._engine()
        backend = backends.get(eng.backend)
        labels = np.unpackbits(packed_labels, count=eng.n)
        return _metrics.summarize(eng.weights, backend.asarray(labels), backend,
                                  eps=eps).on_host()

    def save(self, path: str) -> str:
        self._engine().save(path)
        return snapshot.inspect(path, verify=False).checksum

    def to_numpy(self) -> HostWeights:
        return self._engine().to_numpy()

    def ping(self) -> int:
        return os.getpid()

    def close(self) -> None:
        if isinstance(self._eng, DurableEngine):
            self._eng.close()

