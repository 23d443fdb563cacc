"""The Engine: a population of float32 weights owned by one backend, updated by the law."""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import numpy as np

from . import __version__, _inputs, backends, snapshot
from . import metrics as _metrics
from .params import Params

if TYPE_CHECKING:
    from ._types import ArrayInput, BackendArray, HostWeights, InitialWeights, Labels, StrPath
    from .durable import DurableEngine

__all__ = ["Engine"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _on_its_device(method: Callable[Concatenate[Engine, _P], _R]
                   ) -> Callable[Concatenate[Engine, _P], _R]:
    """Run an Engine method on the device that holds its weights (whatever device is current
    for the caller): inputs are copied there and kernels launch there."""
    @functools.wraps(method)
    def call(self: Engine, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._backend.device_of(self._w):
            return method(self, *args, **kwargs)
    return call


@dataclasses.dataclass(frozen=True)
class _Restored:
    """A snapshot's population for `Engine.load`: adopted without a copy or a range check (a
    snapshot gives back exactly what was saved, even the NaN of a corrupted population)."""

    weights: np.ndarray
    iteration: int


class Engine:
    """One float32 weight per memory, on one backend, updated in place by the NAP law.

    Parameters
    ----------
    n : int
        Number of memories (>= 1).
    backend : str
        ``"auto"`` (default: the best usable backend, ``NAP_BACKEND`` overrides), or one of
        ``"cuda"``, ``"cpp"``, ``"numpy"``; naming an unusable one raises with the reason.
    seed : int, optional
        Seed of the ``"uniform"`` initial weights: the same seed gives the same weights on
        every backend.
    init : "uniform", float or array
        Initial weights: seeded U[0, 1) (float32), a constant in [0, 1], or an array of n
        weights in [0, 1] (copied; ``-0.0`` stored as ``+0.0``).
    params : Params, optional
        The law's parameters (default ``Params()``).
    double_buffer : bool
        Keep a second weight buffer (4 bytes a memory more) so that the checked dense step,
        ``step(q)`` with an array of qualities, checks q and steps in one pass: the new
        weights go to the other buffer, which becomes the live one only if every quality was
        finite. It moves the unchecked step's bytes instead of a third more (measured on 2
        cores: 1.16-1.32x the bandwidth floor at 1e7-1e8 memories, against 1.65-1.85x). A view
        from `weights` then shows the buffer it was taken from: take it again after a step.

    Attributes
    ----------
    iteration : int
        Dense steps applied (``step`` calls; a snapshot keeps it).

    Notes
    -----
    Every mutating call validates all of its input before any weight is written: a rejected
    call raises and leaves the weights exactly as they were.

    Examples
    --------
    >>> import nap_gpu as nap
    >>> eng = nap.Engine(4, init=0.5, params=nap.Params(lr=0.25, decay=0.0))
    >>> eng.step([1.0, 1.0, 0.0, 0.5])  # dense: one quality per memory
    >>> eng.update([3, 3], 1.0)         # sparse: memory 3 twice, in order
    >>> print(eng.to_numpy())
    [0.75  0.75  0.25  0.875]
    >>> eng.n, eng.iteration
    (4, 1)
    """

    def __init__(self, n: int, *, backend: str = "auto", seed: int | None = None,
                 init: InitialWeights | _Restored = "uniform", params: Params | None = None,
                 double_buffer: bool = False) -> None:
        n = _inputs.whole(n, "n", minimum=1)
        self.iteration: int = 0  # dense steps applied
        if isinstance(init, _Restored):  # load(): the snapshot's weights, as they are
            host_weights, self.iteration = init.weights, init.iteration
        else:
            host_weights = _inputs.initial_weights(init, n, seed)
        self._n = int(host_weights.size)
        self.params = Params() if params is None else params  # the setter checks it
        self._backend = backends.resolve(backend)
        self._w = self._backend.from_host(host_weights)  # no copy on host backends
        self._spare = None  # double_buffer's other buffer: what a checked step writes
        if double_buffer:
            with self._backend.device_of(self._w):
                self._spare = self._backend.xp.empty_like(self._w)

    @classmethod
    def open(cls, directory: StrPath, **options: Any) -> DurableEngine:
        """A durable engine in ``directory``, created on first use, recovered afterwards: every
        acknowledged call survives a crash (write-ahead log + snapshots). See
        ``nap_gpu.durable.DurableEngine.open`` for the options and docs/durability.md."""
        from .durable import DurableEngine  # noqa: PLC0415 - durable imports this module

        return DurableEngine.open(directory, **options)

    @classmethod
    def load(cls, path: StrPath, *, backend: str = "auto", double_buffer: bool = False
             ) -> Engine:
        """The population a snapshot holds, on any backend, continuing bit for bit: weights,
        parameters and iteration as saved. Raises ``SnapshotError`` naming the file and the
        fault for a damaged, truncated, foreign or future-format file (``nap.load`` is this
        method). See `save` for an example."""
        weights, info = snapshot.read(path)
        return cls(info.n, backend=backend, init=_Restored(weights, info.iteration),
                   params=info.params, double_buffer=double_buffer)

    @_on_its_device
    def save(self, path: StrPath) -> pathlib.Path:
        """Write a snapshot to ``path`` atomically; returns once it is durable on disk.
        On failure the previous file at ``path`` (if any) is untouched.

        Examples
        --------
        >>> import pathlib, tempfile
        >>> import nap_gpu as nap
        >>> eng = nap.Engine(1000, seed=0)
        >>> eng.step(0.9)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = eng.save(pathlib.Path(tmp) / "pop.nap")
        ...     again = nap.load(path, backend="numpy")  # any backend, bit for bit
        >>> bool((again.to_numpy() == eng.to_numpy()).all()), again.iteration
        (True, 1)
        """
        host = self._w if self._backend.xp is np else self._backend.to_host(self._w)
        return snapshot.write(path, host, self._params, iteration=self.iteration,
                              backend=self.backend, version=__version__)

    # -- state ---------------------------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of memories."""
        return self._n

    def __len__(self) -> int:
        return self._n

    @property
    def backend(self) -> str:
        """The backend's name (``"cuda"``, ``"cpp"`` or ``"numpy"``)."""
        return self._backend.name

    @property
    def params(self) -> Params:
        """The law's parameters; assign a `Params` to change them for the calls that follow."""
        return self._params

    @params.setter
    def params(self, value: Params) -> None:
        self._params = _inputs.law_params(value)

    @property
    @_on_its_device
    def weights(self) -> BackendArray:
        """The weights in the backend's array type, never writable into the Engine: a
        read-only view of the live array on cpp/numpy (no copy), a device copy on cuda (CuPy
        arrays have no read-only flag). Use the Engine's methods to change them."""
        return self._backend.read_only(self._w)

    def synchronize(self) -> None:
        """Wait until queued device work is done (a no-op on host backends): read a clock
        after this, never straight after a GPU launch."""
        self._backend.synchronize()

    @_on_its_device
    def to_numpy(self) -> HostWeights:
        """A float32 copy of the weights on the host."""
        return self._backend.to_host(self._w)

    def __repr__(self) -> str:
        return (f"Engine(n={self._n}, backend={self.backend!r}, params={self._params}, "
                f"iteration={self.iteration})")

    # -- the law -------------------------------------------------------------------------
    @_on_its_device
    def step(self, quality: ArrayInput, *, check_finite: bool = True) -> None:
        """Dense step: one quality per memory (or one for all), feedback then decay.

        ``check_finite=False`` skips the NaN/inf scan of the qualities (one read pass) for
        trusted producers; a NaN quality then punishes and its weight becomes NaN.
        """
        into = self._spare is not None and check_finite  # one pass, into the other buffer
        q = _inputs.quality(quality, self._n, self._backend, check_finite=check_finite,
                            weights=self._spare if into else self._w, scan=not into)
        if isinstance(q, float):
            self._backend.step_scalar(self._w, q, self._params)
        elif into:
            bad = self._backend.step_into(self._w, q, self._spare, self._params)
            if bad >= 0:
                raise _inputs.not_finite("quality", bad, float(q[bad]))
            self._w, self._spare = self._spare, self._w
        else:
            self._backend.step(self._w, q, self._params)
        self.iteration += 1

    @_on_its_device
    def update(self, ids: ArrayInput, quality: ArrayInput, *, check_finite: bool = True) -> None:
        """Sparse ordered batch: feedback only (no decay) for each (id, quality) event.

        Events are applied in the order given: an id listed several times is updated several
        times, in order. ``quality`` may be one number for all events.
        """
        ids_, q = _inputs.events(ids, quality, self._n, self._backend, check_finite=check_finite,
                                 weights=self._w)
        self._backend.update(self._w, ids_, q, self._params)

    @_on_its_device
    def decay(self, k: int = 1) -> None:
        """Passive decay only, ``k`` times, for every memory.

        Examples
        --------
        >>> import nap_gpu as nap
        >>> eng = nap.Engine(2, init=[0.5, 0.01], params=nap.Params(decay=0.125))
        >>> eng.decay(2)  # two rounds; a weight stops at 0
        >>> print(eng.to_numpy())
        [0.25 0.  ]
        """
        self._backend.decay(self._w, self._params.decay, _inputs.repeat_count(k))

    @_on_its_device
    def clamp(self) -> None:
        """Clamp every weight into [0, 1] (the law never leaves it: this repairs weights
        corrupted from outside, the incident playbook's answer to out-of-bounds weights).
        NaN stays NaN."""
        self._backend.decay(self._w, 0.0, 1)  # decay by 0 is exactly the law's clamp

    # -- monitoring ----------------------------------------------------------------------
    @_on_its_device
    def metrics(self, labels: Labels, *, eps: float = _metrics.DEFAULT_EPS) -> _metrics.Metrics:
        """Separation, inversion ratio, saturation and per-population stats for labels
        (bool or 0/1: 1 = reinforced R; or strings 'R'/'P'), one per memory. Computed where
        the weights live; the numbers are exact, hence the same on every backend.

        Examples
        --------
        >>> import nap_gpu as nap
        >>> eng = nap.Engine(4, init=[0.875, 0.75, 0.25, 0.125])
        >>> m = eng.metrics([1, 1, 0, 0])  # memories 0 and 1 reinforced (R), 2 and 3 punished
        >>> m.separation, m.inversion_ratio, m.saturation
        (0.625, 1.0, 0.0)
        >>> nap.health(m, iteration=eng.iteration).ok
        True
        """
        host_labels = _inputs.labels(labels, self._n)
        return _metrics.compute(self._w, self._backend.asarray(host_labels), self._backend, eps=eps)
