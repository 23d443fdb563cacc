"""ShardedEngine: one population split into contiguous id ranges on Dask workers.

Each shard is an ``Engine`` (or, with ``state=``, a ``DurableEngine``) held by a Dask actor on
a worker, resident between calls. The client validates every call with the Engine's own
rules before anything is sent, routes each shard its part, and returns when every shard has
acknowledged: the weights are, bit for bit, those a single ``Engine(n, seed=seed)`` would
hold after the same calls, and ``metrics`` equals ``Engine.metrics`` exactly. The design,
its costs and the fault model are in docs/sharding.md.

Importing this module imports neither Dask nor any GPU library; ``ShardedEngine`` imports
``dask.distributed`` when it is first used.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import json
import numbers
import os
import pathlib
import re
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Concatenate, NoReturn, ParamSpec, TypeGuard, TypeVar, cast

import numpy as np

from . import __version__, _inputs, backends, snapshot
from . import metrics as _metrics
from ._files import atomic_file
from .durable import DurabilityWarning, DurableEngine, RecoveryError
from .durable.losses import cut_log_after
from .engine import Engine
from .params import Params

if TYPE_CHECKING:
    import dask.array
    import distributed
    from numpy.random._pcg64 import _PCG64State

    from ._types import ArrayInput, BackendArray, HostWeights, InitialWeights, Labels, StrPath

    #: One shard's part of a call: given the shard, start it there (returns a future).
    _Part = Callable[["_Shard"], Any]
    #: What ``seed`` may be: split into shards through its generator's state.
    _Seed = int | Sequence[int] | np.random.SeedSequence | None

_P = ParamSpec("_P")
_R = TypeVar("_R")

__all__ = ["MANIFEST", "CallTimeoutError", "ShardActor", "ShardedEngine", "ShardsLostError",
           "shard_bounds"]

#: The manifest of a sharded snapshot, written last: a save without it never happened.
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "nap-sharded-snapshot"
MANIFEST_VERSION = 1
#: A durable sharded state's layout file (n and the shard boundaries).
LAYOUT = "sharding.json"
LAYOUT_FORMAT = "nap-sharded-state"

_SHARD_FILE = re.compile(r"^shard-\d{4}-[0-9a-f]{12}\.nap$")
_PING_TIMEOUT = 10.0  # seconds a live worker has to answer "are you there?" after a failure
_WORKER_TIMEOUT = 60.0  # seconds to wait for a worker to place a shard on
#: Default ``call_timeout``: seconds a shard has to answer any call before it counts as
#: stalled (far above a healthy call's milliseconds, below Dask's own 5-minute worker TTL).
CALL_TIMEOUT = 60.0
_FENCE_WAIT = 10.0  # seconds a reopen waits for a killed worker's LOCK to be released
_SNAPSHOT_EVERY = 50  # DurableEngine.open's default, kept for state_options["snapshot_every"]


class ShardsLostError(RuntimeError):
    """Shards were lost (their worker died, or a call failed on them) and could not be
    recovered: without ``state=`` nothing else holds their weights. ``shards`` maps each lost
    shard to its id range, ``causes`` to what happened. The engine refuses every later call
    (and metrics) rather than answer from part of the population."""

    def __init__(self, shards: dict[int, range], causes: dict[int, str]) -> None:
        self.shards = dict(shards)
        self.causes = dict(causes)
        listed = "; ".join(f"shard {i} (ids {r.start}..{r.stop - 1}): {causes.get(i, 'lost')}"
                           for i, r in sorted(shards.items()))
        super().__init__(f"{len(shards)} shard(s) lost, the population is incomplete: {listed}")


class CallTimeoutError(TimeoutError):
    """A call did not finish within ``call_timeout``: some shards did not answer. With
    ``state=`` the engine has already fenced their workers (killed through their nanny, so a
    stalled process can never write again), reopened their shards elsewhere and rolled the
    call back on every shard: it had no effect, and the engine goes on. ``shards`` maps each
    shard that did not answer to its id range, ``workers`` says what became of each worker."""

    def __init__(self, message: str, shards: dict[int, range], workers: dict[str, str],
                 timeout: float) -> None:
        super().__init__(message)
        self.shards = dict(shards)
        self.workers = dict(workers)
        self.timeout = timeout


class _Unrecoverable(Exception):
    """A lost shard could not be brought back with nothing acknowledged lost (the reason)."""


class _Stalled(Exception):
    """A shard did not answer within the call's deadline."""


def shard_bounds(n: int, shards: int) -> tuple[int, ...]:
    """Boundaries of ``shards`` contiguous id ranges over ``n`` ids, as ``numpy.array_split``
    cuts them (the first ``n % shards`` ranges hold one id more): shard i is
    ``range(bounds[i], bounds[i + 1])``.

    Examples
    --------
    >>> from nap_gpu.sharded import shard_bounds
    >>> shard_bounds(10, 3)
    (0, 4, 7, 10)
    """
    size, extra = divmod(n, shards)
    bounds = [0]
    for i in range(shards):
        bounds.append(bounds[-1] + size + (i < extra))
    return tuple(bounds)


