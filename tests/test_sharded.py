"""ShardedEngine on a real Dask LocalCluster, against a single Engine, bit for bit.

Every test drives a ShardedEngine and an in-memory Engine with the same calls and compares
the weights as float32 bit patterns and the metrics with ``==``. Worker loss is real: a
worker process is SIGKILLed (by the test, or by a shard that kills its own worker at a chosen
point of a call), and the documented outcome is checked in both modes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nap_gpu as nap
from nap_gpu import sharded, snapshot
from nap_gpu.durable import DurabilityWarning, RecoveryError, recover_plan
from nap_gpu.protocols import EngineLike
from nap_gpu.sharded import supervisor as sharded_supervisor
from nap_gpu.sharded.seeding import UniformSlice

from conftest import assert_same_bits

distributed = pytest.importorskip(
    "distributed", reason="dask.distributed is not installed (pip install 'nap_gpu[dask]')")
dask = pytest.importorskip("dask", reason="dask is not installed")
da = pytest.importorskip("dask.array", reason="dask.array is not installed")

with warnings.catch_warnings():  # as in test_metrics.py: hypothesis' failure printer
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:
        pass

N = 1001  # uneven shards for 2, 3 and 7
SHARD_COUNTS = [1, 2, 3, 7]
FEW = settings(max_examples=12, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def cluster_client():
    # lost-worker-timeout: 15 s after a worker is removed, a LocalCluster closes its nanny if
    # no worker of that name is registered at that instant; a worker killed again within
    # 15 s (the stall test kills one a round) is then mid-restart, and its nanny is lost
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "1 hour"}):
        # dashboard on a free port: another cluster (a test's own) may hold the default 8787
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=":0")
        client = distributed.Client(cluster)
        yield client
        client.close()
        cluster.close()


@pytest.fixture
def client(cluster_client):
    """The cluster with both workers up (a killed worker's nanny restarts it)."""
    cluster_client.wait_for_workers(2, timeout=120)  # a killed worker restarts slowly when busy
    return cluster_client


def same(eng, ref, context=""):
    assert_same_bits(eng.to_numpy(), ref.to_numpy(), context)
    assert eng.iteration == ref.iteration, context


def labels_for(n, seed=0):
    return np.random.default_rng(seed).integers(0, 2, n).astype(bool)


def kill_worker(client, address):
    os.kill(client.run(os.getpid)[address], signal.SIGKILL)


def on_worker(eng, address):
    return {i: range(eng.bounds[i], eng.bounds[i + 1])
            for i, w in enumerate(eng.workers) if w == address}


# -- without a cluster ----------------------------------------------------------------------
@FEW
@given(n=st.integers(1, 5000), shards=st.integers(1, 40), seed=st.integers(0, 2**64 - 1))
def test_each_shard_makes_its_slice_of_the_seeded_weights(n, shards, seed):
    shards = min(shards, n)
    bounds = sharded.shard_bounds(n, shards)
    assert list(bounds) == [0, *np.cumsum([len(a) for a in np.array_split(np.arange(n), shards)])]
    state = np.random.default_rng(seed).bit_generator.state
    made = [UniformSlice(state, a, b).make() for a, b in zip(bounds[:-1], bounds[1:])]
    assert_same_bits(np.concatenate(made), nap.Engine(n, seed=seed, backend="numpy").to_numpy())


@FEW
@given(w=st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.98, 1.0]) | st.floats(0, 1, width=32),
                  min_size=1, max_size=300),
       cuts=st.lists(st.integers(0, 300), max_size=6), data=st.data())
def test_merged_summaries_give_the_metrics_of_the_whole(w, cuts, data):
    w = np.asarray(w, np.float32) + np.float32(0)  # weights are never -0.0
    labels = np.asarray(data.draw(st.lists(st.booleans(), min_size=w.size, max_size=w.size)),
                        np.uint8)
    bk = nap.backends.get("numpy")
    edges = sorted({0, w.size, *(c for c in cuts if c < w.size)})
    parts = [nap.metrics.summarize(w[a:b], labels[a:b], bk) for a, b in zip(edges[:-1], edges[1:])]
    whole = nap.metrics.compute(w, labels, bk)
    merged = nap.metrics.combine(nap.metrics.merge(parts))
    assert json.dumps(merged.as_dict()) == json.dumps(whole.as_dict())  # NaN == NaN here


