/// \file kernels.cu
/// \brief The CUDA kernels: thin grid-stride loops over the law (nap/law.h). No arithmetic of
/// the law lives here. Compiled at run time by NVRTC with the production options of
/// nap_gpu/backends/_kernels.py (no FMA, no flush-to-zero), in CI by NVRTC and nvcc, and on
/// the CPU by g++ through tests/cuda_shim/ so that this very code runs in the parity tests.
///
/// Indexing is 64-bit throughout (populations beyond 2^32 memories). The shim runs blocks and
/// threads one after another, so no kernel relies on threads running together: no
/// __syncthreads, no shared memory, no warp intrinsics; only global atomics combine threads.
/// Kernel parameters are pointers, unsigned long long, long long, float or double (what the
/// shim and the simulated device of tests/ convert).
#include "nap/law.h"

namespace {

using u64 = unsigned long long;

__device__ __forceinline__ u64 first_index() {
  return static_cast<u64>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ u64 grid_stride() {
  return static_cast<u64>(gridDim.x) * blockDim.x;
}

// -- Dense loops with 16-byte vectors ------------------------------------------------------
// The dense kernels read and write float4 vectors, two per thread and iteration of the
// grid-stride loop (all their loads in flight before any result is stored). Vectors need 16-byte
// alignment; user views may start anywhere, so the kernel looks at the pointers: the elements
// before the first 16-byte boundary of w (at most 3) and the last n % 4 after the vectors are
// done one at a time. A second array (q) must sit at the same offset within its 16 bytes,
// otherwise (or if a pointer is not even 4-byte aligned) every element is done one at a time.
// Each element still goes through the same per-element function: the bits do not depend on
// the path.

constexpr u64 kLanes = 4;  // floats per float4

__device__ __forceinline__ u64 offset_in_16(const void* p) {
  return reinterpret_cast<u64>(p) & 15u;
}

/// The per-element input of a dense loop: one float per element, read from memory.
struct PerElement {
  const float* __restrict__ p;
  __device__ __forceinline__ bool aligned_like(u64 offset) const {
    return offset_in_16(p) == offset;
  }
  __device__ __forceinline__ float at(u64 i) const { return p[i]; }
  __device__ __forceinline__ float4 vector_at(u64 i) const {  // i: a multiple-of-16-byte spot
    return *reinterpret_cast<const float4*>(p + i);
  }
};

/// The same float for every element (nothing to load).
struct Everywhere {
  float value;
  __device__ __forceinline__ bool aligned_like(u64) const { return true; }
  __device__ __forceinline__ float at(u64) const { return value; }
  __device__ __forceinline__ float4 vector_at(u64) const {
    float4 v;
    v.x = v.y = v.z = v.w = value;
    return v;
  }
};

/// An element-wise operation as a dense loop applies it: one(w, q) on one element, and
/// vectors(a, b, qa, qb) on the two vectors of an iteration (lane by lane here).
template <class Op>
struct LaneByLane {
  Op op;
  __device__ __forceinline__ float one(float w, float q) const { return op(w, q); }
  __device__ __forceinline__ void lanes(float4& w, const float4& q) const {
    w.x = op(w.x, q.x);
    w.y = op(w.y, q.y);
    w.z = op(w.z, q.z);
    w.w = op(w.w, q.w);
  }
  __device__ __forceinline__ void vectors(float4& a, float4& b, const float4& qa,
                                          const float4& qb) const {
    lanes(a, qa);
    lanes(b, qb);
  }
};

template <class Op>
__device__ __forceinline__ LaneByLane<Op> lane_by_lane(const Op& op) {
  return LaneByLane<Op>{op};
}

/// decay(k): one weight alone, or the eight weights of an iteration side by side (their
/// rounds overlap, and the eight cost the slowest one's rounds rather than their sum).
struct DecayRounds {
  float decay;
  u64 k;
  __device__ __forceinline__ float one(float w, float) const {
    return nap::decay_repeated(w, decay, k);
  }
  __device__ __forceinline__ void vectors(float4& a, float4& b, const float4&,
                                          const float4&) const {
    float x[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    nap::decay_repeated(x, decay, k);
    a.x = x[0], a.y = x[1], a.z = x[2], a.w = x[3];
    b.x = x[4], b.y = x[5], b.z = x[6], b.w = x[7];
  }
};

/// out[i] = op.one(w[i], q.at(i)) for i < n (op.vectors on whole vectors); out is w for the
/// in-place kernels, another array for nap_step_into (then it must sit at w's offset within
/// its 16 bytes for the vectors, as q must).
template <class Source, class Op>
__device__ __forceinline__ void dense(const float* w, float* out, const Source q, u64 n,
                                      const Op& op) {
  const u64 offset = offset_in_16(w);
  const bool vectors =
      (offset & 3u) == 0 && offset_in_16(out) == offset && q.aligned_like(offset);
  const u64 to_boundary = ((16u - offset) & 15u) / 4u;
  const u64 head = vectors ? (to_boundary < n ? to_boundary : n) : n;
  const u64 count = (n - head) / kLanes;  // float4 vectors from w + head
  const u64 tail = n - head - count * kLanes;
  const u64 first = first_index(), stride = grid_stride();
  const float4* wv = reinterpret_cast<const float4*>(w + head);
  float4* ov = reinterpret_cast<float4*>(out + head);
  // (unroll 1 here and below: each iteration already holds two vectors, and an unrolled
  // grid-stride loop needs its trip count, a 64-bit division whose float-reciprocal
  // estimate would put an F2I.FTZ into the machine code the parity checks read.)
#pragma unroll 1
  for (u64 v = first; v < count; v += 2 * stride) {
    // The second vector, or the first again past the end: the four loads are unconditional,
    // so they are all in flight at once; the repeat writes the same bits to the same place.
    const u64 u = v + stride < count ? v + stride : v;
    float4 a = wv[v], b = wv[u];
    const float4 qa = q.vector_at(head + v * kLanes), qb = q.vector_at(head + u * kLanes);
    op.vectors(a, b, qa, qb);
    ov[u] = b;
    ov[v] = a;
  }
  // The head and the tail, one element at a time (all of w when vectors are off).
#pragma unroll 1
  for (u64 t = first; t < head + tail; t += stride) {
    const u64 i = t < head ? t : t + count * kLanes;
    out[i] = op.one(w[i], q.at(i));
  }
}

/// The smaller of *first and i, atomically; a thread reads the current value first so that a
/// later hit rarely costs an atomic.
__device__ __forceinline__ void lower_to(u64* first, u64 i) {
  if (i < *static_cast<volatile u64*>(first)) atomicMin(first, i);
}

/// The larger of *last and k, atomically (a read first, as lower_to).
__device__ __forceinline__ void raise_to(u64* last, u64 k) {
  if (k > *static_cast<volatile u64*>(last)) atomicMax(last, k);
}

// -- Bins kept in registers --------------------------------------------------------------------
// A kernel that adds to global bins (exact_sums', the rank histogram) keeps a few of them per
// thread in registers and adds to the global bins only when a weight falls in none of them
// (the oldest is flushed) and at the end. A converged population (two values, labels
// interleaved as in the reference workload) then costs each thread a handful of atomics in
// all, instead of one per weight on the same two addresses.

constexpr unsigned kNoBin = 0xffffffffu;
constexpr int kSlots = 4;

/// exact_sums' four sums of a bin (nap::exact_terms), at global bins + 4 * bin.
struct ExactSums {
  u64 count, significand, square_high, square_low;
  __device__ __forceinline__ static ExactSums of(unsigned bits) {
    const nap::ExactTerms t = nap::exact_terms(bits);
    return ExactSums{1, t.significand, t.square_high, t.square_low};
  }
  __device__ __forceinline__ void add(const ExactSums& x) {
    count += x.count;
    significand += x.significand;
    square_high += x.square_high;
    square_low += x.square_low;
  }
  __device__ __forceinline__ void flush(u64* __restrict__ bins, unsigned bin) const {
    u64* at = bins + static_cast<u64>(bin) * 4u;
    atomicAdd(at + 0, count);
    atomicAdd(at + 1, significand);
    atomicAdd(at + 2, square_high);
    atomicAdd(at + 3, square_low);
  }
};

/// A count, at global bins + bin.
struct Count {
  u64 count;
  __device__ __forceinline__ void add(const Count& x) { count += x.count; }
  __device__ __forceinline__ void flush(u64* __restrict__ bins, unsigned bin) const {
    atomicAdd(bins + bin, count);
  }
};

/// kSlots bins of Sums in registers (static indices only, so they stay there).
template <class Sums>
struct RegisterBins {
  unsigned bin[kSlots];
  Sums sums[kSlots];

  __device__ __forceinline__ RegisterBins() {
#pragma unroll
    for (int s = 0; s < kSlots; ++s) bin[s] = kNoBin, sums[s] = Sums{};
  }
  __device__ __forceinline__ void add(unsigned b, const Sums& x, u64* __restrict__ global) {
    bool hit = false;
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      if (bin[s] == b) sums[s].add(x), hit = true;
    }
    if (hit) return;
    // A miss: the oldest slot is flushed and the others move down.
    if (bin[kSlots - 1] != kNoBin) sums[kSlots - 1].flush(global, bin[kSlots - 1]);
#pragma unroll
    for (int s = kSlots - 1; s > 0; --s) bin[s] = bin[s - 1], sums[s] = sums[s - 1];
    bin[0] = b, sums[0] = x;
  }
  __device__ __forceinline__ void flush(u64* __restrict__ global) const {
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      if (bin[s] != kNoBin) sums[s].flush(global, bin[s]);
    }
  }
};

/// visit(bits, label) for this thread's weights of w[0, n) (labels 0 or 1), four weights per
/// iteration loaded before any is visited.
template <class Visit>
__device__ __forceinline__ void each_weight(const float* __restrict__ w,
                                            const unsigned char* __restrict__ labels, u64 n,
                                            Visit& visit) {
  const u64 stride = grid_stride();
  u64 i = first_index();
  for (; i + 3 * stride < n; i += 4 * stride) {
    unsigned b[4], l[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      b[r] = nap::bits_of(w[i + r * stride]);
      l[r] = labels[i + r * stride] & 1u;
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) visit(b[r], l[r]);
  }
  for (; i < n; i += stride) visit(nap::bits_of(w[i]), labels[i] & 1u);
}

}  // namespace

