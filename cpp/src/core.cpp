/// \file core.cpp
/// \brief OpenMP loops over the law (nap/law.h). No arithmetic of the law lives here.
#include "nap/core.h"

#include <algorithm>  // for std::min
#include <cstdlib>    // for std::getenv
#include <cstring>    // for std::memcpy
#include <string>     // for std::string
#include <vector>     // for std::vector

#include "kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace nap {
namespace {

// Below these sizes a parallel region costs more than it saves.
constexpr std::size_t kParallelElements = std::size_t{1} << 16;
constexpr std::size_t kParallelEvents = std::size_t{1} << 15;
// The sparse batch's bucketing pass costs about as much as applying the events: on 2 threads
// the serial loop was faster at every size measured (docs/SCALING.md), so the parallel form
// is kept for 4 threads and more, where it can pay.
constexpr int kParallelUpdateThreads = 4;
// Decay(k) works on cache-resident blocks so k rounds cost one pass over memory.
constexpr std::size_t kDecayBlock = 4096;

int g_threads = 0;  // 0: the OpenMP default

int threads_for(std::size_t work, std::size_t threshold) {
  if (work < threshold) return 1;
  return num_threads();
}

inline bool is_finite(float x) { return !nonfinite_bits(bits_of(x)); }

// Splits [0, n) among the threads of a parallel region and runs body(lo, hi) on each slice.
// Slices start on 64-byte boundaries (16 floats) so vector loads stay aligned with the data.
template <class Body>
void parallel_slices(std::size_t n, Body body) {
  const int wanted = threads_for(n, kParallelElements);
#pragma omp parallel num_threads(wanted)
  {
#ifdef _OPENMP
    const std::size_t t = static_cast<std::size_t>(omp_get_thread_num());
    const std::size_t count = static_cast<std::size_t>(omp_get_num_threads());
#else
    const std::size_t t = 0, count = 1;
#endif
    const std::size_t lo = t == 0 ? 0 : (n * t / count) & ~std::size_t{15};
    const std::size_t hi = t + 1 == count ? n : (n * (t + 1) / count) & ~std::size_t{15};
    if (hi > lo) body(lo, hi);
  }
}

}  // namespace

extern const Kernels kernels_baseline;
#ifdef NAP_HAVE_AVX2
extern const Kernels kernels_avx2;
#endif
#ifdef NAP_HAVE_AVX512
extern const Kernels kernels_avx512;
#endif

namespace {

bool cpu_has(const char* isa) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  if (std::string(isa) == "avx512") return __builtin_cpu_supports("avx512f");
  if (std::string(isa) == "avx2") return __builtin_cpu_supports("avx2");
#endif
  return std::string(isa) == "baseline";
}

const Kernels& choose_kernels() {
  struct Candidate {
    const char* name;
    const Kernels* kernels;
  };
  const Candidate candidates[] = {
#ifdef NAP_HAVE_AVX512
      {"avx512", &kernels_avx512},
#endif
#ifdef NAP_HAVE_AVX2
      {"avx2", &kernels_avx2},
#endif
      {"baseline", &kernels_baseline},
  };
  const char* forced = std::getenv("NAP_SIMD");
  for (const Candidate& c : candidates)
    if (forced && std::string(forced) == c.name && cpu_has(c.name)) return *c.kernels;
  for (const Candidate& c : candidates)
    if (cpu_has(c.name)) return *c.kernels;
  return kernels_baseline;
}

}  // namespace

const Kernels& kernels() {
  static const Kernels& chosen = choose_kernels();
  return chosen;
}

const char* built_isas() {
  static const std::string text = std::string(kernels_baseline.isa)
#ifdef NAP_HAVE_AVX2
                                  + "," + kernels_avx2.isa
#endif
#ifdef NAP_HAVE_AVX512
                                  + "," + kernels_avx512.isa
#endif
      ;
  return text.c_str();
}

int num_threads() {
#ifdef _OPENMP
  return g_threads > 0 ? g_threads : omp_get_max_threads();
#else
  return 1;
#endif
}

