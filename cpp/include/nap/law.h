/// \file law.h
/// \brief The NAP learning law (DESIGN.md §2): the ONE source of its arithmetic.
///
/// Every function acts on one float32 weight. The C++ loops (cpp/src/core.cpp) and the CUDA
/// kernels (cuda/) only iterate over these functions; the NumPy backend restates them in array
/// code and is tested bit for bit against them.
///
/// Float32 rules that make results bit-identical on every backend:
///  - each operation below is one IEEE float32 operation, rounded to nearest-even, in the order
///    written; builds must not contract a*b+c into an FMA (-ffp-contract=off, --fmad=false)
///    nor flush subnormals (no -ffast-math, --ftz=false);
///  - the clamps are written as comparisons with the exact semantics of numpy.maximum(x, 0) /
///    numpy.minimum(x, 1): NaN passes through and -0.0 becomes +0.0, so -0.0 never leaves the
///    engine and equality of results is plain bitwise equality. Comparisons (not std::min/max)
///    also let the compiler vectorise the loops.
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

/// max(x, 0) as numpy.maximum(x, 0): NaN stays NaN, -0.0 and negatives become +0.0.
NAP_HOST_DEVICE float clamp_low(float x) { return (x <= 0.0f) ? 0.0f : x; }

/// min(x, 1) as numpy.minimum(x, 1): NaN stays NaN.
NAP_HOST_DEVICE float clamp_high(float x) { return (x >= 1.0f) ? 1.0f : x; }

/// Clamp to [0, 1] (the law's bounds for both qualities and weights).
NAP_HOST_DEVICE float clamp_unit(float x) { return clamp_high(clamp_low(x)); }

/// One feedback event: quality-gated reinforcement (q > gate) or punishment, then the clamp.
///   reinforce:  t = lr * q;            w + t
///   punish:     u = 1 - q; t = lr * u; w - t
/// Written as selects of values computed unconditionally (not if/else, which GCC will not
/// if-convert under -ftrapping-math) so loops over it vectorise; the selected result is
/// exactly the float32 operations listed above, in that order.
NAP_HOST_DEVICE float feedback(float w, float q, float lr, float gate) {
  q = clamp_unit(q);
  const bool reinforce = q > gate;
  const float u = 1.0f - q;
  const float t = lr * (reinforce ? q : u);
  const float up = w + t, down = w - t;  // both evaluated: a select, not a branch
  return clamp_unit(reinforce ? up : down);
}

/// One passive decay: w - decay, clamped. With decay == 0 this is the identity on clamped
/// weights (w - 0 == w, clamp idempotent), so "skip decay when it is 0" needs no branch.
NAP_HOST_DEVICE float decay_once(float w, float decay) { return clamp_unit(w - decay); }

/// One dense step: feedback, then passive decay.
NAP_HOST_DEVICE float step(float w, float q, const Params& p) {
  return decay_once(feedback(w, q, p.lr, p.gate), p.decay);
}

}  // namespace nap
