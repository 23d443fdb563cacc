"""nap_gpu: the NAP learning law over populations of float32 weights.

One weight per memory, updated by quality-gated reinforcement or punishment and passive
decay, clamped to [0, 1], with bit-identical results on every backend (CUDA, C++, NumPy).

>>> import nap_gpu as nap
>>> eng = nap.Engine(1000, seed=0)
>>> eng.step(0.9)            # one quality for every memory
>>> eng.update([3, 3, 7], [0.9, 0.1, 0.8])

Importing this package imports no GPU or deep-learning library.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("nap_gpu")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

from . import _threads

_threads.prepare()  # OpenMP's wait policy, before anything can load the C++ core

from ._config import show_config
from .backends import BackendUnavailableError, available_backends
from .durable import DurabilityWarning, DurableEngine, EngineFailedError, RecoveryError
from .engine import Engine
from .functional import step, update
from .metrics import Health, Metrics, PopulationStats, health
from .monitor import Monitor, WritesStoppedError
from .params import Params
from .sharded import CallTimeoutError, ShardedEngine, ShardsLostError
from .snapshot import SnapshotError
from .workload import ReferenceWorkload

load = Engine.load

__all__ = [
    "BackendUnavailableError", "CallTimeoutError", "DurabilityWarning", "DurableEngine", "Engine",
    "EngineFailedError", "Health", "RecoveryError", "Metrics", "Params", "PopulationStats",
    "Monitor", "ReferenceWorkload", "ShardedEngine", "ShardsLostError", "SnapshotError",
    "WritesStoppedError", "available_backends",
    "health", "load", "show_config", "step", "update",
    "__version__",
]
