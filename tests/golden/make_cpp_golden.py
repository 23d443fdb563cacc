"""Writes the golden files of the C++ API's ctest cases (cpp/tests/test_api.cpp):

* ``snapshot_v2.nap``: a snapshot written by nap_gpu's own writer (1,000 weights of a seeded,
  trained engine, with 0.0, 1.0, two subnormals and runs of ties planted);
* ``snapshot_v1.nap``: a copy of the committed format-version-1 file ``tests/data/snapshot-v1.nap``
  (the ctest suite reads tests/golden/ alone: cpp/ and tests/golden/ build and test anywhere);
* ``cpp_api_golden.tsv``: what Python reads from both (every weight's bits, the parameters,
  iteration, sequence and metadata) and the metrics ``nap_gpu.metrics.compute`` gives for
  several labellings and samples (float64 bits in hex).

Run from anywhere: ``python tests/golden/make_cpp_golden.py``. A rerun changes only the
snapshot's ``created`` time and hence its checksum; the weights and metrics are seeded.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import struct

import numpy as np

import nap_gpu as nap
from nap_gpu import metrics, snapshot

HERE = pathlib.Path(__file__).resolve().parent
N = 1000
PARAMS = nap.Params(lr=0.07, gate=0.45, decay=0.01)


def population() -> tuple[np.ndarray, int]:
    """The trained weights (numpy backend: the reference) and the iteration they are at."""
    eng = nap.Engine(N, backend="numpy", seed=11, params=PARAMS)
    work = nap.ReferenceWorkload(N, sigma=0.15, seed=11)
    for _ in range(6):
        eng.step(work.next_quality())
    w = eng.to_numpy().copy()
    w[3], w[4], w[7] = 0.0, 1.0, 1.0
    w[5] = np.array([1], np.uint32).view(np.float32)[0]           # the smallest subnormal
    w[6] = np.array([0x00400000], np.uint32).view(np.float32)[0]  # a larger subnormal
    w[100:140] = w[100]  # a run of ties across both labels
    w[200:260:3] = np.float32(0.5)
    return w, eng.iteration


def f64(x: float) -> str:
    return f"0x{struct.unpack('<Q', struct.pack('<d', x))[0]:016x}"


def metric_rows(case: str, m: metrics.Metrics) -> list[str]:
    rows = []
    for field, value in dataclasses.asdict(m).items():
        if isinstance(value, dict):
            rows += [f"metric\t{case}\t{field}.{k}\t{v if k == 'count' else f64(v)}"
                     for k, v in value.items()]
        else:
            rows.append(f"metric\t{case}\t{field}\t{value if isinstance(value, int) else f64(value)}")
    return rows


def snapshot_rows(name: str, path: pathlib.Path) -> list[str]:
    weights, info = snapshot.read(path)
    rows = [f"snapshot\t{name}\tfile\t{path.relative_to(HERE).as_posix()}",
            f"snapshot\t{name}\titeration\t{info.iteration}",
            f"snapshot\t{name}\tsequence\t{info.sequence}",
            f"snapshot\t{name}\tformat_version\t{info.format_version}"]
    rows += [f"snapshot\t{name}\tparam.{k}\t0x{int(np.float32(getattr(info.params, k)).view(np.uint32)):08x}"
             for k in ("lr", "gate", "decay")]
    rows += [f"snapshot\t{name}\tmeta.{k}\t{v}" for k, v in sorted(info.metadata.items())]
    rows += [f"weight\t{name}\t{i}\t0x{b:08x}" for i, b in enumerate(weights.view(np.uint32).tolist())]
    return rows


def cases(w: np.ndarray) -> list[tuple[str, np.ndarray, float, np.ndarray | None]]:
    """(name, labels, eps, sample or None): the reference labelling, random ones, a population
    left empty, a wider eps, and samples (with repeated indices) of the population."""
    rng = np.random.default_rng(5)
    reference = nap.ReferenceWorkload(N).labels
    random = rng.integers(0, 2, N).astype(np.uint8)
    sample = rng.integers(0, N, 300)
    sample[:20] = sample[20:40]  # indices drawn twice count twice
    return [("reference", reference, metrics.DEFAULT_EPS, None),
            ("random", random, metrics.DEFAULT_EPS, None),
            ("all_reinforced", np.ones(N, np.uint8), metrics.DEFAULT_EPS, None),
            ("wide_eps", reference, 0.1, None),
            ("reference_sample", reference, metrics.DEFAULT_EPS, sample),
            ("random_sample", random, 0.05, np.sort(sample)[::-1].copy())]


def main() -> None:
    w, iteration = population()
    path = HERE / "snapshot_v2.nap"
    snapshot.write(path, w, PARAMS, iteration=iteration, sequence=4242, backend="numpy",
                   version=nap.__version__)
    weights, _ = snapshot.read(path)
    v1 = HERE / "snapshot_v1.nap"
    shutil.copyfile(HERE.parent / "data" / "snapshot-v1.nap", v1)
    bk = nap.backends.get("numpy")
    rows = ["# Golden values of the C++ API (cpp/tests/test_api.cpp), written by make_cpp_golden.py.",
            "# Floats are bit patterns: float32 weights in 8 hex digits, float64 metrics in 16.",
            "kind\tname\tfield\tvalue"]
    rows += snapshot_rows("v2", path) + snapshot_rows("v1", v1)
    for name, labels, eps, sample in cases(weights):
        rows.append(f"case\t{name}\tlabels\t{''.join(map(str, labels.tolist()))}")
        rows.append(f"case\t{name}\teps\t{f64(eps)}")
        if sample is not None:
            rows.append(f"case\t{name}\tsample\t{','.join(map(str, sample.tolist()))}")
            m = metrics.compute(weights[sample], labels[sample], bk, eps=eps)
        else:
            m = metrics.compute(weights, labels, bk, eps=eps)
        rows += metric_rows(name, m)
    (HERE / "cpp_api_golden.tsv").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
