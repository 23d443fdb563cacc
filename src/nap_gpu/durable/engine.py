"""The durable engine: `DurableEngine`, an `Engine` whose every acknowledged call survives a
crash. It validates each mutating call, logs it (`writer`), applies it; it opens a state
through `recovery`, holds its LOCK while open, writes snapshots and applies retention.
"""

from __future__ import annotations

import numbers
import pathlib
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from .. import __version__, _inputs, backends, snapshot
from .._files import fsync_directory
from ..engine import Engine
from ..monitor import WritesStoppedError
from ..params import Params
from . import calls
from .errors import DurabilityWarning, EngineFailedError, RecoveryError
from .format import encode_record, list_state, remove_temporaries, snap_name
from .lock import lock_directory
from .recovery import Recovery
from .writer import LogWriter

if TYPE_CHECKING:
    from .._types import ArrayInput, BackendArray, HostWeights, InitialWeights, Labels, StrPath
    from ..metrics import Metrics

__all__ = ["DurableEngine"]


class _UnsnapshotableWeights(ValueError):
    """The weights are not in [0, 1] (NaN included): a snapshot of them would be rejected."""


class DurableEngine:
    """An Engine whose every acknowledged call survives a crash. Create with ``open``.

    Same methods as ``Engine`` (``step``, ``update``, ``decay``, ``params``, ``to_numpy``,
    ``metrics``, ``weights``, ``n``, ``backend``, ``iteration``, ``save``) plus ``sequence``
    (the log sequence of the last acknowledged call), ``checkpoint()`` and ``close()``; a
    context manager. Calls are serialised by a lock (log order is apply order).

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
    >>> with nap.DurableEngine.open(state) as eng:  # recovered: snapshot + log replay
    ...     bool((eng.to_numpy() == before).all()), eng.iteration, eng.sequence
    (True, 1, 2)
    >>> tmp.cleanup()
    """

    # Set by open(), on an instance made with __new__ (__init__ refuses).
    _directory: pathlib.Path
    _lock: threading.RLock
    _log: LogWriter | None  # None: wal=False
    _lockfile: BinaryIO | None  # the held LOCK (None: released, or no flock)
    _closed: bool
    _failed: str | None  # why the engine failed (EngineFailedError), if it did
    _stopped: str | None
    _snapshot_every: int
    _keep: int
    _wal: bool
    _compress: bool
    _retention: str

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("use DurableEngine.open(directory, ...)")

    @classmethod
    def open(cls, directory: StrPath, *, n: int | None = None, backend: str = "auto",
             seed: int | None = None, init: InitialWeights = "uniform", params: Params | None = None,
             snapshot_every: int | None = 50, keep: int = 5, wal: bool = True,
             fsync: str = "always", group_ms: float = 10.0, compress: bool = True,
             wal_retention: str = "kept") -> DurableEngine:
        """Open (and recover) or create the durable state in ``directory``.

        First open (no state yet): ``n`` is required; ``seed``, ``init`` and ``params`` make
        the initial population, which is snapshotted at sequence 0 before ``open`` returns.
        Later opens recover: newest valid snapshot + log replay; ``n`` and ``params``, if
        given, must match the recovered state (``seed``/``init`` are ignored); any
        ``backend`` may be used (replay is bit-identical on every backend).

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
        """
        if fsync not in ("always", "group"):
            raise ValueError(f"fsync must be 'always' or 'group', got {fsync!r}")
        if wal_retention not in ("kept", "newest"):
            raise ValueError(f"wal_retention must be 'kept' or 'newest', got {wal_retention!r}")
        if isinstance(keep, bool) or not isinstance(keep, numbers.Integral) or keep < 1:
            raise ValueError(f"keep must be an integer >= 1, got {keep!r}")
        if snapshot_every is not None and (isinstance(snapshot_every, bool)
                                           or not isinstance(snapshot_every, numbers.Integral)
                                           or snapshot_every < 0):
            raise ValueError(f"snapshot_every must be an integer >= 0 or None, got {snapshot_every!r}")
        if not (isinstance(group_ms, numbers.Real) and 0 < float(group_ms) < 3.6e6):
            raise ValueError(f"group_ms must be a positive number of milliseconds, got {group_ms!r}")
        if params is not None and not isinstance(params, Params):
            raise TypeError(f"params must be a nap.Params, got {type(params).__name__}")
        # Probe the backends before taking the lock: probing may fork (CuPy's import runs
        # ldconfig), and a child forked while we hold the lock holds it until it execs.
        backends.resolve(backend)
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self = cls.__new__(cls)
        self._directory = directory
        self._lock = threading.RLock()
        self._log = None
        self._lockfile = None
        self._closed = False
        self._failed = None
        self._stopped = None  # why writes were stopped (stop_writes), if they were
        self._snapshot_every = int(snapshot_every or 0)
        self._keep = int(keep)
        self._wal = bool(wal)
        self._compress = bool(compress)
        self._retention = wal_retention
        self._acquire_lock()
        try:
            self._recover(n=n, backend=backend, seed=seed, init=init, params=params,
                          fsync=fsync, group_ms=float(group_ms))
        except BaseException:
            self._release_lock()
            raise
        return self

    def _acquire_lock(self) -> None:
        self._lockfile = lock_directory(self._directory)

    def _release_lock(self) -> None:
        if self._lockfile is not None:
            self._lockfile.close()  # closing the file releases the flock
            self._lockfile = None

    def _recover(self, *, n: int | None, backend: str, seed: int | None, init: InitialWeights,
                 params: Params | None, fsync: str, group_ms: float) -> None:
        directory = self._directory
        remove_temporaries(directory)
        rec = Recovery(directory)

        def factory(weights: HostWeights, info: snapshot.SnapshotInfo) -> Engine:
            if n is not None and int(n) != info.n:
                raise ValueError(f"{directory} holds n = {info.n} memories, not n = {n}")
            eng = Engine(info.n, backend=backend, init=weights, params=info.params)
            eng.iteration = info.iteration
            return eng

        eng = rec.run(engine_factory=factory)
        fresh = eng is None
        if eng is None:  # fresh (tested on eng itself, which narrows its type)
            if n is None:
                raise ValueError(f"{directory} holds no state yet: pass n to create one")
            eng = Engine(n, backend=backend, seed=seed, init=init, params=params)
        elif params is not None and params != eng.params:
            raise ValueError(f"{directory} holds {eng.params}, not {params}: set "
                             "eng.params after opening to change them (the change is logged)")
        for message in rec.plan.warnings:
            warnings.warn(message, DurabilityWarning, stacklevel=3)
        set_aside = rec.clear_damage()
        self._eng = eng
        self._bk = backends.get(eng.backend)
        self._sequence = rec.sequence
        self._snap_seq = rec.sequence
        if fresh or set_aside:
            try:
                self._write_snapshot()
            except _UnsnapshotableWeights as exc:
                if fresh:
                    raise ValueError(f"{directory}: the initial {exc}") from None
                warnings.warn(f"{directory}: no fresh snapshot after the fallback: {exc}",
                              DurabilityWarning, stacklevel=3)
        snaps, segs = list_state(directory)
        self._snap_seq = snaps[0][0] if snaps else 0
        self._snap_time = snaps[0][2].stat().st_mtime if snaps else None
        if self._wal:
            first = self._sequence + 1
            reuse = bool(segs) and segs[-1][0] == first
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
        return self._snap_seq

    @property
    def snapshot_time(self) -> float | None:
        """When the newest snapshot was written (``time.time()`` seconds), if known."""
        return self._snap_time

    @property
    def fsync_observer(self) -> Callable[[float], object] | None:
        """``callable(seconds)`` told of every fsync of the log (e.g. a latency histogram)."""
        return None if self._log is None else self._log.on_sync

    @fsync_observer.setter
    def fsync_observer(self, callback: Callable[[float], object] | None) -> None:
        if self._log is not None:
            self._log.on_sync = callback

    @property
    def n(self) -> int:
        """Number of memories."""
        return self._eng.n

    def __len__(self) -> int:
        return self._eng.n

    @property
    def backend(self) -> str:
        """The backend's name (any backend may open a state: replay is bit-identical)."""
        return self._eng.backend

    @property
    def iteration(self) -> int:
        """Dense steps applied, as for `Engine`."""
        return self._eng.iteration

    @property
    def weights(self) -> BackendArray:
        """The weights, never writable (see ``Engine.weights``)."""
        return self._eng.weights

    def to_numpy(self) -> HostWeights:
        """A float32 copy of the weights on the host."""
        return self._eng.to_numpy()

    def synchronize(self) -> None:
        """Wait until queued device work is done (see ``Engine.synchronize``)."""
        self._eng.synchronize()

    def metrics(self, labels: Labels, **kwargs: Any) -> Metrics:
        """The population's metrics (see ``Engine.metrics``); reads log nothing."""
        return self._eng.metrics(labels, **kwargs)

    @property
    def params(self) -> Params:
        """The law's parameters; assigning a `Params` is a logged, durable call."""
        return self._eng.params

    @params.setter
    def params(self, value: Params) -> None:
        if not isinstance(value, Params):
            raise TypeError(f"params must be a nap.Params, got {type(value).__name__}")
        self._call(calls.set_params(value), value)

    def __repr__(self) -> str:
        return (f"DurableEngine({str(self._directory)!r}, n={self.n}, backend={self.backend!r}, "
                f"params={self.params}, iteration={self.iteration}, sequence={self._sequence})")

    # -- the law (validated, logged, applied) -------------------------------------------
    def step(self, quality: ArrayInput, *, check_finite: bool = True) -> None:
        """Dense step (see ``Engine.step``), durable when it returns."""
        with self._lock:
            self._check_open()
            q = _inputs.quality(quality, self.n, self._bk, check_finite=check_finite)
            if isinstance(q, float):
                self._call(calls.scalar_step(q), q)
            else:
                self._call(calls.dense_step(self._host(q), self._compress), q)

    def update(self, ids: ArrayInput, quality: ArrayInput, *, check_finite: bool = True) -> None:
        """Sparse ordered batch (see ``Engine.update``), durable when it returns."""
        with self._lock:
            self._check_open()
            ids_, q = _inputs.events(ids, quality, self.n, self._bk, check_finite=check_finite)
            self._call(calls.update(self._host(ids_), self._host(q), self._compress), (ids_, q))

    def decay(self, k: int = 1) -> None:
        """Passive decay ``k`` times (see ``Engine.decay``: 0 <= k <= 2^64 - 1), durable when
        it returns. The log records min(k, decay_rounds_bound(params.decay)), which gives the
        same weights, so replaying it is bounded however large k was."""
        k = _inputs.repeat_count(k)
        with self._lock:  # the bound depends on the parameters the call will run under
            k = min(k, calls.decay_rounds_bound(self._eng.params.decay))
            self._call(calls.decay(k), k)

    def _host(self, a: BackendArray) -> HostWeights:
        return a if self._bk.xp is np else self._bk.to_host(a)

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

    def _call(self, payload: calls.Payload, args: Any) -> None:
        """Log (the record is durable per the fsync policy), then apply, then maybe snapshot."""
        with self._lock:
            self._check_open()
            sequence = self._sequence + 1
            if self._log is not None:
                try:
                    self._log.append(encode_record(sequence, payload.kind, payload.flags, payload.parts))
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
            if self._snapshot_every and sequence - self._snap_seq >= self._snapshot_every:
                self._auto_checkpoint()

    def _auto_checkpoint(self) -> None:
        try:
            self._checkpoint()
        except EngineFailedError as exc:  # the call is durable; the next one is refused
            self._failed = str(exc)
            warnings.warn(f"{self._directory}: automatic checkpoint at sequence "
                          f"{self._sequence} failed and the log cannot go on ({exc}); this "
                          "call is in the log, later ones are refused", DurabilityWarning,
                          stacklevel=4)
        except (OSError, _UnsnapshotableWeights) as exc:  # the call is already durable
            self._snap_seq = self._sequence  # try again after snapshot_every more calls
            warnings.warn(f"{self._directory}: automatic snapshot at sequence {self._sequence} "
                          f"failed ({exc}); the log still holds every call", DurabilityWarning,
                          stacklevel=4)

    def _write_snapshot(self) -> pathlib.Path:
        eng = self._eng
        host = eng.weights
        if not isinstance(host, np.ndarray):
            host = eng.to_numpy()
        if host.size and not (host.min() >= 0 and host.max() <= 1):  # NaN fails too
            # recovery rejects such a file as damaged (snapshot.read): writing it would make a
            # later open fall back past it, or fail under wal_retention="newest"
            bad = int(np.argmax(~((host >= 0) & (host <= 1))))
            raise _UnsnapshotableWeights(f"weight {bad} = {float(host[bad])!r} is not in [0, 1]: "
                                         "no snapshot is written of weights recovery would "
                                         "reject")
        name = snap_name(self._sequence, eng.n, eng.params, eng.iteration)
        path = snapshot.write(self._directory / name, host, eng.params, iteration=eng.iteration,
                              sequence=self._sequence, backend=eng.backend, version=__version__)
        # snapshot.write skips it when the directory cannot be opened
        fsync_directory(self._directory)
        self._snap_seq = self._sequence
        self._snap_time = time.time()
        return path

    def _checkpoint(self) -> pathlib.Path:
        if self._log is not None:
            self._log.sync()  # a snapshot never runs ahead of the log it may fall back on
        path = self._write_snapshot()
        if self._log is not None:
            self._log.rotate(self._sequence + 1)
        self._retain()
        return path

    def checkpoint(self) -> pathlib.Path:
        """Write a snapshot of the current state into the directory now, start a new log
        segment and apply retention. Returns the snapshot's path. Raises OSError if it could
        not (the log goes on where it was), ValueError for weights outside [0, 1] (nothing
        written), EngineFailedError if the log cannot go on."""
        with self._lock:
            self._check_open(writing=False)
            try:
                return self._checkpoint()
            except EngineFailedError as exc:
                self._failed = str(exc)
                raise

    def _retain(self) -> None:
        snaps, segs = list_state(self._directory)
        for _, _, path in snaps[self._keep:]:
            path.unlink(missing_ok=True)
        kept = [s for s, _, _ in snaps[:self._keep]]
        if not kept:
            return
        covered = min(kept) if self._retention == "kept" else max(kept)
        active = None if self._log is None else self._log.first
        for i, (first, path) in enumerate(segs[:-1]):
            if first != active and segs[i + 1][0] - 1 <= covered:
                path.unlink(missing_ok=True)

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
            backend = self._eng.backend

            def factory(weights: HostWeights, info: snapshot.SnapshotInfo) -> Engine:
                eng = Engine(info.n, backend=backend, init=weights, params=info.params)
                eng.iteration = info.iteration
                return eng

            rec = Recovery(self._directory)
            eng = rec.run(engine_factory=factory)
            if eng is None or rec.sequence != self._sequence:
                raise RecoveryError(f"{self._directory}: the disk holds sequence "
                                    f"{rec.sequence}, the engine acknowledged {self._sequence}")
            self._eng = eng

    def clamp(self) -> None:
        """Weights out of [0, 1] mean corruption in memory: restored from disk (``recover``),
        since a clamp outside the log would make the log replay to other weights."""
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
