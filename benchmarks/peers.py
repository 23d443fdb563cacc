"""Everything the dense-step benchmark times: the floor, nap's own paths, and the peers.

The peers are the law written the way a user who does not have nap would write it, each as
well as its library allows and BIT-EXACT with the law (docs/law.md §2, ``cpp/include/nap/law.h``):
every operation one float32 operation, rounded to nearest, in the law's order, no FMA. Two
exact float32 identities are fair game (the NumPy backend's docstring proves them):
``w - lr*(1 - q) == w + lr*(q - 1)`` and clamps written as ``maximum``/``minimum``.

Each implementation is built into a ``Runner`` bound to one pristine weight array and one
quality array: ``reset()`` restores the working weights (untimed), ``run()`` is one dense step
(timed), ``result()`` gives the weights back as NumPy. ``check_exact`` runs one step on a
1M input with the law's special values and compares bits with the NumPy backend; it is run
for every implementation before it is timed, and its verdict goes into the benchmark's
``extra_info``: an implementation that is not bit-exact is still timed, labelled so.

Findings that shaped the code (see README.md):

* numba: ``fastmath=False`` (the default) leaves LLVM's fp-contract at "standard", which never
  fuses separate ``fmul``/``fadd`` instructions; the generated assembly holds no ``vfmadd``.
* JAX/XLA CPU contracts ``w + lr * s`` into an FMA whatever the XLA flags say
  (``--xla_cpu_enable_fast_math=false`` is already the default and does not stop it): the
  one-select form ``w + lr * where(q > gate, q, q - 1)`` differs in ~3% of elements. The law's
  own form, ``where(r, w + t, w - t)`` with ``t = lr * where(r, q, 1 - q)``, leaves no
  ``fmul`` with a single ``fadd`` user and compiles without FMA: it is the one used here.
* torch.compile (inductor, CPU): ``-ffp-contract=off`` is inductor's default, and
  ``w.copy_(expr)`` compiles to ONE fused OpenMP kernel whose output pointer is ``w`` itself.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import nap_gpu as nap
from nap_gpu import backends

PARAMS = nap.Params()
LR, GATE, DECAY = PARAMS.float32()
ZERO, ONE = np.float32(0.0), np.float32(1.0)
#: The floor's multiplier: any float32 works (the triad's cost does not depend on it).
TRIAD_S = np.float32(1e-3)


class Unavailable(Exception):
    """The implementation cannot run here; the message says why (the test skips with it)."""


# --------------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------------
class NumpyRunner:
    """For everything that updates a NumPy float32 array in place."""

    def __init__(self, step: Callable[[np.ndarray, np.ndarray], object], pristine: np.ndarray,
                 q: np.ndarray) -> None:
        self._step, self._pristine, self.q = step, pristine, q
        self.w = np.empty_like(pristine)
        self.reset()

    def reset(self) -> None:
        np.copyto(self.w, self._pristine)

    def run(self) -> None:
        self._step(self.w, self.q)

    def result(self) -> np.ndarray:
        return self.w


# --------------------------------------------------------------------------------------------
# The floor and nap's own paths
# --------------------------------------------------------------------------------------------
def _core():
    try:
        from nap_gpu import _core as core
    except ImportError as exc:  # the package was installed without its C++ core
        raise Unavailable(f"nap_gpu._core is not built: {exc}") from exc
    return core


def floor_runner(pristine, q):
    core = _core()
    return NumpyRunner(lambda w, qq: core.triad(w, qq, TRIAD_S), pristine, q)


def _backend(name):
    reason = backends.available_backends().get(name)
    if reason is not None:
        raise Unavailable(f"nap backend {name!r} unavailable: {reason}")
    return backends.get(name)


def cpp_raw_runner(pristine, q):
    be = _backend("cpp")
    return NumpyRunner(lambda w, qq: be.step(w, qq, PARAMS), pristine, q)


def cpp_validated_runner(pristine, q):
    _backend("cpp")
    return NumpyRunner(lambda w, qq: nap.step(w, qq, PARAMS, backend="cpp"), pristine, q)


class DoubleBufferRunner:
    """``Engine(n, backend='cpp', double_buffer=True).step(q)``: the checked step in one pass,
    into the Engine's other buffer (swapped in once q is known finite)."""

    def __init__(self, pristine, q):
        _backend("cpp")
        self.engine = nap.Engine(pristine.size, backend="cpp", init=pristine, params=PARAMS,
                                 double_buffer=True)
        self._pristine, self.q = pristine, q
        self.engine.step(q)  # both buffers written once: their first-touch page faults
        self.engine.step(q)  # are the allocation's, not a step's

    def reset(self) -> None:
        # The Engine has no public way to overwrite its weights (by design): a benchmark's
        # reset reaches into the live buffer, untimed.
        np.copyto(self.engine._w, self._pristine)

    def run(self) -> None:
        self.engine.step(self.q)

    def result(self) -> np.ndarray:
        return self.engine.to_numpy()


