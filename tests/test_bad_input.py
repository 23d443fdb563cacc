"""Bad input: every rejected call raises the documented error and changes nothing.

DESIGN.md §2 and §6: all validation happens before any weight is written; ``ValueError`` for
bad values, ``TypeError`` for wrong kinds, ``IndexError`` for ids; the message names the
offending argument and the first bad position. Finite qualities outside [0, 1] are clamped
(the law, not an error) and other float dtypes are converted to float32 (documented).

Each rejection is checked on the Engine (``eng.to_numpy()`` bits before/after, iteration
count) and on the functional form (the caller's own array, bits before/after).
"""

from __future__ import annotations

import re
import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nap_gpu as nap

from conftest import assert_same_bits, bits, on_backend, to_host

# On a failure Hypothesis imports libcst (to print a patch of the failing example), and
# libcst 1.0 warns (DeprecationWarning from mypy_extensions) on import; with
# ``filterwarnings = error`` that turns the failure report into a pytest INTERNALERROR.
# Import it once here, quietly, so failures are reported as failures.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:
        pass

N = 7  # population size of the small cases: first, middle and last positions are 0, 3, 6
POSITIONS = {"first": 0, "middle": N // 2, "last": N - 1}

HYPOTHESIS = settings(max_examples=40, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])


# -- targets: the four mutating calls that take qualities, behind one interface ----------------

class Target:
    """One of Engine.step, Engine.update, nap.step, nap.update on one backend, with a fresh
    population of ``n`` weights; ``call(q)`` passes ``q`` as the qualities (for the sparse
    forms, one event per memory, in reverse order)."""

    def __init__(self, form: str, op: str, backend: str, n: int = N):
        self.form, self.op, self.backend, self.n = form, op, backend, n
        init = np.random.default_rng(20240607).random(n, dtype=np.float32)
        if form == "engine":
            self.eng = nap.Engine(n, backend=backend, init=init)
        else:
            self.w = on_backend(init, backend)
        self.default_ids = np.arange(n, dtype=np.int64)[::-1].copy()

    def __repr__(self) -> str:
        return f"{self.form}.{self.op}[{self.backend}]"

    def snapshot(self) -> np.ndarray:
        return self.eng.to_numpy() if self.form == "engine" else to_host(self.w)

    def state(self):
        return (bits(self.snapshot()).copy(),
                self.eng.iteration if self.form == "engine" else None)

    def call(self, quality, ids=None, **kwargs) -> None:
        if self.op == "update" and ids is None:
            ids = self.default_ids
        if self.form == "engine":
            if self.op == "step":
                self.eng.step(quality, **kwargs)
            else:
                self.eng.update(ids, quality, **kwargs)
        elif self.op == "step":
            nap.step(self.w, quality, backend=self.backend, **kwargs)
        else:
            nap.update(self.w, ids, quality, backend=self.backend, **kwargs)

    def rejects(self, exc, match: str | None, quality, ids=None, **kwargs) -> pytest.ExceptionInfo:
        """Assert the call raises ``exc`` (message matching ``match``) and changes nothing."""
        before, iteration = self.state()
        with pytest.raises(exc, match=match) as info:
            self.call(quality, ids, **kwargs)
        after, iteration_after = self.state()
        assert_same_bits(after.view(np.float32), before.view(np.float32),
                         f"{self!r} changed weights on a rejected call")
        assert iteration_after == iteration, f"{self!r}: iteration advanced on a rejected call"
        return info


FORMS = [("engine", "step"), ("engine", "update"), ("functional", "step"), ("functional", "update")]
UPDATE_FORMS = [f for f in FORMS if f[1] == "update"]


@pytest.fixture(params=FORMS, ids=lambda f: f"{f[0]}.{f[1]}")
def target(request, backend) -> Target:
    return Target(*request.param, backend)


@pytest.fixture(params=UPDATE_FORMS, ids=lambda f: f"{f[0]}.{f[1]}")
def update_target(request, backend) -> Target:
    return Target(*request.param, backend)


def fresh_engine(backend: str, n: int = N) -> nap.Engine:
    return nap.Engine(n, backend=backend, seed=11)