extern "C" {

/// Dense step: w[i] = step(w[i], q[i]) for i < n.
__global__ void nap_step(float* __restrict__ w, const float* __restrict__ q,
                         unsigned long long n, float lr, float gate, float decay) {
  const nap::Params p{lr, gate, decay};
  dense(w, w, PerElement{q}, n,
        lane_by_lane([p](float x, float qi) { return nap::step(x, qi, p); }));
}

/// The checked dense step written to out (w only read): out[i] = step(w[i], q[i]) for i < n,
/// and *nonfinite raised to 1 when any q[i] is NaN or infinite (*nonfinite must hold 0 on
/// entry; out is then of no use). One pass where a finite scan and an in-place step read q
/// twice: the host keeps two weight buffers and swaps them when *nonfinite stays 0.
__global__ void nap_step_into(const float* __restrict__ w, const float* __restrict__ q,
                              float* __restrict__ out, unsigned long long n, float lr,
                              float gate, float decay, unsigned long long* nonfinite) {
  const nap::Params p{lr, gate, decay};
  bool seen = false;
  dense(w, out, PerElement{q}, n, lane_by_lane([p, &seen](float x, float qi) {
          seen = seen | nap::nonfinite_bits(nap::bits_of(qi));  // no branch
          return nap::step(x, qi, p);
        }));
  if (seen) raise_to(nonfinite, 1);
}

/// Dense step with one quality for every memory.
__global__ void nap_step_scalar(float* __restrict__ w, float q, unsigned long long n, float lr,
                                float gate, float decay) {
  const nap::Params p{lr, gate, decay};
  dense(w, w, Everywhere{q}, n,
        lane_by_lane([p](float x, float qi) { return nap::step(x, qi, p); }));
}

/// Passive decay k times (nap::decay_repeated: each weight stops at its fixpoint, so any k
/// ends and the bits are those of k rounds).
__global__ void nap_decay(float* __restrict__ w, unsigned long long n, float decay,
                          unsigned long long k) {
  dense(w, w, Everywhere{0.0f}, n, DecayRounds{decay, k});
}

/// Sparse ordered batch, one thread per id: events are sorted by id with a stable sort (so
/// each id's events keep their order) and segment s spans [starts[s], starts[s + 1]) (the last
/// ends at m). The thread walks its segment in order with the weight in a register.
__global__ void nap_update_segments(float* __restrict__ w, const long long* __restrict__ ids,
                                    const float* __restrict__ q,
                                    const long long* __restrict__ starts,
                                    unsigned long long segments, unsigned long long m, float lr,
                                    float gate) {
  for (unsigned long long s = first_index(); s < segments; s += grid_stride()) {
    const unsigned long long begin = static_cast<unsigned long long>(starts[s]);
    const unsigned long long end =
        s + 1 < segments ? static_cast<unsigned long long>(starts[s + 1]) : m;
    const long long id = ids[begin];
    float x = w[id];
    for (unsigned long long j = begin; j < end; ++j) x = nap::feedback(x, q[j], lr, gate);
    w[id] = x;
  }
}

/// The memory-bandwidth floor for benchmarks: w[i] += s * q[i], the same bytes as a step.
__global__ void nap_triad(float* __restrict__ w, const float* __restrict__ q, float s,
                          unsigned long long n) {
  dense(w, w, PerElement{q}, n, lane_by_lane([s](float x, float qi) { return x + s * qi; }));
}

/// *first = the least i < n with x[i] NaN or infinite, if any; *first must hold n (or any
/// value >= n) on entry and is left as it is when every x[i] is finite. An integer test on
/// the bits: no floating-point comparison. Each thread stops at its first hit (its later
/// indices are larger).
__global__ void nap_first_nonfinite(const float* __restrict__ x, unsigned long long n,
                                    unsigned long long* first) {
  const u64 stride = grid_stride();
  for (u64 i = first_index(); i < n; i += 2 * stride) {
    const u64 j = i + stride;
    const unsigned a = nap::bits_of(x[i]);
    const unsigned b = j < n ? nap::bits_of(x[j]) : 0u;  // both loads in flight
    if (nap::nonfinite_bits(a)) {
      lower_to(first, i);
      return;
    }
    if (nap::nonfinite_bits(b)) {
      lower_to(first, j);
      return;
    }
  }
}

/// *first = the least i < m with ids[i] outside [0, n), if any; *first must hold m (or any
/// value >= m) on entry and is left as it is when every id is valid.
__global__ void nap_first_bad_id(const long long* __restrict__ ids, unsigned long long m,
                                 long long n, unsigned long long* first) {
  const u64 stride = grid_stride();
  for (u64 i = first_index(); i < m; i += 2 * stride) {
    const u64 j = i + stride;
    const long long a = ids[i];
    const long long b = j < m ? ids[j] : 0;
    if (nap::id_outside(a, n)) {
      lower_to(first, i);
      return;
    }
    if (j < m && nap::id_outside(b, n)) {
      lower_to(first, j);
      return;
    }
  }
}

/// dst[i] = narrow_quality(src[i]): float64 qualities as float32, as _inputs converts them.
__global__ void nap_narrow_quality(const double* __restrict__ src, float* __restrict__ dst,
                                   unsigned long long n) {
  for (u64 i = first_index(); i < n; i += grid_stride()) dst[i] = nap::narrow_quality(src[i]);
}

/// Adds the exact_sums terms of w[0, n) with labels (0 or 1) to bins ((2, 512, 4) uint64, all
/// zero on entry for exact_sums itself), with integer atomics: any order gives the same bins.
__global__ void nap_exact_sums(const float* __restrict__ w,
                               const unsigned char* __restrict__ labels, unsigned long long n,
                               unsigned long long* bins) {
  RegisterBins<ExactSums> sums;
  auto visit = [&](unsigned b, unsigned label) {
    sums.add(nap::exact_bin(b, label), ExactSums::of(b), bins);
  };
  each_weight(w, labels, n, visit);
  sums.flush(bins);
}

/// One read of w[0, n) with labels (0 or 1) for the metrics: exact_sums' bins (as
/// nap_exact_sums), the rank histogram (ranks[label * kRankBins + rank_bin(key)]: the keys'
/// counts by their top 16 bits), and in stats the saturated count, the least and the greatest
/// key (low_key, high_key: the saturation bounds' keys). On entry bins and ranks are zero and
/// stats is {0, 0xffffffff, 0}.
__global__ void nap_rank_bins(const float* __restrict__ w,
                              const unsigned char* __restrict__ labels, unsigned long long n,
                              unsigned long long low_key, unsigned long long high_key,
                              unsigned long long* bins, unsigned long long* ranks,
                              unsigned long long* stats) {
  RegisterBins<ExactSums> sums;
  RegisterBins<Count> counts;
  u64 saturated = 0;
  unsigned lowest = 0xffffffffu, highest = 0;
  const unsigned low = static_cast<unsigned>(low_key), high = static_cast<unsigned>(high_key);
  auto visit = [&](unsigned b, unsigned label) {
    sums.add(nap::exact_bin(b, label), ExactSums::of(b), bins);
    const unsigned k = nap::metric_key(b);
    counts.add(label * nap::kRankBins + nap::rank_bin(k), Count{1}, ranks);
    saturated += nap::saturated_key(k, low, high);
    lowest = k < lowest ? k : lowest;
    highest = k > highest ? k : highest;
  };
  each_weight(w, labels, n, visit);
  sums.flush(bins);
  counts.flush(ranks);
  if (saturated) atomicAdd(stats, saturated);
  lower_to(stats + 1, lowest);
  raise_to(stats + 2, highest);
}

/// The keys of the weights in mixed rank bins (mixed[bin] != 0), per label: the key of a weight
/// with label l in bin b goes to (l ? out_r : out_p)[cursors[l * kRankBins + b]++]. With each
/// bin's cursor starting where the host put its run, each output holds every mixed bin's keys
/// together, in no order within the bin.
__global__ void nap_gather_mixed(const float* __restrict__ w,
                                 const unsigned char* __restrict__ labels, unsigned long long n,
                                 const unsigned char* __restrict__ mixed,
                                 unsigned long long* cursors, unsigned int* __restrict__ out_p,
                                 unsigned int* __restrict__ out_r) {
  for (u64 i = first_index(); i < n; i += grid_stride()) {
    const unsigned k = nap::metric_key(nap::bits_of(w[i])), bin = nap::rank_bin(k);
    if (!mixed[bin]) continue;
    const unsigned label = labels[i] & 1u;
    const u64 at = atomicAdd(cursors + label * nap::kRankBins + bin, 1ull);
    (label ? out_r : out_p)[at] = k;
  }
}

}  // extern "C"