# -- bit-identical to one Engine ------------------------------------------------------------
def drive(eng, ref, rng, iterations):
    """Dense steps (arrays of two dtypes, scalars), sparse batches with duplicate ids on
    every shard boundary, decay(k) and a parameter change, the same on both engines."""
    n = ref.n
    boundaries = np.asarray(eng.bounds[1:-1] or [n // 2])
    for it in range(iterations):
        q = rng.random(n) if it % 2 else rng.random(n, dtype=np.float32)
        eng.step(q)
        ref.step(q)
        near = np.clip(boundaries[:, None] + np.arange(-2, 2), 0, n - 1).ravel()
        ids = np.concatenate([rng.choice(near, 40), rng.integers(0, n, 40)])
        rng.shuffle(ids)
        qs = rng.random(ids.size)
        eng.update(ids, qs)
        ref.update(ids, qs)
        eng.update(ids[:7], 0.9)
        ref.update(ids[:7], 0.9)
        k = int(rng.integers(0, 4))
        eng.decay(k)
        ref.decay(k)
        eng.step(0.3)
        ref.step(0.3)
        if it == iterations // 2:
            eng.params = ref.params = nap.Params(lr=0.07, gate=0.45, decay=0.01)


def test_shards_run_on_the_best_backend_of_their_workers(client):
    """``backend="auto"`` is resolved on each worker: cuda there when it has a device (the
    simulated one in the tests without a GPU), so the tests below exercise the GPU path."""
    best = next(name for name, reason in nap.available_backends().items() if reason is None)
    with nap.ShardedEngine(100, shards=2, client=client, seed=1) as eng:
        assert eng.backends == (best, best)
        assert isinstance(eng, EngineLike)  # the engine contract (nap_gpu.protocols)


@pytest.mark.parametrize("shards", SHARD_COUNTS)
def test_bit_identical_to_one_engine(client, shards):
    with nap.ShardedEngine(N, shards=shards, client=client, seed=11) as eng:
        ref = nap.Engine(N, seed=11, backend="numpy")
        same(eng, ref, "initial weights")
        labels = labels_for(N)
        rng = np.random.default_rng(shards)
        for block in range(3):
            drive(eng, ref, rng, iterations=8)
            same(eng, ref, f"after block {block}")
            assert eng.metrics(labels) == ref.metrics(labels)
            assert eng.metrics(labels, eps=0.1) == ref.metrics(labels, eps=0.1)


@FEW
@given(batches=st.lists(st.tuples(st.lists(st.integers(0, 59), max_size=40),
                                  st.floats(0, 1) | st.none()), min_size=1, max_size=5),
       shards=st.sampled_from([2, 3, 7]))
def test_random_sparse_batches(client, batches, shards):
    with nap.ShardedEngine(60, shards=shards, client=client, seed=3) as eng:
        ref = nap.Engine(60, seed=3, backend="numpy")
        rng = np.random.default_rng(len(batches))
        for ids, scalar in batches:
            q = rng.random(len(ids)) if scalar is None else scalar
            eng.update(np.asarray(ids, np.int64), q)
            ref.update(np.asarray(ids, np.int64), q)
        same(eng, ref)


def test_initial_populations_other_than_seeded(client):
    w = np.random.default_rng(1).random(N).astype(np.float64)
    for init in (w, 0.25):
        with nap.ShardedEngine(N, shards=3, client=client, init=init) as eng:
            same(eng, nap.Engine(N, init=init))
    with nap.ShardedEngine(N, shards=3, client=client) as a:  # seed=None: one draw, split
        assert np.unique(a.to_numpy()).size > N - 5


def test_nonfinite_weights_give_the_engines_metrics(client):
    q = np.random.default_rng(2).random(N)
    q[[5, 800]] = np.nan
    with nap.ShardedEngine(N, shards=3, client=client, seed=4) as eng:
        ref = nap.Engine(N, seed=4)
        eng.step(q, check_finite=False)
        ref.step(q, check_finite=False)
        assert_same_bits(eng.to_numpy(), ref.to_numpy(), nan_payloads=False)
        labels = labels_for(N)
        got, expected = eng.metrics(labels), ref.metrics(labels)
        assert json.dumps(got.as_dict()) == json.dumps(expected.as_dict())  # NaN == NaN here


# -- dask arrays ----------------------------------------------------------------------------
@pytest.mark.parametrize("chunks", [(334, 334, 333), 100, N], ids=["like-shards", "100", "one"])
def test_dask_quality_is_stepped_shard_by_shard(client, chunks):
    rng = np.random.default_rng(5)
    with nap.ShardedEngine(N, shards=3, client=client, seed=6) as eng:
        ref = nap.Engine(N, seed=6)
        for dtype in (np.float64, np.float32):
            q = rng.random(N).astype(dtype)
            eng.step(da.from_array(q, chunks=chunks))
            ref.step(q)
        eng.step(da.from_array(np.float64(0.8)))
        ref.step(0.8)
        same(eng, ref)


# -- rejected calls change nothing ----------------------------------------------------------
def bad_calls(n):
    q = np.random.default_rng(0).random(n)
    nan_late = q.copy()
    nan_late[n - 3] = np.nan
    inf_q = q.copy()
    inf_q[1] = np.inf
    ids = np.arange(10)
    return [
        ("step", (nan_late,), {}), ("step", (inf_q,), {}), ("step", (q[:-1],), {}),
        ("step", (q.reshape(7, -1)[:, :-1],), {}), ("step", (np.arange(n),), {}),
        ("step", (float("nan"),), {}), ("step", ("0.5",), {}),
        ("step", (q.reshape(n, 1),), {}), ("step", (q.reshape(7, -1),), {}),
        ("step", (10**400,), {}), ("update", ([True, 5], 0.5), {}),
        ("update", ([1, 2], [0.5, True]), {}),
        ("update", (np.append(ids, -1), 0.5), {}), ("update", (np.append(ids, n), 0.5), {}),
        ("update", ([1, 2, 2**70], 0.5), {}), ("update", (ids.astype(float), 0.5), {}),
        ("update", (ids, q[:9]), {}), ("update", (ids, np.append(q[:9], np.nan)), {}),
        ("update", (ids.reshape(2, 5), 0.5), {}), ("update", (ids > 3, 0.5), {}),
        ("decay", (-1,), {}), ("decay", (1.5,), {}), ("decay", (True,), {}),
        ("metrics", (np.zeros(n - 1),), {}), ("metrics", (np.full(n, 2),), {}),
        ("metrics", (np.array(["R", "X"] * (n // 2) + ["P"]),), {}),
        ("metrics", (np.zeros(n, bool),), {"eps": 0.5}),
    ]


@pytest.mark.parametrize("call", bad_calls(N), ids=lambda c: c[0])
def test_rejected_call_changes_no_shard(client, call):
    method, args, kwargs = call
    with nap.ShardedEngine(N, shards=3, client=client, seed=8) as eng:
        ref = nap.Engine(N, seed=8)
        with pytest.raises(Exception) as expected:
            getattr(ref, method)(*args, **kwargs)
        with pytest.raises(type(expected.value)) as got:
            getattr(eng, method)(*args, **kwargs)
        assert str(got.value) == str(expected.value)
        same(eng, nap.Engine(N, seed=8), "after the rejected call")


@pytest.mark.parametrize("bad", ["nan", "length", "2-D", "dtype"])
def test_rejected_dask_quality_changes_no_shard(client, bad):
    q = np.random.default_rng(0).random(N)
    if bad == "nan":
        q[700] = np.nan
    elif bad == "length":
        q = q[:-2]
    elif bad == "2-D":  # n qualities, but not one per memory: (n, 1) is refused
        q = q.reshape(N, 1)
    else:
        q = (q * 10).astype(np.int64)
    with nap.ShardedEngine(N, shards=3, client=client, seed=8) as eng:
        ref = nap.Engine(N, seed=8)
        with pytest.raises(Exception) as expected:
            ref.step(q)
        with pytest.raises(type(expected.value)) as got:
            eng.step(da.from_array(q, chunks=100))
        assert str(got.value) == str(expected.value)
        same(eng, ref)


def _explodes():
    raise ZeroDivisionError("the qualities' own graph failed")


@pytest.mark.parametrize("check_finite", [True, False])
def test_failing_dask_graph_raises_its_error_and_changes_nothing(client, check_finite):
    q = da.from_delayed(dask.delayed(_explodes)(), shape=(N,), dtype=np.float64)
    with nap.ShardedEngine(N, shards=3, client=client, seed=8) as eng:
        with pytest.raises(ZeroDivisionError, match="own graph failed"):
            eng.step(q, check_finite=check_finite)
        same(eng, nap.Engine(N, seed=8))
        eng.step(0.9)  # still usable: no shard was called, none was lost


def test_bad_arguments_are_refused_before_any_shard_exists(client):
    with pytest.raises(ValueError, match="shards must lie in"):
        nap.ShardedEngine(5, shards=6, client=client)
    with pytest.raises(TypeError, match="a Generator's state cannot be split"):
        nap.ShardedEngine(5, shards=2, client=client, seed=np.random.default_rng(0))
    with pytest.raises(ValueError, match="init must lie in"):
        nap.ShardedEngine(5, shards=2, client=client, init=1.5)
    with pytest.raises(TypeError, match="params must be a nap.Params"):
        nap.ShardedEngine(5, shards=2, client=client, params={"lr": 0.1})
    for bad in (0, -1.0, float("nan"), float("inf"), 10**400):
        with pytest.raises(ValueError, match="call_timeout must be a positive number"):
            nap.ShardedEngine(5, shards=2, client=client, call_timeout=bad)
    for bad in (True, "5", [3]):
        with pytest.raises(TypeError, match="call_timeout must be a number"):
            nap.ShardedEngine(5, shards=2, client=client, call_timeout=bad)


# -- snapshots ------------------------------------------------------------------------------
def test_save_4_load_3_continue(client, tmp_path):
    rng = np.random.default_rng(9)
    with nap.ShardedEngine(N, shards=4, client=client, seed=12) as eng:
        ref = nap.Engine(N, seed=12)
        drive(eng, ref, rng, iterations=4)
        manifest_path = eng.save(tmp_path / "pop")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["n"] == N and manifest["bounds"] == list(sharded.shard_bounds(N, 4))
    assert manifest["iteration"] == ref.iteration
    for i, entry in enumerate(manifest["shards"]):  # each shard file is a plain snapshot
        part = nap.load(tmp_path / "pop" / entry["file"])
        assert snapshot.inspect(tmp_path / "pop" / entry["file"]).checksum == entry["checksum"]
        start, stop = manifest["bounds"][i:i + 2]
        assert_same_bits(part.to_numpy(), ref.to_numpy()[start:stop])
    with nap.ShardedEngine.load(tmp_path / "pop", shards=3, client=client) as eng:
        assert eng.shards == 3 and eng.params == ref.params
        same(eng, ref, "loaded")
        drive(eng, ref, rng, iterations=4)
        same(eng, ref, "continued")
        assert eng.metrics(labels_for(N)) == ref.metrics(labels_for(N))


def test_a_new_save_replaces_the_old_files(client, tmp_path):
    with nap.ShardedEngine(N, shards=3, client=client, seed=1) as eng:
        eng.save(tmp_path)
        eng.step(0.9)
        eng.save(tmp_path)
        files = sorted(p.name for p in tmp_path.glob("shard-*.nap"))
        manifest = json.loads((tmp_path / sharded.MANIFEST).read_text())
        listed = sorted(entry["file"] for entry in manifest["shards"])
        assert files == listed and len(files) == 3
        with nap.ShardedEngine.load(tmp_path, client=client) as back:
            assert back.shards == 3
            same(back, eng)


def test_damaged_or_foreign_shard_files_are_refused(client, tmp_path):
    with nap.ShardedEngine(N, shards=2, client=client, seed=1) as eng:
        eng.save(tmp_path / "a")
        eng.step(0.9)
        eng.save(tmp_path / "b")
    a, b = (json.loads((tmp_path / d / sharded.MANIFEST).read_text())["shards"] for d in "ab")
    # a file of another save, under this save's name: valid on its own, not this save's
    os.replace(tmp_path / "b" / b[1]["file"], tmp_path / "a" / a[1]["file"])
    with pytest.raises(snapshot.SnapshotError, match="belongs to another save"):
        nap.ShardedEngine.load(tmp_path / "a", shards=3, client=client)
    with open(tmp_path / "b" / b[0]["file"], "r+b") as fh:  # one flipped weight byte
        fh.seek(-5, os.SEEK_END)
        byte = fh.read(1)
        fh.seek(-5, os.SEEK_END)
        fh.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(snapshot.SnapshotError, match="checksum"):
        nap.ShardedEngine.load(tmp_path / "b", client=client)
    with pytest.raises(snapshot.SnapshotError, match="no manifest"):
        nap.ShardedEngine.load(tmp_path / "nothing", client=client)


# -- durable shards -------------------------------------------------------------------------
def test_durable_state_reopens_where_it_stopped(client, tmp_path):
    rng = np.random.default_rng(13)
    ref = nap.Engine(N, seed=14)
    with nap.ShardedEngine(N, shards=3, client=client, seed=14, state=tmp_path) as eng:
        drive(eng, ref, rng, iterations=3)
    with nap.ShardedEngine(N, shards=3, client=client, state=tmp_path) as eng:
        same(eng, ref, "reopened")
        assert eng.params == ref.params
        drive(eng, ref, rng, iterations=2)
        same(eng, ref, "continued")
    with pytest.raises(ValueError, match="re-shard with save"):
        nap.ShardedEngine(N, shards=4, client=client, state=tmp_path)


def test_a_call_cut_short_across_shards_is_rolled_back_on_reopen(client, tmp_path):
    """The client stopped mid-call: shard 1 has the call, the others not. It was never
    acknowledged, so reopening rolls it back there: every shard ends at the same point."""
    ref = nap.Engine(N, seed=14)
    with nap.ShardedEngine(N, shards=3, client=client, seed=14, state=tmp_path,
                           state_options={"snapshot_every": 1}) as eng:
        for _ in range(3):  # snapshots up to the acknowledged calls (one a call)
            eng.step(0.9)
            ref.step(0.9)
    # as if the client had stopped after shard 1 alone applied a call
    with nap.DurableEngine.open(tmp_path / "shard-0001", snapshot_every=0) as one:
        one.step(0.2)
    with pytest.warns(DurabilityWarning, match=r"cut short across shards.*\[1\].*rolled back"):
        eng = nap.ShardedEngine(N, shards=3, client=client, state=tmp_path)
    with eng:
        same(eng, ref, "reopened")
        eng.update([0, 400, 1000], 0.7)
        ref.update([0, 400, 1000], 0.7)
        same(eng, ref, "continued")
    assert {recover_plan(tmp_path / f"shard-{i:04d}")["sequence"] for i in range(3)} == {4}
    # two calls apart is not a call cut short: acknowledged calls are missing
    with nap.DurableEngine.open(tmp_path / "shard-0002", snapshot_every=0) as two:
        two.step(0.2)
        two.step(0.2)
    with pytest.raises(RecoveryError, match="more than one call apart"):
        nap.ShardedEngine(N, shards=3, client=client, state=tmp_path)


def test_lost_worker_is_recovered_from_state(client, tmp_path):
    """A worker killed between calls: its shards reopen on the survivor from snapshot +
    log, the next call is applied once, nothing acknowledged is lost."""
    rng = np.random.default_rng(15)
    ref = nap.Engine(N, seed=16)
    with nap.ShardedEngine(N, shards=4, client=client, seed=16, state=tmp_path,
                           state_options={"snapshot_every": 3}) as eng:
        drive(eng, ref, rng, iterations=3)
        victim = eng.workers[0]
        kill_worker(client, victim)
        drive(eng, ref, rng, iterations=2)
        assert victim not in eng.workers
        same(eng, ref, "after recovery")
        assert eng.metrics(labels_for(N)) == ref.metrics(labels_for(N))


def test_every_worker_lost_recovers_once_one_is_back(tmp_path):
    """The only worker dies: its shards wait for a worker (the nanny restarts it) and reopen."""
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        ref = nap.Engine(N, seed=20)
        with nap.ShardedEngine(N, shards=3, client=client, seed=20, state=tmp_path) as eng:
            eng.step(0.8)
            ref.step(0.8)
            victim = eng.workers[0]
            kill_worker(client, victim)
            eng.update([0, 500, 1000, 500], 0.9)
            ref.update([0, 500, 1000, 500], 0.9)
            assert victim not in eng.workers
            same(eng, ref)


class DyingShard(sharded.ShardActor):
    """A real shard whose worker process dies inside ``step`` when a marker file beside its
    state directory says so: before the call reaches its log, or after it was applied."""

    def step(self, quality, check_finite=False):
        self._die_if("before")
        sequence = super().step(quality, check_finite)
        self._die_if("after")
        return sequence

    def _die_if(self, when):
        marker = self._eng.directory.with_name(f"{self._eng.directory.name}.die-{when}")
        if marker.exists():
            marker.unlink()
            os.kill(os.getpid(), signal.SIGKILL)


class DyingShardedEngine(nap.ShardedEngine):
    _actor = DyingShard


@pytest.mark.parametrize("when", ["before", "after"])
def test_call_cut_by_worker_death_is_applied_exactly_once(client, tmp_path, when):
    q = np.random.default_rng(17).random(N)
    ref = nap.Engine(N, seed=18)
    with DyingShardedEngine(N, shards=4, client=client, seed=18, state=tmp_path) as eng:
        eng.step(0.9)
        ref.step(0.9)
        (tmp_path / f"shard-0001.die-{when}").touch()
        eng.step(q)  # shard 1's worker dies in it; its shards are recovered, none stepped twice
        ref.step(q)
        assert not (tmp_path / f"shard-0001.die-{when}").exists()
        same(eng, ref)


class CorruptibleShard(sharded.ShardActor):
    """A real shard whose weights can be written from outside the law (memory corruption)."""

    def corrupt(self, index, value):
        self._engine()._w[index] = value


class CorruptibleShardedEngine(nap.ShardedEngine):
    _actor = CorruptibleShard


def test_the_monitor_runs_a_sharded_engine_and_stops_writes_on_corruption(client):
    """A Monitor over a ShardedEngine steps and checks it; weights out of [0, 1] (which it can
    neither restore nor clamp in place) stop writes with the reason, instead of crashing."""
    labels = labels_for(N)
    with CorruptibleShardedEngine(N, shards=2, client=client, seed=5) as eng:
        mon = nap.Monitor(eng, labels, warmup=100, settle=100)
        event = mon.step(np.where(labels, 0.9, 0.1))
        assert event["ok"] and event["actions"] == []
        eng._supervisor.run({1: sharded.shards.ShardCall("corrupt", 3, 1.5)}, mutating=False)
        event = mon.check()
        assert not event["ok"] and event["writes_stopped"]
        assert "can neither restore nor clamp" in event["actions"][0]
        with pytest.raises(nap.WritesStoppedError):
            mon.step(0.9)
        assert eng.iteration == 1


def test_lost_worker_without_state_fails_the_engine(client):
    eng = nap.ShardedEngine(N, shards=3, client=client, seed=19)
    victim = eng.workers[1]
    expected = on_worker(eng, victim)
    kill_worker(client, victim)
    with pytest.raises(nap.ShardsLostError) as lost:
        eng.step(0.9)
    assert lost.value.shards == expected
    for i, ids in expected.items():
        assert f"shard {i} (ids {ids.start}..{ids.stop - 1})" in str(lost.value)
    for method, args in [("step", (0.5,)), ("update", ([1], 0.5)), ("decay", ()),
                         ("metrics", (labels_for(N),)), ("save", ("unused",)), ("to_numpy", ())]:
        with pytest.raises(nap.ShardsLostError) as again:
            getattr(eng, method)(*args)
        assert again.value.shards == expected
    eng.close()


# -- stalled workers ------------------------------------------------------------------------
STALL_TIMEOUT = 3.0  # call_timeout of the stall tests (s)
#: SIGSTOP/SIGCONT rounds of the stall test (more: NAP_STALL_ROUNDS=20 pytest -k stopped)
STALL_ROUNDS = int(os.environ.get("NAP_STALL_ROUNDS", "3"))


def exited(pid, within=10.0):
    """Whether process ``pid`` has exited (gone, or a zombie its parent has not reaped)."""
    deadline = time.monotonic() + within
    while True:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def state_files(directory):
    """(name, size, mtime) of every file of a durable sharded state: what a write changes."""
    return sorted((str(p.relative_to(directory)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in directory.rglob("*") if p.is_file())


def one_call(eng, ref, rng, k):
    """Call number k of a mixed workload on eng, then on ref if eng acknowledged it."""
    n = ref.n
    kind = k % 5
    if kind == 0:
        args = ("step", rng.random(n, dtype=np.float32))
    elif kind == 1:
        ids = rng.integers(0, n, 200)
        args = ("update", ids, rng.random(ids.size))
    elif kind == 2:
        args = ("decay", int(rng.integers(1, 4)))
    elif kind == 3:
        args = ("step", float(rng.random()))
    else:
        labels = labels_for(n, k)
        assert eng.metrics(labels) == ref.metrics(labels)
        return False
    getattr(eng, args[0])(*args[1:])  # raises CallTimeoutError when cut short
    getattr(ref, args[0])(*args[1:])
    return True


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_stopped_worker_is_fenced_and_the_call_rolled_back(client, tmp_path):
    """SIGSTOP a shard's worker at a random moment of a workload: the call in flight (or
    the next) fails within call_timeout with CallTimeoutError, the worker is killed through
    its nanny, its shards reopen elsewhere, the call is rolled back everywhere. SIGCONT
    then finds no process that could write. Reopened, the state equals an Engine that
    applied exactly the acknowledged calls, and each shard's log holds exactly them."""
    n = 50_000
    rng = np.random.default_rng(30)
    ref = nap.Engine(n, seed=31)
    acknowledged = 0  # mutating calls, one log record on every shard each
    eng = nap.ShardedEngine(n, shards=3, client=client, seed=31, state=tmp_path,
                            state_options={"snapshot_every": 2}, call_timeout=STALL_TIMEOUT)
    k = 0
    took = []  # seconds each call cut short took to fail
    for round_ in range(STALL_ROUNDS):
        client.wait_for_workers(2, timeout=120)
        victim = eng.workers[int(rng.integers(0, eng.shards))]
        pid = client.run(os.getpid, workers=[victim])[victim]
        stop = threading.Timer(rng.uniform(0.0, 0.5), os.kill, (pid, signal.SIGSTOP))
        stop.start()
        try:
            while True:
                k += 1
                started = time.monotonic()
                try:
                    acknowledged += one_call(eng, ref, rng, k)
                except sharded.CallTimeoutError as exc:
                    elapsed = time.monotonic() - started
                    timed_out = exc
                    break
        finally:
            stop.join()
        context = f"round {round_}"
        took.append(elapsed)
        assert STALL_TIMEOUT <= elapsed < STALL_TIMEOUT + 15, f"{context}: {elapsed:.1f} s"
        assert ("rolled back on every shard" in str(timed_out)
                or "nothing was changed" in str(timed_out))
        assert timed_out.shards
        assert all(eng.bounds[i] == r.start for i, r in timed_out.shards.items())
        assert timed_out.workers == {victim: f"process {pid} killed by its nanny"}, context
        assert victim not in eng.workers, f"{context}: shards still on the stopped worker"
        assert exited(pid), f"{context}: the stopped worker was not killed"
        before = state_files(tmp_path)
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass  # reaped already
        time.sleep(1.0)  # what a resumed stale worker would write, it would write now
        assert state_files(tmp_path) == before, f"{context}: the state changed after SIGCONT"
        same(eng, ref, f"{context}: after the call that timed out")
        for _ in range(3):  # and the engine goes on
            k += 1
            acknowledged += one_call(eng, ref, rng, k)
    eng.close()
    with nap.ShardedEngine(n, shards=3, client=client, state=tmp_path) as back:
        same(back, ref, "reopened")
        assert back.params == ref.params
    sequences = {recover_plan(tmp_path / f"shard-{i:04d}")["sequence"] for i in range(3)}
    assert sequences == {acknowledged}, "acknowledged calls lost, or calls kept that were not"
    print(f"{STALL_ROUNDS} SIGSTOP/SIGCONT rounds, {k} calls, {acknowledged} acknowledged "
          f"mutating calls, all in every shard's log; calls cut short failed after "
          f"{min(took):.2f}-{max(took):.2f} s")


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_stopped_worker_without_a_nanny_is_never_replaced_beside_it(tmp_path):
    """A stalled worker nothing can kill (no nanny) keeps its shard's LOCK: the shard is not
    reopened elsewhere (the engine fails, ShardsLostError). Resumed, the stale worker may
    still apply the call it had; once it is gone, a reopen rolls that unacknowledged call
    back, and the state equals an Engine that applied exactly the acknowledged calls."""
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        bare = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker",
                                 cluster.scheduler_address, "--no-nanny", "--nthreads", "1",
                                 "--no-dashboard"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client.wait_for_workers(2, timeout=60)
            ref = nap.Engine(N, seed=32)
            eng = nap.ShardedEngine(N, shards=2, client=client, seed=32, state=tmp_path,
                                    call_timeout=STALL_TIMEOUT)
            eng.step(0.8)
            ref.step(0.8)
            stale = next(w for w, pid in client.run(os.getpid).items() if pid == bare.pid)
            stalled_shard = eng.workers.index(stale)
            os.kill(bare.pid, signal.SIGSTOP)
            started = time.monotonic()
            with pytest.raises(nap.ShardsLostError, match="LOCK is held") as lost:
                eng.step(0.3)
            assert time.monotonic() - started < STALL_TIMEOUT + sharded_supervisor._FENCE_WAIT + 15
            assert set(lost.value.shards) == {stalled_shard}
            assert "no nanny" in lost.value.causes[stalled_shard] or "LOCK" in str(lost.value)
            eng.close()  # releases the shards that still answer
            os.kill(bare.pid, signal.SIGCONT)  # it may now apply the step it had
            time.sleep(1.0)
            bare.terminate()  # the operator's part: end the stale worker
            bare.wait(30)
            at = [recover_plan(tmp_path / f"shard-{i:04d}")["sequence"] for i in range(2)]
            assert at[1 - stalled_shard] == 1, "the shard that answered was rolled back"
            assert at[stalled_shard] in (1, 2), at  # 2: the stale worker wrote it, resumed
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", DurabilityWarning)
                back = nap.ShardedEngine(N, shards=2, client=client, state=tmp_path)
            assert len(caught) == (at[stalled_shard] == 2), [str(w.message) for w in caught]
            with back:
                same(back, ref, "reopened")
            print(f"stale worker's shard at sequence {at[stalled_shard]} before the reopen")
        finally:
            if bare.poll() is None:
                bare.kill()
                bare.wait(30)
