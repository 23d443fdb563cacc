"""The client of a sharded population: ``ShardedEngine``.

Owns the engine's API: validating every call with the Engine's own rules before anything is
sent, routing each shard its part (slices, partitioned events, packed labels), the engine's
parameters and iteration, saving and loading a sharded snapshot, one call at a time, and
the engine's lifetime.

Running the calls and their faults is ``supervisor``'s, the formats ``manifest``'s, the
initial weights ``seeding``'s, dask arrays ``dask_arrays``'; the shards themselves are
``actor``'s ``ShardActor``. Imports those modules, ``shards`` (the calls' descriptions),
``_inputs``, ``backends``, ``metrics`` and ``params``; Dask only when first used.
"""

from __future__ import annotations

import functools
import numbers
import pathlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import numpy as np

from .. import _inputs, backends
from .. import metrics as _metrics
from ..params import Params
from . import dask_arrays
from .actor import ShardActor
from .manifest import (
    SavedShards,
    check_layout,
    read_manifest,
    remove_earlier_saves,
    shard_bounds,
    shard_file_names,
    write_manifest,
)
from .seeding import initial_parts
from .shards import Cluster, Part, ShardCall, ShardMutation, distributed
from .supervisor import CALL_TIMEOUT, ShardsLostError, Supervisor

if TYPE_CHECKING:
    import dask.array
    import distributed as _distributed

    from .._types import ArrayInput, HostWeights, InitialWeights, Labels, StrPath
    from .seeding import Seed

_P = ParamSpec("_P")
_R = TypeVar("_R")

__all__ = ["ShardedEngine"]

_SNAPSHOT_EVERY = 50  # DurableEngine.open's default, kept for state_options["snapshot_every"]


