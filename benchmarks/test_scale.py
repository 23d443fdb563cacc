"""Scale suites: the sparse ordered batch, decay(k), metrics and snapshots at every tier.

(The dense step's scale suite is ``test_dense_step.py``; both run on the ``--scale`` tiers.)

Groups, one per operation and size, so that pytest-benchmark's tables and
``--benchmark-compare`` line up like for like:

* ``sparse-<uniform|zipf>-<events>-<tier>``: one ordered batch of ``events`` events on a
  population of ``tier`` memories; events/s = events / time. Batches of 10K and 1M events run
  at every tier, 10M events from the 1M tier up (below it, a batch would hit each memory
  hundreds of times). Ids uniform, or Zipf(1.1) over the ids (a few hot memories take a large
  share: at 10K memories the hottest id gets ~15% of the events). ``cpp-validated`` (the
  public call) at 10K events is also timed in alternation with numba-seq: its
  ``paired_floor_ratio`` is its time over numba-seq's, robust to the machine drifting.
* ``decay-k<k>-<tier>``: ``decay(k)`` for k = 1 and 10, beside the floor (paired).
* ``scale-metrics-<tier>``: ``Engine.metrics(labels)`` (exact separation and inversion ratio)
  per backend, beside scikit-learn's ``roc_auc_score`` + a float64 mean difference.
* ``snapshot-<tier>``: ``Engine.save`` / ``nap.load`` per backend, beside raw ``tofile`` +
  fsync / ``readinto`` of the same bytes (the floor, also timed in alternation: the paired
  ratio) and ``np.save`` + fsync / ``np.load``.

Every benchmark also *measures* its peak memory (peak RSS above the process's RSS before its
state was built: ``mem_peak_bytes_per_memory``) in its record (benchmarks/report/schema.py).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import peers
import pytest
import scale_peers
import scale_support
from scale_support import CpuContention, size_label

import nap_gpu as nap
from nap_gpu import backends

from benchmarks.report.schema import Record, measured

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

NAP_BACKENDS = ["cpp", "numpy"]
#: The numpy backend and the NumPy peer apply one vectorised round per multiplicity level:
#: beyond this many events on one id, a batch takes minutes; it is skipped with the number.
MAX_ROUNDS = 20_000


def _need(op: str, n: int) -> None:
    fits, why = scale_support.op_fits(op, n)
    if not fits:
        pytest.skip(why)


def _usable(name: str) -> None:
    reason = backends.available_backends().get(name)
    if reason is not None:
        pytest.skip(f"nap backend {name!r} unavailable: {reason}")


# --------------------------------------------------------------------------------------------
# Sparse ordered batch
# --------------------------------------------------------------------------------------------
EVENTS = [10_000, 1_000_000, 10_000_000]
_sparse_verdicts: dict[str, dict] = {}
_events_cache: dict = {}


@pytest.fixture(scope="module")
def sparse_pristine(tier):
    _need("sparse-batch", tier)
    w = np.random.default_rng([tier, 5]).random(tier, dtype=np.float32)
    w.flags.writeable = False
    _events_cache.clear()
    yield w
    _events_cache.clear()


# Rounds cycle through this many different batches of up to FRESH_BELOW events: replayed,
# one batch of a few thousand events is learnt by the CPU's branch predictor, which then
# flatters branchy code (a numba loop: 1.6 ns/event replayed at 3K events, 5.8 ns at 10K;
# benchmarks/README.md). Real feedback is new every call. Larger batches are beyond what a
# predictor holds, and would cost memory, so they are drawn once.
FRESH_BATCHES, FRESH_BELOW = 8, 100_000


def _events(tier: int, m: int, dist: str):
    """The batches a benchmark cycles through, [(ids, q)], and the largest multiplicity."""
    key = (tier, m, dist)
    if key not in _events_cache:
        _events_cache.clear() if len(_events_cache) > 4 else None
        count = FRESH_BATCHES if m <= FRESH_BELOW else 1
        batches = [(scale_support.event_ids(tier, m, dist, seed=k),
                    scale_support.event_qualities(m, seed=k)) for k in range(count)]
        rounds = max(int(np.bincount(ids, minlength=1).max()) for ids, _ in batches) if m else 0
        _events_cache[key] = (batches, rounds)
    return _events_cache[key]


#: The public call on small batches, also timed in alternation with numba-seq (its yardstick):
#: a 20-100 µs call drifts more between minutes on a shared VM than the two differ.
PAIRED_BATCH = ("cpp-validated", 10_000)


class _Cycling:
    """``fn`` over weights of its own, cycling through the batches: ``reset`` (untimed, O(events))
    undoes the last batch, exactly what it touched, and takes the next, so every timed batch
    starts from the pristine weights and none is replayed at once (the branch predictor would
    learn it). The benchmark runs one; numba-seq runs another as ``measure``'s paired floor, so
    ``paired_floor_ratio`` is the benchmark's time over numba-seq's, timed back to back."""

    def __init__(self, fn, pristine, batches: list) -> None:
        self.fn, self.pristine, self.w, self.batches = fn, pristine, pristine.copy(), batches
        self.round, self.batch = 0, batches[0]

    @classmethod
    def yardstick(cls, pristine, batches: list) -> _Cycling | None:
        """numba-seq cycling, or None where numba is not installed (no paired ratio then)."""
        try:
            return cls(scale_peers.sparse_impl("numba-seq")[2], pristine, batches)
        except peers.Unavailable:
            return None

    def reset(self) -> None:
        touched = self.batch[0]
        self.w[touched] = self.pristine[touched]
        self.batch = self.batches[self.round % len(self.batches)]
        self.round += 1

    def run(self) -> None:
        self.fn(self.w, *self.batch)


@pytest.mark.parametrize("impl", scale_peers.SPARSE_IMPLS)
@pytest.mark.parametrize("dist", ["uniform", "zipf"])
@pytest.mark.parametrize("events", EVENTS, ids=[size_label(m) for m in EVENTS])
def test_sparse_batch(benchmark, measure, smoke, tier, sparse_pristine, events, dist, impl):
    if smoke and events > 10_000:
        pytest.skip("smoke mode: 10K-event batches only")
    if events > 1_000_000 and tier < 1_000_000:
        pytest.skip("10M-event batches run from the 1M tier up")
    label = size_label(events)
    benchmark.group = f"sparse-{dist}-{label}-{size_label(tier)}"
    benchmark.name = f"{impl}[{dist}-{label}-{size_label(tier)}]"
    try:
        role, about, fn = scale_peers.sparse_impl(impl)
    except peers.Unavailable as exc:
        pytest.skip(str(exc))
    if impl not in _sparse_verdicts:
        _sparse_verdicts[impl] = scale_peers.check_sparse(fn)
    batches, max_mult = _events(tier, events, dist)
    ids, q = batches[0]
    # The work is the events: a larger population costs only through the memory system, judged
    # against the plain sequential loop on the same events (numba-seq, the yardstick).
    info = {"impl": impl, "role": role, "about": about, "op": "sparse-batch", "n": tier,
            "events": events, "dist": dist, "max_multiplicity": max_mult,
            "variant": f"{dist} {label} ev", "growth": "events", "yardstick": impl == "numba-seq",
            "peak_row": "sparse-batch (1M uniform events)"
            if (events, dist) == (1_000_000, "uniform") else None,
            **measured(**_sparse_verdicts[impl])}
    if impl in ("numpy-raw", "numpy-rounds") and max_mult > MAX_ROUNDS:
        pytest.skip(f"{impl}: the hottest id has {max_mult:,} events = {max_mult:,} vectorised "
                    f"rounds (> {MAX_ROUNDS:,}); skipped to bound the run")
    bench = _Cycling(fn, sparse_pristine, batches)
    yardstick = (_Cycling.yardstick(sparse_pristine, batches) if (impl, events) == PAIRED_BATCH
                 and not smoke else None)
    info.update(measure(bench.reset, bench.run, events, floor=yardstick, budget_scale=0.4))
    info["events_per_s"] = events / benchmark.stats.stats.median
    info.update(scale_support.per_memory(scale_support.measure_peak(
        lambda: (sparse_pristine.copy(), ids.copy(), q.copy()),
        lambda st: fn(*st)), tier))
    benchmark.extra_info.update(Record(**info).json())


# --------------------------------------------------------------------------------------------
# decay(k)
# --------------------------------------------------------------------------------------------
_decay_verdicts: dict[tuple, dict] = {}


@pytest.fixture(scope="module")
def decay_pristine(tier):
    _need("decay", tier)
    w = np.random.default_rng([tier, 6]).random(tier, dtype=np.float32)
    w.flags.writeable = False
    return w


@pytest.mark.parametrize("impl", scale_peers.DECAY_IMPLS)
@pytest.mark.parametrize("k", [1, 10])
def test_decay(benchmark, measure, tier, decay_pristine, k, impl):
    benchmark.group = f"decay-k{k}-{size_label(tier)}"
    benchmark.name = f"{impl}[k{k}-{size_label(tier)}]"
    try:
        role, about, fn = scale_peers.decay_impl(impl)
        floor_role, _, floor_fn = scale_peers.decay_impl("floor")
    except peers.Unavailable as exc:
        pytest.skip(str(exc))
    info = {"impl": impl, "role": role, "about": about, "op": "decay", "n": tier,
            "bytes": 8 * tier, "variant": f"k={k}", "yardstick": role == "floor",
            "peak_row": "decay" if k == 1 and role != "floor" else None, "detail": {"k": k}}
    if role != "floor":  # (the floor's bit_exact stays None: it computes something else)
        if (impl, k) not in _decay_verdicts:
            _decay_verdicts[(impl, k)] = scale_peers.check_decay(fn, k)
        info.update(measured(**_decay_verdicts[(impl, k)]))
    w = np.empty_like(decay_pristine)
    fw = np.empty_like(decay_pristine)

    class Floor:
        def reset(self):
            np.copyto(fw, decay_pristine)

        def run(self):
            floor_fn(fw, k)

    info.update(measure(lambda: np.copyto(w, decay_pristine), lambda: fn(w, k), tier,
                        floor=None if role == "floor" else Floor(), budget_scale=0.5))
    info.update(scale_support.per_memory(scale_support.measure_peak(
        lambda: decay_pristine.copy(), lambda st: fn(st, k)), tier))
    benchmark.extra_info.update(Record(**info).json())


# --------------------------------------------------------------------------------------------
# Metrics at scale
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def metrics_data(tier, request):
    """Weights after 20 reference-workload steps (ties building up) and their labels."""
    _need("metrics", tier)
    backend = nap.backends.best_host().name
    eng = nap.Engine(tier, backend=backend, seed=0)
    workload = nap.ReferenceWorkload(tier, seed=0)
    for _ in range(2 if request.config.getoption("--smoke") else 20):
        eng.step(workload.next_quality())
    w = eng.to_numpy()
    del eng
    labels = workload.labels
    return w, labels, nap.Engine(tier, backend="numpy", init=w).metrics(labels)


def _sklearn_metrics(w, labels):
    from sklearn.metrics import roc_auc_score
    mask = labels.astype(bool)
    sep = float(w[mask].mean(dtype=np.float64) - w[~mask].mean(dtype=np.float64))
    return sep, float(roc_auc_score(labels, w))


@pytest.mark.parametrize("impl", ["cpp", "numpy", "sklearn"])
def test_scale_metrics(benchmark, measure, tier, metrics_data, impl):
    w, labels, reference = metrics_data
    benchmark.group = f"scale-metrics-{size_label(tier)}"
    benchmark.name = f"{impl}[{size_label(tier)}]"
    # the exact inversion ratio sorts: O(n log n)
    info = {"impl": impl, "op": "metrics", "n": tier, "growth": "n log n", "peak_row": "metrics"}
    detail = {}
    if impl == "sklearn":
        pytest.importorskip("sklearn.metrics", reason="scikit-learn is not installed")
        if tier > 10**8:
            pytest.skip("sklearn at >100M memories: float64 copies beyond the memory budget")
        info["role"] = "peer"
        info["about"] = "roc_auc_score(labels, w) + float64 mean difference"

        def build():
            return w.copy()

        def op(x):
            return _sklearn_metrics(x, labels)
        sep, auc = op(w)
        detail["value_separation"], detail["value_inversion_ratio"] = sep, auc
        info["bit_exact"] = (sep == reference.separation and auc == reference.inversion_ratio)
        info["abs_error"] = max(abs(sep - reference.separation),
                                abs(auc - reference.inversion_ratio))
        if not info["bit_exact"]:
            info["label"] = "not exact"
    else:
        _usable(impl)
        info["role"] = "nap"
        info["about"] = f"Engine(backend={impl!r}).metrics(labels): exact separation + inversion"
        eng = nap.Engine(tier, backend=impl, init=w)
        m = eng.metrics(labels)
        detail["value_separation"], detail["value_inversion_ratio"] = m.separation, m.inversion_ratio
        info["bit_exact"] = (m.separation == reference.separation
                             and m.inversion_ratio == reference.inversion_ratio)

        def build():
            return nap.Engine(tier, backend=impl, init=w)

        def op(e):
            return e.metrics(labels)
        target_state = eng
    state = build() if impl == "sklearn" else target_state
    info.update(measure(lambda: None, functools.partial(op, state), tier, budget_scale=0.4))
    del state
    info.update(scale_support.per_memory(scale_support.measure_peak(build, op), tier))
    benchmark.extra_info.update(Record(**info, detail=detail).json())


# --------------------------------------------------------------------------------------------
# Snapshots
# --------------------------------------------------------------------------------------------
def _fsync_write(path, arr):
    with open(path, "wb") as f:
        arr.tofile(f)
        f.flush()
        os.fsync(f.fileno())


def _read_into(path, n):
    out = np.empty(n, np.float32)
    with open(path, "rb") as f:
        f.readinto(memoryview(out).cast("B"))
    return out


def _np_save(path, arr):
    with open(path, "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())


SNAPSHOT_IMPLS = [("save", "floor"), ("save", "cpp"), ("save", "numpy"), ("save", "np.save"),
                  ("load", "floor"), ("load", "cpp"), ("load", "numpy"), ("load", "np.load")]


@pytest.fixture(scope="module")
def snapshot_dir(tmp_path_factory, tier):
    _need("snapshot", tier)
    return tmp_path_factory.mktemp(f"snap{size_label(tier)}")


@pytest.mark.parametrize("what,impl", SNAPSHOT_IMPLS, ids=[f"{a}-{b}" for a, b in SNAPSHOT_IMPLS])
def test_snapshot(benchmark, measure, tier, snapshot_dir, what, impl):
    benchmark.group = f"snapshot-{what}-{size_label(tier)}"
    benchmark.name = f"{impl}[{what}-{size_label(tier)}]"
    info = {"impl": impl, "op": f"snapshot-{what}", "n": tier, "bytes": 4 * tier,
            "yardstick": impl == "floor", "peak_row": None if impl == "floor" else f"snapshot-{what}"}
    src = np.random.default_rng([tier, 8]).random(tier, dtype=np.float32)
    raw, npy, nap_path = (snapshot_dir / "raw.f32", snapshot_dir / "w.npy",
                          snapshot_dir / "w.nap")
    if impl in ("cpp", "numpy"):
        _usable(impl)
        info["role"] = "nap"
        eng = nap.Engine(tier, backend=impl, init=src)
        if what == "save":
            info["about"] = "Engine.save: safetensors, CRC-32C, temp file + fsync + rename"
            build, op = (lambda: eng), (lambda e: e.save(nap_path))
        else:
            eng.save(nap_path)
            info["about"] = f"nap.load(path, backend={impl!r}): verified (CRC-32C, range)"
            build, op = (lambda: None), (lambda _: nap.load(nap_path, backend=impl))
            got = nap.load(nap_path, backend=impl).to_numpy()
            info["bit_exact"] = bool(np.array_equal(got.view(np.uint32), src.view(np.uint32)))
    elif impl == "floor":
        info["role"] = "floor"
        if what == "save":
            info["about"] = "raw tofile + fsync of the same bytes"
            build, op = (lambda: src), (lambda a: _fsync_write(raw, a))
        else:
            _fsync_write(raw, src)
            info["about"] = "raw readinto of the same bytes"
            build, op = (lambda: None), (lambda _: _read_into(raw, tier))
    else:
        info["role"] = "peer"
        if what == "save":
            info["about"] = "np.save + fsync"
            build, op = (lambda: src), (lambda a: _np_save(npy, a))
        else:
            _np_save(npy, src)
            info["about"] = "np.load"
            build, op = (lambda: None), (lambda _: np.load(npy))
    if impl != "floor" and what == "load":
        _fsync_write(raw, src)

    class Floor:  # the same bytes, raw, timed in alternation with ``op``
        def reset(self):
            pass

        def run(self):
            _fsync_write(raw, src) if what == "save" else _read_into(raw, tier)

    state = build()
    info.update(measure(lambda: None, lambda: op(state), tier, budget_scale=0.3,
                        floor=None if impl == "floor" else Floor()))
    info.update(scale_support.per_memory(scale_support.measure_peak(build, op), tier))
    benchmark.extra_info.update(Record(**info).json())


# --------------------------------------------------------------------------------------------
# The machine, once per session (the report prints it)
# --------------------------------------------------------------------------------------------
def test_machine(benchmark, tier):
    """Not a measurement: records the machine (CPU, cores, memory, versions, backends)."""
    benchmark.group = "machine"
    benchmark.name = f"machine[{size_label(tier)}]"
    with CpuContention() as c:
        benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(Record(
        op="machine", impl="machine", role="machine", n=tier, growth="none",
        machine=scale_support.machine(), foreign_cpu=c.fraction).json())
