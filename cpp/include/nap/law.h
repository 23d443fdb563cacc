/// \file law.h
/// \brief The NAP learning law (DESIGN.md §2): the ONE source of its arithmetic.
///
/// The law acts on one float32 weight at a time: on a float, or lane by lane on a SIMD vector
/// of floats (the same templates). The C++ loops (cpp/src/) and the CUDA kernels (cuda/) only
/// iterate over these functions; the NumPy backend restates them in array code and is tested
/// bit for bit against them.
///
/// Float32 rules that make results bit-identical on every backend:
///  - each operation below is one IEEE float32 operation, rounded to nearest-even, in the order
///    written; builds must not contract a*b+c into an FMA (-ffp-contract=off, --fmad=false)
///    nor flush subnormals (no -ffast-math, --ftz=false);
///  - the clamps pass NaN through (as numpy.maximum/minimum do) and are written in the exact
///    pattern of the SIMD max/min instructions (not std::min/max, whose NaN rules differ), so
///    loops compile to one instruction per clamp; results leave the law through
///    positive_zero, so -0.0 never leaves the engine and equal results are equal bits.
/// No <cmath>, no std:: — the header stays NVRTC-friendly.
#pragma once

#include "nap/config.h"

namespace nap {

/// The law's parameters, all float32 (DESIGN.md §2 defaults).
struct Params {
  float lr = 0.05f;     ///< learning rate: step size of reinforcement and punishment
  float gate = 0.5f;    ///< quality strictly above the gate reinforces; at or below it punishes
  float decay = 0.02f;  ///< passive decay subtracted per step (0 disables it)
};

// -- Primitives --------------------------------------------------------------------------
// The law below is written once, as templates over a value type T: float here (the C++ loops'
// scalar tails, the CUDA kernels), or a SIMD vector type of the C++ core (cpp/src/simd.h) whose
// primitives are single instructions with exactly these semantics.

/// a > b ? a : b — NaN in either operand gives b (the semantics of x86 maxps).
NAP_HOST_DEVICE float max_of(float a, float b) { return a > b ? a : b; }
/// a < b ? a : b — NaN in either operand gives b (the semantics of x86 minps).
NAP_HOST_DEVICE float min_of(float a, float b) { return a < b ? a : b; }
/// a > b, false when either is NaN.
NAP_HOST_DEVICE bool greater(float a, float b) { return a > b; }
/// m ? a : b
NAP_HOST_DEVICE float select(bool m, float a, float b) { return m ? a : b; }

// -- The law -------------------------------------------------------------------------------

/// Clamp to [0, 1], NaN passing through; -0.0 passes too and becomes +0.0 in positive_zero,
/// once, when a result leaves the law.
template <class T>
NAP_HOST_DEVICE T clamp_unit(T x) {
  return min_of(T(1.0f), max_of(T(0.0f), x));
}

/// x + 0: turns -0.0 into +0.0 and leaves every other value (NaN included) as it is, so -0.0
/// never leaves the engine and equal results are equal bits.
template <class T>
NAP_HOST_DEVICE T positive_zero(T x) {
  return x + T(0.0f);
}

/// Feedback up to its clamp (result in [0, 1], possibly -0.0):
///   reinforce (q > gate):  t = lr * q;            w + t
///   punish:                u = 1 - q; t = lr * u; w - t
/// Both candidates are computed and one is selected (no branch, so loops vectorise); the
/// selected value is exactly the float32 operations above, in that order.
template <class T>
NAP_HOST_DEVICE T feedback_clamped(T w, T q, T lr, T gate) {
  q = clamp_unit(q);  // a -0.0 here punishes exactly as +0.0 does
  const auto reinforce = greater(q, gate);
  const T u = T(1.0f) - q;
  const T t = lr * select(reinforce, q, u);
  return clamp_unit(select(reinforce, w + t, w - t));
}

/// One passive decay: w - decay, clamped. With decay == 0 this is the identity on weights
/// already clamped, so "skip decay when it is 0" needs no branch.
template <class T>
NAP_HOST_DEVICE T decay_once(T w, T decay) {
  return positive_zero(clamp_unit(w - decay));
}

/// One dense step: feedback, then passive decay. Feedback's -0.0, if any, needs no
/// positive_zero of its own: -0 - decay equals +0 - decay for decay > 0, and decay_once's
/// positive_zero covers decay == 0.
template <class T>
NAP_HOST_DEVICE T step(T w, T q, T lr, T gate, T decay) {
  return decay_once(feedback_clamped(w, q, lr, gate), decay);
}

// -- On one float (the public scalar API) ----------------------------------------------------

/// One feedback event: quality-gated reinforcement or punishment, clamped to [0, 1].
NAP_HOST_DEVICE float feedback(float w, float q, float lr, float gate) {
  return positive_zero(feedback_clamped(w, q, lr, gate));
}

/// One passive decay on one weight.
NAP_HOST_DEVICE float decay_once(float w, float decay) { return decay_once<float>(w, decay); }

/// One dense step on one weight.
NAP_HOST_DEVICE float step(float w, float q, const Params& p) {
  return step<float>(w, q, p.lr, p.gate, p.decay);
}

}  // namespace nap