def engine_rejects(eng: nap.Engine, exc, match, fn) -> pytest.ExceptionInfo:
    before = eng.to_numpy()
    iteration = eng.iteration
    with pytest.raises(exc, match=match) as info:
        fn()
    assert_same_bits(eng.to_numpy(), before, "weights changed on a rejected call")
    assert eng.iteration == iteration
    return info


def good_quality(n: int = N) -> np.ndarray:
    return np.linspace(0.05, 0.95, n, dtype=np.float32)


# -- non-finite qualities --------------------------------------------------------------------

@pytest.mark.parametrize("position", POSITIONS, ids=str)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_nonfinite_float32_quality_rejected_naming_position(target, position, value):
    k = POSITIONS[position]
    q = good_quality()
    q[k] = value
    info = target.rejects(ValueError, rf"quality\[{k}\]", q)
    assert "finite" in str(info.value)


@pytest.mark.parametrize("kind", ["float64", "float16", "list"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_nonfinite_quality_of_other_float_types_rejected(target, kind, value):
    """Conversion to float32 must not turn an infinite quality into a finite one: DESIGN.md
    §2 lists "NaN or infinite quality" among the rejected inputs whatever the dtype."""
    k = POSITIONS["middle"]
    q = good_quality().astype(np.float64)
    q[k] = value
    quality = q.tolist() if kind == "list" else q.astype(kind)
    target.rejects(ValueError, rf"quality\[{k}\]", quality)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"),
                                   np.float32("nan"), np.float64("-inf")], ids=repr)
def test_nonfinite_scalar_quality_rejected(target, value):
    info = target.rejects(ValueError, "quality", value)
    assert "finite" in str(info.value)


def test_nonfinite_first_position_named_among_several(target):
    q = good_quality()
    q[[2, 4, 6]] = [np.inf, np.nan, -np.inf]
    target.rejects(ValueError, r"quality\[2\]", q)


@HYPOTHESIS
@given(data=st.data())
def test_nan_at_random_position_is_named(backend, data):
    n = data.draw(st.integers(1, 3000), label="n")
    form = data.draw(st.sampled_from(FORMS), label="form")
    q = np.asarray(data.draw(st.lists(st.floats(-2, 2, width=32), min_size=n, max_size=n)),
                   dtype=np.float32)
    bad = sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=4), label="bad"))
    for i in bad:
        q[i] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    Target(*form, backend, n=n).rejects(ValueError, rf"quality\[{bad[0]}\] ", q)


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS, ids=lambda f: f"{f[0]}.{f[1]}")
def test_nonfinite_found_in_large_population(backend, form):
    """Large enough for the C++ scan to run in parallel blocks: the *first* bad position."""
    n = 200_000
    q = np.full(n, 0.7, np.float32)
    q[[150_001, 70_000, 199_999]] = [np.nan, np.inf, np.nan]
    Target(*form, backend, n=n).rejects(ValueError, r"quality\[70000\]", q)


# -- wrong length, shape and kind of qualities --------------------------------------------------

@pytest.mark.parametrize("length", [0, 1, N - 1, N + 1, 3 * N])
def test_quality_of_wrong_length_rejected(backend, length):
    for form in [("engine", "step"), ("functional", "step")]:
        info = Target(*form, backend).rejects(ValueError, "quality", np.full(length, 0.7, np.float32))
        assert str(N) in str(info.value), "the message should say the expected length"


@pytest.mark.parametrize("shape", [(2, 3), (2, 4), (N, 2), (1, N + 1), (N, N)])
def test_two_dimensional_quality_of_wrong_size_rejected(backend, shape):
    for form in [("engine", "step"), ("functional", "step")]:
        Target(*form, backend).rejects(ValueError, "quality", np.full(shape, 0.7, np.float32))


@pytest.mark.parametrize("shape", [(100, 10), (10, 100), (1000, 1), (1, 1000), (10, 10, 10)],
                         ids=str)
def test_quality_of_n_elements_in_another_shape_is_refused(backend, shape):
    """n qualities are not one per memory unless 1-D (or, for the functional form, in the
    weights' own shape): (n, 1), a grid or its transpose are refused, not flattened."""
    q = np.random.default_rng(1).random(shape)
    for form in [("engine", "step"), ("functional", "step")]:
        info = Target(*form, backend, n=1000).rejects(ValueError, "quality", q)
        assert "1-D of length 1000" in str(info.value) and str(shape) in str(info.value)


