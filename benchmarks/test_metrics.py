"""Metrics: nap's exact inversion ratio against scikit-learn's ``roc_auc_score``.

The inversion ratio (docs/law.md §3) is the ROC AUC of the weights for R against P, ties
counting one half. Group ``metrics-<size>`` times, on the same arrays:

* ``sklearn-<data>``: ``roc_auc_score(labels, w)``;
* ``nap-<data>``: ``nap_gpu.metrics.inversion_ratio(w[R], w[P])``, the split by label included
  (scikit-learn is handed the labels and does its own);
* ``engine-metrics-converged``: ``Engine.metrics(labels)`` in full (separation, inversion
  ratio, saturation, per-population stats) on the cpp backend;

for two kinds of data: ``converged`` (50 iterations of the reference workload from U[0, 1):
the weights pile up on a few values, heavy ties) and ``uniform`` (U[0, 1) weights, labels
independent of them: few ties, AUC ~ 0.5). Both libraries must agree before either is timed.
The report prints sklearn/nap per data kind.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import nap_gpu as nap
from nap_gpu.metrics import inversion_ratio

from benchmarks.report.schema import Record

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ITERATIONS = 50  # the reference workload's convergence SLO (docs/law.md §4)


@pytest.fixture(scope="module")
def converged(metrics_size):
    """An Engine after 50 reference-workload steps, and its labels (1 = R)."""
    backend = nap.backends.best_host().name
    eng = nap.Engine(metrics_size, backend=backend, seed=0)
    workload = nap.ReferenceWorkload(metrics_size, seed=0)
    for _ in range(ITERATIONS):
        eng.step(workload.next_quality())
    return eng, workload.labels


@pytest.fixture(scope="module")
def datasets(converged, metrics_size):
    eng, labels = converged
    uniform = np.random.default_rng([metrics_size, 2]).random(metrics_size, dtype=np.float32)
    return {"converged": (eng.to_numpy(), labels), "uniform": (uniform, labels)}


def _nap_ratio(w, mask):
    return inversion_ratio(w[mask], w[~mask])


@pytest.mark.parametrize("data", ["converged", "uniform"])
@pytest.mark.parametrize("impl", ["sklearn", "nap"])
def test_inversion_ratio(benchmark, measure, datasets, metrics_size, metrics_size_name, impl,
                         data):
    w, labels = datasets[data]
    mask = labels.astype(bool)
    if impl == "sklearn":
        metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is not installed")

        def target():
            return metrics.roc_auc_score(labels, w)
    else:
        def target():
            return _nap_ratio(w, mask)

    value = target()
    reference = _nap_ratio(w, mask)
    assert math.isclose(value, reference, rel_tol=0, abs_tol=1e-9), (value, reference)

    benchmark.group = f"metrics-{metrics_size_name}"
    benchmark.name = f"{impl}-{data}[{metrics_size_name}]"
    # --metrics-sizes, not the tiers: one size, nothing to fit against n
    info = {"op": "inversion-ratio", "impl": impl, "role": "metric", "data": data,
            "n": metrics_size, "growth": "none", "value": float(value),
            "distinct_values": int(np.unique(w).size)}
    info.update(measure(lambda: None, target, metrics_size))
    benchmark.extra_info.update(Record(**info).json())


def test_engine_metrics(benchmark, measure, converged, metrics_size, metrics_size_name):
    eng, labels = converged
    m = eng.metrics(labels)
    assert m.inversion_ratio == _nap_ratio(eng.to_numpy(), labels.astype(bool))
    benchmark.group = f"metrics-{metrics_size_name}"
    benchmark.name = f"engine-metrics-converged[{metrics_size_name}]"
    info = {"op": "inversion-ratio", "impl": "engine-metrics", "role": "metric",
            "data": "converged", "n": metrics_size, "growth": "none", "value": m.inversion_ratio,
            "detail": {"backend": eng.backend, "separation": m.separation}}
    info.update(measure(lambda: None, lambda: eng.metrics(labels), metrics_size))
    benchmark.extra_info.update(Record(**info).json())
