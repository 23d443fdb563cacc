/// \file core.cpp
/// \brief OpenMP loops over the law (nap/law.h). No arithmetic of the law lives here.
#include "nap/core.h"

#include <algorithm>  // for std::min, std::sort
#include <atomic>     // for std::atomic
#include <chrono>     // for std::chrono::steady_clock
#include <cstdint>    // for std::uintptr_t
#include <cstdlib>    // for std::getenv
#include <cstring>    // for std::memcpy
#include <limits>     // for std::numeric_limits
#include <string>     // for std::string
#include <thread>     // for std::this_thread::sleep_for
#include <vector>     // for std::vector

#include "kernels.h"

#ifdef _OPENMP
#include <omp.h>
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>  // for pthread_atfork
#define NAP_ATFORK 1
#endif
#endif
#if defined(__SSE__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 1)
#include <xmmintrin.h>  // for _mm_getcsr, _mm_setcsr
#define NAP_MXCSR 1
#elif defined(__aarch64__) && defined(__GNUC__)
#define NAP_FPCR 1
#endif

namespace nap {
namespace {

// Below these sizes a parallel region costs more than it saves, on any machine.
constexpr std::size_t kParallelElements = std::size_t{1} << 16;
constexpr std::size_t kParallelEvents = std::size_t{1} << 15;
// From this size a dense loop runs in parallel whatever the measured wake-up (parallel_from).
constexpr std::size_t kParallelElementsMost = std::size_t{1} << 24;
std::atomic<std::size_t> g_parallel_from{0};  // set_parallel_threshold's pin; 0: measured
// The sparse batch's bucketing pass costs about as much as applying the events: on 2 threads
// the serial loop was faster at every size measured (docs/SCALING.md), so the bucketed form
// is kept for 4 threads and more, where it can pay.
constexpr int kParallelUpdateThreads = 4;
// Below 4 threads the batch goes parallel without bucketing (update_filtered) from this many
// weights: each thread reads every event, which pays once the weights outgrow the caches
// (measured, 1M uniform events, 2 threads against the serial loop: 1e4 weights 2.1x slower,
// 1e6 0.9-1.1x, 4e6 0.8-1.2x, 1e7 0.61-0.74x the time, 1e8 0.65-0.70x).
constexpr std::size_t kFilterFromWeights = std::size_t{1} << 22;
constexpr std::size_t kFilterChunk = std::size_t{1} << 14;  // events a thread reads at a time
// step_into writes with streaming stores from this many weights (12 bytes a memory moved, not
// 16): below, the three arrays fit the caches, where normal stores win (measured, 2 threads,
// AVX-512, against normal stores: 1e5 2.0x slower, 1e6 0.89x the time, 4e6 0.86x, 1e8 0.79x).
constexpr std::size_t kStreamFrom = std::size_t{1} << 20;
// Decay(k) works on cache-resident blocks so k rounds cost one pass over memory.
constexpr std::size_t kDecayBlock = 4096;

std::atomic<int> g_threads{0};  // 0: the OpenMP default

// Set in the child of a fork(): the OpenMP runtime's threads stayed in the parent, and libgomp
// waits for them forever in the child's first parallel region. From then on the loops run
// serially, without entering OpenMP at all.
std::atomic<bool> g_forked{false};
#ifdef NAP_ATFORK
void forked_child() { g_forked.store(true, std::memory_order_relaxed); }
const bool g_atfork_registered = pthread_atfork(nullptr, nullptr, forked_child) == 0;
#endif

// Merges the threads' partial results (a few per loop): a flag, not std::mutex, which some
// MinGW thread models lack.
class Merge {
 public:
  template <class F>
  void operator()(F merge) {
    while (busy_.test_and_set(std::memory_order_acquire)) {
    }
    merge();
    busy_.clear(std::memory_order_release);
  }