def test_functional_quality_may_have_the_weights_shape(backend):
    """On 2-D weights the functional form takes 1-D qualities (one per element, in C
    order) or qualities of exactly the weights' shape; any other shape is refused."""
    w0 = np.random.default_rng(2).random((100, 10), dtype=np.float32)
    q = np.random.default_rng(3).random(1000)
    flat = on_backend(w0, backend)
    nap.step(flat, q, backend=backend)
    shaped = on_backend(w0, backend)
    nap.step(shaped, q.reshape(100, 10), backend=backend)
    assert_same_bits(shaped, flat, "same-shape qualities vs 1-D ones")
    for shape in [(10, 100), (1000, 1), (1, 1000), (100, 10, 1)]:
        before = bits(shaped).copy()
        with pytest.raises(ValueError, match=r"1-D of length 1000 or of the weights' shape "
                                             r"\(100, 10\)") as info:
            nap.step(shaped, q.reshape(shape), backend=backend)
        assert str(shape) in str(info.value)
        assert (bits(shaped) == before).all(), f"{shape}: weights changed on a rejected call"


def test_update_quality_must_be_one_dimensional(update_target):
    update_target.rejects(ValueError, "quality", np.full((1, N), 0.7, np.float32))


BAD_KINDS = {
    "int": np.ones(N, np.int64),
    "int_list": [1] * N,
    "bool": np.ones(N, bool),
    "complex": np.full(N, 0.7 + 0j),
    "object": np.full(N, 0.7, dtype=object),
    "str": np.array(["0.7"] * N),
    "bytes": np.array([b"0.7"] * N),
}


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_quality_of_wrong_dtype_kind_is_type_error(target, kind):
    info = target.rejects(TypeError, "quality", BAD_KINDS[kind])
    assert "float" in str(info.value)


@pytest.mark.parametrize("value", ["0.7", b"0.7", None, True, 0.7j, object()], ids=repr)
def test_quality_scalar_of_wrong_kind_is_type_error(target, value):
    target.rejects(TypeError, "quality", value)


# -- ids ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("ids, position", [
    ([0, -1, 2], 1),
    ([-1, 0, 2], 0),
    ([0, 1, -(2 ** 63)], 2),
    ([0, N, 1], 1),          # ids == n
    ([N - 1, 0, N], 2),
    ([0, 1, 10 ** 12], 2),   # far out of range
    ([0, 2 ** 63 - 1, 1], 1),
], ids=str)
def test_out_of_range_ids_are_index_error_naming_position(update_target, ids, position):
    q = np.full(len(ids), 0.9, np.float32)
    info = update_target.rejects(IndexError, rf"ids\[{position}\]", q, ids=np.asarray(ids, np.int64))
    assert str(ids[position]) in str(info.value), "the message should show the bad id"


@pytest.mark.parametrize("ids_dtype", [np.int8, np.int16, np.int32, np.int64])
def test_negative_ids_of_every_signed_dtype_rejected(update_target, ids_dtype):
    update_target.rejects(IndexError, r"ids\[1\]", np.full(2, 0.9, np.float32),
                          ids=np.array([0, -1], ids_dtype))


def test_uint64_ids_above_int64_max_rejected(update_target):
    """Converting these to int64 must not wrap them into valid (or negative) ids."""
    for big in (2 ** 63, 2 ** 63 + 3, 2 ** 64 - 1):
        ids = np.array([0, 1, big], np.uint64)
        update_target.rejects(IndexError, r"ids\[2\]", np.full(3, 0.9, np.float32), ids=ids)


def test_python_int_ids_beyond_int64_are_index_error(update_target):
    """A list of Python ints is a list of ids; one too large for int64 is out of range, an
    IndexError naming its position (not a TypeError about an 'object' dtype)."""
    update_target.rejects(IndexError, r"ids\[1\]", [0.9, 0.9], ids=[0, 2 ** 64])


@pytest.mark.parametrize("ids", [
    np.array([0.0, 1.0, 2.0]),
    np.array([0.0, 1.0, 2.0], np.float32),
    [0, 1.0, 2],
    np.array([True, False, True]),
    [True, False, True],
    np.array([0, 1.5, 2], dtype=object),
    np.array(["0", "1", "2"]),
    np.array([0j, 1j, 2j]),
], ids=["float64", "float32", "mixed_list", "bool", "bool_list", "object", "str", "complex"])
def test_non_integer_ids_are_type_error(update_target, ids):
    update_target.rejects(TypeError, "ids", np.full(3, 0.9, np.float32), ids=ids)