void set_num_threads(int n) { g_threads = n > 0 ? n : 0; }

void step(float* w, const float* q, std::size_t n, const Params& p) {
  const Kernels& k = kernels();
  const Params params = p;
  parallel_slices(n, [&](std::size_t lo, std::size_t hi) {
    for (std::size_t i = lo + k.step(w + lo, q + lo, hi - lo, params); i < hi; ++i)
      w[i] = nap::step(w[i], q[i], params);
  });
}

void step_scalar(float* w, float q, std::size_t n, const Params& p) {
  const Kernels& k = kernels();
  const Params params = p;
  parallel_slices(n, [&](std::size_t lo, std::size_t hi) {
    for (std::size_t i = lo + k.step_scalar(w + lo, q, hi - lo, params); i < hi; ++i)
      w[i] = nap::step(w[i], q, params);
  });
}

namespace {

// One round of decay_once over x[0, len): the vector loop, then the scalar law for the tail.
void decay_round(const Kernels& loops, float* x, std::size_t len, float d) {
  for (std::size_t i = loops.decay(x, len, d); i < len; ++i) x[i] = decay_once(x[i], d);
}

// Rounds between two fixpoint checks (a check costs about a round): 8 at first, doubling up
// to 64, so checks cost little whatever k is, and rounds past the last weight's fixpoint are
// fewer than those before it.
constexpr std::uint64_t kDecayFirstBurst = 8, kDecayLongestBurst = 64;

// How many of x[0, len) differ in bits from before[0, len) (branch-free: vectorises).
std::size_t count_changed(const float* x, const float* before, std::size_t len) {
  std::size_t count = 0;
  for (std::size_t i = 0; i < len; ++i) count += bits_of(x[i]) != bits_of(before[i]) ? 1 : 0;
  return count;
}

// decay_repeated (nap/law.h) on every weight of a cache-resident block, in bursts of rounds
// over whole arrays so the rounds vectorise. A weight whose last round changed no bit is at a
// fixpoint for good (decay_once is a function of the bits): when no weight changed, the block
// is done, so any k ends (a decay too small to move any weight stops after one burst). Once at
// most half are still moving, those are gathered into a dense buffer (the others written back)
// and the rounds go on over them alone: a few slow weights cost rounds over themselves, not
// over the whole block.
void decay_block(const Kernels& loops, float* block, std::size_t len, float d, std::uint64_t k,
                 float* moving, float* before, std::uint32_t* where) {
  float* x = block;  // the weights the rounds run on: block itself, or moving[0, len) gathered
  bool gathered = false;
  for (std::uint64_t burst = kDecayFirstBurst; k > 0;
       burst = std::min(2 * burst, kDecayLongestBurst)) {
    burst = std::min(k, burst);
    k -= burst;
    for (std::uint64_t r = 1; r < burst; ++r) decay_round(loops, x, len, d);
    if (k == 0) {  // the last round: no check can save one
      decay_round(loops, x, len, d);
      break;
    }
    std::memcpy(before, x, len * sizeof(float));
    decay_round(loops, x, len, d);
    const std::size_t changed = count_changed(x, before, len);
    if (changed == 0) break;
    if (changed > len / 2) continue;
    std::size_t kept = 0;  // gather the moving weights; the others are final
    for (std::size_t j = 0; j < len; ++j) {
      if (bits_of(x[j]) != bits_of(before[j])) {
        moving[kept] = x[j];
        where[kept++] = gathered ? where[j] : static_cast<std::uint32_t>(j);
      } else if (gathered) {
        block[where[j]] = x[j];
      }
    }
    x = moving;
    len = kept;
    gathered = true;
  }
  if (gathered)
    for (std::size_t j = 0; j < len; ++j) block[where[j]] = x[j];
}

}  // namespace

