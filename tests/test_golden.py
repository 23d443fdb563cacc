"""Golden vectors of the NAP law (docs/law.md §2) through every backend, compared bitwise.

Two sources:

* the project's own tables ``tests/golden/law_golden.tsv`` (single events) and
  ``tests/golden/law_sequences.tsv`` (one op repeated on one memory), also read by ctest;
* the vectors ``tests/golden/law_vectors.json`` (docs/law.md §5), computed by an independent scalar
  implementation: 1,524 single-step/decay cases under four parameter sets, 20 ordered feedback
  sequences (``after_each`` after every event) and three upstream-figure sequences. These run
  batched, one weight per case, so a backend sees them as arrays.

Every case goes through the Engine (``init`` = the case's weights) and through the functional
form (``nap.step`` / ``nap.update`` on the caller's array). The functional form has no decay
operation; a decay case goes through ``nap.step`` with ``lr = 0``, which is exactly one decay
for a weight in [0, 1] (feedback adds or subtracts ``0 * q == +0``, the clamp is the identity).
"""

from __future__ import annotations

import collections
import csv
import pathlib

import numpy as np
import pytest

import nap_gpu as nap

from conftest import GOLDEN_DIR, assert_same_bits, bits, f32, load_shared_golden, on_backend

# -- the project's TSV tables --------------------------------------------------------------------

def read_tsv(path: pathlib.Path) -> list[dict[str, str]]:
    """Rows of a golden TSV as dicts (``#`` comment lines skipped, first other line = header)."""
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    rows = list(csv.DictReader(lines, delimiter="\t"))
    assert rows, f"no rows in {path}"
    return rows


GOLDEN_ROWS = read_tsv(GOLDEN_DIR / "law_golden.tsv")
SEQUENCE_ROWS = read_tsv(GOLDEN_DIR / "law_sequences.tsv")


def _row_id(index: int, row: dict[str, str]) -> str:
    return f"{index:02d}-{row['op']}"


def _params(row) -> nap.Params:
    return nap.Params(lr=f32(row["lr"]), gate=f32(row["gate"]), decay=f32(row["decay"]))


def _one(hex_bits: str) -> np.ndarray:
    return np.array([f32(hex_bits)], np.float32)


def test_tables_are_well_formed():
    """The tables hold what the tests below rely on (so a truncated file cannot pass quietly)."""
    assert len(GOLDEN_ROWS) >= 20
    assert {row["op"] for row in GOLDEN_ROWS} == {"step", "feedback", "decay"}
    assert {row["op"] for row in SEQUENCE_ROWS} <= {"step", "decay", "feedback"}
    assert len(SEQUENCE_ROWS) >= 4
    for row in GOLDEN_ROWS + SEQUENCE_ROWS:
        for key in ("w", "q", "lr", "gate", "decay", "out"):
            assert row[key].startswith("0x") and len(row[key]) == 10, (key, row)


@pytest.mark.parametrize("row", GOLDEN_ROWS, ids=[_row_id(i, r) for i, r in enumerate(GOLDEN_ROWS)])
def test_golden_row_engine(backend, row):
    p = _params(row)
    eng = nap.Engine(1, backend=backend, init=_one(row["w"]), params=p)
    q = _one(row["q"])
    if row["op"] == "step":
        eng.step(q)
        assert eng.iteration == 1
    elif row["op"] == "feedback":
        eng.update(np.array([0]), q)
        assert eng.iteration == 0
    elif row["op"] == "decay":
        eng.decay(1)
    else:
        pytest.fail(f"unknown op {row['op']!r}")
    assert_same_bits(eng.to_numpy(), _one(row["out"]), f"{backend}: {row['note']}")


QUALITY_ROWS = [(i, r) for i, r in enumerate(GOLDEN_ROWS) if r["op"] != "decay"]