def test_object_arrays_of_python_ints_are_ids(backend):
    """Python ints (an object array, e.g. from a list with one id beyond int64) are ids."""
    as_objects, as_int64 = fresh_engine(backend), fresh_engine(backend)
    as_objects.update(np.array([0, 1, 1], dtype=object), [0.9, 0.1, 0.7])
    as_int64.update(np.array([0, 1, 1], np.int64), [0.9, 0.1, 0.7])
    assert_same_bits(as_objects.to_numpy(), as_int64.to_numpy(), "object ids")


@pytest.mark.parametrize("ids, position", [
    ([True, 5], 0), ([5, False], 1), ((1, True, 2), 1), ([np.True_, 2], 0), ([3, 4, np.False_], 2),
], ids=str)
def test_bool_in_a_list_of_ids_is_type_error(update_target, ids, position):
    """A bool is not an id: [True, 5] must not update id 1 (NumPy makes it [1, 5])."""
    info = update_target.rejects(TypeError, rf"ids\[{position}\] = \S*(True|False)",
                                 np.full(len(ids), 0.9, np.float32), ids=ids)
    assert "bool" in str(info.value)


@pytest.mark.parametrize("position", [0, N - 1])
def test_bool_in_a_list_of_qualities_is_type_error(target, position):
    """A bool is not a quality either (as True alone and bool arrays are not)."""
    q = good_quality().tolist()
    q[position] = True
    target.rejects(TypeError, rf"quality\[{position}\] = True", q)


@pytest.mark.parametrize("n_ids, n_q", [(3, 2), (2, 3), (0, 1), (1, 0)])
def test_mismatched_ids_and_quality_lengths(update_target, n_ids, n_q):
    info = update_target.rejects(ValueError, "length", np.full(n_q, 0.9, np.float32),
                                 ids=np.zeros(n_ids, np.int64))
    assert str(n_ids) in str(info.value) and str(n_q) in str(info.value)


@pytest.mark.parametrize("ids", [np.zeros((2, 2), np.int64), np.int64(3), 3], ids=["2d", "np0d", "int"])
def test_ids_must_be_one_dimensional(update_target, ids):
    update_target.rejects(ValueError, "ids", np.full(4, 0.9, np.float32), ids=ids)


def test_bad_id_reported_before_bad_quality_or_either_way_nothing_changes(update_target):
    """Both an out-of-range id and a NaN quality: whichever is reported, nothing changes."""
    update_target.rejects((IndexError, ValueError), None, [0.9, np.nan], ids=[0, N])


@pytest.mark.slow
def test_bad_id_found_in_large_batch(backend):
    """Large enough for the C++ id scan to run in parallel blocks: the *first* bad id."""
    m = 100_000
    ids = np.arange(m, dtype=np.int64) % N
    ids[[90_000, 41_000, 99_999]] = [-5, N, 10 ** 9]
    q = np.full(m, 0.9, np.float32)
    for form in UPDATE_FORMS:
        Target(*form, backend).rejects(IndexError, r"ids\[41000\]", q, ids=ids)


@HYPOTHESIS
@given(data=st.data())
def test_random_bad_id_is_named(backend, data):
    n = data.draw(st.integers(1, 50), label="n")
    m = data.draw(st.integers(1, 2500), label="m")
    ids = np.asarray(data.draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m)), np.int64)
    pos = data.draw(st.integers(0, m - 1), label="pos")
    ids[pos] = data.draw(st.one_of(st.integers(-(2 ** 63), -1), st.integers(n, 2 ** 63 - 1)),
                         label="bad id")
    ids[pos + 1:][ids[pos + 1:] == 0] = n  # more bad ids after it: the first must be named
    form = data.draw(st.sampled_from(UPDATE_FORMS), label="form")
    Target(*form, backend, n=n).rejects(IndexError, rf"ids\[{pos}\] ",
                                        np.full(m, 0.9, np.float32), ids=ids)


# -- decay --------------------------------------------------------------------------------------

