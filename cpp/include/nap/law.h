/// \file law.h
/// \brief The NAP learning law (docs/law.md §2): the ONE source of its arithmetic.
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
/// No <cmath>, no std:: in device code — the header stays NVRTC-friendly. The one standard
/// header, <cstring> (memcpy of bit patterns on the host), is included only outside NVRTC.
///
/// Besides the law, the header holds the bit-level rules every backend shares: the fixpoint
/// of decay(k), the conversion of float64 qualities, the validation tests and the integer
/// terms of exact_sums (nap_gpu.metrics).
#pragma once

#include "nap/config.h"

#if !defined(__CUDACC_RTC__)
#include <cstring>  // for std::memcpy (host code only)
#endif

// -- What the host compiler must guarantee -----------------------------------------------------
// The header is often compiled without the CMake target's flags (a host service's own build),
// so it refuses the settings that change the law's bits, or switches them off itself. CUDA is
// left alone: its builds pass --fmad=false --ftz=false (nap_gpu/backends/_kernels.py).
#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#if defined(__FLT_EVAL_METHOD__) && __FLT_EVAL_METHOD__ != 0
// x87 keeps float intermediates in 80 bits: every product and sum is rounded twice.
#error "nap/law.h: float operations are evaluated in excess precision (__FLT_EVAL_METHOD__ != 0, the x87 FPU); compile with -msse2 -mfpmath=sse (the CMake target nap::core adds them on 32-bit x86)"
#endif
#if defined(__FAST_MATH__)
#error "nap/law.h: -ffast-math (or /fp:fast) changes the law's results (contraction, reassociation, no signed zeros, flush-to-zero); compile without it"
#endif
#if defined(_MSC_VER) && !defined(__clang__) && (defined(_M_FP_FAST) || defined(_M_FP_CONTRACT))
#error "nap/law.h: /fp:fast and /fp:contract fuse multiply-adds; compile with /fp:precise"
#endif
#if defined(__clang__)
// Clang marks every operation with the contraction rule in force where it is written, so the
// law stays unfused wherever it is inlined, under -ffp-contract=on (the default) and
// fast-honor-pragmas. -ffp-contract=fast disregards all pragmas (measured, clang 14) and
// shows in no macro: never use it. Scoped by float_control(push/pop) below.
#pragma float_control(push)
#pragma clang fp contract(off)
#define NAP_LAW_FP_POP 1
#elif defined(__GNUC__) && defined(__FP_FAST_FMAF) && !defined(NAP_FP_CONTRACT_OFF)
// GCC fuses a*b+c into an FMA by default (-ffp-contract=fast), wherever the target has one
// (__FP_FAST_FMAF: aarch64, x86 with -mfma or -march=haswell...), ignores "STDC FP_CONTRACT"
// in C++ and says in no macro whether contraction is off. Nothing in a header protects the
// law (measured, GCC 12, -O3 -march=haswell): #pragma GCC optimize gives the law's functions
// options of their own, so GCC no longer inlines them (a call per weight, the host's loop not
// vectorised), and __builtin_assoc_barrier is dropped once the loop is vectorised (FMAs
// again). Hence the build must say so. (Not seen from here: a host function compiled for an
// FMA target by attribute or pragma on a target without one.)
#error "nap/law.h: GCC contracts a*b+c into fused multiply-adds unless told not to: compile with -ffp-contract=off and define NAP_FP_CONTRACT_OFF to say so (the CMake target nap::core does both)"
#elif defined(_MSC_VER) && _MSC_VER < 1930
// Before Visual Studio 2022, /fp:precise could contract: switch it off from here on.
#pragma fp_contract(off)
#endif
#endif