 private:
  std::atomic_flag busy_ = ATOMIC_FLAG_INIT;
};

#ifdef _OPENMP
int threads_for(std::size_t work, std::size_t threshold) {
  if (work < threshold) return 1;
  return num_threads();
}

// -- When a dense loop runs on several threads -------------------------------------------------
// Every parallel region wakes OpenMP's threads, and under OMP_WAIT_POLICY=PASSIVE (nap_gpu's
// default, for loaded hosts) they go back to sleep as soon as it ends: a fixed cost per
// region, 20-65 us on the 2-core VMs measured, as long as one thread's step over 50K-500K
// weights. So a dense loop goes parallel only where the work the other threads take over
// outweighs it: n * (step time per element) * (1 - 1/threads) > wake-up, both measured once
// per process, the first time a loop is large enough to ask.

struct WakeCost {
  double wake_ns, element_ns;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

WakeCost measure_wake_cost(int threads) {
  using clock = std::chrono::steady_clock;
  const auto ns_since = [](clock::time_point t0) {
    return std::chrono::duration<double, std::nano>(clock::now() - t0).count();
  };
  std::vector<double> wake, element;
  // Regions after a pause, as calls come (the threads asleep by then); each thread touches
  // memory, so a region cannot end before every thread is awake. The first may create them.
  std::vector<std::atomic<int>> touched(static_cast<std::size_t>(threads));
  for (int r = 0; r < 10; ++r) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    const auto t0 = clock::now();
#pragma omp parallel num_threads(threads)
    touched[static_cast<std::size_t>(omp_get_thread_num())].fetch_add(1, std::memory_order_relaxed);
    if (r > 0) wake.push_back(ns_since(t0));
  }
  constexpr std::size_t kBlock = std::size_t{1} << 14;  // in cache: 128 KiB of w and q
  std::vector<float> w(kBlock, 0.5f), q(kBlock, 0.75f);
  const Kernels& k = kernels();
  const IeeeArithmetic ieee;
  for (int r = 0; r < 8; ++r) {
    const auto t0 = clock::now();
    k.step(w.data(), q.data(), kBlock, Params{});
    if (r > 0) element.push_back(ns_since(t0) / kBlock);  // the first one warms the block
  }
  return {median(wake), std::max(median(element), 1e-3)};
}

/// The elements from which a dense loop on `threads` threads runs in parallel.
std::size_t parallel_from(int threads) {
  const std::size_t pinned = g_parallel_from.load(std::memory_order_relaxed);
  if (pinned) return pinned;
  static const WakeCost cost = measure_wake_cost(threads);  // at the first asker's count
  const double from = cost.wake_ns / (cost.element_ns * (1.0 - 1.0 / threads));
  if (!(from < static_cast<double>(kParallelElementsMost))) return kParallelElementsMost;
  return std::max(kParallelElements, static_cast<std::size_t>(from));
}

int dense_threads(std::size_t n) {
  if (n < kParallelElements) return 1;
  const int threads = num_threads();
  return threads > 1 && n >= parallel_from(threads) ? threads : 1;
}
#endif

inline bool is_finite(float x) { return !nonfinite_bits(bits_of(x)); }

// Splits [0, n) among the threads of a parallel region and runs body(lo, hi) on each slice.
// Slices start on 64-byte boundaries (16 floats) so vector loads stay aligned with the data.
// One thread (a small n, one thread asked for, no OpenMP, or a forked child) calls body(0, n)
// on the calling thread, outside OpenMP.
template <class Body>
void parallel_slices(std::size_t n, Body body) {
#ifdef _OPENMP
  const int wanted = dense_threads(n);
  if (wanted > 1) {
#pragma omp parallel num_threads(wanted)
    {
      const IeeeArithmetic ieee;
      const std::size_t t = static_cast<std::size_t>(omp_get_thread_num());
      const std::size_t count = static_cast<std::size_t>(omp_get_num_threads());
      const std::size_t lo = t == 0 ? 0 : (n * t / count) & ~std::size_t{15};
      const std::size_t hi = t + 1 == count ? n : (n * (t + 1) / count) & ~std::size_t{15};
      if (hi > lo) body(lo, hi);
    }
    return;
  }
#endif
  const IeeeArithmetic ieee;
  body(std::size_t{0}, n);
}

}  // namespace

// FTZ/DAZ may be set process-wide by another library (or a -ffast-math program's startup),
// and OpenMP's threads inherit whatever their creator had: without this the bits would depend
// on the thread count. Every thread of every loop over the law holds one.
#if defined(NAP_MXCSR)
// MXCSR: FTZ is bit 15, DAZ bit 6, the rounding mode bits 13-14 (00: to nearest).
constexpr unsigned long long kNonIeee = (1u << 15) | (1u << 6) | (3u << 13);
IeeeArithmetic::IeeeArithmetic() : saved_(_mm_getcsr()) {
  if (saved_ & kNonIeee) _mm_setcsr(static_cast<unsigned>(saved_ & ~kNonIeee));
}
IeeeArithmetic::~IeeeArithmetic() {
  if (saved_ & kNonIeee) _mm_setcsr(static_cast<unsigned>(saved_));
}
#elif defined(NAP_FPCR)
// FPCR: FZ is bit 24, the rounding mode bits 22-23 (00: to nearest); FIZ (bit 0) and AH
// (bit 1: other NaN and flush rules) exist with FEAT_AFP and read as 0 without it.
constexpr unsigned long long kNonIeee = (1ull << 24) | (3ull << 22) | 3ull;
IeeeArithmetic::IeeeArithmetic() {
  __asm__ __volatile__("mrs %0, fpcr" : "=r"(saved_));
  if (saved_ & kNonIeee) __asm__ __volatile__("msr fpcr, %0" : : "r"(saved_ & ~kNonIeee));
}
IeeeArithmetic::~IeeeArithmetic() {
  if (saved_ & kNonIeee) __asm__ __volatile__("msr fpcr, %0" : : "r"(saved_));
}
#else  // other targets: the mode is the caller's (docs/law.md: no flush-to-zero)
IeeeArithmetic::IeeeArithmetic() : saved_(0) {}
IeeeArithmetic::~IeeeArithmetic() = default;
#endif

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
  if (g_forked.load(std::memory_order_relaxed)) return 1;
  const int chosen = g_threads.load(std::memory_order_relaxed);
  return chosen > 0 ? chosen : omp_get_max_threads();
#else
  return 1;
#endif
}

