"""The seed invariants of the NAP law, on every backend.

1. decay monotonicity: a decay never raises a weight; repeated decay reaches +0 and stays;
2. reinforcement directionality: before decay, q > gate never lowers a weight and q <= gate
   never raises it (q == gate punishes);
3. rank divergence: on the reference workload (docs/law.md §4) the R and P populations separate
   and the inversion ratio rises from chance to > 0.9 by iteration 50;
4. noise robustness: with Gaussian quality noise up to sigma 0.2 the 10k profile stays healthy
   (``nap.health``: separation > 0.2 after warm-up, inversion ratio > 0.9 at iteration 50),
   and every backend ends the 10k profile with the same bits.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import nap_gpu as nap

from conftest import assert_same_bits, bits, finishes_within

F = np.float32
ZERO, ONE = F(0.0), F(1.0)

#: Weights in [0, 1] that stress the law: bounds, subnormals, the plateau, the gate's neighbours.
SPECIAL_WEIGHTS = np.array(
    [0.0, 1.0, 1.401298464324817e-45, 1.1754942106924411e-38, 0.98, 0.5, 0.02, 0.05, 0.025,
     np.nextafter(F(1), F(0)), np.nextafter(F(0.5), F(0)), np.nextafter(F(0.5), F(1)),
     np.nextafter(F(0.98), F(0)), np.nextafter(F(0.98), F(1)), np.nextafter(F(0.02), F(1))],
    np.float32)


def population(n: int, seed: int) -> np.ndarray:
    """n weights: uniform in [0, 1] with every special weight included."""
    w = np.random.default_rng(seed).random(n, dtype=np.float32)
    w[: SPECIAL_WEIGHTS.size] = SPECIAL_WEIGHTS
    return w


PARAM_SETS = {
    "default": nap.Params(),
    "lr0.1-gate0.7-decay0.05": nap.Params(lr=0.1, gate=0.7, decay=0.05),
    "gate0": nap.Params(gate=0.0),
    "gate1": nap.Params(gate=1.0),
    "tiny-decay": nap.Params(decay=1e-7),
    "big-lr-decay": nap.Params(lr=1.0, decay=0.3),
}


# -- 1. decay monotonicity ---------------------------------------------------------------------

@pytest.mark.parametrize("decay", [0.02, 0.3, 1.0, 1e-7, 1.401298464324817e-45])
def test_decay_never_raises_a_weight(backend, decay):
    w0 = population(5000, 1)
    eng = nap.Engine(w0.size, backend=backend, init=w0, params=nap.Params(decay=decay))
    before = eng.to_numpy()
    for rounds in (1, 1, 2, 5, 8, 9):
        eng.decay(rounds)
        after = eng.to_numpy()
        assert (after <= before).all(), f"{backend}: decay({rounds}) raised a weight"
        assert (after >= 0).all() and (after <= 1).all()
        assert not (bits(after) == 0x80000000).any(), "-0.0 left the engine"
        if decay >= 1e-7:  # a visible decay lowers every positive weight
            assert (after[before > 0] < before[before > 0]).all(), f"{backend}: decay had no effect"
        before = after


def test_decay_zero_is_the_identity(backend):
    w0 = population(5000, 2)
    eng = nap.Engine(w0.size, backend=backend, init=w0, params=nap.Params(decay=0.0))
    eng.decay(1)
    eng.decay(25)
    assert_same_bits(eng.to_numpy(), w0, f"{backend}: decay 0 changed weights")


@pytest.mark.parametrize("decay, rounds", [(0.02, {50, 51}), (0.3, {4}), (1.0, {1})])
def test_repeated_decay_reaches_zero_and_stays(backend, decay, rounds):
    """From 1.0, decay d reaches exactly +0 after about 1/d rounds (float32 rounding may need
    one more) — not earlier, not later — and then stays at +0."""
    w0 = population(2000, 3)
    eng = nap.Engine(w0.size, backend=backend, init=w0, params=nap.Params(decay=decay))
    previous = eng.to_numpy()
    first_zero_of_one = None
    for r in range(1, max(rounds) + 1):
        eng.decay(1)
        w = eng.to_numpy()
        assert (w <= previous).all()
        assert (w[previous == 0] == 0).all(), "a weight left 0 under decay"
        if first_zero_of_one is None and w[1] == 0:  # w0[1] == 1.0
            first_zero_of_one = r
        previous = w
    assert first_zero_of_one in rounds, f"{backend}: 1.0 reached 0 after {first_zero_of_one} decays"
    assert (bits(eng.to_numpy()) == 0).all(), f"{backend}: not every weight is +0.0"
    eng.decay(100)
    assert (bits(eng.to_numpy()) == 0).all(), f"{backend}: a zero weight moved"

    again = nap.Engine(w0.size, backend=backend, init=w0, params=nap.Params(decay=decay))
    again.decay(max(rounds) + 1000)  # one call: the early exit must land on the same +0
    assert (bits(again.to_numpy()) == 0).all()


def test_decay_k_stops_short_of_zero_when_it_should(backend):
    """49 decays of 0.02 leave 1.0 positive (about 0.02): decay(k) does not overshoot."""
    eng = nap.Engine(3, backend=backend, init=np.array([1.0, 0.5, 0.98], np.float32))
    eng.decay(49)
    w = eng.to_numpy()
    assert 0.015 < w[0] < 0.025
    assert w[1] == 0.0 and w[2] < 1e-6


def decay_until_fixpoint(w: np.ndarray, d: float, k: int) -> np.ndarray:
    """The definition of decay(k): decay_once (clip(w - d, 0, 1) + 0 in float32) round after
    round over the whole array, k rounds or until a round changes no bit (every later round
    would then change none either)."""
    x, d = np.array(w, np.float32), F(d)
    for _ in range(k):
        y = np.clip(x - d, ZERO, ONE) + ZERO
        if (bits(y) == bits(x)).all():
            break
        x = y
    return x


def spread_weights(seed: int) -> np.ndarray:
    """Weights over [0, 1] for a decay of 1e-9: uniform above 2^-5 (where 1e-9 is below half an
    ulp, so a round changes nothing), every binade from 2^-20 down to the subnormals and
    uniform below 1e-6 (these reach 0 within ~1000 rounds), 0 and 1, and the special weights.
    (Weights between ~1e-6 and 2^-5 move by an ulp or two a round: up to ~2.5e7 rounds each,
    which the C++ and CUDA loops walk in a fraction of a second and NumPy in minutes; the
    shim and ctest suites cover them.)"""
    rng = np.random.default_rng(seed)
    w = np.concatenate([rng.uniform(2.0**-5, 1.0, 3000).astype(np.float32),
                        F(2.0) ** -np.arange(20, 150, dtype=np.float32),
                        rng.uniform(0, 1e-6, 500).astype(np.float32),
                        SPECIAL_WEIGHTS[SPECIAL_WEIGHTS <= 1e-6], np.array([0, 1], np.float32),
                        SPECIAL_WEIGHTS[SPECIAL_WEIGHTS > F(2.0**-5)]])
    w = w[(w > F(2.0**-5)) | (w <= F(1e-6))]
    rng.shuffle(w)
    return w


@pytest.mark.parametrize("decay, k", [(1e-9, 2**62), (1e-9, 2**64 - 1), (1e-9, 700),
                                      (0.02, 2**62), (1e-4, 4321), (0.3, 10**18),
                                      (1.401298464324817e-45, 3000)])
def test_decay_k_stops_at_each_weights_fixpoint(backend, decay, k):
    """decay(k) ends for any k, with the bits of k rounds: Params(decay=1e-9) never moves a
    weight above 2^-5, and decay(2**62) used to run 2^62 rounds on it (a hang on every
    backend); each weight now stops at the first round that changes none of its bits."""
    w0 = spread_weights(21)
    eng = nap.Engine(w0.size, backend=backend, init=w0, params=nap.Params(decay=decay))
    finishes_within(120, eng.decay, k)
    after = eng.to_numpy()
    assert_same_bits(after, decay_until_fixpoint(w0, decay, k), f"{backend}: decay({k}) by {decay}")
    if decay == 1e-9 and k > 1000:
        assert_same_bits(after[w0 > F(2.0**-5)], w0[w0 > F(2.0**-5)], "a weight above 2^-5 moved")
        assert (bits(after[w0 <= F(1e-6)]) == 0).all()


# -- 2. reinforcement directionality -----------------------------------------------------------

def qualities_above(gate: float, n: int, rng) -> np.ndarray:
    g = F(gate)
    q = rng.uniform(gate, 3.0, n).astype(np.float32)
    q[:4] = [np.nextafter(g, F(np.inf)), F(np.finfo(np.float32).max), F(1.0), F(3.0)]
    q = np.where(q > g, q, np.nextafter(g, F(np.inf)))  # strictly above the gate
    return q.astype(np.float32)


def qualities_at_or_below(gate: float, n: int, rng) -> np.ndarray:
    g = F(gate)
    q = rng.uniform(-2.0, gate, n).astype(np.float32)
    q[:6] = [g, np.nextafter(g, F(-np.inf)), F(-0.0), F(0.0), F(-np.finfo(np.float32).max),
             -F(1.401298464324817e-45)]
    return np.minimum(q, g).astype(np.float32)


@pytest.mark.parametrize("name", [k for k in PARAM_SETS if k != "gate1"])  # gate 1: none can
def test_reinforcement_never_lowers(backend, name):
    """Sparse events (feedback only, no decay) with q > gate against every weight."""
    p = PARAM_SETS[name]
    rng = np.random.default_rng(4)
    w0 = population(4000, 5)
    ids = np.arange(w0.size)

    q = qualities_above(p.gate, w0.size, rng)
    eng = nap.Engine(w0.size, backend=backend, init=w0, params=p)
    eng.update(ids, q)
    after = eng.to_numpy()
    assert (after >= w0).all(), f"{backend}: q > gate lowered a weight ({p})"
    if p.lr > 0.01:  # a visible step (q >= 0.1, so lr * q is not lost to rounding) raises w
        grew = (w0 < 1) & (q >= F(0.1))
        assert grew.sum() > 1000
        assert (after[grew] > w0[grew]).all(), f"{backend}: reinforcement had no effect ({p})"


@pytest.mark.parametrize("name", list(PARAM_SETS))
def test_punishment_never_raises(backend, name):
    p = PARAM_SETS[name]
    rng = np.random.default_rng(6)
    w0 = population(4000, 7)
    eng = nap.Engine(w0.size, backend=backend, init=w0, params=p)
    eng.update(np.arange(w0.size), qualities_at_or_below(p.gate, w0.size, rng))
    after = eng.to_numpy()
    assert (after <= w0).all(), f"{backend}: q <= gate raised a weight ({p})"
    assert not (bits(after) == 0x80000000).any()


@pytest.mark.parametrize("name", ["default", "lr0.1-gate0.7-decay0.05", "big-lr-decay"])
def test_quality_equal_to_gate_punishes(backend, name):
    """q == gate punishes: every positive weight strictly drops, by the punishment amount."""
    p = PARAM_SETS[name]
    w0 = population(4000, 8)
    eng = nap.Engine(w0.size, backend=backend, init=w0, params=p)
    eng.update(np.arange(w0.size), np.float32(p.gate))
    after = eng.to_numpy()
    positive = w0 > 0
    assert (after[positive] < w0[positive]).all(), f"{backend}: q == gate did not punish ({p})"
    assert (after[~positive] == 0).all()
    lr, gate, _ = p.float32()
    expected = np.maximum(w0 - lr * (ONE - gate), ZERO)
    assert_same_bits(after, expected, f"{backend}: q == gate ({p})")
    # and just above the gate reinforces
    eng2 = nap.Engine(w0.size, backend=backend, init=w0, params=p)
    eng2.update(np.arange(w0.size), np.nextafter(gate, F(2)))
    assert (eng2.to_numpy()[w0 < 1] > w0[w0 < 1]).all()


@pytest.mark.parametrize("name", list(PARAM_SETS))
def test_dense_step_is_feedback_then_decay(backend, name):
    """A dense step is the feedback event followed by one decay, so decay only ever lowers
    what feedback produced; with decay 0 the directionality holds for the step itself."""
    p = PARAM_SETS[name]
    rng = np.random.default_rng(9)
    w0 = population(4000, 10)
    q = np.concatenate([qualities_above(p.gate, 2000, rng), qualities_at_or_below(p.gate, 2000, rng)])
    stepped = nap.Engine(w0.size, backend=backend, init=w0, params=p)
    stepped.step(q)
    two_stage = nap.Engine(w0.size, backend=backend, init=w0, params=p)
    two_stage.update(np.arange(w0.size), q)
    fed = two_stage.to_numpy()
    two_stage.decay(1)
    assert_same_bits(stepped.to_numpy(), two_stage.to_numpy(), f"{backend}: step != feedback + decay")
    assert (stepped.to_numpy() <= fed).all()

    no_decay = nap.Params(lr=p.lr, gate=p.gate, decay=0.0)
    eng = nap.Engine(w0.size, backend=backend, init=w0, params=no_decay)
    eng.step(q)
    after = eng.to_numpy()
    up = q > F(p.gate)
    assert (after[up] >= w0[up]).all() and (after[~up] <= w0[~up]).all()


# -- 3 and 4. the reference workload -----------------------------------------------------------

N_PROFILE = 10_000
ITERATIONS = 50
SIGMAS = (0.0, 0.1, 0.2)


@functools.cache
def profile(backend: str, sigma: float, seed: int = 0):
    """The 10k profile: 50 steps of the reference workload. Returns the final weights and the
    metrics before the first step and after each step (index = iteration)."""
    wl = nap.ReferenceWorkload(N_PROFILE, sigma=sigma, seed=seed)
    eng = nap.Engine(N_PROFILE, backend=backend, seed=seed)
    history = [eng.metrics(wl.labels)]
    for _ in range(ITERATIONS):
        eng.step(wl.next_quality())
        history.append(eng.metrics(wl.labels))
    assert eng.iteration == ITERATIONS
    return eng.to_numpy(), tuple(history)


def test_reference_workload_is_seeded_and_balanced():
    a, b = nap.ReferenceWorkload(1000, seed=3), nap.ReferenceWorkload(1000, seed=3)
    assert_same_bits(a.next_quality(), b.next_quality(), "same seed, other qualities")
    labels = a.labels
    assert labels.sum() == 500
    q = a.next_quality()
    assert (q[labels == 1] >= 0.6).all() and (q[labels == 1] <= 1.0).all()
    assert (q[labels == 0] >= 0.0).all() and (q[labels == 0] <= 0.4).all()


def test_rank_divergence(backend):
    """R and P separate, and their ranks diverge: inversion ratio from ~0.5 to > 0.9 by 50."""
    w, history = profile(backend, 0.0)
    start, end = history[0], history[ITERATIONS]
    assert abs(start.inversion_ratio - 0.5) < 0.05, "random initial weights should rank at chance"
    assert abs(start.separation) < 0.05
    assert end.inversion_ratio > 0.9, f"{backend}: inversion ratio {end.inversion_ratio} at 50"
    checkpoints = [history[i].separation for i in (0, 5, 10, 20)]
    assert checkpoints == sorted(checkpoints) and checkpoints[0] < checkpoints[-1], checkpoints
    assert end.separation >= history[20].separation - 1e-12
    assert end.reinforced.mean > 0.9 and end.punished.mean < 0.1
    assert history[10].inversion_ratio > start.inversion_ratio
    labels = nap.ReferenceWorkload(N_PROFILE).labels
    assert w[labels == 1].min() > w[labels == 0].max(), "populations still overlap at iteration 50"


def test_metrics_agree_with_independent_computations(backend):
    """The engine's separation and inversion ratio against float64 means and sklearn's AUC."""
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    wl = nap.ReferenceWorkload(N_PROFILE, sigma=0.2, seed=5)
    eng = nap.Engine(N_PROFILE, backend=backend, seed=5)
    labels = wl.labels
    for _ in range(3):  # early: the populations still overlap, so the AUC is not trivially 1
        eng.step(wl.next_quality())
    m = eng.metrics(labels)
    w = eng.to_numpy().astype(np.float64)
    auc = sklearn_metrics.roc_auc_score(labels, w)
    assert 0.6 < auc < 0.999
    assert m.inversion_ratio == pytest.approx(auc, abs=1e-12)
    assert m.separation == pytest.approx(w[labels == 1].mean() - w[labels == 0].mean(), abs=1e-9)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_noise_robustness_health(backend, sigma):
    """Up to sigma 0.2 the 10k profile passes health at iteration 50, and the separation stays
    above 0.2 at every iteration after the warm-up."""
    _, history = profile(backend, sigma)
    final = nap.health(history[ITERATIONS], ITERATIONS)
    assert final.ok, f"{backend} sigma={sigma}: {final.failures}"
    for it in range(10, ITERATIONS + 1):
        m = history[it]
        assert m.separation > 0.2, f"{backend} sigma={sigma}: separation {m.separation} at {it}"
        verdict = nap.health(m, it)
        assert verdict.ok, f"{backend} sigma={sigma} iteration {it}: {verdict.failures}"
        assert m.nonfinite == 0 and 0.0 <= m.min <= m.max <= 1.0


def test_health_can_fail(backend):
    """The verdict has teeth: swapped labels, or too few iterations, fail the checks."""
    wl = nap.ReferenceWorkload(N_PROFILE, seed=0)
    w, history = profile(backend, 0.0)
    eng = nap.Engine(N_PROFILE, backend=backend, init=w)
    swapped = eng.metrics(1 - wl.labels)
    verdict = nap.health(swapped, ITERATIONS)
    assert not verdict.ok and len(verdict.failures) == 2, verdict
    early = nap.health(history[0], ITERATIONS)  # initial weights judged as if at iteration 50
    assert not early.ok


@pytest.mark.parametrize("sigma", SIGMAS)
def test_profile_same_bits_on_every_backend(backend, sigma):
    """After 50 iterations of the 10k profile every backend holds numpy's weights, bit for bit,
    and reports the same metrics."""
    w, history = profile(backend, sigma)
    w_ref, history_ref = profile("numpy", sigma)
    assert_same_bits(w, w_ref, f"{backend} vs numpy, sigma={sigma}")
    assert history[ITERATIONS].as_dict() == history_ref[ITERATIONS].as_dict()
    assert nap.health(history[ITERATIONS], ITERATIONS) == nap.health(history_ref[ITERATIONS], ITERATIONS)
