/// \file kernels.inl
/// \brief The core's vector loops, compiled once per instruction set (kernels_<isa>.cpp
/// defines NAP_ISA and includes this file with that ISA's compiler flags). Each loop runs
/// the law's templates on whole vectors and returns how many elements it did; the caller
/// (core.cpp, baseline ISA) finishes the tail with the scalar law.
#include "kernels.h"
#include "nap/law.h"
#include "simd.h"

namespace nap {
namespace NAP_ISA {
namespace {

// The sparse batch's weights are read at random: each event's load misses the caches once the
// population outgrows them, and the loop's own instructions leave the misses to be taken one
// after another. Asking for the weight of the event kPrefetchAhead later keeps that many in
// flight (measured, 1M random events, 2 cores: 1e7 memories 65 -> 127 M events/s, 1e8 47 ->
// 67 M; 10K events over 1e6: 208 -> 395 M; 16 ahead gained less, 64 no more). A prefetch
// changes no value and cannot fault.
constexpr std::size_t kPrefetchAhead = 32;

inline void prefetch_for_write(const float* p) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p, 1);
#elif defined(_MSC_VER) && defined(_M_X64)
  _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0);
#else
  (void)p;
#endif
}

// Whether a vector holds a NaN lane (a NaN is the one value unequal to itself).
bool any_nan(Vec v) {
  float lanes[Vec::width];
  v.store(lanes);
  bool any = false;
  for (const float lane : lanes) any |= lane != lane;
  return any;
}

std::size_t step(float* w, const float* q, std::size_t n, const Params& p) {
  const Vec lr(p.lr), gate(p.gate), decay(p.decay);
  std::size_t i = 0;
  for (; i + Vec::width <= n; i += Vec::width)
    nap::step(Vec::load(w + i), Vec::load(q + i), lr, gate, decay).store(w + i);
  return i;
}

// The dense step written to out (w is only read) with the finite check of q in the same
// pass: q - q is 0 for a finite q and NaN otherwise, and NaN survives the additions (as in
// any_nonfinite). Streaming stores (out aligned to the vector: the caller's job) do not read
// out's lines before writing them: the pass moves the in-place step's 12 bytes a memory.
template <bool kStream>
std::size_t step_into_vectors(const float* w, const float* q, float* out, std::size_t n,
                              const Params& p, bool* nonfinite) {
  const Vec lr(p.lr), gate(p.gate), decay(p.decay);
  Vec seen(0.0f);
  std::size_t i = 0;
  for (; i + Vec::width <= n; i += Vec::width) {
    const Vec quality = Vec::load(q + i);
    seen = seen + (quality - quality);
    const Vec next = nap::step(Vec::load(w + i), quality, lr, gate, decay);
    if (kStream)
      next.stream(out + i);
    else
      next.store(out + i);
  }
  if (kStream) stream_fence();
  *nonfinite = any_nan(seen);
  return i;
}

std::size_t step_into(const float* w, const float* q, float* out, std::size_t n,
                      const Params& p, bool stream, bool* nonfinite) {
  return stream ? step_into_vectors<true>(w, q, out, n, p, nonfinite)
                : step_into_vectors<false>(w, q, out, n, p, nonfinite);
}

std::size_t step_scalar(float* w, float q, std::size_t n, const Params& p) {
  const Vec quality(q), lr(p.lr), gate(p.gate), decay(p.decay);
  std::size_t i = 0;
  for (; i + Vec::width <= n; i += Vec::width)
    nap::step(Vec::load(w + i), quality, lr, gate, decay).store(w + i);
  return i;
}

std::size_t decay(float* w, std::size_t n, float d) {
  const Vec decay_by(d);
  std::size_t i = 0;
  for (; i + Vec::width <= n; i += Vec::width)
    nap::decay_once(Vec::load(w + i), decay_by).store(w + i);
  return i;
}

std::size_t triad(float* w, const float* q, float s, std::size_t n) {
  const Vec scale(s);
  std::size_t i = 0;
  for (; i + Vec::width <= n; i += Vec::width)
    (Vec::load(w + i) + scale * Vec::load(q + i)).store(w + i);
  return i;
}