@pytest.mark.parametrize("k, exc", [
    (-1, ValueError), (-(2 ** 40), ValueError), (np.int64(-2), ValueError),
    (1.5, TypeError), (2.0, TypeError), (np.float64(1.0), TypeError),
    (True, TypeError), (False, TypeError), (np.bool_(True), TypeError),
    (None, TypeError), ("2", TypeError),
], ids=repr)
def test_bad_decay_k(backend, k, exc):
    eng = fresh_engine(backend)
    engine_rejects(eng, exc, r"\bk\b", lambda: eng.decay(k))


@pytest.mark.parametrize("k", [2 ** 64, 2 ** 64 + 5, 10 ** 30], ids=repr)
def test_decay_k_beyond_uint64_is_value_error_on_every_backend(backend, k):
    """k beyond what any backend (and the log's u64) holds: the same ValueError naming k
    everywhere (numpy took 2**64 while the C++ core raised pybind11's TypeError)."""
    eng = fresh_engine(backend)
    engine_rejects(eng, ValueError, r"\bk\b", lambda: eng.decay(k))


def test_decay_accepts_numpy_integers_and_zero(backend):
    eng = fresh_engine(backend)
    before = eng.to_numpy()
    eng.decay(0)
    assert_same_bits(eng.to_numpy(), before, "decay(0) must change nothing")
    eng.decay(np.int32(2))
    expected = fresh_engine(backend)
    expected.decay(2)
    assert_same_bits(eng.to_numpy(), expected.to_numpy(), "decay(np.int32(2)) vs decay(2)")


# -- Params -------------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["lr", "gate", "decay"])
@pytest.mark.parametrize("value, exc", [
    (float("nan"), ValueError), (float("inf"), ValueError), (float("-inf"), ValueError),
    (np.float32("nan"), ValueError), (np.float64("inf"), ValueError),
    (-0.1, ValueError), (-1e-30, ValueError), (1.5, ValueError), (2, ValueError), (1.001, ValueError),
    (10**400, ValueError), (-(10**400), ValueError), (1e300, ValueError), (np.float64(-1e39), ValueError),
    ("0.1", TypeError), (None, TypeError), (True, TypeError), ([0.1], TypeError), (0.1j, TypeError),
], ids=repr)
def test_bad_params_name_the_parameter(field, value, exc):
    with pytest.raises(exc, match=rf"\b{field}\b"):
        nap.Params(**{field: value})


def test_params_must_be_params_everywhere(backend):
    with pytest.raises(TypeError, match="params"):
        nap.Engine(N, backend=backend, params={"lr": 0.1})
    eng = fresh_engine(backend)
    with pytest.raises(TypeError, match="params"):
        eng.params = (0.05, 0.5, 0.02)
    assert eng.params == nap.Params()


@pytest.mark.parametrize("op", ["step", "update"])
@pytest.mark.parametrize("params", [{"lr": 0.1}, 0.3, (0.05, 0.5, 0.02)], ids=repr)
def test_functional_params_of_wrong_kind_is_type_error(backend, op, params):
    """The functional form should check ``params`` like the Engine does (a TypeError naming
    it), not fail with an AttributeError from inside a backend."""
    t = Target("functional", op, backend)
    t.rejects(TypeError, "params", good_quality(), params=params)


# -- Engine constructor -------------------------------------------------------------------------

@pytest.mark.parametrize("n, exc", [
    (0, ValueError), (-1, ValueError), (-(2 ** 70), ValueError),
    (1.5, TypeError), (2.0, TypeError), (True, TypeError), ("3", TypeError), (None, TypeError),
    (np.float64(3), TypeError),
], ids=repr)
def test_bad_engine_size(backend, n, exc):
    with pytest.raises(exc, match=r"\bn\b"):
        nap.Engine(n, backend=backend)


@pytest.mark.parametrize("init", ["zeros", "Uniform", "", "normal"])
def test_bad_init_string(backend, init):
    with pytest.raises(ValueError, match="init"):
        nap.Engine(N, backend=backend, init=init)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("value", [np.nan, -0.5, -1e-30, 1.5, 1.0001, np.inf, -np.inf],
                         ids=repr)
