"""Sharding on Dask: ShardedEngine beside a single Engine on the same machine.

A LocalCluster of 2 worker processes (1 thread each: the core's OpenMP runs one thread per
worker) holds a ShardedEngine of 2 shards; the single Engine runs in this process on the cpp
backend with every core. Tiers: 10M and up (the ``--scale`` tiers from 10M: 10M by default,
100M with ``--scale 100M``); ``--smoke`` runs the smallest tier, one round.

Groups, one per operation and tier:

* ``sharded-dense-<tier>``: one dense step. ``single`` (``Engine.step(q)``), ``sharded-numpy-q``
  (q on the client: each shard is sent its slice, 4 bytes a memory over the loopback),
  ``sharded-dask-q`` (q a dask array made and persisted on the workers, chunked like the
  shards: nothing passes through the client), ``single-scalar`` / ``sharded-scalar`` (one
  quality for all: the call's fixed cost).
* ``sharded-sparse-<events>-<tier>``: one ordered batch of uniform events (1M; 10K in smoke
  mode), ``single`` vs ``sharded`` (partition on the client, each shard its events).
* ``sharded-metrics-<data>-<tier>``: ``Engine.metrics`` vs ``ShardedEngine.metrics`` on U[0, 1)
  weights (``uniform``: no ties, each summary ~5 bytes a memory) and after 50
  reference-workload steps (``converged``: heavy ties, small summaries).

Every sharded benchmark records ``single_ratio``: its time over the single Engine's doing the
same work, the two timed in alternation (the distribution overhead), and ``bytes_moved``
between the client and the workers per call. Each is first checked bit for bit (weights) or
for equality (metrics) against the single Engine.
"""

from __future__ import annotations

import numpy as np
import pytest
import scale_support
from scale_support import size_label

import nap_gpu as nap

from benchmarks.report.schema import Record

distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed "
                                                         "(pip install 'nap_gpu[dask]')")
da = pytest.importorskip("dask.array", reason="dask.array is not installed")

SHARDS = 2
MIN_TIER = 10**7
EVENTS = 1_000_000
SMOKE_EVENTS = 10_000


@pytest.fixture(scope="module")
def client():
    # dashboard on a free port: another cluster (a test's own) may hold the default 8787
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0")
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def _single_backend() -> str:
    return nap.backends.best_host().name


def _need(tier: int, smoke: bool, op: str) -> None:
    if tier < MIN_TIER and not smoke:
        pytest.skip(f"sharded benchmarks run from the {size_label(MIN_TIER)} tier up")
    fits, why = scale_support.op_fits(op, tier)
    if not fits:
        pytest.skip(why)


def _twin(sharded) -> nap.Engine:
    """A single Engine holding the sharded population's current weights."""
    return nap.Engine(sharded.n, backend=_single_backend(), init=sharded.to_numpy())


def _bit_exact(single, sharded) -> bool:
    return bool(np.array_equal(single.to_numpy().view(np.uint32),
                               sharded.to_numpy().view(np.uint32)))


class _Paired:
    """The single Engine doing the same work: timed in alternation with the sharded call."""

    def __init__(self, run):
        self.run = run

    def reset(self):
        pass


def _record(benchmark, measure, n, info, target, single_target=None) -> None:
    """Time ``target`` (a sharded one also paired with ``single_target``) into extra_info."""
    paired = None if single_target is None else _Paired(single_target)
    timing = measure(lambda: None, target, n, floor=paired, budget_scale=0.5)
    if "paired_floor_ratio" in timing:
        timing["single_ratio"] = timing.pop("paired_floor_ratio")
    benchmark.extra_info.update(Record(**info, **timing).json())


def _info(op: str, impl: str, tier: int, detail: dict | None = None, **fields) -> dict:
    """The record's fields so far (benchmarks/report/schema.py)."""
    return {"op": op, "impl": impl, "role": "nap" if impl.startswith("sharded") else "baseline",
            "n": tier, "detail": {"shards": SHARDS, **(detail or {})}, **fields}


# -- dense step -----------------------------------------------------------------------------
DENSE = ["single", "sharded-numpy-q", "sharded-dask-q", "single-scalar", "sharded-scalar"]
DENSE_BYTES = {"sharded-numpy-q": 4, "sharded-dask-q": 0, "sharded-scalar": 0}  # per memory


@pytest.fixture(scope="module")
def dense(tier, request):
    """A ShardedEngine, q on the client, and the same q as a dask array made on the workers,
    chunked like the shards and persisted there."""
    smoke = request.config.getoption("--smoke")
    _need(tier, smoke, "dense-step")
    client = request.getfixturevalue("client")  # only once a tier runs
    sizes = tuple(np.diff(nap.sharded.shard_bounds(tier, SHARDS)).tolist())
    q_on_workers = client.persist(
        da.random.default_rng(1).random(tier, chunks=(sizes,), dtype=np.float32))
    distributed.wait(q_on_workers)
    with nap.ShardedEngine(tier, shards=SHARDS, client=client, seed=0) as sharded:
        yield sharded, q_on_workers.compute(), q_on_workers