void set_num_threads(int n) { g_threads.store(n > 0 ? n : 0, std::memory_order_relaxed); }

std::size_t parallel_threshold() {
#ifdef _OPENMP
  const int threads = num_threads();
  if (threads > 1) return parallel_from(threads);
#endif
  return std::numeric_limits<std::size_t>::max();
}

void set_parallel_threshold(std::size_t n) {
  g_parallel_from.store(n, std::memory_order_relaxed);
}

void step(float* w, const float* q, std::size_t n, const Params& p) {
  const Kernels& k = kernels();
  const Params params = p;
  parallel_slices(n, [&](std::size_t lo, std::size_t hi) {
    for (std::size_t i = lo + k.step(w + lo, q + lo, hi - lo, params); i < hi; ++i)
      w[i] = nap::step(w[i], q[i], params);
  });
}

std::int64_t step_into(const float* w, const float* q, float* out, std::size_t n,
                       const Params& p) {
  const Kernels& k = kernels();
  const Params params = p;
  const bool stream = n >= kStreamFrom;
  std::atomic<bool> nonfinite{false};
  parallel_slices(n, [&](std::size_t lo, std::size_t hi) {
    unsigned seen = 0;  // the scalar elements' finite check (bit tests, no branch)
    const auto one = [&](std::size_t i) {
      seen |= nonfinite_bits(bits_of(q[i])) ? 1u : 0u;
      out[i] = nap::step(w[i], q[i], params);
    };
    std::size_t i = lo;
    if (stream)  // up to out's first 64-byte boundary, for the streaming stores
      for (; i < hi && reinterpret_cast<std::uintptr_t>(out + i) % 64 != 0; ++i) one(i);
    bool vectors_seen = false;
    i += k.step_into(w + i, q + i, out + i, hi - i, params, stream, &vectors_seen);
    for (; i < hi; ++i) one(i);
    if (seen || vectors_seen) nonfinite.store(true, std::memory_order_relaxed);
  });
  // A rejected call pays a second scan for the index (the message names it).
  return nonfinite.load(std::memory_order_relaxed) ? first_nonfinite(q, n) : -1;
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
  const IeeeArithmetic ieee;
  kernels().update(w, ids, q, m, p);
}

#ifdef _OPENMP
// Parallel across ids, ordered within an id, with no bucketing pass (for 2-3 threads): each
// thread reads the whole batch a chunk at a time, keeps the events of its own id range in a
// cache-resident buffer, branch-free and in the order given, and applies them. Every thread
// reads every event, so it pays only where the weights are read from memory, not cache.
void update_filtered(float* w, std::size_t n, const std::int64_t* ids, const float* q,
                     std::size_t m, const Params& p, int wanted) {
#pragma omp parallel num_threads(wanted)
  {
    const IeeeArithmetic ieee;
    const Kernels& k = kernels();
    const auto T = static_cast<std::size_t>(omp_get_num_threads());
    const auto t = static_cast<std::size_t>(omp_get_thread_num());
    const std::size_t span = (n + T - 1) / T, lo = span * t;
    std::vector<std::int64_t> kept_ids(kFilterChunk);
    std::vector<float> kept_q(kFilterChunk);
    for (std::size_t c = 0; c < m; c += kFilterChunk) {
      const std::size_t end = std::min(m, c + kFilterChunk);
      std::size_t kept = 0;
      for (std::size_t j = c; j < end; ++j) {  // written always, kept when the id is ours
        kept_ids[kept] = ids[j];
        kept_q[kept] = q[j];
        kept += static_cast<std::size_t>(ids[j]) - lo < span ? 1 : 0;
      }
      k.update(w, kept_ids.data(), kept_q.data(), kept, p);
    }
  }
}
#endif

}  // namespace