def numpy_raw_runner(pristine, q):
    be = _backend("numpy")
    return NumpyRunner(lambda w, qq: be.step(w, qq, PARAMS), pristine, q)


# --------------------------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------------------------
def numpy_naive(w: np.ndarray, q: np.ndarray) -> None:
    """The obvious NumPy code (whole-array temporaries, np.where/np.clip); float32 throughout
    (NumPy 2 keeps Python scalars weak, and the parameters are float32)."""
    q = np.clip(q, 0, 1)
    w[...] = np.clip(np.where(q > GATE, w + LR * q, w - LR * (1 - q)), 0, 1)
    w[...] = np.clip(w - DECAY, 0, 1)


def numpy_naive_runner(pristine, q):
    return NumpyRunner(numpy_naive, pristine, q)


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise Unavailable(f"{name} is not installed ({exc}); pip install {name}") from exc


_numba_kernel = None


def _numba_step():
    """``@njit(parallel=True)`` over the law, float32 constants, default fastmath=False."""
    global _numba_kernel
    if _numba_kernel is None:
        numba = _import("numba")

        @numba.njit(parallel=True, fastmath=False)
        def step(w, q, lr, gate, decay):
            zero = np.float32(0.0)
            one = np.float32(1.0)
            for i in numba.prange(w.size):
                x = q[i]
                x = x if x > zero else zero          # maxps: max(q, 0)
                x = x if x < one else one            # minps: min(q, 1)
                s = x if x > gate else x - one       # q, or q - 1 == -(1 - q)
                v = w[i] + lr * s                    # w + lr*q  or  w - lr*(1 - q)
                v = v if v > zero else zero
                v = v if v < one else one
                v = v - decay
                v = v if v > zero else zero
                v = v if v < one else one
                w[i] = v

        _numba_kernel = step
    return _numba_kernel


def numba_runner(pristine, q):
    kernel = _numba_step()
    return NumpyRunner(lambda w, qq: kernel(w, qq, LR, GATE, DECAY), pristine, q)


_jax_step = None


def _jax_law(w, q):
    jnp = importlib.import_module("jax.numpy")
    zero, one = jnp.float32(0.0), jnp.float32(1.0)
    q = jnp.minimum(jnp.maximum(q, zero), one)
    r = q > GATE
    t = LR * jnp.where(r, q, one - q)
    # The law's two-branch form: XLA CPU turns ``w + LR * s`` into an FMA, this it does not.
    w = jnp.where(r, w + t, w - t)
    w = jnp.minimum(jnp.maximum(w, zero), one)
    return jnp.minimum(jnp.maximum(w - DECAY, zero), one)


class JaxRunner:
    """``jax.jit(law, donate_argnums=0)``: the step reuses the weights' buffer."""

    def __init__(self, pristine, q):
        global _jax_step
        jax = _import("jax")
        jnp = importlib.import_module("jax.numpy")
        if _jax_step is None:
            _jax_step = jax.jit(_jax_law, donate_argnums=0)
        self._jnp, self._step, self._pristine = jnp, _jax_step, pristine
        self.q = jnp.asarray(q)
        self.w = None
        self.donated = None
        self.reset()

    def reset(self) -> None:
        self.w = None                       # free the last result before the new copy
        self.w = self._jnp.array(self._pristine)  # a copy: donation consumes it
        self.w.block_until_ready()

    def run(self) -> None:
        before = self.w
        with warnings.catch_warnings():
            # JAX warns (it does not fail) when it cannot donate: record that instead.
            warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
            self.w = self._step(before, self.q)
        self.w.block_until_ready()
        self.donated = before.is_deleted()

    def result(self) -> np.ndarray:
        return np.asarray(self.w)


def jax_runner(pristine, q):
    return JaxRunner(pristine, q)


_torch_step = None


def _torch_law(w, q):
    q = q.clamp(0.0, 1.0)
    s = q.where(q > float(GATE), q - 1.0)        # q, or q - 1 == -(1 - q)
    x = (w + float(LR) * s).clamp(0.0, 1.0)      # inductor: -ffp-contract=off, no FMA
    w.copy_((x - float(DECAY)).clamp(0.0, 1.0))  # in place: one fused kernel writing w


def torch_runner(pristine, q):
    global _torch_step
    torch = _import("torch")
    if _torch_step is None:
        _torch_step = torch.compile(_torch_law, fullgraph=True, dynamic=False)
    runner = NumpyRunner(lambda w, qq: None, pristine, q)
    wt, qt = torch.from_numpy(runner.w), torch.from_numpy(q)  # views of the arrays: no copies
    runner._step = lambda _w, _q: _torch_step(wt, qt)
    return runner


