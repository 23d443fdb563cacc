"""ShardedEngine: one population split into contiguous id ranges on Dask workers.

Each shard is an ``Engine`` (or, with ``state=``, a ``DurableEngine``) held by a Dask actor on
a worker, resident between calls. The client validates every call with the Engine's own
rules before anything is sent, routes each shard its part, and returns when every shard has
acknowledged: the weights are, bit for bit, those a single ``Engine(n, seed=seed)`` would
hold after the same calls, and ``metrics`` equals ``Engine.metrics`` exactly. The design,
its costs and the fault model are in docs/sharding.md.

Importing this package imports neither Dask nor any GPU library; ``ShardedEngine`` imports
``dask.distributed`` when it is first used. Its modules, one job each:

- ``engine``: the client, ``ShardedEngine``;
- ``supervisor``: running a call on every shard, and its faults (recovery, fencing,
  rollbacks across shards, timeouts);
- ``shards``: the client's handles on the shards, their calls, their placement on workers;
- ``actor``: the worker side, ``ShardActor``;
- ``manifest``: the id ranges (``shard_bounds``), the save manifest and the state's layout;
- ``seeding``: each shard's part of the initial weights (PCG64 slices);
- ``dask_arrays``: dense steps whose qualities are a dask array.
"""

# ``X as X``: public without being in __all__ (documented, or naming a format), as they were
# in the former module nap_gpu.sharded.
from . import supervisor as _supervisor
from .actor import ShardActor
from .engine import ShardedEngine
from .manifest import LAYOUT as LAYOUT
from .manifest import LAYOUT_FORMAT as LAYOUT_FORMAT
from .manifest import MANIFEST, shard_bounds
from .manifest import MANIFEST_FORMAT as MANIFEST_FORMAT
from .manifest import MANIFEST_VERSION as MANIFEST_VERSION
from .supervisor import CallTimeoutError, ShardsLostError

#: Default ``call_timeout``: seconds a shard has to answer any call before it counts as
#: stalled (far above a healthy call's milliseconds, below Dask's own 5-minute worker TTL).
CALL_TIMEOUT = _supervisor.CALL_TIMEOUT

__all__ = ["MANIFEST", "CallTimeoutError", "ShardActor", "ShardedEngine", "ShardsLostError",
           "shard_bounds"]