@pytest.mark.parametrize("row", [r for _, r in QUALITY_ROWS], ids=[_row_id(i, r) for i, r in QUALITY_ROWS])
def test_golden_row_engine_scalar_quality(backend, row):
    """The rows with a quality, given as one number (step_scalar / broadcast update)."""
    eng = nap.Engine(1, backend=backend, init=_one(row["w"]), params=_params(row))
    q = float(f32(row["q"]))
    if row["op"] == "step":
        eng.step(q)
    else:
        eng.update([0], q)
    assert_same_bits(eng.to_numpy(), _one(row["out"]), f"{backend}: {row['note']}")


@pytest.mark.parametrize("row", GOLDEN_ROWS, ids=[_row_id(i, r) for i, r in enumerate(GOLDEN_ROWS)])
def test_golden_row_functional(backend, row):
    p = _params(row)
    w = on_backend(_one(row["w"]), backend)
    if row["op"] == "step":
        nap.step(w, _one(row["q"]), p, backend=backend)
    elif row["op"] == "feedback":
        nap.update(w, np.array([0], np.int64), _one(row["q"]), p, backend=backend)
    else:  # one decay == a step with lr = 0 (see the module docstring)
        nap.step(w, np.zeros(1, np.float32), nap.Params(lr=0.0, gate=p.gate, decay=p.decay),
                 backend=backend)
    assert_same_bits(w, _one(row["out"]), f"{backend}: {row['note']}")


@pytest.mark.parametrize("row", SEQUENCE_ROWS, ids=[_row_id(i, r) for i, r in enumerate(SEQUENCE_ROWS)])
def test_golden_sequence_engine(backend, row):
    p = _params(row)
    repeats = int(row["repeats"])
    assert repeats > 1
    expected = _one(row["out"])
    q = _one(row["q"])

    eng = nap.Engine(1, backend=backend, init=_one(row["w"]), params=p)
    one_by_one = nap.Engine(1, backend=backend, init=_one(row["w"]), params=p)
    if row["op"] == "step":
        for _ in range(repeats):
            eng.step(q)
            one_by_one.step(float(q[0]))  # the scalar-quality path as the second route
        assert eng.iteration == repeats
    elif row["op"] == "decay":
        eng.decay(repeats)                # decay(k) in one call ...
        for _ in range(repeats):          # ... equals k single decays
            one_by_one.decay(1)
    elif row["op"] == "feedback":
        eng.update(np.zeros(repeats, np.int64), np.repeat(q, repeats))  # one batch, one id
        for _ in range(repeats):
            one_by_one.update([0], q)
    else:
        pytest.fail(f"unknown op {row['op']!r}")
    assert_same_bits(eng.to_numpy(), expected, f"{backend}: {row['note']}")
    assert_same_bits(one_by_one.to_numpy(), expected, f"{backend} (one at a time): {row['note']}")


@pytest.mark.parametrize("row", SEQUENCE_ROWS, ids=[_row_id(i, r) for i, r in enumerate(SEQUENCE_ROWS)])
def test_golden_sequence_functional(backend, row):
    p = _params(row)
    w = on_backend(_one(row["w"]), backend)
    q = _one(row["q"])
    for _ in range(int(row["repeats"])):
        if row["op"] == "step":
            nap.step(w, q, p, backend=backend)
        elif row["op"] == "decay":
            nap.step(w, np.zeros(1, np.float32), nap.Params(lr=0.0, gate=p.gate, decay=p.decay),
                     backend=backend)
        else:
            nap.update(w, [0], q, p, backend=backend)
    assert_same_bits(w, _one(row["out"]), f"{backend}: {row['note']}")


# -- the shared vectors (independent scalar implementation) ----------------------------------------

def _hex_array(values) -> np.ndarray:
    return np.array([int(v, 16) for v in values], np.uint32).view(np.float32)


@pytest.fixture(scope="module")
def shared() -> dict:
    return load_shared_golden()


