"""The two contracts of nap_gpu: what every engine offers, and what every backend provides.

`Engine`, `DurableEngine` and `ShardedEngine` each satisfy `EngineLike`: code written against
it (a monitor, a service, a benchmark) runs on one process, a durable state or a Dask cluster
alike. A backend is a module (``nap_gpu.backends.numpy``, ``.cpp``, ``.cuda``) satisfying
`Backend`: the handful of operations the engines need, over arrays of its namespace ``xp``;
validation, metrics and the engines are written once above it. Both are checked by mypy and
at run time (``isinstance`` against these runtime-checkable protocols) in the tests.
"""

from __future__ import annotations

import pathlib
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from ._types import ArrayInput, BackendArray, HostWeights, Labels, StrPath
    from .metrics import Metrics
    from .params import Params

__all__ = ["Backend", "EngineLike"]


@runtime_checkable
class EngineLike(Protocol):
    """A population of ``n`` float32 weights under the NAP law (docs/law.md).

    Every call is validated before any weight is written: a rejected call changes nothing.
    """

    @property
    def iteration(self) -> int:
        """Dense steps applied so far."""

    @property
    def n(self) -> int:
        """The number of memories."""

    def __len__(self) -> int: ...

    @property
    def params(self) -> Params:
        """The law's parameters (assign a `Params` to change them for later calls)."""

    @params.setter
    def params(self, value: Params) -> None: ...

    def to_numpy(self) -> HostWeights:
        """A host copy of every weight."""

    def synchronize(self) -> None:
        """Wait until every call made so far has finished (a device's queued work)."""

    def step(self, quality: ArrayInput, *, check_finite: bool = True) -> None:
        """Dense step: one quality per memory (or one for all), then passive decay."""

    def update(self, ids: ArrayInput, quality: ArrayInput, *, check_finite: bool = True) -> None:
        """Sparse ordered batch: event ``i`` gives memory ``ids[i]`` the quality ``quality[i]``."""

    def decay(self, k: int = 1) -> None:
        """``k`` rounds of passive decay."""

    def metrics(self, labels: Labels, *, eps: float = ...) -> Metrics:
        """Separation, inversion ratio and saturation for R/P labels, exactly."""

    def save(self, path: StrPath) -> pathlib.Path:
        """Write the population durably; returns the path that loads it back."""


@runtime_checkable
class Backend(Protocol):
    """A backend module: the law's operations in place on arrays of its namespace ``xp``.

    ``step``, ``step_scalar``, ``update`` and ``decay`` apply the law (docs/law.md §2) bit for
    bit as every other backend does; ``step_into`` is the checked step written to another
    array (w only read), returning -1 or q's first non-finite index; the ``first_*`` scans
    return the first bad position or -1; ``exact_sums`` returns the integer sums the exact
    metrics are made of. A backend may also offer ``rank_sums(w, labels, low_key,
    high_key)``: the inversion ratio's integers without a sort, and ``exact_sums`` from the
    same pass (the C++ core does; ``nap_gpu.metrics.compute`` uses it where present).
    """

    name: str
    xp: ModuleType

    def asarray(self, x: Any) -> BackendArray: ...
    def from_host(self, x: np.ndarray) -> BackendArray: ...
    def to_host(self, x: BackendArray) -> np.ndarray: ...
    def synchronize(self) -> None: ...
    def read_only(self, x: BackendArray) -> BackendArray: ...
    def device_of(self, x: BackendArray) -> Any: ...
    def narrow_quality(self, q: BackendArray) -> BackendArray: ...
    def step(self, w: BackendArray, q: BackendArray, p: Params) -> None: ...
    def step_into(self, w: BackendArray, q: BackendArray, out: BackendArray, p: Params
                  ) -> int: ...
    def step_scalar(self, w: BackendArray, q: float, p: Params) -> None: ...
    def update(self, w: BackendArray, ids: BackendArray, q: BackendArray, p: Params) -> None: ...
    def decay(self, w: BackendArray, d: float, k: int) -> None: ...
    def first_nonfinite(self, x: BackendArray) -> int: ...
    def first_bad_id(self, ids: BackendArray, n: int) -> int: ...
    def exact_sums(self, w: BackendArray, labels: BackendArray) -> Any: ...


if TYPE_CHECKING:  # the proof, checked by mypy: every engine and every backend conforms
    from .backends import cpp as _cpp
    from .backends import cuda as _cuda
    from .backends import numpy as _numpy
    from .durable import DurableEngine
    from .engine import Engine
    from .sharded import ShardedEngine

    _engine: type[EngineLike] = Engine
    _durable: type[EngineLike] = DurableEngine
    _sharded: type[EngineLike] = ShardedEngine
    _backends: tuple[Backend, ...] = (_numpy, _cpp, _cuda)