void decay(float* w, std::size_t n, float d, std::uint64_t k) {
  if (k == 0) return;
  if (d == 0.0f) k = 1;  // decay_once(., 0) is the clamp: idempotent after one round
  const Kernels& loops = kernels();
  parallel_slices(n, [&](std::size_t lo, std::size_t hi) {
    // k rounds over one cache-resident block before the next: one pass over memory whatever
    // k is (the arithmetic still grows with k, up to each weight's fixpoint).
    std::vector<float> moving, before;
    std::vector<std::uint32_t> where;
    if (k > kDecayFirstBurst) {
      moving.resize(kDecayBlock);
      before.resize(kDecayBlock);
      where.resize(kDecayBlock);
    }
    for (std::size_t b = lo; b < hi; b += kDecayBlock)
      decay_block(loops, w + b, std::min(kDecayBlock, hi - b), d, k, moving.data(),
                  before.data(), where.data());
  });
}

namespace {

void update_serial(float* w, const std::int64_t* ids, const float* q, std::size_t m,
                   const Params& p) {
  kernels().update(w, ids, q, m, p);
}

}  // namespace

// Parallel across ids, ordered within an id: each thread owns a contiguous id range. Events are
// bucketed by owner with a stable counting sort (each thread scatters its own slice of the
// batch, slices in order), so every bucket holds its events in the order given; then each
// thread applies its bucket alone. Cost: O(m) reads and writes of 12-byte events, plus the
// random accesses to w that any implementation pays. No id is touched by two threads.
void update(float* w, std::size_t n, const std::int64_t* ids, const float* q, std::size_t m,
            const Params& p) {
  const int wanted = threads_for(m, kParallelEvents);
  if (wanted < kParallelUpdateThreads || n < 2) {
    update_serial(w, ids, q, m, p);
    return;
  }
#ifdef _OPENMP
  std::vector<std::int64_t> bucket_ids(m);
  std::vector<float> bucket_q(m);
  std::vector<std::size_t> counts;  // counts[t * T + o]: events of slice t owned by o
  int T = 1;
  std::size_t span = n;
#pragma omp parallel num_threads(wanted)
  {
#pragma omp single
    {
      T = omp_get_num_threads();
      span = (n + static_cast<std::size_t>(T) - 1) / static_cast<std::size_t>(T);
      counts.assign(static_cast<std::size_t>(T) * T, 0);
    }  // implicit barrier
    const int t = omp_get_thread_num();
    const std::size_t lo = m * t / T, hi = m * (t + 1) / T;
    std::size_t* mine = &counts[static_cast<std::size_t>(t) * T];
    for (std::size_t j = lo; j < hi; ++j) ++mine[static_cast<std::size_t>(ids[j]) / span];
#pragma omp barrier
#pragma omp single
    {  // exclusive prefix sum, owner-major then slice: bucket o holds slices 0..T-1 in order
      std::size_t total = 0;
      for (int o = 0; o < T; ++o)
        for (int s = 0; s < T; ++s) {
          std::size_t& c = counts[static_cast<std::size_t>(s) * T + o];
          const std::size_t here = c;
          c = total;
          total += here;
        }
    }
    for (std::size_t j = lo; j < hi; ++j) {
      const std::size_t to = mine[static_cast<std::size_t>(ids[j]) / span]++;
      bucket_ids[to] = ids[j];
      bucket_q[to] = q[j];
    }
#pragma omp barrier
    // Bucket t starts where slice 0 began writing it; it ends where bucket t + 1 starts.
    const std::size_t begin = t == 0 ? 0 : counts[static_cast<std::size_t>(T - 1) * T + t - 1];
    const std::size_t end = counts[static_cast<std::size_t>(T - 1) * T + t];
    kernels().update(w, bucket_ids.data() + begin, bucket_q.data() + begin, end - begin, p);
  }
#else
  update_serial(w, ids, q, m, p);
#endif
}