namespace nap {

/// The law's parameters, all float32 (docs/law.md §2 defaults).
struct Params {
  float lr = 0.05f;     ///< learning rate: step size of reinforcement and punishment
  float gate = 0.5f;    ///< quality strictly above the gate reinforces; at or below it punishes
  float decay = 0.02f;  ///< passive decay subtracted per step (0 disables it)
};

// -- Bit patterns --------------------------------------------------------------------------
// Reinterpretations, not conversions: no floating-point instruction is involved.

/// The IEEE bit pattern of a float32.
NAP_HOST_DEVICE unsigned int bits_of(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  unsigned int b;
  std::memcpy(&b, &x, sizeof b);
  return b;
#endif
}

/// The float32 with bit pattern b.
NAP_HOST_DEVICE float float_of_bits(unsigned int b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
#endif
}

/// The IEEE bit pattern of a float64.
NAP_HOST_DEVICE unsigned long long bits_of(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<unsigned long long>(__double_as_longlong(x));
#else
  unsigned long long b;
  std::memcpy(&b, &x, sizeof b);
  return b;
#endif
}

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

/// Feedback's signed step for one quality (it does not depend on the weight):
///   reinforce (q > gate):  t = lr * q
///   punish:                t = lr * (q - 1)
/// which the weight then adds. lr * (q - 1) is -(lr * (1 - q)) to the bit (rounding to nearest
/// is symmetric), and w + -t is w - t, so the weight gets exactly the law's w - lr * (1 - q);
/// the one difference, the sign of a zero step (q == 1 punishing), changes no result once
/// positive_zero has run. One select, no branch, so loops vectorise; a loop over events can
/// compute a vector of steps at once, off the chain of an id's updates.
template <class T>
NAP_HOST_DEVICE T feedback_step(T q, T lr, T gate) {
  q = clamp_unit(q);  // a -0.0 here punishes exactly as +0.0 does
  return lr * select(greater(q, gate), q, q - T(1.0f));
}

/// A weight after its feedback step, clamped (result in [0, 1], possibly -0.0).
template <class T>
NAP_HOST_DEVICE T take_step(T w, T step) {
  return clamp_unit(w + step);
}

/// Whether no feedback_step of these parameters is -0.0, whatever the quality; then no
/// take_step result is -0.0 either (a sum is -0.0 only when both terms are, and the clamp
/// turns no other value into -0.0), and a loop may drop take_step's positive_zero. It holds
/// for lr >= 1e-30 and gate >= 0 (every practical setting): reinforcing needs q > gate >= 0,
/// so lr * q is positive or +0; punishing multiplies lr by q - 1, which is +0 (q == 1) or at
/// most -2^-24, a product no smaller than 2^-24 * 1e-30 in magnitude, far from underflowing
/// to -0.0; a NaN stays NaN. NaN parameters fail the comparisons: the full law runs.
NAP_HOST_DEVICE bool steps_never_negative_zero(float lr, float gate) {
  return lr >= 1e-30f && gate >= 0.0f;
}

/// Feedback up to its clamp (result in [0, 1], possibly -0.0).
template <class T>
NAP_HOST_DEVICE T feedback_clamped(T w, T q, T lr, T gate) {
  return take_step(w, feedback_step(q, lr, gate));
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

/// decay_once applied k times, stopping at the first round that changes no bit of the weight:
/// decay_once is a function of the bits alone, so every later round would return the same
/// bits and the result is that of all k rounds. The stop makes any k finite: a decay below
/// half the weight's ulp never moves it (Params(decay=1e-9) leaves weights above 2^-5 where
/// they are), and a weight that does move reaches 0 (a fixpoint) in fewer than 2^25 rounds
/// (about 2.5e7 at worst, e.g. from 2^-5 under a decay of 1e-9: an ulp or two a round).
/// Every weight takes at least one round, so -0.0, negative, NaN and above-1 weights are
/// clamped exactly as by k rounds.
NAP_HOST_DEVICE float decay_repeated(float w, float decay, unsigned long long k) {
  for (; k > 0; --k) {
    const float next = decay_once(w, decay);
    if (bits_of(next) == bits_of(w)) break;
    w = next;
  }
  return w;
}

/// decay_repeated on N weights at once: their rounds run side by side (independent chains,
/// so they overlap in a pipeline), until every weight is at its fixpoint or k rounds are done.
/// Further rounds leave a weight at its fixpoint unchanged, so each result is that of
/// decay_repeated on the weight alone; the rounds cost the slowest weight's, not their sum.
template <int N>
NAP_HOST_DEVICE void decay_repeated(float (&w)[N], float decay, unsigned long long k) {
  for (; k > 0; --k) {
    bool moved = false;
    for (int i = 0; i < N; ++i) {
      const float next = decay_once(w[i], decay);
      moved |= bits_of(next) != bits_of(w[i]);
      w[i] = next;
    }
    if (!moved) break;
  }
}

// -- Inputs ----------------------------------------------------------------------------------
// The rules of nap_gpu/_inputs.py for the scans and conversions the device runs itself.

/// Whether a float32 with bit pattern b is NaN or infinite: its exponent is all ones (an
/// integer test; no floating-point comparison is involved).
NAP_HOST_DEVICE bool nonfinite_bits(unsigned int b) { return (b & 0x7f800000u) == 0x7f800000u; }

/// Whether an event's id lies outside [0, n) (n >= 0): negative ids wrap above n.
NAP_HOST_DEVICE bool id_outside(long long id, long long n) {
  return static_cast<unsigned long long>(id) >= static_cast<unsigned long long>(n);
}

/// A float64 quality as float32, as _inputs._as_float32 converts float64 arrays: a finite
/// value is clipped to [-1, 2] (so a huge finite value stays finite; -0.0 stays -0.0) and
/// rounded to the nearest float32, ties to even, subnormals kept; infinities keep their sign;
/// a NaN keeps its sign and the top 23 bits of its payload, quiet bit set (what the x86 and
/// Arm conversion instructions do, and so NumPy's astype; written with integers because GPU
/// conversions return the canonical NaN instead).
NAP_HOST_DEVICE float narrow_quality(double q) {
  const unsigned long long b = bits_of(q);
  if ((b & 0x7ff0000000000000ull) == 0x7ff0000000000000ull) {
    const unsigned long long payload = b & 0x000fffffffffffffull;
    unsigned int out = static_cast<unsigned int>(b >> 32) & 0x80000000u;  // the sign
    out |= 0x7f800000u | static_cast<unsigned int>(payload >> 29);
    if (payload != 0) out |= 0x00400000u;  // NaN stays NaN, quiet
    return float_of_bits(out);
  }
  const double clipped = q < -1.0 ? -1.0 : (q > 2.0 ? 2.0 : q);
  return static_cast<float>(clipped);  // one IEEE conversion, round to nearest even
}

// -- Exact sums ------------------------------------------------------------------------------
// The integer terms of exact_sums (nap_gpu/backends/_xp.py, nap_gpu/metrics.py): bins of
// shape (2, 512, 4) uint64 indexed by label (0 = P, 1 = R) and key = bits >> 23 (sign and
// biased exponent), holding the count, the sum of significands and the sums of the high and
// low 24-bit halves of the squared significands. Integer sums: any order gives the same bins.

/// Bins of exact_sums: 2 labels x 512 keys, 4 sums each.
constexpr unsigned int kExactBins = 2 * 512;

/// The bin (label * 512 + key) of a weight with bit pattern b; labels are 0 or 1.
NAP_HOST_DEVICE unsigned int exact_bin(unsigned int b, unsigned int label) {
  return (label & 1u) * 512u + (b >> 23);
}

/// The metrics' order key of a weight with bit pattern b: uint32 keys that order as the
/// float32 values do (a set sign bit flips every bit, a clear one only the sign bit), -0.0
/// with +0.0's key, NaNs beyond the infinities' keys (nap_gpu/metrics.py's _keys).
NAP_HOST_DEVICE unsigned int metric_key(unsigned int b) {
  if (b == 0x80000000u) b = 0u;
  return (b >> 31) ? ~b : (b | 0x80000000u);
}

/// Keys of -inf and +inf: every finite or infinite weight's key lies in between, a NaN's not.
constexpr unsigned int kKeyNegInf = 0x007FFFFFu, kKeyPosInf = 0xFF800000u;

/// Whether a weight with key k counts as saturated: w <= float32(eps) or w >= 1 - float32(eps),
/// given those two bounds' keys (a NaN's key lies in neither range).
NAP_HOST_DEVICE bool saturated_key(unsigned int k, unsigned int low_key, unsigned int high_key) {
  return (k >= kKeyNegInf && k <= low_key) || (k >= high_key && k <= kKeyPosInf);
}

// The inversion ratio's histogram (cpp/src/ranks.cpp, the device's nap_rank_bins): keys binned
// by their top 16 bits, per label. Pairs in different bins are ordered by their bins alone.

/// Low key bits a rank bin leaves apart, and the bins per label.
constexpr unsigned int kRankLowBits = 16;
constexpr unsigned int kRankBins = 1u << (32 - kRankLowBits);

/// The rank bin of key k.
NAP_HOST_DEVICE unsigned int rank_bin(unsigned int k) { return k >> kRankLowBits; }

/// What one weight adds to its bin's sums (besides 1 to its count).
struct ExactTerms {
  unsigned long long significand;  ///< the 23 fraction bits, with the implicit bit if normal
  unsigned long long square_high;  ///< (significand^2) >> 24
  unsigned long long square_low;   ///< (significand^2) & 0xffffff
};

/// The terms of a weight with bit pattern b (the implicit bit is set for every exponent but
/// 0, infinities and NaN included, as in _xp.exact_sums).
NAP_HOST_DEVICE ExactTerms exact_terms(unsigned int b) {
  const unsigned long long fraction = b & 0x7fffffu;
  const unsigned long long sig = (b & 0x7f800000u) ? (fraction | 0x800000u) : fraction;
  const unsigned long long square = sig * sig;  // < 2^48
  return ExactTerms{sig, square >> 24, square & 0xffffffu};
}

/// Adds a weight with bit pattern b and label 0/1 to a host's exact_sums bins (kExactBins x 4:
/// count, significand, squared significand's high and low halves). The device adds the same
/// terms with atomics.
template <class Count>  // a 64-bit unsigned integer (std::uint64_t)
NAP_HOST_DEVICE void add_exact_terms(Count* bins, unsigned int b, unsigned int label) {
  static_assert(sizeof(Count) == 8 && Count(0) < Count(-1), "64-bit unsigned bins");
  const ExactTerms t = exact_terms(b);
  Count* acc = bins + static_cast<unsigned long long>(exact_bin(b, label)) * 4u;
  acc[0] += 1;
  acc[1] += t.significand;
  acc[2] += t.square_high;
  acc[3] += t.square_low;
}

}  // namespace nap

#if defined(NAP_LAW_FP_POP)
#pragma float_control(pop)
#undef NAP_LAW_FP_POP
#endif
