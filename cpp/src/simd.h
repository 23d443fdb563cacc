/// \file simd.h
/// \brief SIMD vector types for the law's templates (nap/law.h), one per instruction set.
///
/// Each type supplies the law's primitives — max_of, min_of, greater, select, +, -, * — as
/// single instructions with exactly the scalar semantics documented in law.h (maxps(a, b) is
/// `a > b ? a : b`, NaN and equal operands giving b; comparisons are ordered and quiet), so a
/// vector of results is bit-identical to the scalar law applied lane by lane. The law itself
/// is not restated here. The type is chosen by the flags the including translation unit is
/// compiled with, and lives in namespace NAP_ISA so that the per-ISA units never share a
/// symbol (no ODR clash between code built for different instruction sets).
#pragma once

#include <cstddef>  // for std::size_t

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__SSE2__) || defined(_M_X64)
#include <immintrin.h>
#endif

#ifndef NAP_ISA
#error "define NAP_ISA (a namespace name) before including simd.h"
#endif

namespace nap {
namespace NAP_ISA {

#if defined(__AVX512F__)
constexpr const char* kIsaName = "AVX512F";
struct Vec {
  __m512 v;
  static constexpr std::size_t width = 16;
  Vec(__m512 x) : v(x) {}
  explicit Vec(float x) : v(_mm512_set1_ps(x)) {}
  static Vec load(const float* p) { return _mm512_loadu_ps(p); }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void stream(float* p) const { _mm512_stream_ps(p, v); }  // p: 64-byte aligned
  void store_first(float* p) const { _mm_store_ss(p, _mm512_castps512_ps128(v)); }
};
inline Vec operator+(Vec a, Vec b) { return _mm512_add_ps(a.v, b.v); }
inline Vec operator-(Vec a, Vec b) { return _mm512_sub_ps(a.v, b.v); }
inline Vec operator*(Vec a, Vec b) { return _mm512_mul_ps(a.v, b.v); }
inline Vec max_of(Vec a, Vec b) { return _mm512_max_ps(a.v, b.v); }
inline Vec min_of(Vec a, Vec b) { return _mm512_min_ps(a.v, b.v); }
inline __mmask16 greater(Vec a, Vec b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_GT_OQ); }
inline Vec select(__mmask16 m, Vec a, Vec b) { return _mm512_mask_blend_ps(m, b.v, a.v); }

#elif defined(__AVX2__)
constexpr const char* kIsaName = "AVX2";
struct Vec {
  __m256 v;
  static constexpr std::size_t width = 8;
  Vec(__m256 x) : v(x) {}
  explicit Vec(float x) : v(_mm256_set1_ps(x)) {}
  static Vec load(const float* p) { return _mm256_loadu_ps(p); }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  void stream(float* p) const { _mm256_stream_ps(p, v); }  // p: 32-byte aligned
  void store_first(float* p) const { _mm_store_ss(p, _mm256_castps256_ps128(v)); }
};
inline Vec operator+(Vec a, Vec b) { return _mm256_add_ps(a.v, b.v); }
inline Vec operator-(Vec a, Vec b) { return _mm256_sub_ps(a.v, b.v); }
inline Vec operator*(Vec a, Vec b) { return _mm256_mul_ps(a.v, b.v); }
inline Vec max_of(Vec a, Vec b) { return _mm256_max_ps(a.v, b.v); }
inline Vec min_of(Vec a, Vec b) { return _mm256_min_ps(a.v, b.v); }
inline Vec greater(Vec a, Vec b) { return _mm256_cmp_ps(a.v, b.v, _CMP_GT_OQ); }
inline Vec select(Vec m, Vec a, Vec b) { return _mm256_blendv_ps(b.v, a.v, m.v); }

#elif defined(__SSE2__) || defined(_M_X64)
constexpr const char* kIsaName = "SSE2";
struct Vec {
  __m128 v;
  static constexpr std::size_t width = 4;
  Vec(__m128 x) : v(x) {}
  explicit Vec(float x) : v(_mm_set1_ps(x)) {}
  static Vec load(const float* p) { return _mm_loadu_ps(p); }
  void store(float* p) const { _mm_storeu_ps(p, v); }
  void stream(float* p) const { _mm_stream_ps(p, v); }  // p: 16-byte aligned
  void store_first(float* p) const { _mm_store_ss(p, v); }
};
inline Vec operator+(Vec a, Vec b) { return _mm_add_ps(a.v, b.v); }
inline Vec operator-(Vec a, Vec b) { return _mm_sub_ps(a.v, b.v); }
inline Vec operator*(Vec a, Vec b) { return _mm_mul_ps(a.v, b.v); }
inline Vec max_of(Vec a, Vec b) { return _mm_max_ps(a.v, b.v); }
inline Vec min_of(Vec a, Vec b) { return _mm_min_ps(a.v, b.v); }
inline Vec greater(Vec a, Vec b) { return _mm_cmpgt_ps(a.v, b.v); }
inline Vec select(Vec m, Vec a, Vec b) {
  return _mm_or_ps(_mm_and_ps(m.v, a.v), _mm_andnot_ps(m.v, b.v));
}

#else  // no SIMD type for this target: one lane, the compiler may still vectorise the loops
constexpr const char* kIsaName = "generic";
struct Vec {
  float v;
  static constexpr std::size_t width = 1;
  explicit Vec(float x) : v(x) {}
  static Vec load(const float* p) { return Vec(*p); }
  void store(float* p) const { *p = v; }
  void stream(float* p) const { *p = v; }
  void store_first(float* p) const { *p = v; }
};
inline Vec operator+(Vec a, Vec b) { return Vec(a.v + b.v); }
inline Vec operator-(Vec a, Vec b) { return Vec(a.v - b.v); }
inline Vec operator*(Vec a, Vec b) { return Vec(a.v * b.v); }
inline Vec max_of(Vec a, Vec b) { return Vec(a.v > b.v ? a.v : b.v); }
inline Vec min_of(Vec a, Vec b) { return Vec(a.v < b.v ? a.v : b.v); }
inline bool greater(Vec a, Vec b) { return a.v > b.v; }
inline Vec select(bool m, Vec a, Vec b) { return m ? a : b; }
#endif

/// Orders this thread's streaming stores before its later stores (they bypass the caches and
/// are weakly ordered): after a loop of Vec::stream, before another thread reads the data.
inline void stream_fence() {
#if defined(__SSE2__) || defined(_M_X64)
  _mm_sfence();
#endif
}

}  // namespace NAP_ISA
}  // namespace nap