def test_init_array_outside_unit_interval(backend, dtype, value):
    arr = np.full(N, 0.5, dtype)
    arr[4] = value
    with pytest.raises(ValueError, match=r"init\[4\]") as info:
        nap.Engine(N, backend=backend, init=arr)
    if np.isinf(value):
        assert "inf" in str(info.value), (
            f"the message should show the value given (inf), got: {info.value}")


@pytest.mark.parametrize("init", [float("nan"), -0.1, 1.5, float("inf"), np.float32("nan"),
                                  10 ** 400, Fraction(10 ** 400, 3)], ids=repr)
def test_init_scalar_outside_unit_interval(backend, init):
    with pytest.raises(ValueError, match="init"):
        nap.Engine(N, backend=backend, init=init)


@pytest.mark.parametrize("shape", [(N - 1,), (N + 1,), (0,), (1, N), ()], ids=str)
def test_init_array_of_wrong_shape(backend, shape):
    with pytest.raises(ValueError, match="init"):
        nap.Engine(N, backend=backend, init=np.full(shape, 0.5, np.float32))


@pytest.mark.parametrize("init", [np.ones(N, np.int64), np.ones(N, bool), True,
                                  np.full(N, 0.5 + 0j)], ids=["int", "bool", "True", "complex"])
def test_init_of_wrong_kind(backend, init):
    with pytest.raises(TypeError, match="init"):
        nap.Engine(N, backend=backend, init=init)


@pytest.mark.parametrize("name", ["gpu", "torch", "CUDA12", "", "numpy "])
def test_unknown_backend_is_value_error(name):
    with pytest.raises(ValueError, match="backend") as info:
        nap.Engine(N, backend=name)
    for known in ("cuda", "cpp", "numpy"):
        assert known in str(info.value), "the message should list the choices"


def test_backend_of_wrong_kind_is_type_error():
    with pytest.raises(TypeError, match="backend"):
        nap.Engine(N, backend=3)


def test_unusable_backend_raises_with_reason(cuda_unusable):
    reason = cuda_unusable
    with pytest.raises(nap.BackendUnavailableError) as info:
        nap.Engine(N, backend="cuda")
    assert reason in str(info.value) and "cuda" in str(info.value)
    w = np.full(N, 0.5, np.float32)
    with pytest.raises(nap.BackendUnavailableError, match=re.escape(reason)):
        nap.step(w, 0.9, backend="cuda")
    assert_same_bits(w, np.full(N, 0.5, np.float32), "functional call on unusable backend")


# -- labels for metrics -------------------------------------------------------------------------

@pytest.mark.parametrize("labels, exc, match", [
    ([1, 0, 1, 0, 1, 0], ValueError, "labels"),                       # too short
    ([1, 0, 1, 0, 1, 0, 1, 0], ValueError, "labels"),                 # too long
    (np.ones((N, 1), bool), ValueError, "labels"),                    # 2-D
    ([1, 0, 2, 0, 1, 0, 1], ValueError, r"labels\[2\]"),
    ([1, 0, 1, 0, 1, 0, -1], ValueError, r"labels\[6\]"),
    (list("RPXPRPR"), ValueError, r"labels\[2\]"),
    (["R", "P", "R", "P", "", "P", "R"], ValueError, r"labels\[4\]"),
    (["R", "P", "R", "P", "RP", "P", "R"], ValueError, r"labels\[4\]"),
    (np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]), TypeError, "labels"),
    (np.array([1, 0, 1, 0, 1, 0, 1], dtype=object), TypeError, "labels"),
    (None, TypeError, "labels"),
], ids=["short", "long", "2d", "int2", "int-1", "strX", "str_empty", "strRP", "float", "object", "None"])
def test_bad_labels(backend, labels, exc, match):
    eng = fresh_engine(backend)
    engine_rejects(eng, exc, match, lambda: eng.metrics(labels))


@pytest.mark.parametrize("eps", [float("nan"), -0.01, 0.5, 0.7, float("inf")], ids=repr)
def test_bad_saturation_eps_is_rejected(backend, eps):
    """``eps`` is a tolerance near 0 and 1: NaN, negative, or >= 0.5 (where the two ends
    overlap and a weight is counted twice, e.g. saturation 1.5 for eps=0.7) is no tolerance."""
    eng = fresh_engine(backend)
    labels = np.arange(N) % 2
    with pytest.raises(ValueError, match="eps"):
        eng.metrics(labels, eps=eps)


