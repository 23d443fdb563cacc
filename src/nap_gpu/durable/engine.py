"""The durable engine: `DurableEngine`, an `Engine` whose every acknowledged call survives a
crash. It validates each mutating call, logs it (`writer`), then applies it to the inner
`Engine`; it opens its state through `recovery`, holds the directory's LOCK while open, and
checkpoints (`checkpoints`). Reads are the inner engine's.
"""

from __future__ import annotations

import numbers
import pathlib
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO, Generic, NoReturn, TypeVar, overload

import numpy as np

from .. import __version__, _inputs, backends, snapshot
from ..engine import Engine
from ..monitor import WritesStoppedError
from . import calls
from .checkpoints import Checkpoints, UnsnapshotableWeights, write_snapshot
from .errors import EngineFailedError, RecoveryError, warn
from .format import encode_record, list_state, remove_temporaries
from .lock import lock_directory
from .recovery import Recovery
from .writer import LogWriter

if TYPE_CHECKING:
    from types import ModuleType

    from .._types import ArrayInput, BackendArray, HostWeights, InitialWeights, Labels, StrPath
    from ..metrics import Metrics
    from ..params import Params

__all__ = ["DurableEngine"]

_T = TypeVar("_T")


def _restorer(directory: pathlib.Path, backend: str, n: int | None = None
              ) -> Callable[[HostWeights, snapshot.SnapshotInfo], Engine]:
    """How recovery makes the engine from the snapshot it chose (``n``: what it must hold)."""
    def restore(weights: HostWeights, info: snapshot.SnapshotInfo) -> Engine:
        if n is not None and int(n) != info.n:
            raise ValueError(f"{directory} holds n = {info.n} memories, not n = {n}")
        eng = Engine(info.n, backend=backend, init=weights, params=info.params)
        eng.iteration = info.iteration
        return eng
    return restore