// Events in order (an id's events depend on each other), in two parts. An event's feedback
// step depends on its quality alone, so a vector of events computes its steps at once; then
// each event takes its step, one after another, in the first lane of a vector: the compiler
// emits the branch-free add/max/min instructions (for the scalar form GCC emits branches, and
// random qualities mispredict half of them: 3x slower on 1M random events, measured). Only
// the add and the clamp stay on the chain through a hot id's weight, and the +0 too unless
// the parameters rule a -0.0 out (steps_never_negative_zero). Measured, 10K events over 1e4
// memories, AVX2: the whole law per event 26 us; steps off the chain 16-19 us; the +0 dropped
// too, 17.4 -> 15.7 us uniform and 18.8 -> 16.9 us Zipf (level with a numba loop).
template <bool kPositiveZero>
void apply_events(float* w, const std::int64_t* ids, const float* q, std::size_t m,
                  const Params& p) {
  const Vec lr(p.lr), gate(p.gate);
  const auto take = [w, ids](std::size_t j, float step) {
    float* at = w + ids[j];
    const Vec taken = take_step(Vec(*at), Vec(step));
    (kPositiveZero ? positive_zero(taken) : taken).store_first(at);
  };
  alignas(64) float steps[Vec::width];
  std::size_t j = 0;
  for (; j + Vec::width + kPrefetchAhead <= m; j += Vec::width) {
    feedback_step(Vec::load(q + j), lr, gate).store(steps);
    for (std::size_t k = 0; k < Vec::width; ++k) {
      prefetch_for_write(w + ids[j + k + kPrefetchAhead]);
      take(j + k, steps[k]);
    }
  }
  for (; j < m; ++j) {
    feedback_step(Vec(q[j]), lr, gate).store_first(steps);
    take(j, steps[0]);
  }
}

void update(float* w, const std::int64_t* ids, const float* q, std::size_t m, const Params& p) {
  if (steps_never_negative_zero(p.lr, p.gate))
    apply_events<false>(w, ids, q, m, p);
  else
    apply_events<true>(w, ids, q, m, p);
}

// x - x is 0 for a finite x and NaN for NaN or infinity, and NaN survives addition: one
// subtraction and one addition per vector, no branch, four accumulators so the adds' latency
// does not bound the loop. One sequential read per thread leaves the memory system mostly
// idle, so a long range is read as four stretches side by side (measured, 1e8 floats on 2
// threads, AVX2: 23-29 -> 15-22 ms, 0.55x -> 0.4x a triad over three times the bytes); a
// short one, in cache, as four neighbouring vectors (10K floats, AVX2: 1.6 -> 0.9 us a call,
// against one accumulator). The caller checks the tail (fewer than four vectors).
constexpr std::size_t kScanStreams = 4, kScanStreamMin = 4096;

bool any_nonfinite(const float* x, std::size_t n, std::size_t* done) {
  const std::size_t part = n / kScanStreams / Vec::width * Vec::width;
  const bool stretches = part >= kScanStreamMin;
  const std::size_t apart = stretches ? part : Vec::width;  // between the four loads
  const std::size_t advance = stretches ? Vec::width : kScanStreams * Vec::width;
  const std::size_t end = stretches ? part : part * kScanStreams;
  Vec a0(0.0f), a1(0.0f), a2(0.0f), a3(0.0f);
  for (std::size_t i = 0; i < end; i += advance) {
    const Vec v0 = Vec::load(x + i), v1 = Vec::load(x + i + apart);
    const Vec v2 = Vec::load(x + i + 2 * apart), v3 = Vec::load(x + i + 3 * apart);
    a0 = a0 + (v0 - v0);
    a1 = a1 + (v1 - v1);
    a2 = a2 + (v2 - v2);
    a3 = a3 + (v3 - v3);
  }
  *done = kScanStreams * part;
  return any_nan((a0 + a1) + (a2 + a3));
}

// One unsigned compare per id (a negative id is a huge unsigned one), or-ed without a branch:
// the compiler vectorises it with this instruction set's 64-bit compares (10K ids, AVX2:
// 7.1 -> 1.5 us a call, against the same loop in the SSE2 baseline, which has none).
bool any_id_outside(const std::int64_t* ids, std::size_t m, std::int64_t n) {
  const auto limit = static_cast<std::uint64_t>(n);
  std::uint64_t outside = 0;
  for (std::size_t j = 0; j < m; ++j) outside |= static_cast<std::uint64_t>(ids[j]) >= limit;
  return outside != 0;
}

}  // namespace
}  // namespace NAP_ISA

extern const Kernels NAP_KERNELS_NAME = {
    NAP_ISA::kIsaName, NAP_ISA::step,   NAP_ISA::step_into,     NAP_ISA::step_scalar,
    NAP_ISA::decay,    NAP_ISA::triad,  NAP_ISA::update,        NAP_ISA::any_nonfinite,
    NAP_ISA::any_id_outside};

}  // namespace nap