@pytest.fixture(scope="module")
def case_groups(shared):
    """The single cases grouped by (op, lr, gate, decay): arrays w, q (None for decay), out."""
    groups = collections.defaultdict(list)
    for case in shared["cases"]:
        groups[(case["op"], case["lr"], case["gate"], case["decay"])].append(case)
    out = {}
    for key, cases in groups.items():
        op = key[0]
        out[key] = (
            _hex_array(c["w"] for c in cases),
            _hex_array(c["q"] for c in cases) if op == "step" else None,
            _hex_array(c["out"] for c in cases),
        )
    return out


def test_shared_vectors_are_complete(shared, case_groups):
    """The counts docs/law.md §2 promises, so a truncated file cannot pass quietly."""
    assert len(shared["cases"]) == 1524
    assert sum(w.size for w, _, _ in case_groups.values()) == 1524
    assert {key[0] for key in case_groups} == {"step", "decay"}
    assert len({key[1:] for key in case_groups}) == 4  # four parameter sets
    assert len(shared["sequences"]) == 23
    feedback = [s for s in shared["sequences"] if "after_each" in s]
    assert len(feedback) == 20
    assert all(len(s["q"]) == len(s["after_each"]) > 1 for s in feedback)


def _group_params(key) -> nap.Params:
    _, lr, gate, decay = key
    return nap.Params(lr=f32(lr), gate=f32(gate), decay=f32(decay))


def _group_id(key) -> str:
    op, lr, gate, decay = key
    return f"{op}-lr{float(f32(lr)):g}-gate{float(f32(gate)):g}-decay{float(f32(decay)):g}"


def test_shared_cases_engine(backend, case_groups):
    checked = 0
    for key, (w, q, expected) in case_groups.items():
        p = _group_params(key)
        eng = nap.Engine(w.size, backend=backend, init=w, params=p)
        if key[0] == "step":
            eng.step(q)
        else:
            eng.decay(1)
        assert_same_bits(eng.to_numpy(), expected, f"{backend} Engine {_group_id(key)}")
        checked += w.size
    assert checked == 1524


def test_shared_cases_functional(backend, case_groups):
    for key, (w0, q, expected) in case_groups.items():
        p = _group_params(key)
        w = on_backend(w0, backend)
        if key[0] == "step":
            nap.step(w, q, p, backend=backend)
        else:
            nap.step(w, np.zeros_like(w), nap.Params(lr=0.0, gate=p.gate, decay=p.decay),
                     backend=backend)
        assert_same_bits(w, expected, f"{backend} functional {_group_id(key)}")


def test_shared_step_cases_scalar_quality(backend, case_groups):
    """Each distinct quality as one number for all the weights that share it (step_scalar)."""
    for key, (w, q, expected) in case_groups.items():
        if key[0] != "step":
            continue
        p = _group_params(key)
        for qbits in np.unique(bits(q)):
            sel = bits(q) == qbits
            qv = float(np.array([qbits], np.uint32).view(np.float32)[0])
            eng = nap.Engine(int(sel.sum()), backend=backend, init=w[sel], params=p)
            eng.step(qv)
            assert_same_bits(eng.to_numpy(), expected[sel],
                             f"{backend} scalar q=0x{qbits:08x} {_group_id(key)}")


def test_shared_zero_decay_cases_as_sparse_batch(backend, case_groups):
    """With decay 0 a step is one feedback event: the same cases through update(ids, q)."""
    seen = 0
    for key, (w, q, expected) in case_groups.items():
        p = _group_params(key)
        if key[0] != "step" or p.decay != 0.0:
            continue
        eng = nap.Engine(w.size, backend=backend, init=w, params=p)
        order = np.random.default_rng(7).permutation(w.size)  # distinct ids, any order
        eng.update(order, q[order])
        assert_same_bits(eng.to_numpy(), expected, f"{backend} update {_group_id(key)}")
        seen += w.size
    assert seen > 0