# -- the shard, on a worker -----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _UniformSlice:
    """Weights [start, stop) of ``np.random.default_rng(seed).random(n, dtype=float32)``,
    made without the ones before ``start``: each float32 takes 32 bits of one of PCG64's
    64-bit outputs, low half first, so weight i comes from output i // 2, and PCG64 jumps
    to any output in O(log n) (``advance``). ``state`` is the fresh generator's state."""

    state: Mapping[str, Any]
    start: int
    stop: int

    def make(self) -> np.ndarray:
        bits = np.random.PCG64()
        # default_rng's bit generator is a PCG64: its state is one (typed as a plain dict)
        bits.state = cast("_PCG64State", self.state)
        bits.advance(self.start // 2)
        rng = np.random.Generator(bits)
        if self.start % 2:  # the low half of output start // 2 is weight start - 1
            rng.random(1, dtype=np.float32)
        return rng.random(self.stop - self.start, dtype=np.float32)


def _shard_weights(init: _UniformSlice | InitialWeights, size: int) -> HostWeights:
    """A shard's initial host weights from what the client sent for it."""
    if isinstance(init, _UniformSlice):
        return init.make()
    return _inputs.initial_weights(init, size, None)  # a constant, or the shard's slice


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
    def create(self, init: _UniformSlice | InitialWeights, size: int, backend: str,
               params: Params) -> dict:
        self._eng = Engine(size, backend=backend, init=_shard_weights(init, size), params=params)
        return self._report()

    def open(self, directory: str, init: _UniformSlice | InitialWeights | None, size: int,
             backend: str, params: Params | None,
             options: dict, every: int = 0) -> dict:
        """Open (recover) or create a durable shard; ``init=None`` means "recover only": a
        directory without state is then an error (no ``n``), never a fresh population.
        ``options`` go to ``DurableEngine.open`` (its own snapshots off: see ``mutate``)."""
        self._options, self._every = dict(options, snapshot_every=0), int(every)
        options = self._options
        if init is None:
            self._eng = DurableEngine.open(directory, backend=backend, params=params, **options)
        else:
            self._eng = DurableEngine.open(directory, n=size, backend=backend, params=params,
                                           init=_shard_weights(init, size), **options)
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


def _stop_worker_process(pid: int | None, dask_worker: Any = None) -> bool:
    """Run on a worker's nanny (``client.run(..., nanny=True)``): SIGKILL its worker process
    if that is still ``pid``, the one that stopped answering. SIGKILL ends even a stopped
    process, and its flock on a shard's LOCK goes with it. False: not that process any more
    (it died, and the nanny may have started another)."""
    if pid is None or getattr(dask_worker, "pid", None) != pid:
        return False
    os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
    return True


def _first_nonfinite(block: BackendArray) -> tuple[int, float] | None:
    """Dask task, where a block of a dask array of qualities lives: (index, value) of its
    first non-finite quality, after the Engine's float32 conversion; None if all finite."""
    host = backends.best_host()
    q = _inputs.quality(block, int(block.size), host, check_finite=False)
    bad = host.first_nonfinite(q)
    return None if bad < 0 else (int(bad), float(q[bad]))


def _step_with_block(actor: Any, expected: int | None, block: BackendArray) -> int | None:
    """Dask task on a shard's worker: step the shard with its block of a dask array."""
    return actor.mutate(expected, "step", block, False).result()


# -- the client side ------------------------------------------------------------------------
def _is_dask_array(x: object) -> TypeGuard[dask.array.Array]:
    return type(x).__module__.startswith("dask.array")


def _distributed() -> ModuleType:
    try:
        import distributed  # noqa: PLC0415 - only ShardedEngine needs Dask
    except ImportError as exc:
        raise ImportError("ShardedEngine needs dask.distributed: "
                          "pip install 'nap_gpu[dask]'") from exc
    return distributed


@dataclasses.dataclass
class _Shard:
    index: int
    ids: range
    worker: str
    actor: Any  # a dask Actor proxy of ShardActor: its methods return futures
    future: distributed.Future  # holds the actor alive
    backend: str = ""
    sequence: int | None = None  # the last acknowledged log sequence (durable shards)
    pid: int | None = None  # the worker's process (what its nanny kills to fence it)

    def logged(self) -> int:
        # Recovery and rollbacks run only with state=, where every shard is durable.
        assert self.sequence is not None, f"shard {self.index} is not durable: no log sequence"
        return self.sequence


def _call(method: str, *args: Any) -> _Part:
    """A part of a call: invoke ``method`` on a shard's actor (returns a future)."""
    return lambda shard: getattr(shard.actor, method)(*args)


def _mutation(method: str, *args: Any) -> _Part:
    """A part of a mutating call: ``ShardActor.mutate`` at the shard's acknowledged sequence."""
    return lambda shard: shard.actor.mutate(shard.sequence, method, *args)


def _wait(future: Any, deadline: float | None) -> Any:
    """A shard future's result; ``_Stalled`` if it has none by ``deadline`` (monotonic)."""
    if deadline is None or future.done():
        return future.result()
    try:  # a timeout of 0 would fail even a finished future: at least a millisecond
        return future.result(timeout=max(deadline - time.monotonic(), 1e-3))
    except TimeoutError:
        if future.done():  # the shard itself raised a TimeoutError
            return future.result()
        raise _Stalled() from None


def _serialized(method: Callable[Concatenate[ShardedEngine, _P], _R]
                ) -> Callable[Concatenate[ShardedEngine, _P], _R]:
    """One call at a time: routing, acknowledgements and recovery assume it."""
    @functools.wraps(method)
    def locked(self: ShardedEngine, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._lock:
            if self._closed:
                raise ValueError("the ShardedEngine is closed")
            if self._lost is not None:
                raise ShardsLostError(*self._lost)
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

    # Set by _prepare, which both __init__ and load (on an instance from __new__) call.
    _client: distributed.Client
    _n: int
    _bounds: tuple[int, ...]
    _ranges: list[range]
    _backend: str
    _params: Params
    iteration: int
    _state: pathlib.Path | None  # the durable state's directory (None: not durable)
    _state_options: dict
    _snapshot_every: int
    _call_timeout: float | None
    _lock: threading.RLock
    _lost: tuple[dict, dict] | None  # set when shards are lost: ShardsLostError's arguments
    _closed: bool
    _shards: list[_Shard]

    def __init__(self, n: int, *, shards: int, client: distributed.Client | None = None,
                 backend: str = "auto", seed: _Seed = None, init: InitialWeights = "uniform",
                 params: Params | None = None, state: StrPath | None = None,
                 state_options: dict[str, Any] | None = None,
                 call_timeout: float | None = CALL_TIMEOUT) -> None:
        n = _inputs.whole(n, "n", minimum=1)
        self._prepare(n, shards, client, backend, _inputs.law_params(params, default=Params()), iteration=0,
                      state=state, state_options=state_options, call_timeout=call_timeout)
        inits = self._initial(init, seed)
        if self._state is None:
            self._start({i: _call("create", inits(r), len(r), backend, self._params)
                         for i, r in enumerate(self._ranges)})
        else:  # the state's own parameters unless given (as DurableEngine.open)
            self._open_state(inits, params)

    def _prepare(self, n: int, shards: int, client: distributed.Client | None, backend: str,
                 params: Params, iteration: int, state: StrPath | None = None,
                 state_options: dict[str, Any] | None = None,
                 call_timeout: float | None = CALL_TIMEOUT) -> None:
        if call_timeout is not None:
            if isinstance(call_timeout, bool) or not isinstance(call_timeout, numbers.Real):
                raise TypeError(f"call_timeout must be a number of seconds or None, got "
                                f"{type(call_timeout).__name__}")
            if not 0 < call_timeout < 1e9:  # compared, not float(): 10**400 would overflow
                raise ValueError(f"call_timeout must be a positive number of seconds (below "
                                 f"1e9) or None, got {call_timeout!r}")
        options = dict(state_options or {})
        every = options.pop("snapshot_every", _SNAPSHOT_EVERY)
        if every is not None and (isinstance(every, bool) or not isinstance(every, numbers.Integral)
                                  or every < 0):
            raise ValueError(f"snapshot_every must be an integer >= 0 or None, got {every!r}")
        if not 1 <= _inputs.whole(shards, "shards", minimum=1) <= n:
            raise ValueError(f"shards must lie in [1, n = {n}], got {shards}")
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a name or 'auto', got {type(backend).__name__}")
        self._client = _distributed().get_client() if client is None else client
        self._n = n
        self._bounds = shard_bounds(n, int(shards))
        self._ranges = [range(a, b) for a, b in zip(self._bounds[:-1], self._bounds[1:])]
        self._backend = backend
        self._params = params
        self.iteration = iteration
        self._state = None if state is None else pathlib.Path(state).resolve()
        self._state_options = options
        self._snapshot_every = int(every or 0)
        self._call_timeout = None if call_timeout is None else float(call_timeout)
        self._lock = threading.RLock()
        self._lost = None
        self._closed = False
        self._shards = []

    def _initial(self, init: InitialWeights, seed: _Seed) -> Callable[[range], Any]:
        """A function of a shard's id range giving what that shard needs to make its part
        of ``Engine(n, seed=seed, init=init)``'s weights, after the Engine's own checks."""
        if isinstance(init, str) and init == "uniform":
            if isinstance(seed, (np.random.Generator, np.random.BitGenerator)):
                raise TypeError("seed must be None, an int, a sequence of ints or a "
                                "SeedSequence: a Generator's state cannot be split into shards")
            state = np.random.default_rng(seed).bit_generator.state  # fixes seed=None's entropy
            return lambda ids: _UniformSlice(state, ids.start, ids.stop)
        if isinstance(init, (str, numbers.Real)):
            _inputs.initial_weights(init, 1, seed)  # the Engine's checks on a constant
            return lambda ids: init
        weights = _inputs.initial_weights(init, self._n, seed)  # validated, on the client anyway
        return lambda ids: weights[ids.start:ids.stop]

    # -- shards: start, call, recover ----------------------------------------------------
    def _workers(self, avoid: frozenset = frozenset()) -> list[str]:
        """The cluster's workers but ``avoid``, waiting (up to a minute) for one to exist:
        after a loss the scheduler may still list the dead worker, and a restarted one may
        not be registered yet."""
        deadline = time.monotonic() + _WORKER_TIMEOUT
        while not (workers := sorted(set(self._client.scheduler_info()["workers"]) - avoid)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no worker to place shards on within {_WORKER_TIMEOUT:.0f} s")
            time.sleep(0.1)
        return workers

    def _spawn(self, placement: dict[int, str],
               avoid: frozenset = frozenset()) -> dict[int, _Shard]:
        """Empty shard actors, created concurrently: shard index -> worker. An actor whose
        worker leaves the cluster before the actor exists (one the scheduler still listed
        just after it died, or a fenced one) is placed again on a live worker, not waited
        for: a worker restricted to a task that is gone would hold it forever."""
        placement = dict(placement)

        def submit(i: int) -> distributed.Future:
            return self._client.submit(self._actor, actor=True, workers=[placement[i]],
                                       pure=False, key=f"nap-shard-{i:04d}-{uuid.uuid4().hex[:8]}")

        futures = {i: submit(i) for i in placement}
        deadline = time.monotonic() + _WORKER_TIMEOUT
        while pending := [f for f in futures.values() if not f.done()]:
            if time.monotonic() > deadline:
                raise TimeoutError("no worker created a shard actor within "
                                   f"{_WORKER_TIMEOUT:.0f} s")
            try:
                _distributed().wait(pending, timeout=0.5)
            except TimeoutError:
                pass
            live = sorted(set(self._client.scheduler_info()["workers"]) - avoid)
            for i, future in futures.items():
                if not future.done() and live and placement[i] not in live:
                    future.cancel()
                    placement[i] = live[i % len(live)]
                    futures[i] = submit(i)
        return {i: _Shard(i, self._ranges[i], placement[i], future.result(), future)
                for i, future in futures.items()}

    def _start(self, fills: dict) -> dict[int, dict]:
        """Create one actor per shard, round-robin over the workers, and fill each with its
        part (``fills``), concurrently; on any failure, release what was made and raise."""
        workers = self._workers()
        try:
            spawned = self._spawn({i: workers[i % len(workers)] for i in range(self.shards)})
            self._shards = [spawned[i] for i in range(self.shards)]
            pending = {i: fill(self._shards[i]) for i, fill in fills.items()}
            deadline = self._deadline()
            reports = {}
            for i, future in pending.items():
                try:
                    reports[i] = _wait(future, deadline)
                except _Stalled:
                    raise TimeoutError(f"shard {i} (worker {self._shards[i].worker}) did not "
                                       f"answer within call_timeout = {self._call_timeout:g} s "
                                       "while starting") from None
        except BaseException:
            self._release()
            raise
        for i, report in reports.items():
            self._adopt(self._shards[i], report)
        return reports

    def _adopt(self, shard: _Shard, report: dict) -> None:
        shard.backend = report["backend"]
        shard.sequence = report["sequence"]
        shard.pid = report["pid"]

    def _deadline(self) -> float | None:
        return None if self._call_timeout is None else time.monotonic() + self._call_timeout

    def _ping_timeout(self) -> float:
        if self._call_timeout is None:
            return _PING_TIMEOUT
        return min(_PING_TIMEOUT, self._call_timeout)

    def _run(self, parts: dict, *, mutating: bool) -> dict:
        """Run each shard's part of one call concurrently; return their results once all
        acknowledged. Failures are recovered from (durable shards) or fail the engine; a
        shard that does not answer within ``call_timeout`` is stalled (``_cut_short``)."""
        launched, failures, results = {}, {}, {}
        for i, part in parts.items():
            try:
                launched[i] = part(self._shards[i])
            except Exception as exc:  # e.g. the actor's worker is already known to be lost
                failures[i] = exc
        deadline = self._deadline()  # one for the whole call: its shards run concurrently
        for i, future in launched.items():
            try:
                results[i] = _wait(future, deadline)
            except Exception as exc:
                failures[i] = exc
        if failures:
            results.update(self._recover(failures, parts, mutating, results))
        if mutating and self._state is not None:
            for i, sequence in results.items():
                self._shards[i].sequence = sequence
        return results

    def _recover(self, failures: dict, parts: dict, mutating: bool, results: dict) -> dict:
        """Find every shard lost (a failed call, or a worker gone or stalled), fence the
        workers that do not answer, then reopen each lost shard from its durable state and
        finish its part of the call exactly once, or fail the engine. A call with stalled
        shards is not finished but rolled back everywhere (``_cut_short``)."""
        stalled = {i for i, exc in failures.items() if isinstance(exc, _Stalled)}
        lost, unreachable = self._find_lost(failures, stalled)
        if self._state is None:
            self._fail(lost)
        fenced = self._fence(unreachable)
        if stalled:
            self._cut_short(stalled, lost, unreachable, fenced, parts, mutating, results)
        done = {}
        for i in sorted(lost):
            try:
                result = self._recover_shard(i, parts.get(i), mutating, unreachable)
            except _Unrecoverable as exc:
                lost[i] = f"{lost[i]}; {exc}"
                self._fail(lost)
            if i in parts:
                done[i] = result
        return done

    def _recover_shard(self, i: int, part: _Part | None, mutating: bool, unreachable: set) -> Any:
        """Reopen shard i from its state, then finish its part: a mutating call whose record
        reached the shard's log was applied by the replay; one that did not is run again."""
        acknowledged = self._shards[i].logged()
        shard = self._reopen_or_raise(i, unreachable)
        if mutating and part is not None and shard.sequence == acknowledged + 1:
            return shard.sequence
        if shard.sequence != acknowledged:
            raise _Unrecoverable(f"recovered at log sequence {shard.sequence}, but "
                                 f"{acknowledged} calls were acknowledged")
        if part is None:
            return None
        try:
            return _wait(part(shard), self._deadline())
        except Exception as exc:
            raise _Unrecoverable(f"the call failed again after recovery: {exc!r}") from exc

    def _reopen_or_raise(self, i: int, unreachable: set) -> _Shard:
        try:
            return self._reopen(i, unreachable)
        except Exception as exc:
            cause = "no answer in time" if isinstance(exc, _Stalled) else repr(exc)
            raise _Unrecoverable(f"recovery from {self._shard_state(i)} failed: {cause}") from exc

    def _cut_short(self, stalled: set, lost: dict, unreachable: set, fenced: dict, parts: dict,
                   mutating: bool, results: dict) -> NoReturn:
        """A call some shards did not answer in time: their workers are fenced already;
        reopen every lost shard, roll the call back on every shard that has it (its
        record is the last of their logs, never covered by a snapshot), and raise
        ``CallTimeoutError``: the call had no effect. Nothing partial is kept: the shards
        that answered had applied it too."""
        acknowledged = {i: s.logged() for i, s in enumerate(self._shards)}
        at = {i: results[i] for i in parts if i in results and mutating}
        for i in sorted(lost):
            try:
                at[i] = self._reopen_or_raise(i, unreachable).sequence
            except _Unrecoverable as exc:
                lost[i] = f"{lost[i]}; {exc}"
                if mutating:  # best effort: keep the reachable shards at what was acknowledged
                    try:
                        self._roll_back({j: acknowledged[j] for j, s in at.items()
                                         if j not in lost and s == acknowledged[j] + 1})
                    except Exception:
                        pass
                self._fail(lost)
        if mutating:
            behind = {i: s for i, s in at.items()
                      if s not in (acknowledged[i], acknowledged[i] + 1)}
            if behind:
                self._fail({i: f"{lost.get(i, 'shard')}; recovered at log sequence {s}, but "
                               f"{acknowledged[i]} calls were acknowledged"
                            for i, s in behind.items()})
            try:
                self._roll_back({i: acknowledged[i] for i, s in at.items()
                                 if s == acknowledged[i] + 1})
            except Exception as exc:
                self._fail({i: f"the call that timed out could not be rolled back: {exc!r}"
                            for i in parts})
        t = self._call_timeout
        assert t is not None, "only a call with a deadline has stalled shards"
        listed = ", ".join(f"shard {i} (ids {self._ranges[i].start}..{self._ranges[i].stop - 1})"
                           for i in sorted(stalled))
        workers = "; ".join(f"{w}: {note}" for w, note in sorted(fenced.items()))
        moved = ", ".join(f"shard {i} -> {self._shards[i].worker}" for i in sorted(lost))
        effect = ("the call was rolled back on every shard: it had no effect" if mutating
                  else "nothing was changed")
        raise CallTimeoutError(
            f"the call did not finish within call_timeout = {t:g} s: {listed} did not "
            f"answer. Their worker(s) were fenced ({workers}) and the shards on them reopened "
            f"from their state ({moved}); {effect}. The engine goes on.",
            {i: self._ranges[i] for i in stalled}, fenced, t)

    def _roll_back(self, targets: dict[int, int]) -> dict[int, dict]:
        """Roll shards back to the given log sequences (their last call was cut short);
        returns their reports."""
        futures = {i: self._shards[i].actor.rollback(sequence) for i, sequence in targets.items()}
        deadline = self._deadline()
        reports = {i: _wait(future, deadline) for i, future in futures.items()}
        for i, report in reports.items():
            self._adopt(self._shards[i], report)
        return reports

    def _find_lost(self, failures: dict,
                   stalled: set[int] | frozenset[int] = frozenset()) -> tuple[dict[int, str], set[str]]:
        """({shard: cause} for shards whose call failed or whose worker does not answer,
        the workers that do not answer): all shards of a dead or stalled worker are lost,
        not only those this call reached."""
        suspects = {self._shards[i].worker for i in stalled}
        lost, unreachable = {}, set(suspects)
        for shard in self._shards:
            if shard.worker in suspects:
                lost[shard.index] = (f"worker {shard.worker} did not answer within "
                                     f"call_timeout = {self._call_timeout:g} s")
        probes = {}
        for shard in self._shards:
            if shard.worker in suspects:
                continue  # a stalled worker would only make the ping wait too
            try:
                probes[shard.index] = shard.actor.ping()
            except Exception as exc:  # the actor is already known to be lost
                probes[shard.index] = exc
        deadline = time.monotonic() + self._ping_timeout()
        for i, probe in probes.items():
            try:
                if isinstance(probe, Exception):
                    raise probe
                _wait(probe, deadline)
            except Exception as exc:
                lost[i] = f"worker {self._shards[i].worker} lost ({failures.get(i, exc)!r})"
                unreachable.add(self._shards[i].worker)
        for i, failure in failures.items():
            lost.setdefault(i, f"failed on worker {self._shards[i].worker}: {failure!r}")
        return lost, unreachable

    def _fence(self, workers: set[str]) -> dict[str, str]:
        """Make sure no worker that stopped answering can write again before its shards are
        reopened elsewhere: its nanny SIGKILLs it (a stopped process too). The shards' LOCK
        (DurableEngine's flock) is then the arbiter: a reopen succeeds only once the old
        process is gone, and waits (``_FENCE_WAIT``) or fails while it holds the LOCK, e.g.
        a stalled worker without a nanny. Returns what was done, per worker."""
        notes = {}
        for worker in sorted(workers):
            pid = next((s.pid for s in self._shards if s.worker == worker and s.pid), None)
            try:
                answers = self._client.run(_stop_worker_process, pid, workers=[worker],
                                           nanny=True, callback_timeout=self._ping_timeout())
            except Exception as exc:  # e.g. the scheduler has already removed it
                notes[worker] = f"its nanny could not be asked to kill it ({type(exc).__name__})"
                continue
            if not answers:
                notes[worker] = "it has no nanny to kill it"
            elif any(answers.values()):
                notes[worker] = f"process {pid} killed by its nanny"
            else:
                notes[worker] = f"process {pid} already gone"
        return notes

    def _fail(self, lost: dict[int, str]) -> NoReturn:
        """Refuse this call and every later one: the population is incomplete."""
        self._lost = ({i: self._ranges[i] for i in lost}, dict(lost))
        raise ShardsLostError(*self._lost)

    def _state_directory(self) -> pathlib.Path:
        # Shard states, their layout and recovery exist only on a durable engine (state=).
        assert self._state is not None, "the ShardedEngine has no state="
        return self._state

    def _shard_state(self, i: int) -> pathlib.Path:
        return self._state_directory() / f"shard-{i:04d}"

    def _reopen(self, i: int, avoid: set) -> _Shard:
        """Shard i again, from its state, on the answering worker holding fewest shards.
        While a fenced worker's process still holds the shard's LOCK, the open is retried
        (for ``_FENCE_WAIT``); never opened beside a live old owner."""
        old = self._shards[i]
        self._retire(old, close=old.worker not in avoid)
        live = self._workers(frozenset(avoid))
        held = {w: sum(s.worker == w for s in self._shards if s is not old) for w in live}
        shard = self._spawn({i: min(live, key=lambda w: (held[w], w))}, frozenset(avoid))[i]
        self._shards[i] = shard
        give_up = time.monotonic() + _FENCE_WAIT
        while True:
            try:
                report = _wait(shard.actor.open(str(self._shard_state(i)), None, len(old.ids),
                                                self._backend, None, self._state_options,
                                                self._snapshot_every), self._deadline())
                break
            except RuntimeError as exc:
                if "LOCK is held" not in str(exc) or time.monotonic() > give_up:
                    raise
        self._adopt(shard, report)
        return shard

    def _retire(self, shard: _Shard, close: bool = True) -> None:
        """Let go of a shard's actor: close it if its worker still answers (a durable shard
        releases its directory), then release it."""
        if close:
            try:
                _wait(shard.actor.close(), time.monotonic() + self._ping_timeout())
            except Exception:  # its worker is gone: nothing to close
                pass
        shard.future.release()

    def _release(self) -> None:
        closing = {}
        for shard in self._shards:  # all at once: one deadline, not one per shard
            try:
                closing[shard.index] = shard.actor.close()
            except Exception:
                pass
        deadline = time.monotonic() + self._ping_timeout()
        for future in closing.values():
            try:
                _wait(future, deadline)
            except Exception:
                pass
        for shard in self._shards:
            shard.future.release()
        self._shards = []

    # -- durable state ------------------------------------------------------------------
    def _open_state(self, inits: Callable[[range], Any], params: Params | None) -> None:
        """Open every shard's durable state (creating it on first use). The shards must
        agree on where they are; if the client stopped in the middle of a call, some have it
        and the others not: it was never acknowledged, and is rolled back where it was
        applied, so that every shard ends at the same point."""
        self._state_directory().mkdir(parents=True, exist_ok=True)
        self._check_layout()
        reports = self._start({i: _call("open", str(self._shard_state(i)), inits(r), len(r),
                                        self._backend, params, self._state_options,
                                        self._snapshot_every)
                               for i, r in enumerate(self._ranges)})
        sequences = {i: r["sequence"] for i, r in reports.items()}
        low = min(sequences.values())
        ahead = {i: low for i, s in sequences.items() if s == low + 1}
        if ahead and max(sequences.values()) == low + 1:
            try:
                reports.update(self._roll_back(ahead))
            except Exception as exc:
                self._release()
                raise RecoveryError(f"{self._state}: a call was cut short across shards "
                                    f"(shard: log sequence {sequences}), and rolling it back "
                                    f"on shard(s) {sorted(ahead)} failed: {exc}") from exc
            warnings.warn(f"{self._state}: a call was cut short across shards (the client "
                          f"stopped mid-call): shard(s) {sorted(ahead)} had applied it, the "
                          f"others not; it was never acknowledged and was rolled back to log "
                          f"sequence {low}", DurabilityWarning, stacklevel=3)
        held = {(r["sequence"], r["iteration"], r["params"]) for r in reports.values()}
        if len(held) > 1:
            self._release()
            where = {i: (r["sequence"], r["iteration"]) for i, r in reports.items()}
            raise RecoveryError(f"{self._state}: the shards recovered at different points "
                                f"(shard: (log sequence, iteration)) {where}, more than one "
                                "call apart: acknowledged calls are missing from some "
                                "shards (e.g. fsync='group' lost a window), so the shards do "
                                "not hold one population")
        _, self.iteration, self._params = held.pop()

    def _check_layout(self) -> None:
        """The state's n and boundaries are fixed when it is created; reopening with others
        would pair shard directories with the wrong ids."""
        path = self._state_directory() / LAYOUT
        layout = {"format": LAYOUT_FORMAT, "format_version": MANIFEST_VERSION, "n": self._n,
                  "bounds": list(self._bounds)}
        if not path.exists():
            _write_json(path, layout)
            return
        held = json.loads(path.read_text())
        if held.get("n") != self._n or held.get("bounds") != layout["bounds"]:
            raise ValueError(f"{self._state} holds n = {held.get('n')} memories in "
                             f"{len(held.get('bounds', [])) - 1} shard(s), not n = {self._n} "
                             f"in {len(self._ranges)}: re-shard with save() and "
                             "ShardedEngine.load()")

    # -- state ---------------------------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of memories, over all shards."""
        return self._n

    def __len__(self) -> int:
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
        return tuple(s.backend for s in self._shards)

    @property
    def workers(self) -> tuple[str, ...]:
        """Each shard's worker address."""
        return tuple(s.worker for s in self._shards)

    @property
    def params(self) -> Params:
        """The law's parameters; assigning a `Params` sets them on every shard."""
        return self._params

    @params.setter
    def params(self, value: Params) -> None:
        self._set_params(_inputs.law_params(value))

    @_serialized
    def _set_params(self, value: Params) -> None:
        self._run(self._everywhere_mutation("set_params", value), mutating=True)
        self._params = value

    def __repr__(self) -> str:
        state = "" if self._state is None else f", state={str(self._state)!r}"
        return (f"ShardedEngine(n={self._n}, shards={self.shards}, params={self._params}, "
                f"iteration={self.iteration}{state})")

    @_serialized
    def to_numpy(self) -> HostWeights:
        """All n weights gathered on the client (n * 4 bytes moved): for checks and exports."""
        parts = self._run(self._everywhere("to_numpy"), mutating=False)
        return np.concatenate([parts[i] for i in range(self.shards)])

    def _everywhere(self, method: str, *args: Any) -> dict[int, _Part]:
        return {i: _call(method, *args) for i in range(self.shards)}

    def _everywhere_mutation(self, method: str, *args: Any) -> dict[int, _Part]:
        return {i: _mutation(method, *args) for i in range(self.shards)}

    # -- the law -------------------------------------------------------------------------
    @_serialized
    def step(self, quality: ArrayInput | dask.array.Array, *, check_finite: bool = True) -> None:
        """Dense step (see ``Engine.step``): a scalar is broadcast; an array sends each shard
        only its slice; a dask array is rechunked to the shards and each block stepped on
        the shard's own worker, never passing through the client."""
        if _is_dask_array(quality) and quality.ndim == 0:
            quality = quality.compute()  # one number for every memory
        if _is_dask_array(quality):
            self._step_dask(quality, check_finite)
        else:
            q = _inputs.quality(quality, self._n, backends.best_host(), check_finite=check_finite)
            if isinstance(q, float):
                self._run(self._everywhere_mutation("step", q), mutating=True)
            else:
                self._run({i: _mutation("step", q[r.start:r.stop])
                           for i, r in enumerate(self._ranges)}, mutating=True)
        self.iteration += 1

    def _step_dask(self, quality: dask.array.Array, check_finite: bool) -> None:
        blocks = self._blocks(self._dask_quality(quality))
        if check_finite:  # pure tasks, not shard calls: Dask reruns them if a worker dies
            checks = [self._client.submit(_first_nonfinite, block, pure=False,
                                          workers=[s.worker], allow_other_workers=True)
                      for s, block in zip(self._shards, blocks)]
            self._wait_for_tasks(checks, "checked")
            found = self._client.gather(checks)
            hits = [(i, hit) for i, hit in enumerate(found) if hit is not None]
            if hits:  # the Engine's message (_inputs._require_finite), with the global index
                i, (at, value) = hits[0]
                raise ValueError(f"quality[{self._ranges[i].start + at}] = {value!r} is not finite")
        # allow_other_workers: if the shard's worker is gone, the task runs elsewhere and its
        # call to the lost actor fails, which starts recovery (instead of waiting forever)
        self._run({i: (lambda s, b=block: self._client.submit(
                        _step_with_block, s.actor, s.sequence, b, pure=False, workers=[s.worker],
                        allow_other_workers=True))
                   for i, block in enumerate(blocks)}, mutating=True)

    def _dask_quality(self, q: dask.array.Array) -> dask.array.Array:
        """A dask array of qualities, a 1-D float array of length n by the Engine's shape
        and dtype rules, checked on its metadata (nothing is computed)."""
        if q.dtype.kind != "f" or q.shape != (self._n,):
            # Engine's own checks on a zero-byte stand-in of the same shape: they raise what
            # the array would (a float32 stand-in for float dtypes: nothing to convert)
            dtype = np.float32 if q.dtype.kind == "f" else q.dtype
            _inputs.quality(np.broadcast_to(np.zeros((), dtype), q.shape), self._n,
                            backends.best_host(), check_finite=False)
        return q

    def _blocks(self, x: dask.array.Array) -> list:
        """Futures of a dask array's blocks, one per shard (rechunked to the boundaries),
        computed: an error of the array's own graph is raised here, before any shard call."""
        sizes = tuple(len(r) for r in self._ranges)
        blocks = self._client.compute(list(x.rechunk((sizes,)).to_delayed().ravel()))
        self._wait_for_tasks(blocks, "computed")
        for block in blocks:
            if block.status == "error":
                block.result()  # raises the graph's error
        return blocks

    def _wait_for_tasks(self, futures: list, what: str) -> None:
        """Wait for the dask array's own tasks, within ``call_timeout``: no shard has been
        called yet, so a timeout here changes nothing."""
        try:
            _distributed().wait(futures, timeout=self._call_timeout)
        except TimeoutError:
            raise TimeoutError(f"the qualities' blocks were not {what} within call_timeout = "
                               f"{self._call_timeout:g} s (a worker holding them may be "
                               "stalled); no shard was called") from None

    @_serialized
    def update(self, ids: ArrayInput, quality: ArrayInput, *, check_finite: bool = True) -> None:
        """Sparse ordered batch (see ``Engine.update``): each shard gets its own events, in
        their original order, ids made shard-local."""
        ids_, q = _inputs.events(ids, quality, self._n, backends.best_host(), check_finite=check_finite)
        batches = self._partition(ids_, q)
        # Durable shards take every call, empty ones too: their log sequences then stay
        # equal, so a reopen can tell a call cut short across shards.
        self._run({i: _mutation("update", *batch) for i, batch in batches.items()
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
        self._run(self._everywhere_mutation("decay", _inputs.repeat_count(k)), mutating=True)

    # -- monitoring ----------------------------------------------------------------------
    @_serialized
    def metrics(self, labels: Labels, *, eps: float = _metrics.DEFAULT_EPS) -> _metrics.Metrics:
        """``Engine.metrics``, exactly: each shard summarises its part where it lives
        (integer sums, distinct weights with counts) and the client merges the summaries;
        the weights themselves never leave the shards."""
        _metrics._check_eps(eps)
        host_labels = _inputs.labels(labels, self._n)
        parts = self._run({i: _call("summary", np.packbits(host_labels[r.start:r.stop]), eps)
                           for i, r in enumerate(self._ranges)}, mutating=False)
        return _metrics.combine(_metrics.merge([parts[i] for i in range(self.shards)]), eps=eps)

    # -- snapshots -----------------------------------------------------------------------
    @_serialized
    def save(self, directory: StrPath) -> pathlib.Path:
        """Write one snapshot per shard (each worker its own file, in ``directory`` on a
        filesystem every worker reaches), then the manifest, atomically and last: a save cut
        short leaves the previous one loadable. Returns the manifest's path."""
        directory = pathlib.Path(directory).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex[:12]
        names = [f"shard-{i:04d}-{token}.nap" for i in range(self.shards)]
        checksums = self._run({i: _call("save", str(directory / name))
                               for i, name in enumerate(names)}, mutating=False)
        manifest = {
            "format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "n": self._n,
            "bounds": list(self._bounds),
            "shards": [{"file": name, "checksum": checksums[i]} for i, name in enumerate(names)],
            "params": snapshot.params_fields(self._params), "iteration": self.iteration,
            "nap_gpu_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        path = _write_json(directory / MANIFEST, manifest)
        for entry in os.scandir(directory):  # the files of earlier saves
            if _SHARD_FILE.match(entry.name) and entry.name not in names:
                os.unlink(entry.path)
        return path

    @classmethod
    def load(cls, directory: StrPath, *, shards: int | None = None,
             client: distributed.Client | None = None,
             backend: str = "auto", call_timeout: float | None = CALL_TIMEOUT) -> ShardedEngine:
        """The population a sharded save holds, in ``shards`` shards (default: as saved),
        continuing bit for bit. Each new shard reads the old shard files its ids fall in,
        whole, verified against their checksums and the manifest's."""
        directory = pathlib.Path(directory).resolve()
        manifest = _read_manifest(directory / MANIFEST)
        old = manifest["bounds"]
        self = cls.__new__(cls)
        self._prepare(manifest["n"], len(old) - 1 if shards is None else shards, client,
                      backend, manifest["params"], iteration=manifest["iteration"],
                      call_timeout=call_timeout)
        files = [(str(directory / s["file"]), s["checksum"]) for s in manifest["shards"]]
        self._start({i: _call("load", _pieces(old, files, r), backend, self._params,
                              self.iteration) for i, r in enumerate(self._ranges)})
        return self

    # -- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        """Close the shards (durable ones flush their logs and release their directories)
        and release their actors."""
        with self._lock:
            self._closed = True
            self._release()

    def __enter__(self) -> ShardedEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pieces(old_bounds: Sequence[int], files: Sequence[tuple[str, str]],
            ids: range) -> list[tuple[str, str, int, int]]:
    """(file, checksum, first, stop) ranges of the old shard files holding ``ids``."""
    pieces = []
    for (lo, hi), (path, checksum) in zip(zip(old_bounds[:-1], old_bounds[1:]), files):
        first, stop = max(lo, ids.start), min(hi, ids.stop)
        if first < stop:
            pieces.append((path, checksum, first - lo, stop - lo))
    return pieces


def _write_json(path: pathlib.Path, document: dict) -> pathlib.Path:
    """Write ``document`` to ``path`` atomically and durably (temporary file, fsync, rename,
    fsync of the directory), as ``snapshot.write`` writes a snapshot."""
    with atomic_file(path) as fh:
        fh.write(json.dumps(document, indent=1).encode())
    return path


def _read_manifest(path: pathlib.Path) -> dict:
    """The manifest, checked for consistency; ``SnapshotError`` names the file and fault."""
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise snapshot.SnapshotError(f"{path}: no manifest: not a sharded save, or a save "
                                     "that never finished") from None
    except ValueError as exc:
        raise snapshot.SnapshotError(f"{path}: unreadable manifest: {exc}") from None
    try:
        if manifest["format"] != MANIFEST_FORMAT:
            raise ValueError(f"format {manifest['format']!r}, expected {MANIFEST_FORMAT!r}")
        if manifest["format_version"] > MANIFEST_VERSION:
            raise ValueError(f"format version {manifest['format_version']}; this nap_gpu reads "
                             f"versions up to {MANIFEST_VERSION}: upgrade nap_gpu")
        bounds = [int(b) for b in manifest["bounds"]]
        n = int(manifest["n"])
        if bounds[0] != 0 or bounds[-1] != n or any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"shard boundaries {bounds} do not cut [0, {n}) into ranges")
        if len(manifest["shards"]) != len(bounds) - 1:
            raise ValueError(f"{len(manifest['shards'])} shard files for {len(bounds) - 1} ranges")
        params = snapshot.params_from_fields(manifest["params"])
        return {**manifest, "n": n, "bounds": bounds, "params": params,
                "iteration": int(manifest["iteration"])}
    except (KeyError, TypeError, ValueError) as exc:
        raise snapshot.SnapshotError(f"{path}: bad manifest: {exc}") from None