# --------------------------------------------------------------------------------------------
# The catalogue, in the order the benchmarks run (the floor again at the end: a drift check)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Impl:
    name: str
    role: str            # "floor", "nap" or "peer"
    make: Callable       # (pristine, q) -> runner; raises Unavailable
    check: bool = True   # compared bit for bit with the NumPy backend before timing
    about: str = ""


IMPLS = [
    Impl("floor", "floor", floor_runner, check=False,
         about="in-place streaming triad w += s*q, C++/OpenMP, all cores (nap_gpu._core.triad)"),
    Impl("cpp-raw", "nap", cpp_raw_runner, about="backends.get('cpp').step (no validation)"),
    Impl("cpp-validated", "nap", cpp_validated_runner,
         about="nap.step(w, q, backend='cpp'): coercion checks + NaN scan of q, then the core"),
    Impl("cpp-double-buffer", "nap", DoubleBufferRunner,
         about="Engine(double_buffer=True).step(q): NaN check and step in one pass, into a "
               "second buffer"),
    Impl("numpy-raw", "nap", numpy_raw_runner, about="backends.get('numpy').step"),
    Impl("numpy-naive", "peer", numpy_naive_runner, about="np.where/np.clip on whole arrays"),
    Impl("numba", "peer", numba_runner, about="@njit(parallel=True), prange, float32 constants"),
    Impl("jax", "peer", jax_runner, about="jax.jit(donate_argnums=0), float32"),
    Impl("torch", "peer", torch_runner, about="torch.compile (inductor CPU), w.copy_(law(w, q))"),
    Impl("floor-repeat", "floor", floor_runner, check=False, about="the floor, measured again last"),
]
BY_NAME = {impl.name: impl for impl in IMPLS}


# --------------------------------------------------------------------------------------------
# The bit-exactness check
# --------------------------------------------------------------------------------------------
CHECK_N = 1 << 20
#: Finite qualities where a careless implementation differs: signed zeros, the gate itself and
#: its neighbours, the bounds, values outside [0, 1] (the law clamps them), subnormals.
SPECIAL_Q = np.array(
    [-0.0, 0.0, 0.5, np.nextafter(np.float32(0.5), np.float32(0)),
     np.nextafter(np.float32(0.5), np.float32(1)), 1.0, np.nextafter(np.float32(1), np.float32(0)),
     1.5, 3e38, -1.0, -3e38, 1e-45, 1e-38, 0.25, 0.75], np.float32)
SPECIAL_W = np.array([0.0, 1.0, 0.02, 0.98, np.nextafter(np.float32(0.02), np.float32(1)),
                      0.05, 0.95, 1e-45, 0.5], np.float32)


def check_input(seed: int = 12345) -> tuple[np.ndarray, np.ndarray]:
    """1M weights in [0, 1] and finite qualities, with every special pair included."""
    rng = np.random.default_rng(seed)
    w = rng.random(CHECK_N, dtype=np.float32)
    q = rng.uniform(-0.25, 1.25, CHECK_N).astype(np.float32)
    ww, qq = np.meshgrid(SPECIAL_W, SPECIAL_Q)
    k = ww.size
    w[:k], q[:k] = ww.ravel(), qq.ravel()
    return w, q


def reference_step(w: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The law by the NumPy backend (the executable reference)."""
    out = w.copy()
    backends.get("numpy").step(out, q, PARAMS)
    return out


def check_exact(impl: Impl, w: np.ndarray, q: np.ndarray, expected: np.ndarray) -> dict:
    """One step of ``impl`` on (w, q) compared bit for bit with ``expected``."""
    w_before, q_before = w.copy(), q.copy()
    runner = impl.make(w, q)
    runner.reset()
    runner.run()
    got = np.asarray(runner.result()).copy()
    if not (np.array_equal(w_before.view(np.uint32), w.view(np.uint32))
            and np.array_equal(q_before.view(np.uint32), q.view(np.uint32))):
        raise AssertionError(f"{impl.name} wrote into its inputs (pristine weights or qualities)")
    diff = np.flatnonzero(got.view(np.uint32) != expected.view(np.uint32))
    info = {"bit_exact": bool(diff.size == 0), "mismatches": int(diff.size)}
    if diff.size:
        i = int(diff[0])
        info["first_mismatch"] = (f"w={w[i]!r} q={q[i]!r}: got {got[i]!r}, "
                                  f"law {expected[i]!r}")
    if getattr(runner, "donated", None) is not None:
        info["donated"] = bool(runner.donated)
    return info
