"""Write-ahead log throughput: 1k-event sparse batches through a durable engine, beside the
same batches on a plain Engine (no log), on every scale tier.

Group ``wal-1k-<tier>``; one round applies ``BATCHES`` batches of 1,000 events (uniform ids,
the reference workload's qualities), so events/s = BATCHES * 1000 / time:

* ``no-log``: ``Engine.update`` (the in-process cost of the law alone);
* ``wal-group``: ``Engine.open(..., fsync="group")``: each call appends a checksummed record
  (in the page cache when it returns; a background flush makes it durable within 10 ms);
* ``wal-always``: ``fsync="always"``: each call returns once its record is on disk.

The durable engines snapshot only at open (``snapshot_every=None``) so the log alone is
measured. The ratio to ``no-log`` is what durability costs per batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import scale_support
from scale_support import size_label

import nap_gpu as nap

from benchmarks.report.schema import Record

BATCH = 1_000
BATCHES = 200
IMPLS = {"no-log": None, "wal-group": "group", "wal-always": "always"}


@pytest.fixture(scope="module")
def wal_batches(tier):
    fits, why = scale_support.op_fits("wal", tier)
    if not fits:
        pytest.skip(why)
    rng = np.random.default_rng([tier, 9])
    ids = [rng.integers(0, tier, BATCH, dtype=np.int64) for _ in range(BATCHES)]
    qualities = [scale_support.event_qualities(BATCH, seed=i) for i in range(BATCHES)]
    return list(zip(ids, qualities))


@pytest.mark.parametrize("impl", list(IMPLS))
def test_wal_throughput(benchmark, measure, smoke, tier, wal_batches, tmp_path, impl):
    benchmark.group = f"wal-1k-{size_label(tier)}"
    benchmark.name = f"{impl}[wal-1k-{size_label(tier)}]"
    batches = wal_batches[:5] if smoke else wal_batches
    fsync = IMPLS[impl]
    if fsync is None:
        eng = nap.Engine(tier, backend="auto", seed=0)
        about = "Engine.update, no log"
    else:
        eng = nap.Engine.open(tmp_path / "state", n=tier, seed=0, snapshot_every=None,
                              fsync=fsync, wal_retention="newest")
        about = f"durable engine, fsync={fsync!r}: one checksummed log record per batch"

    def target():
        for ids, q in batches:
            eng.update(ids, q)

    events = BATCH * len(batches)
    # the same events at every tier: no growth with n to fit
    info = {"impl": impl, "role": "baseline" if fsync is None else "nap", "about": about,
            "op": "wal", "n": tier, "events": events, "growth": "none",
            "fsync": fsync or "none", "detail": {"batch": BATCH}}
    try:
        info.update(measure(lambda: None, target, events, budget_scale=0.3))
    finally:
        if fsync is not None:
            eng.close()
    info["events_per_s"] = events / benchmark.stats.stats.median
    benchmark.extra_info.update(Record(**info).json())