@pytest.mark.parametrize("impl", DENSE)
def test_sharded_dense_step(benchmark, measure, dense, tier, impl):
    sharded, q, q_on_workers = dense
    benchmark.group = f"sharded-dense-{size_label(tier)}"
    benchmark.name = f"{impl}[{size_label(tier)}]"
    single = _twin(sharded)
    scalar = impl.endswith("scalar")

    def single_step():
        single.step(0.7 if scalar else q)
    info = _info("sharded-dense-step", impl, tier,
                 bytes_moved=DENSE_BYTES.get(impl, 0) * tier)
    if impl.startswith("single"):
        _record(benchmark, measure, tier, info, single_step)
        return
    step = {"sharded-numpy-q": lambda: sharded.step(q),
            "sharded-dask-q": lambda: sharded.step(q_on_workers),
            "sharded-scalar": lambda: sharded.step(0.7)}[impl]
    step()
    single_step()
    info["bit_exact"] = _bit_exact(single, sharded)
    _record(benchmark, measure, tier, info, step, single_step)


# -- sparse batch ---------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["single", "sharded"])
def test_sharded_sparse_batch(benchmark, measure, dense, smoke, tier, impl):
    sharded = dense[0]
    m = SMOKE_EVENTS if smoke else EVENTS
    ids = scale_support.event_ids(tier, m, "uniform")
    q = scale_support.event_qualities(m)
    benchmark.group = f"sharded-sparse-{size_label(m)}-{size_label(tier)}"
    benchmark.name = f"{impl}[{size_label(m)}-{size_label(tier)}]"
    single = _twin(sharded)
    info = _info("sharded-sparse-batch", impl, tier, events=m, dist="uniform",
                 bytes_moved=8 * m if impl == "sharded" else 0)
    if impl == "single":
        _record(benchmark, measure, m, info, lambda: single.update(ids, q))
    else:
        sharded.update(ids, q)
        single.update(ids, q)
        info["bit_exact"] = _bit_exact(single, sharded)
        _record(benchmark, measure, m, info, lambda: sharded.update(ids, q),
                lambda: single.update(ids, q))
    benchmark.extra_info["events_per_s"] = Record.read(  # validated as the others
        {**benchmark.extra_info, "events_per_s": m / benchmark.stats.stats.median}).events_per_s


# -- metrics --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def populations(tier, request):
    """Per data kind: (single Engine, ShardedEngine with its weights, labels)."""
    smoke = request.config.getoption("--smoke")
    _need(tier, smoke, "metrics")
    client = request.getfixturevalue("client")
    workload = nap.ReferenceWorkload(tier, seed=0)
    converged = nap.Engine(tier, backend=_single_backend(), seed=0)
    for _ in range(2 if smoke else 50):
        converged.step(workload.next_quality())
    uniform = nap.Engine(tier, backend=_single_backend(), seed=2)
    made = {}
    try:
        for data, single in (("uniform", uniform), ("converged", converged)):
            made[data] = (single, nap.ShardedEngine(tier, shards=SHARDS, client=client,
                                                    init=single.to_numpy()), workload.labels)
        yield made
    finally:
        for _, sharded, _ in made.values():
            sharded.close()


@pytest.mark.parametrize("impl", ["single", "sharded"])
@pytest.mark.parametrize("data", ["uniform", "converged"])
def test_sharded_metrics(benchmark, measure, populations, tier, data, impl):
    single, sharded, labels = populations[data]
    benchmark.group = f"sharded-metrics-{data}-{size_label(tier)}"
    benchmark.name = f"{impl}-{data}[{size_label(tier)}]"
    info = _info("sharded-metrics", impl, tier, data=data, variant=data)
    if impl == "single":
        _record(benchmark, measure, tier, info, lambda: single.metrics(labels))
        return
    summary_bytes = _summary_bytes(single, labels)
    info.update(bit_exact=sharded.metrics(labels) == single.metrics(labels),
                bytes_moved=-(-tier // 8) + summary_bytes)
    info["detail"]["summary_bytes"] = summary_bytes
    _record(benchmark, measure, tier, info, lambda: sharded.metrics(labels),
            lambda: single.metrics(labels))


def _summary_bytes(single, labels) -> int:
    """Bytes the shards' summaries carry back to the client (integer bins, each label's
    distinct weights and their counts), measured on the summaries themselves."""
    bk = nap.backends.get("numpy")
    w, bounds = single.to_numpy(), nap.sharded.shard_bounds(single.n, SHARDS)
    total = 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        part = nap.metrics.summarize(w[a:b], labels[a:b].astype(np.uint8), bk).on_host()
        total += part.sums.nbytes + sum(x.nbytes for x in (*part.reinforced, *part.punished))
    return total