// Parallel across ids, ordered within an id: each thread owns a contiguous id range. Events are
// bucketed by owner with a stable counting sort (each thread scatters its own slice of the
// batch, slices in order), so every bucket holds its events in the order given; then each
// thread applies its bucket alone. Cost: O(m) reads and writes of 12-byte events, plus the
// random accesses to w that any implementation pays. No id is touched by two threads.
void update(float* w, std::size_t n, const std::int64_t* ids, const float* q, std::size_t m,
            const Params& p) {
#ifdef _OPENMP
  const int wanted = threads_for(m, kParallelEvents);
  if (wanted < 2 || n < 2 || (wanted < kParallelUpdateThreads && n < kFilterFromWeights)) {
    update_serial(w, ids, q, m, p);
    return;
  }
  if (wanted < kParallelUpdateThreads) {
    update_filtered(w, n, ids, q, m, p, wanted);
    return;
  }
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
    const IeeeArithmetic ieee;
    const std::size_t begin = t == 0 ? 0 : counts[static_cast<std::size_t>(T - 1) * T + t - 1];
    const std::size_t end = counts[static_cast<std::size_t>(T - 1) * T + t];
    kernels().update(w, bucket_ids.data() + begin, bucket_q.data() + begin, end - begin, p);
  }
#else
  (void)n;
  update_serial(w, ids, q, m, p);
#endif
}

namespace {

// The first index in [0, n) where bad(i) holds, or -1. Each thread scans its slice block by
// block with any_bad(lo, hi) (branch-free, vectorised) and rescans only the first block with a
// hit for its index; the smallest index over the slices wins. (No min reduction: that needs
// OpenMP 3.1, and MSVC's /openmp is 2.0.) Blocks are long enough (256 KiB of floats) for
// any_nonfinite's side-by-side reads to pay; only a rejected call rescans one.
template <class Bad, class AnyBad>
std::int64_t first_where(std::size_t n, Bad bad, AnyBad any_bad) {
  constexpr std::size_t kBlock = std::size_t{1} << 16;
  Merge merge;
  std::size_t first = n;
  parallel_slices(n, [&](std::size_t lo, std::size_t hi) {
    for (std::size_t b = lo; b < hi; b += kBlock) {
      const std::size_t end = std::min(hi, b + kBlock);
      if (!any_bad(b, end)) continue;
      std::size_t i = b;
      while (!bad(i)) ++i;
      merge([&] { first = std::min(first, i); });
      return;
    }
  });
  return first == n ? -1 : static_cast<std::int64_t>(first);
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
  const Kernels& k = kernels();
  return first_where(m, [ids, n](std::size_t j) { return id_outside(ids[j], n); },
                     [ids, n, &k](std::size_t lo, std::size_t hi) {
                       return k.any_id_outside(ids + lo, hi - lo, n);
                     });
}

void exact_sums(const float* w, const std::uint8_t* labels, std::size_t n, std::uint64_t* out) {
  std::fill(out, out + kExactSumsSize, std::uint64_t{0});
  Merge merge;
  parallel_slices(n, [&](std::size_t lo, std::size_t hi) {
    std::vector<std::uint64_t> local(kExactSumsSize, 0);
    for (std::size_t i = lo; i < hi; ++i) add_exact_terms(local.data(), bits_of(w[i]), labels[i]);
    merge([&] {  // integer sums: any order gives the same bins
      for (std::size_t k = 0; k < kExactSumsSize; ++k) out[k] += local[k];
    });
  });
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
    std::string flags = NAP_CXX_FLAGS;  // single spaces between the flags, none around them
    for (std::size_t at; (at = flags.find("  ")) != std::string::npos;) flags.erase(at, 1);
    if (!flags.empty() && flags.front() == ' ') flags.erase(0, 1);
    if (!flags.empty() && flags.back() == ' ') flags.pop_back();
    s += ";flags=" + flags;
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