def _serialized(method: Callable[Concatenate[ShardedEngine, _P], _R]
                ) -> Callable[Concatenate[ShardedEngine, _P], _R]:
    """One call at a time: routing, acknowledgements and recovery assume it."""
    @functools.wraps(method)
    def locked(self: ShardedEngine, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._lock:
            if self._closed:
                raise ValueError("the ShardedEngine is closed")
            if self._supervisor.lost is not None:
                raise ShardsLostError(*self._supervisor.lost)
            return method(self, *args, **kwargs)
    return locked


class ShardedEngine:
    """A population of ``n`` weights split into ``shards`` contiguous id ranges, each an
    Engine resident on a Dask worker: the same methods and results as ``Engine``.

    Parameters
    ----------
    n, backend, seed, init, params
        As for ``Engine``; the same ``seed`` gives the same initial weights as
        ``Engine(n, seed=seed)`` (each shard makes its own slice). ``backend`` is resolved on
        each worker (``"auto"``: that worker's best). ``seed`` may be None, an int, a
        sequence of ints or a SeedSequence (not a Generator: its state cannot be split).
    shards : int
        Number of shards, 1 <= shards <= n; boundaries as ``numpy.array_split`` cuts them.
    client : distributed.Client, optional
        The cluster (default: the current client). Shards are placed round-robin over its
        workers.
    state : path, optional
        Make every shard durable: ``DurableEngine.open(state/shard-XXXX, ...)`` (write-ahead
        log + snapshots) on a filesystem every worker reaches. A shard lost with its worker
        is then recovered on a surviving worker with nothing acknowledged lost; opening an
        existing state recovers it. ``state_options`` go to ``DurableEngine.open``
        (``snapshot_every`` is applied by the shards themselves, after a call is
        acknowledged everywhere, so that a call cut short can always be rolled back).
    call_timeout : float or None
        Seconds every shard has to answer each call (default ``CALL_TIMEOUT``, 60 s; None:
        wait forever). A shard that does not is stalled: the call raises
        ``CallTimeoutError``; with ``state`` its worker is first killed through its nanny
        (fenced: it can never write again), its shards reopened elsewhere and the call rolled
        back on every shard, so it had no effect and the engine goes on; without ``state`` the
        engine fails (``ShardsLostError``). It bounds every shard call, opening and recovering
        a shard included: keep it above the slowest (a snapshot or a replay of a large shard).

    Notes
    -----
    Every call validates all of its input on the client first (a rejected call reaches no
    shard), runs on the shards concurrently and returns when all have acknowledged. A
    shard lost without ``state`` raises ``ShardsLostError``, and so does every later call.

    Examples
    --------
    >>> import nap_gpu as nap
    >>> from dask.distributed import Client, LocalCluster
    >>> cluster = LocalCluster(n_workers=2, processes=False, dashboard_address=None)
    >>> client = Client(cluster)
    >>> eng = nap.ShardedEngine(1000, shards=2, client=client, seed=0)
    >>> eng.step(0.9)
    >>> one = nap.Engine(1000, seed=0)  # the same seed: the same initial weights
    >>> one.step(0.9)
    >>> bool((eng.to_numpy() == one.to_numpy()).all()), eng.bounds  # bit for bit
    (True, (0, 500, 1000))
    >>> eng.close(); client.close(); cluster.close()
    """

    _actor = ShardActor  # what holds a shard on its worker

    def __init__(self, n: int, *, shards: int, client: _distributed.Client | None = None,
                 backend: str = "auto", seed: Seed = None, init: InitialWeights = "uniform",
                 params: Params | None = None, state: StrPath | None = None,
                 state_options: dict[str, Any] | None = None,
                 call_timeout: float | None = CALL_TIMEOUT, _saved: SavedShards | None = None) -> None:
        # _saved: the save ShardedEngine.load starts from (then neither init nor state)
        n = _inputs.whole(n, "n", minimum=1)
        self._params = _inputs.law_params(params, default=Params())
        call_timeout = _checked_call_timeout(call_timeout)
        options = dict(state_options or {})
        every = _checked_snapshot_every(options.pop("snapshot_every", _SNAPSHOT_EVERY))
        self._bounds = shard_bounds(n, _checked_shards(shards, n))
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a name or 'auto', got {type(backend).__name__}")
        client = distributed().get_client() if client is None else client
        self._n = n
        self._ranges = [range(a, b) for a, b in zip(self._bounds[:-1], self._bounds[1:])]
        self._backend = backend
        self.iteration = 0 if _saved is None else _saved.iteration
        self._state = None if state is None else pathlib.Path(state).resolve()  # None: in memory
        self._lock = threading.RLock()
        self._closed = False
        self._supervisor = Supervisor(Cluster(client, self._actor, self._ranges, call_timeout),
                                      backend=backend, state=self._state, state_options=options,
                                      snapshot_every=every)
        if _saved is not None:
            self._load_shards(_saved)
        elif self._state is None:
            inits = initial_parts(init, seed, n)
            self._supervisor.start({i: ShardCall("create", inits(r), len(r), backend, self._params)
                                    for i, r in enumerate(self._ranges)})
        else:  # the state's own parameters unless given (as DurableEngine.open)
            inits = initial_parts(init, seed, n)
            self._state.mkdir(parents=True, exist_ok=True)
            check_layout(self._state, n, self._bounds)
            self.iteration, self._params = self._supervisor.open_state(inits, params)

    def _load_shards(self, saved: SavedShards) -> None:
        """Fill each shard from the saved shard files its ids fall in."""
        self._supervisor.start({i: ShardCall("load", saved.pieces(r), self._backend, self._params,
                                             self.iteration)
                                for i, r in enumerate(self._ranges)})

    # -- state ---------------------------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of memories, over all shards."""
        return self._n

    @property
    def shards(self) -> int:
        """Number of shards."""
        return len(self._ranges)

    @property
    def bounds(self) -> tuple[int, ...]:
        """Shard i holds ids ``range(bounds[i], bounds[i + 1])``."""
        return self._bounds

    @property
    def backends(self) -> tuple[str, ...]:
        """Each shard's backend, as its worker resolved it."""
        return tuple(s.backend for s in self._supervisor.shards)

    @property
    def workers(self) -> tuple[str, ...]:
        """Each shard's worker address."""
        return tuple(s.worker for s in self._supervisor.shards)

    @property
    def params(self) -> Params:
        """The law's parameters; assigning a `Params` sets them on every shard."""
        return self._params

    @params.setter
    def params(self, value: Params) -> None:
        self._set_params(_inputs.law_params(value))

    @_serialized
    def _set_params(self, value: Params) -> None:
        self._supervisor.run(self._everywhere(ShardMutation, "set_params", value), mutating=True)
        self._params = value

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        state = "" if self._state is None else f", state={str(self._state)!r}"
        return (f"ShardedEngine(n={self._n}, shards={self.shards}, params={self._params}, "
                f"iteration={self.iteration}{state})")

    @_serialized
    def to_numpy(self) -> HostWeights:
        """All n weights gathered on the client (n * 4 bytes moved): for checks and exports."""
        parts = self._supervisor.run(self._everywhere(ShardCall, "to_numpy"), mutating=False)
        return np.concatenate([parts[i] for i in range(self.shards)])

    def synchronize(self) -> None:
        """Nothing to wait for: every call returns once each shard has acknowledged it (as
        ``Engine.synchronize`` after a device's queued work)."""

    def _everywhere(self, kind: type[ShardCall], method: str, *args: Any) -> dict[int, Part]:
        """The same part (``kind(method, *args)``) for every shard."""
        return {i: kind(method, *args) for i in range(self.shards)}

    # -- the law -------------------------------------------------------------------------
    @_serialized
    def step(self, quality: ArrayInput | dask.array.Array, *, check_finite: bool = True) -> None:
        """Dense step (see ``Engine.step``): a scalar is broadcast; an array sends each shard
        only its slice; a dask array is rechunked to the shards and each block stepped on
        the shard's own worker, never passing through the client."""
        if dask_arrays.is_dask_array(quality) and quality.ndim == 0:
            quality = quality.compute()  # one number for every memory
        if dask_arrays.is_dask_array(quality):
            self._step_dask(quality, check_finite)
        else:
            q = _inputs.quality(quality, self._n, backends.best_host(), check_finite=check_finite)
            if isinstance(q, float):
                self._supervisor.run(self._everywhere(ShardMutation, "step", q), mutating=True)
            else:
                self._supervisor.run({i: ShardMutation("step", q[r.start:r.stop])
                                      for i, r in enumerate(self._ranges)}, mutating=True)
        self.iteration += 1

    def _step_dask(self, quality: dask.array.Array, check_finite: bool) -> None:
        client, timeout = self._supervisor.cluster.client, self._supervisor.cluster.call_timeout
        blocks = dask_arrays.shard_blocks(client, quality, self._ranges, timeout)
        if check_finite:
            dask_arrays.require_finite(client, blocks, self.workers, self._ranges, timeout)
        self._supervisor.run(dask_arrays.step_parts(client, blocks), mutating=True)

    @_serialized
    def update(self, ids: ArrayInput, quality: ArrayInput, *, check_finite: bool = True) -> None:
        """Sparse ordered batch (see ``Engine.update``): each shard gets its own events, in
        their original order, ids made shard-local."""
        ids_, q = _inputs.events(ids, quality, self._n, backends.best_host(), check_finite=check_finite)
        batches = self._partition(ids_, q)
        # Durable shards take every call, empty ones too: their log sequences then stay
        # equal, so a reopen can tell a call cut short across shards.
        self._supervisor.run({i: ShardMutation("update", *batch) for i, batch in batches.items()
                              if batch[0].size or self._state is not None}, mutating=True)

    def _partition(self, ids: np.ndarray, q: np.ndarray) -> dict[int, tuple]:
        """Each shard's (local ids, qualities): a stable partition by owner, so every id's
        events keep their order (ids of different shards never interact). Local ids travel
        as uint32 where a shard allows: 8 bytes an event, not 12."""
        starts = np.asarray(self._bounds[:-1], np.int64)
        owner = np.searchsorted(starts[1:], ids, side="right")
        local = ids - starts[owner]
        if max(len(r) for r in self._ranges) <= 1 << 32:
            local = local.astype(np.uint32)
        if self.shards == 1:
            return {0: (local, q)}
        # NumPy's stable sort is a radix sort for 16-bit keys: O(m)
        key = owner.astype(np.uint16) if self.shards <= 1 << 16 else owner
        order = np.argsort(key, kind="stable")
        ends = np.cumsum(np.bincount(owner, minlength=self.shards)).tolist()
        local, q = local[order], q[order]
        return {i: (local[a:b], q[a:b]) for i, (a, b) in enumerate(zip([0, *ends], ends))}

    @_serialized
    def decay(self, k: int = 1) -> None:
        """Passive decay only, ``k`` times, for every memory."""
        self._supervisor.run(self._everywhere(ShardMutation, "decay", _inputs.repeat_count(k)),
                             mutating=True)

    # -- monitoring ----------------------------------------------------------------------
    @_serialized
    def metrics(self, labels: Labels, *, eps: float = _metrics.DEFAULT_EPS) -> _metrics.Metrics:
        """``Engine.metrics``, exactly: each shard summarises its part where it lives
        (integer sums, distinct weights with counts) and the client merges the summaries;
        the weights themselves never leave the shards."""
        _metrics.check_eps(eps)
        host_labels = _inputs.labels(labels, self._n)
        packed = [np.packbits(host_labels[r.start:r.stop]) for r in self._ranges]
        parts = self._supervisor.run({i: ShardCall("summary", bits, eps) for i, bits in enumerate(packed)},
                                     mutating=False)
        return _metrics.combine(_metrics.merge([parts[i] for i in range(self.shards)]), eps=eps)

    # -- snapshots -----------------------------------------------------------------------
    @_serialized
    def save(self, directory: StrPath) -> pathlib.Path:
        """Write one snapshot per shard (each worker its own file, in ``directory`` on a
        filesystem every worker reaches), then the manifest, atomically and last: a save cut
        short leaves the previous one loadable. Returns the manifest's path."""
        directory = pathlib.Path(directory).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        names = shard_file_names(self.shards)
        checksums = self._supervisor.run({i: ShardCall("save", str(directory / name))
                                          for i, name in enumerate(names)}, mutating=False)
        path = write_manifest(directory, n=self._n, bounds=self._bounds,
                              files=[(name, checksums[i]) for i, name in enumerate(names)],
                              params=self._params, iteration=self.iteration)
        remove_earlier_saves(directory, keep=names)
        return path

    @classmethod
    def load(cls, directory: StrPath, *, shards: int | None = None,
             client: _distributed.Client | None = None,
             backend: str = "auto", call_timeout: float | None = CALL_TIMEOUT) -> ShardedEngine:
        """The population a sharded save holds, in ``shards`` shards (default: as saved),
        continuing bit for bit. Each new shard reads the old shard files its ids fall in,
        whole, verified against their checksums and the manifest's."""
        saved = read_manifest(pathlib.Path(directory).resolve())
        return cls(saved.n, shards=len(saved.bounds) - 1 if shards is None else shards,
                   client=client, backend=backend, params=saved.params,
                   call_timeout=call_timeout, _saved=saved)

    # -- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        """Close the shards (durable ones flush their logs and release their directories)
        and release their actors."""
        with self._lock:
            self._closed = True
            self._supervisor.release()

    def __enter__(self) -> ShardedEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _checked_shards(shards: int, n: int) -> int:
    """``shards`` as an int in [1, n]."""
    if not 1 <= _inputs.whole(shards, "shards", minimum=1) <= n:
        raise ValueError(f"shards must lie in [1, n = {n}], got {shards}")
    return int(shards)


def _checked_call_timeout(value: float | None) -> float | None:
    """``call_timeout`` as seconds (a float), or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"call_timeout must be a number of seconds or None, got "
                        f"{type(value).__name__}")
    if not 0 < value < 1e9:  # compared, not float(): 10**400 would overflow
        raise ValueError(f"call_timeout must be a positive number of seconds (below "
                         f"1e9) or None, got {value!r}")
    return float(value)


def _checked_snapshot_every(value: Any) -> int:
    """``state_options["snapshot_every"]``: an integer >= 0, or None (0: never)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                              or value < 0):
        raise ValueError(f"snapshot_every must be an integer >= 0 or None, got {value!r}")
    return int(value or 0)