# -- documented conversions (accepted inputs) ---------------------------------------------------

def run(form, op, backend, quality, ids=None, n=N, **kwargs) -> np.ndarray:
    t = Target(form, op, backend, n=n)
    t.call(quality, ids, **kwargs)
    return t.snapshot()


@HYPOTHESIS
@given(data=st.data())
def test_other_float_dtypes_are_converted_to_float32(backend, data):
    n = data.draw(st.integers(1, 40), label="n")
    dtype = data.draw(st.sampled_from([np.float64, np.float16]), label="dtype")
    elements = st.one_of(st.floats(-3, 3, width=16 if dtype == np.float16 else 64),
                         st.sampled_from([0.5, 0.5000000001, 0.4999999999, 0.0, 1.0, -0.0]))
    q = np.asarray(data.draw(st.lists(elements, min_size=n, max_size=n)), dtype=dtype)
    form = data.draw(st.sampled_from(FORMS), label="form")
    got = run(*form, backend, q, n=n)
    expected = run(*form, backend, q.astype(np.float32), n=n)
    assert_same_bits(got, expected, f"{form} {dtype.__name__} vs float32-rounded")


@pytest.mark.parametrize("huge, like", [(1e300, 1.0), (-1e300, 0.0), (1e39, 1.0), (-1e39, 0.0),
                                        (np.finfo(np.float64).max, 1.0)], ids=repr)
def test_huge_finite_float64_qualities_accepted_and_clamped(target, huge, like):
    q = good_quality().astype(np.float64)
    q[[0, 3]] = huge
    target.call(q)
    got = target.snapshot()
    expected_q = good_quality()
    expected_q[[0, 3]] = like
    assert_same_bits(got, run(target.form, target.op, target.backend, expected_q),
                     f"{target!r}: quality {huge} vs {like}")
    # and as a Python scalar
    t = Target(target.form, target.op, target.backend)
    t.call(float(huge))
    assert_same_bits(t.snapshot(), run(target.form, target.op, target.backend, like),
                     f"{target!r}: scalar quality {huge} vs {like}")


@pytest.mark.parametrize("value", [10 ** 400, -(10 ** 400), Fraction(10 ** 400, 7),
                                   np.longdouble(10) ** 400], ids=["1e400", "-1e400", "Fraction",
                                                                   "longdouble"])
def test_real_number_beyond_float64_is_value_error(target, value):
    """A finite quality a float64 cannot hold is a ValueError naming quality (it was
    Python's OverflowError; a long double became inf, "not finite"), on every form, as the
    scalar of a step or of a sparse batch."""
    if isinstance(value, np.longdouble) and np.isinf(value):
        pytest.skip("long double is float64 here")
    info = target.rejects(ValueError, "quality", value)
    assert "beyond the range of a float64" in str(info.value)


@pytest.mark.parametrize("value, like", [(10 ** 300, 1.0), (-(10 ** 300), 0.0),
                                        (Fraction(3, 4), 0.75)], ids=repr)
def test_real_numbers_within_float64_are_qualities(target, value, like):
    """The boundary of the case above: a big int that a float64 holds is a quality, clamped."""
    target.call(value)
    assert_same_bits(target.snapshot(), run(target.form, target.op, target.backend, like),
                     f"{target!r}: {value!r} vs {like}")


@pytest.mark.parametrize("init", [-0.0, np.float32(-0.0), "array32", "array64", "list"])
def test_negative_zero_init_stored_as_positive_zero(backend, init):
    if init in ("array32", "array64", "list"):
        arr = np.array([0.5, -0.0, 0.25, -0.0, 0.0, 1.0, -0.0],
                       np.float32 if init == "array32" else np.float64)
        value = arr.tolist() if init == "list" else arr
    else:
        value = init
    w = nap.Engine(N, backend=backend, init=value).to_numpy()
    assert not np.signbit(w).any(), f"-0.0 stored: bits {bits(w)}"


def test_negative_zero_init_array_is_not_modified_in_caller(backend):
    arr = np.array([0.5, -0.0, 0.25, -0.0, 0.0, 1.0, -0.0], np.float32)
    before = bits(arr).copy()
    nap.Engine(N, backend=backend, init=arr)
    assert (bits(arr) == before).all(), "the caller's init array was modified"


