/// \file kernels.h
/// \brief The per-instruction-set vector loops of the core and their runtime choice.
#pragma once

#include <cstddef>  // for std::size_t
#include <cstdint>  // for std::int64_t

#include "nap/law.h"

namespace nap {

/// One instruction set's loops. Each processes whole vectors from the start of its range and
/// returns how many elements it did (a multiple of the vector width).
struct Kernels {
  const char* isa;
  std::size_t (*step)(float* w, const float* q, std::size_t n, const Params& p);
  /// The step written to out, w only read; *nonfinite: whether any q it did is NaN or
  /// infinite. stream: streaming stores (out aligned to the vector width).
  std::size_t (*step_into)(const float* w, const float* q, float* out, std::size_t n,
                           const Params& p, bool stream, bool* nonfinite);
  std::size_t (*step_scalar)(float* w, float q, std::size_t n, const Params& p);
  std::size_t (*decay)(float* w, std::size_t n, float decay);
  std::size_t (*triad)(float* w, const float* q, float s, std::size_t n);
  /// Feedback for events in order, one at a time (all of them: no tail).
  void (*update)(float* w, const std::int64_t* ids, const float* q, std::size_t m,
                 const Params& p);
  /// Whether any of the first `done` elements is NaN or infinite (done is returned through
  /// the pointer: the whole vectors it looked at).
  bool (*any_nonfinite)(const float* x, std::size_t n, std::size_t* done);
  /// Whether any of the m ids lies outside [0, n) (all of them: no tail).
  bool (*any_id_outside)(const std::int64_t* ids, std::size_t m, std::int64_t n);
};

/// The best loops this CPU runs (NAP_SIMD=sse2|avx2|avx512|generic forces a choice, for tests
/// and benchmarks; an unsupported or unknown choice is ignored).
const Kernels& kernels();

/// The instruction sets this build carries, e.g. "SSE2,AVX2,AVX512F".
const char* built_isas();

}  // namespace nap