namespace {

// The first index in [0, n) where bad(i) holds, or -1. Blocks are tested with any_bad(lo, hi)
// first (branch-free, vectorised); only a block with a hit is scanned again for its index.
template <class Bad, class AnyBad>
std::int64_t first_where(std::size_t n, Bad bad, AnyBad any_bad) {
  constexpr std::size_t kBlock = 4096;
  const std::int64_t blocks = static_cast<std::int64_t>((n + kBlock - 1) / kBlock);
  std::int64_t first = blocks;
#pragma omp parallel for schedule(static) reduction(min : first) \
    num_threads(threads_for(n, kParallelElements))
  for (std::int64_t b = 0; b < blocks; ++b) {
    const std::size_t lo = static_cast<std::size_t>(b) * kBlock;
    if (b < first && any_bad(lo, std::min(n, lo + kBlock))) first = b;
  }
  if (first == blocks) return -1;
  for (std::size_t i = static_cast<std::size_t>(first) * kBlock;; ++i)
    if (bad(i)) return static_cast<std::int64_t>(i);
}

template <class Bad>
std::int64_t first_where(std::size_t n, Bad bad) {
  return first_where(n, bad, [bad](std::size_t lo, std::size_t hi) {
    unsigned any = 0;
    for (std::size_t i = lo; i < hi; ++i) any |= bad(i) ? 1u : 0u;
    return any != 0;
  });
}

}  // namespace

std::int64_t first_nonfinite(const float* x, std::size_t n) {
  const Kernels& k = kernels();
  return first_where(n, [x](std::size_t i) { return !is_finite(x[i]); },
                     [x, &k](std::size_t lo, std::size_t hi) {
                       std::size_t done = 0;
                       if (k.any_nonfinite(x + lo, hi - lo, &done)) return true;
                       for (std::size_t i = lo + done; i < hi; ++i)
                         if (!is_finite(x[i])) return true;
                       return false;
                     });
}

std::int64_t first_bad_id(const std::int64_t* ids, std::size_t m, std::int64_t n) {
  return first_where(m, [ids, n](std::size_t j) { return id_outside(ids[j], n); });
}

void exact_sums(const float* w, const std::uint8_t* labels, std::size_t n, std::uint64_t* out) {
  constexpr std::size_t kKeys = std::size_t{kExactBins} * 4;  // label x (sign, exponent) x 4 sums
  std::fill(out, out + kKeys, std::uint64_t{0});
  const std::int64_t count = static_cast<std::int64_t>(n);
#pragma omp parallel num_threads(threads_for(n, kParallelElements))
  {
    std::vector<std::uint64_t> local(kKeys, 0);
#pragma omp for schedule(static)
    for (std::int64_t i = 0; i < count; ++i) {
      const std::uint32_t b = bits_of(w[i]);
      const ExactTerms t = exact_terms(b);
      std::uint64_t* acc = &local[static_cast<std::size_t>(exact_bin(b, labels[i])) * 4];
      acc[0] += 1;
      acc[1] += t.significand;
      acc[2] += t.square_high;
      acc[3] += t.square_low;
    }
#pragma omp critical
    for (std::size_t k = 0; k < kKeys; ++k) out[k] += local[k];
  }
}

void triad(float* w, const float* q, float s, std::size_t n) {
  const Kernels& k = kernels();
  parallel_slices(n, [&](std::size_t lo, std::size_t hi) {
    for (std::size_t i = lo + k.triad(w + lo, q + lo, s, hi - lo); i < hi; ++i) w[i] += s * q[i];
  });
}

const char* compile_options() {
  static const std::string text = [] {
    std::string s = "compiler=";
#if defined(__clang__)
    s += std::string("Clang ") + __clang_version__;
#elif defined(__GNUC__)
    s += std::string("GCC ") + __VERSION__;
#elif defined(_MSC_VER)
    s += "MSVC " + std::to_string(_MSC_FULL_VER);
#else
    s += "unknown";
#endif
#ifdef NAP_CXX_FLAGS
    s += std::string(";flags=") + NAP_CXX_FLAGS;
#endif
#ifdef __FAST_MATH__
    s += ";fast_math=on";
#else
    s += ";fast_math=off";
#endif
#ifdef _OPENMP
    s += ";openmp=" + std::to_string(_OPENMP);
#else
    s += ";openmp=off";
#endif
    s += std::string(";simd=") + kernels().isa + ";simd_built=" + built_isas();
    return s;
  }();
  return text.c_str();
}

}  // namespace nap
