/// \file kernels.cu
/// \brief The CUDA kernels: thin grid-stride loops over the law (nap/law.h). No arithmetic of
/// the law lives here. Compiled at run time by NVRTC with the production options of
/// nap_gpu/backends/cuda_loader.py (no FMA, no flush-to-zero), in CI by NVRTC and nvcc, and on
/// the CPU by g++ through tests/cuda_shim/ so that this very code runs in the parity tests.
///
/// Indexing is 64-bit throughout (populations beyond 2^32 memories).
#include "nap/law.h"

namespace {

__device__ __forceinline__ unsigned long long first_index() {
  return static_cast<unsigned long long>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ unsigned long long grid_stride() {
  return static_cast<unsigned long long>(gridDim.x) * blockDim.x;
}

}  // namespace

extern "C" {

/// Dense step: w[i] = step(w[i], q[i]) for i < n.
__global__ void nap_step(float* __restrict__ w, const float* __restrict__ q,
                         unsigned long long n, float lr, float gate, float decay) {
  const nap::Params p{lr, gate, decay};
  for (unsigned long long i = first_index(); i < n; i += grid_stride())
    w[i] = nap::step(w[i], q[i], p);
}

/// Dense step with one quality for every memory.
__global__ void nap_step_scalar(float* __restrict__ w, float q, unsigned long long n, float lr,
                                float gate, float decay) {
  const nap::Params p{lr, gate, decay};
  for (unsigned long long i = first_index(); i < n; i += grid_stride())
    w[i] = nap::step(w[i], q, p);
}

/// Passive decay k times. A weight at 0 stays at 0 (and NaN stays NaN), so each thread stops
/// as soon as its weight is no longer positive: k rounds cost at most ~1/decay of them.
__global__ void nap_decay(float* __restrict__ w, unsigned long long n, float decay,
                          unsigned long long k) {
  for (unsigned long long i = first_index(); i < n; i += grid_stride()) {
    float x = w[i];
    for (unsigned long long r = 0; r < k && x > 0.0f; ++r) x = nap::decay_once(x, decay);
    w[i] = x;
  }
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
  for (unsigned long long i = first_index(); i < n; i += grid_stride()) w[i] += s * q[i];
}

}  // extern "C"