_ABOVE_HALF = float(np.nextafter(np.float32(0.5), np.float32(1)))


@HYPOTHESIS
@given(value=st.one_of(st.floats(-2, 2), st.sampled_from([0.5, 0.0, 1.0, -0.0, 1e300, -1e300,
                                                          _ABOVE_HALF])),
       kind=st.sampled_from(["float", "np.float32", "np.float64"]))
def test_scalar_quality_equals_full_array(backend, value, kind):
    if kind == "np.float32" and abs(value) > 2:
        value = float(np.sign(value)) * 2  # np.float32(1e300) would overflow
    scalar = {"float": float, "np.float32": np.float32, "np.float64": np.float64}[kind](value)
    full = np.full(N, scalar)  # float64, or float32 for a np.float32 scalar
    for form in FORMS:
        got = run(*form, backend, scalar)
        assert_same_bits(got, run(*form, backend, full), f"{form}: scalar {scalar!r} vs full array")
        if abs(value) <= 2:
            assert_same_bits(got, run(*form, backend, np.full(N, value, np.float32)),
                             f"{form}: scalar {scalar!r} vs full float32 array")


@pytest.mark.parametrize("value", [0, 1])
def test_integer_scalar_quality_treated_alike_everywhere(backend, value):
    """A Python int quality is a real number: every form must either take it as the float
    (same bits) or refuse it with a TypeError; not one form one way and another the other."""
    outcomes = {}
    for form in FORMS:
        try:
            got = run(*form, backend, value)
        except TypeError as exc:
            outcomes[form] = f"TypeError: {exc}"
        else:
            assert_same_bits(got, run(*form, backend, float(value)), f"{form}: int {value} vs float")
            outcomes[form] = "accepted"
    assert len(set(outcomes.values())) == 1, f"int scalar quality {value}: {outcomes}"


def test_empty_sparse_batch_is_a_no_op(update_target):
    """An empty batch (the natural ``update([], [])``) changes nothing and is not an error."""
    before, _ = update_target.state()
    update_target.call(np.zeros(0, np.float32), ids=np.zeros(0, np.int64))
    update_target.call([], ids=[])
    assert (update_target.state()[0] == before).all()


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.uint8, np.uint16, np.uint32,
                                   np.uint64, np.intp])
def test_ids_of_any_integer_dtype(update_target, dtype):
    ids = np.array([3, 0, 3, 6, 1, 3], dtype)
    q = np.array([0.9, 0.1, 0.2, 0.8, 0.6, 0.95], np.float32)
    got = run(update_target.form, "update", update_target.backend, q, ids=ids)
    expected = run(update_target.form, "update", update_target.backend, q, ids=ids.astype(np.int64))
    assert_same_bits(got, expected, f"ids {np.dtype(dtype).name} vs int64")


# -- check_finite=False -------------------------------------------------------------------------

NAN_BITS = [0x7FC00000, 0xFFC00000, 0x7FC12345]  # quiet NaNs: default, negative, with payload


@pytest.mark.parametrize("nan_bits", NAN_BITS, ids=hex)
def test_check_finite_false_lets_nan_through_identically(nan_bits):
    usable = [name for name, reason in nap.available_backends().items() if reason is None]
    assert len(usable) >= 2, "needs two usable backends to compare"
    q = good_quality()
    q.view(np.uint32)[2] = nan_bits
    results = {}
    for name in usable:
        for form in FORMS:
            ids = np.array([2, 5, 2, 0], np.int64) if form[1] == "update" else None
            quality = q[ids] if ids is not None else q
            t = Target(*form, name)
            t.call(quality, ids, check_finite=False)
            w = t.snapshot()
            assert np.isnan(w[2]), f"{form}[{name}]: weight 2 should be NaN, got {w[2]}"
            assert np.isfinite(np.delete(w, 2)).all(), f"{form}[{name}]: NaN spread"
            results[(name, form)] = w
    for (name, form), w in results.items():
        ref = results[(usable[0], form)]
        assert_same_bits(w, ref, f"{form}: {name} vs {usable[0]} with a NaN quality",
                         nan_payloads=False)


def test_check_finite_false_scalar_nan(backend):
    eng = fresh_engine(backend)
    eng.step(float("nan"), check_finite=False)
    assert np.isnan(eng.to_numpy()).all()