@pytest.fixture(scope="module")
def feedback_sequences(shared):
    """The 20 ordered feedback sequences as arrays: w0 (S,), q (S, E), after (S, E), params."""
    seqs = [s for s in shared["sequences"] if "after_each" in s]
    params = {(s["lr"], s["gate"]) for s in seqs}
    assert len(params) == 1, "sequences with different params: batch them per parameter set"
    (lr, gate), = params
    w0 = _hex_array(s["w"] for s in seqs)
    q = np.stack([_hex_array(s["q"]) for s in seqs])
    after = np.stack([_hex_array(s["after_each"]) for s in seqs])
    return w0, q, after, nap.Params(lr=f32(lr), gate=f32(gate))


def test_shared_sequences_after_each_event(backend, feedback_sequences):
    """One memory per sequence; event k of every sequence in one batch; check after each."""
    w0, q, after, p = feedback_sequences
    s, e = q.shape
    eng = nap.Engine(s, backend=backend, init=w0, params=p)
    ids = np.arange(s)
    for k in range(e):
        eng.update(ids, q[:, k])
        assert_same_bits(eng.to_numpy(), after[:, k], f"{backend} after event {k}")


def test_shared_sequences_one_interleaved_batch(backend, feedback_sequences):
    """All 500 events in one batch, interleaved across memories in a random order that keeps
    each memory's events in sequence order: the batch must apply them in the order given."""
    w0, q, after, p = feedback_sequences
    s, e = q.shape
    owners = np.repeat(np.arange(s), e)
    np.random.default_rng(2024).shuffle(owners)  # which memory's next event comes next
    position = np.zeros(s, np.int64)
    ids = np.empty(owners.size, np.int64)
    qs = np.empty(owners.size, np.float32)
    for j, owner in enumerate(owners):
        ids[j] = owner
        qs[j] = q[owner, position[owner]]
        position[owner] += 1
    eng = nap.Engine(s, backend=backend, init=w0, params=p)
    eng.update(ids, qs)
    assert_same_bits(eng.to_numpy(), after[:, -1], f"{backend} interleaved batch")
    if backend != "cuda":
        w = w0.copy()
        nap.update(w, ids, qs, p, backend=backend)
        assert_same_bits(w, after[:, -1], f"{backend} functional interleaved batch")


def test_shared_sequences_each_as_one_batch_on_one_id(backend, feedback_sequences):
    """Each sequence as a single batch of repeated id 0 on a one-memory engine."""
    w0, q, after, p = feedback_sequences
    for i in range(w0.size):
        eng = nap.Engine(1, backend=backend, init=w0[i:i + 1], params=p)
        eng.update(np.zeros(q.shape[1], np.int64), q[i])
        assert_same_bits(eng.to_numpy(), after[i, -1:], f"{backend} sequence {i}")


def test_shared_upstream_figures(backend, shared):
    figures = [s for s in shared["sequences"] if "after_each" not in s]
    assert len(figures) == 3
    for fig in figures:
        expected = _one(fig["out"])
        w0 = _one(fig["w"])
        if "decays" in fig:
            p = nap.Params(decay=f32(fig["decay"]))
            eng = nap.Engine(1, backend=backend, init=w0, params=p)
            eng.decay(fig["decays"])
            single = nap.Engine(1, backend=backend, init=w0, params=p)
            for _ in range(fig["decays"]):
                single.decay()
            assert_same_bits(single.to_numpy(), expected, f"{backend} {fig['kind']} (one by one)")
        else:
            p = nap.Params(lr=f32(fig["lr"]), gate=f32(fig["gate"]), decay=f32(fig["decay"]))
            eng = nap.Engine(1, backend=backend, init=w0, params=p)
            for _ in range(fig["steps"]):
                eng.step(_one(fig["q"]))
            if backend != "cuda":
                w = w0.copy()
                for _ in range(fig["steps"]):
                    nap.step(w, float(f32(fig["q"])), p, backend=backend)
                assert_same_bits(w, expected, f"{backend} functional {fig['kind']}")
        assert_same_bits(eng.to_numpy(), expected, f"{backend} {fig['kind']}")