class _FromEngine(Generic[_T]):
    """A read-only attribute that is the inner `Engine`'s (reading it logs nothing)."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _FromEngine[_T]: ...
    @overload
    def __get__(self, obj: DurableEngine, owner: type | None = None) -> _T: ...
    def __get__(self, obj: DurableEngine | None, owner: type | None = None) -> Any:
        return self if obj is None else getattr(obj._eng, self._name)

    def __set__(self, obj: DurableEngine, value: object) -> NoReturn:
        raise AttributeError(f"DurableEngine.{self._name} is read-only")


class DurableEngine:
    """An Engine whose every acknowledged call survives a crash, kept in ``directory``.

    ``DurableEngine(directory, ...)`` (or ``DurableEngine.open``) creates the state on first
    use: ``n`` is required; ``seed``, ``init`` and ``params`` make the initial population,
    which is snapshotted at sequence 0 before it returns. Later it recovers: newest valid
    snapshot + log replay; ``n`` and ``params``, if given, must match the recovered state
    (``seed``/``init`` are ignored); any ``backend`` may be used (replay is bit-identical on
    every backend).

    Same methods as ``Engine`` (``step``, ``update``, ``decay``, ``params``, ``to_numpy``,
    ``metrics``, ``weights``, ``n``, ``backend``, ``iteration``, ``save``) plus ``sequence``
    (the log sequence of the last acknowledged call), ``checkpoint()``, ``recover()`` and
    ``close()``; a context manager. Calls are serialised by a lock (log order is apply order).

    Parameters
    ----------
    directory : path
        The state's directory (created if missing); one process holds it at a time.
    n, backend, seed, init, params
        As for `Engine`; ``n`` is required on the first open only.
    snapshot_every : int or None
        A snapshot every this many logged calls (``None``/0: only on ``checkpoint()``).
    keep : int
        Snapshots kept (>= 1).
    wal : bool
        Log every call (False: calls after the newest snapshot are lost on a crash).
    fsync : {"always", "group"}
        ``"always"``: a call returns once its record is on disk; ``"group"``: in the OS
        page cache when the call returns, on disk within ``group_ms``.
    group_ms : float
        The group commit period.
    compress : bool
        zlib payloads where a sample shows it pays.
    wal_retention : {"kept", "newest"}
        ``"kept"`` (default) keeps the log back to the oldest kept snapshot, so every
        kept snapshot is a recovery point (disk: up to keep x snapshot_every records);
        ``"newest"`` only after the newest one (up to snapshot_every records), so the
        older snapshots are not recovery points: a damaged newest snapshot is then a
        `RecoveryError`, and only ``accept_loss`` gets past it, losing the calls after
        the previous snapshot. docs/durability.md has the table.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import nap_gpu as nap
    >>> tmp = tempfile.TemporaryDirectory()
    >>> state = pathlib.Path(tmp.name) / "state"
    >>> with nap.DurableEngine.open(state, n=1000, seed=0) as eng:  # created
    ...     eng.step(0.9)
    ...     eng.update([3, 3], [0.9, 0.1])
    ...     before = eng.to_numpy()
    >>> with nap.DurableEngine(state) as eng:  # recovered: snapshot + log replay
    ...     bool((eng.to_numpy() == before).all()), eng.iteration, eng.sequence
    (True, 1, 2)
    >>> tmp.cleanup()
    """

    _directory: pathlib.Path
    _lock: threading.RLock  # serialises the calls: log order is apply order
    _lockfile: BinaryIO | None  # the held LOCK (None: released, or no flock)
    _log: LogWriter | None  # None: wal=False
    _closed: bool
    _failed: str | None  # why the engine failed (EngineFailedError), if it did
    _stopped: str | None  # why writes were stopped (stop_writes), if they were
    _snapshots: Checkpoints
    _wal: bool
    _compress: bool
    # set when the state is open (_open_state)
    _eng: Engine
    _bk: ModuleType  # the inner engine's backend
    _sequence: int

    def __init__(self, directory: StrPath, *, n: int | None = None, backend: str = "auto",
                 seed: int | None = None, init: InitialWeights = "uniform",
                 params: Params | None = None, snapshot_every: int | None = 50, keep: int = 5,
                 wal: bool = True, fsync: str = "always", group_ms: float = 10.0,
                 compress: bool = True, wal_retention: str = "kept") -> None:
        if fsync not in ("always", "group"):
            raise ValueError(f"fsync must be 'always' or 'group', got {fsync!r}")
        if wal_retention not in ("kept", "newest"):
            raise ValueError(f"wal_retention must be 'kept' or 'newest', got {wal_retention!r}")
        keep = _inputs.whole(keep, "keep", minimum=1)
        every = 0 if snapshot_every is None else _inputs.whole(snapshot_every, "snapshot_every",
                                                               minimum=0)
        if not (isinstance(group_ms, numbers.Real) and 0 < float(group_ms) < 3.6e6):
            raise ValueError(f"group_ms must be a positive number of milliseconds, got {group_ms!r}")
        params = None if params is None else _inputs.law_params(params)
        # Probe the backends before taking the lock: probing may fork (CuPy's import runs
        # ldconfig), and a child forked while we hold the lock holds it until it execs.
        backends.resolve(backend)
        self._directory = pathlib.Path(directory)
        self._directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._log = self._lockfile = None
        self._closed = False
        self._failed = self._stopped = None
        self._snapshots = Checkpoints(self._directory, every=every, keep=keep,
                                      retention=wal_retention)
        self._wal, self._compress = bool(wal), bool(compress)
        self._lockfile = lock_directory(self._directory)
        try:
            self._open_state(n=n, backend=backend, seed=seed, init=init, params=params,
                             fsync=fsync, group_ms=float(group_ms))
        except BaseException:
            self._release_lock()
            raise

    @classmethod
    def open(cls, directory: StrPath, *, n: int | None = None, backend: str = "auto",
             seed: int | None = None, init: InitialWeights = "uniform", params: Params | None = None,
             snapshot_every: int | None = 50, keep: int = 5, wal: bool = True,
             fsync: str = "always", group_ms: float = 10.0, compress: bool = True,
             wal_retention: str = "kept") -> DurableEngine:
        """Open (and recover) or create the durable state in ``directory``: the same as
        ``DurableEngine(directory, ...)``, whose parameters these are."""
        return cls(directory, n=n, backend=backend, seed=seed, init=init, params=params,
                   snapshot_every=snapshot_every, keep=keep, wal=wal, fsync=fsync,
                   group_ms=group_ms, compress=compress, wal_retention=wal_retention)

    def _release_lock(self) -> None:
        if self._lockfile is not None:
            self._lockfile.close()  # closing the file releases the flock
            self._lockfile = None

    def _open_state(self, *, n: int | None, backend: str, seed: int | None,
                    init: InitialWeights, params: Params | None, fsync: str,
                    group_ms: float) -> None:
        """Recover the directory's state (or create it), tidy what recovery found, then open
        the log where the state ends."""
        directory = self._directory
        remove_temporaries(directory)
        scan = Recovery(directory)
        eng = scan.run(engine_factory=_restorer(directory, backend, n))
        fresh = eng is None
        if eng is None:  # fresh (tested on eng itself, which narrows its type)
            if n is None:
                raise ValueError(f"{directory} holds no state yet: pass n to create one")
            eng = Engine(n, backend=backend, seed=seed, init=init, params=params)
        elif params is not None and params != eng.params:
            raise ValueError(f"{directory} holds {eng.params}, not {params}: set "
                             "eng.params after opening to change them (the change is logged)")
        for message in scan.plan.warnings:
            warn(message)
        set_aside = scan.clear_damage()
        self._eng, self._bk = eng, backends.get(eng.backend)
        self._sequence = scan.sequence
        if fresh or set_aside:
            try:
                write_snapshot(directory, eng, self._sequence)
            except UnsnapshotableWeights as exc:
                if fresh:
                    raise ValueError(f"{directory}: the initial {exc}") from None
                warn(f"{directory}: no fresh snapshot after the fallback: {exc}")
        self._snapshots.refresh()
        if self._wal:
            first = self._sequence + 1
            segs = list_state(directory)[1]
            reuse = bool(segs) and segs[-1].first == first
            self._log = LogWriter(directory, first, fsync=fsync, group_ms=group_ms, reuse=reuse)

    # -- state ---------------------------------------------------------------------------
    @property
    def directory(self) -> pathlib.Path:
        """The state's directory."""
        return self._directory

    @property
    def sequence(self) -> int:
        """Log sequence number of the last acknowledged mutating call (0: none yet)."""
        return self._sequence

    @property
    def snapshot_sequence(self) -> int:
        """Log sequence covered by the newest snapshot (``sequence`` minus this: the records
        a recovery would replay)."""
        return self._snapshots.sequence

    @property
    def snapshot_time(self) -> float | None:
        """When the newest snapshot was written (``time.time()`` seconds), if known."""
        return self._snapshots.time

    @property
    def fsync_observer(self) -> Callable[[float], object] | None:
        """``callable(seconds)`` told of every fsync of the log (e.g. a latency histogram)."""
        return None if self._log is None else self._log.on_sync

    @fsync_observer.setter
    def fsync_observer(self, callback: Callable[[float], object] | None) -> None:
        if self._log is not None:
            self._log.on_sync = callback

    # -- reads: the inner engine's ---------------------------------------------------------
    n: _FromEngine[int] = _FromEngine("Number of memories.")
    backend: _FromEngine[str] = _FromEngine("The backend's name (any backend may open a state: "
                                            "replay is bit-identical).")
    iteration: _FromEngine[int] = _FromEngine("Dense steps applied, as for `Engine`.")
    weights: _FromEngine[BackendArray] = _FromEngine("The weights, never writable (see "
                                                     "``Engine.weights``).")

    def __len__(self) -> int:
        return self._eng.n

    def to_numpy(self) -> HostWeights:
        """A float32 copy of the weights on the host."""
        return self._eng.to_numpy()

    def synchronize(self) -> None:
        """Wait until queued device work is done (see ``Engine.synchronize``)."""
        self._eng.synchronize()

    def metrics(self, labels: Labels, **kwargs: Any) -> Metrics:
        """The population's metrics (see ``Engine.metrics``); reads log nothing."""
        return self._eng.metrics(labels, **kwargs)

    def __repr__(self) -> str:
        return (f"DurableEngine({str(self._directory)!r}, n={self.n}, backend={self.backend!r}, "
                f"params={self.params}, iteration={self.iteration}, sequence={self._sequence})")

    # -- the law (validated, logged, applied) -------------------------------------------
    @property
    def params(self) -> Params:
        """The law's parameters; assigning a `Params` is a logged, durable call."""
        return self._eng.params

    @params.setter
    def params(self, value: Params) -> None:
        value = _inputs.law_params(value)
        self._log_and_apply(calls.set_params(value), value)

    def step(self, quality: ArrayInput, *, check_finite: bool = True) -> None:
        """Dense step (see ``Engine.step``), durable when it returns."""
        with self._lock:
            self._check_open()
            q = _inputs.quality(quality, self.n, self._bk, check_finite=check_finite)
            if isinstance(q, float):
                self._log_and_apply(calls.scalar_step(q), q)
            else:
                self._log_and_apply(calls.dense_step(self._host(q), self._compress), q)

    def update(self, ids: ArrayInput, quality: ArrayInput, *, check_finite: bool = True) -> None:
        """Sparse ordered batch (see ``Engine.update``), durable when it returns."""
        with self._lock:
            self._check_open()
            ids_, q = _inputs.events(ids, quality, self.n, self._bk, check_finite=check_finite)
            self._log_and_apply(calls.update(self._host(ids_), self._host(q), self._compress),
                                (ids_, q))

    def decay(self, k: int = 1) -> None:
        """Passive decay ``k`` times (see ``Engine.decay``: 0 <= k <= 2^64 - 1), durable when
        it returns. The log records min(k, decay_rounds_bound(params.decay)), which gives the
        same weights, so replaying it is bounded however large k was."""
        k = _inputs.repeat_count(k)
        with self._lock:  # the bound depends on the parameters the call will run under
            k = min(k, calls.decay_rounds_bound(self._eng.params.decay))
            self._log_and_apply(calls.decay(k), k)

    def _host(self, a: BackendArray) -> HostWeights:
        return a if self._bk.xp is np else self._bk.to_host(a)

    def _log_and_apply(self, payload: calls.Payload, args: Any) -> None:
        """Log one validated call (durable per the fsync policy), apply it, maybe snapshot."""
        with self._lock:
            self._check_open()
            sequence = self._sequence + 1
            if self._log is not None:
                record = encode_record(sequence, payload.kind, payload.flags, payload.parts)
                try:
                    self._log.append(record)
                except EngineFailedError as exc:
                    self._failed = str(exc)
                    raise
            try:
                calls.apply(self._eng, payload.kind, args)
            except BaseException as exc:  # validated input cannot fail; a MemoryError can
                self._failed = (f"a logged call (sequence {sequence}) failed to apply ({exc!r}); "
                                "close and reopen the engine to replay it")
                raise
            self._sequence = sequence
            if self._snapshots.due(sequence):
                self._auto_checkpoint()

    # -- durability ----------------------------------------------------------------------
    def _check_open(self, writing: bool = True) -> None:
        if self._closed:
            raise ValueError(f"DurableEngine on {self._directory} is closed")
        if self._failed is not None:
            raise EngineFailedError(self._failed)
        if writing and self._stopped is not None:
            raise WritesStoppedError(self._stopped)

    def stop_writes(self, reason: str) -> None:
        """Refuse every later mutating call (``WritesStoppedError`` with ``reason``) until
        the engine is closed: the incident playbook's answer to corruption that restoring
        from disk does not repair. Reads, ``recover()`` and ``close()`` still work."""
        with self._lock:
            self._stopped = str(reason)

    @property
    def writes_stopped(self) -> str | None:
        """Why writes were stopped (``stop_writes``), or None."""
        return self._stopped

    def _auto_checkpoint(self) -> None:
        try:
            self._snapshots.take(self._eng, self._sequence, self._log)
        except EngineFailedError as exc:  # the call is durable; the next one is refused
            self._failed = str(exc)
            warn(f"{self._directory}: automatic checkpoint at sequence {self._sequence} failed "
                  f"and the log cannot go on ({exc}); this call is in the log, later ones are "
                  "refused")
        except (OSError, UnsnapshotableWeights) as exc:  # the call is already durable
            self._snapshots.postpone(self._sequence)
            warn(f"{self._directory}: automatic snapshot at sequence {self._sequence} failed "
                  f"({exc}); the log still holds every call")

    def checkpoint(self) -> pathlib.Path:
        """Write a snapshot of the current state into the directory now, start a new log
        segment and apply retention. Returns the snapshot's path. Raises OSError if it could
        not (the log goes on where it was), ValueError for weights outside [0, 1] (nothing
        written), EngineFailedError if the log cannot go on."""
        with self._lock:
            self._check_open(writing=False)
            try:
                return self._snapshots.take(self._eng, self._sequence, self._log)
            except EngineFailedError as exc:
                self._failed = str(exc)
                raise

    def recover(self) -> None:
        """Rebuild the weights from disk (the newest valid snapshot and the log), discarding
        the ones in memory: the incident playbook's answer to corruption in memory (the SLA
        monitor calls it). Every acknowledged call is on disk, so none is lost; without a log
        (``wal=False``) the calls since the newest snapshot would be, so it refuses."""
        with self._lock:
            self._check_open(writing=False)
            if self._log is None:
                raise RuntimeError("recover() needs the write-ahead log (opened with wal=False): "
                                   "it would lose the calls since the newest snapshot")
            self._log.sync()
            scan = Recovery(self._directory)
            eng = scan.run(engine_factory=_restorer(self._directory, self._eng.backend))
            if eng is None or scan.sequence != self._sequence:
                raise RecoveryError(f"{self._directory}: the disk holds sequence "
                                    f"{scan.sequence}, the engine acknowledged {self._sequence}")
            self._eng = eng

    def clamp(self) -> None:
        """Deprecated: call `recover`, which is what this does. Weights out of [0, 1] mean
        corruption in memory, so they are restored from disk, never clamped: a clamp outside
        the log would make the log replay to other weights."""
        warnings.warn("DurableEngine.clamp() is deprecated: it restores the weights from disk; "
                      "call recover()", DeprecationWarning, stacklevel=2)
        self.recover()

    def save(self, path: StrPath) -> pathlib.Path:
        """Export a standalone snapshot (readable by ``nap.load``) at ``path``; its metadata
        records the current log sequence."""
        with self._lock:
            eng = self._eng
            return snapshot.write(path, eng.to_numpy(), eng.params, iteration=eng.iteration,
                                  sequence=self._sequence, backend=eng.backend, version=__version__)

    def close(self) -> None:
        """Flush the log to disk, stop the flusher and release the directory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._log is not None:
                    self._log.close()
            finally:
                self._release_lock()

    def __enter__(self) -> DurableEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not getattr(self, "_closed", True):
                self.close()
        except Exception:
            pass
