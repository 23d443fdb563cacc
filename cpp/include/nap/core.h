/// \file core.h
/// \brief The C++ core: the law applied to a population of float32 weights on the CPU.
///
/// Loops only: every element goes through the functions of nap/law.h. Loops are parallel over
/// OpenMP threads (set_num_threads, or the NAP_NUM_THREADS environment variable read by the
/// Python layer) and written so the compiler vectorises them. No function allocates a copy of
/// the caller's arrays; pointers are the caller's memory, updated in place.
///
/// Every loop runs with IEEE float arithmetic whatever mode the caller's thread is in (no
/// flush-to-zero, no denormals-are-zero, rounding to nearest; x86 and arm64), restoring that
/// mode before it returns. In the child of a fork() the loops run on the calling thread alone
/// (the parent's OpenMP threads do not exist there): num_threads() is then 1.
///
/// Validation is the caller's job and comes first (validate before you write): the scans
/// first_nonfinite and first_bad_id let a host reject bad input before any weight changes.
#pragma once

#include <cstddef>  // for std::size_t
#include <cstdint>  // for std::int64_t, std::uint64_t

#include "nap/law.h"

namespace nap {

/// For its lifetime, the calling thread computes with IEEE float arithmetic: subnormals
/// neither flushed to zero (FTZ) nor read as zero (DAZ), rounding to nearest (x86 MXCSR,
/// arm64 FPCR; elsewhere nothing changes); the thread's own mode comes back when it ends. Every
/// loop below holds one on each of its threads; a host converting the law's parameters, or
/// calling nap/law.h's functions itself, under a mode set by another library may hold one too.
class IeeeArithmetic {
 public:
  IeeeArithmetic();
  ~IeeeArithmetic();
  IeeeArithmetic(const IeeeArithmetic&) = delete;
  IeeeArithmetic& operator=(const IeeeArithmetic&) = delete;

 private:
  unsigned long long saved_;  // the thread's mode before
};

/// Dense step: w[i] = step(w[i], q[i]) for i < n.
void step(float* w, const float* q, std::size_t n, const Params& p);

/// Dense step written to out, with the finite check of q in the same pass (w is only read):
/// -1 when every q is finite and out[i] = step(w[i], q[i]); else the index of the first NaN or
/// infinite q, and out's contents are unspecified. One pass over w, q and out where a checked
/// step in place reads q twice (first_nonfinite, then step): a host that keeps two weight
/// buffers validates and steps at the in-place step's bandwidth and swaps them on success.
/// out must not overlap q, nor w other than exactly (out == w is the in-place step).
std::int64_t step_into(const float* w, const float* q, float* out, std::size_t n,
                       const Params& p);

/// Dense step with one quality for every memory.
void step_scalar(float* w, float q, std::size_t n, const Params& p);

/// Passive decay applied k times to every weight (one pass over memory, whatever k is).
void decay(float* w, std::size_t n, float decay, std::uint64_t k);

/// Sparse ordered batch: feedback only, event j applied to w[ids[j]] with quality q[j].
/// Events of one id are applied in the order given; different ids run in parallel.
/// ids must already be checked to lie in [0, n).
void update(float* w, std::size_t n, const std::int64_t* ids, const float* q, std::size_t m,
            const Params& p);

/// Index of the first NaN or infinite value of x, or -1 when all are finite.
std::int64_t first_nonfinite(const float* x, std::size_t n);

/// Index of the first id outside [0, n), or -1 when all are inside.
std::int64_t first_bad_id(const std::int64_t* ids, std::size_t m, std::int64_t n);

/// Entries of exact_sums's output: 2 labels x 512 keys (sign and biased exponent) x 4 sums.
constexpr std::size_t kExactSumsSize = std::size_t{kExactBins} * 4;

/// Exact population sums for the metrics, grouped by label (0 or 1) and float32 sign and
/// exponent. For label l and key k = bits >> 23 (sign bit, then the biased exponent),
/// out[(l * 512 + k) * 4 + s] holds (count, sum of significands, sum of the high and of the
/// low 24-bit halves of the squared significands) as unsigned integers, so sum(w) and sum(w*w)
/// can be formed exactly in any order (see nap_gpu/metrics.py).
/// out has kExactSumsSize = 2 * 512 * 4 entries and is overwritten. Requires n < 2^40.
void exact_sums(const float* w, const std::uint8_t* labels, std::size_t n, std::uint64_t* out);

/// What the metrics need beyond exact_sums, for weights w labelled 1 (R) or 0 (P):
/// twice_u = 2U = sum over P weights p of 2 #(R weights r > p) + #(r == p), exact as a 128-bit
/// integer (high:low), comparing weights by their keys (metric_key; meaningful when every
/// weight is finite); the counts of R and P; saturated = weights whose key lies in
/// [kKeyNegInf, low_key] or [high_key, kKeyPosInf]; the smallest and largest key. O(n) on
/// every thread, no sort of the population (cpp/src/ranks.cpp). With exact_sums non-null
/// (kExactSumsSize entries, overwritten) it also computes exact_sums' bins, in the same pass.
struct RankSums {
  std::uint64_t twice_u_high = 0, twice_u_low = 0;
  std::uint64_t reinforced = 0, punished = 0;
  std::uint64_t saturated = 0;
  std::uint32_t min_key = 0xFFFFFFFFu, max_key = 0;
};
RankSums rank_sums(const float* w, const std::uint8_t* labels, std::size_t n,
                   std::uint32_t low_key, std::uint32_t high_key,
                   std::uint64_t* exact_sums = nullptr);
/// The memory-bandwidth floor for benchmarks: w[i] += s * q[i], the same bytes as a step.
void triad(float* w, const float* q, float s, std::size_t n);

/// Threads the loops use (1 when built without OpenMP, and in the child of a fork()).
int num_threads();
/// Set the thread count; values < 1 restore the OpenMP default.
void set_num_threads(int n);
/// Elements from which the dense loops (steps, decay, the scans, exact_sums) run on several
/// threads at the current thread count (SIZE_MAX where they run on one): where the work the
/// other threads take over outweighs waking them, measured once per process (a few empty
/// parallel regions against one thread's step over a block in cache), at least 2^16 and at
/// most 2^24, unless pinned. The bits never depend on it.
std::size_t parallel_threshold();
/// Pin that threshold to n elements (0: back to the measured one).
void set_parallel_threshold(std::size_t n);

/// How the core was compiled: compiler, flags that matter for the law, OpenMP, SIMD level.
const char* compile_options();

}  // namespace nap
