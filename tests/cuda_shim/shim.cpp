// Host shim: compiles cuda/kernels.cu with a C++ compiler by emulating the CUDA execution model
// (grid and block indices, __global__/__device__ defined away, float4 and the atomics the
// kernels use), so the kernel code that runs on a GPU runs here, in the parity tests. Blocks
// and threads run one after another: this checks the kernels' indexing and logic (grid-stride
// loops, vector bodies with scalar heads and tails, segment walks, atomics' results), not
// concurrency.
//
// Every kernel K of nap_gpu.backends._kernels.KERNELS is exported as
//   extern "C" void shim_K(unsigned grid, unsigned block, <K's parameters in order>)
#include <cstdint>

namespace {
struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};
Dim3 threadIdx, blockIdx, blockDim, gridDim;

// CUDA's 16-byte vector type (vector_types.h): four floats, 16-byte aligned.
struct alignas(16) float4 {
  float x, y, z, w;
};

// Global atomics, sequential here (one thread runs at a time); they return the old value.
unsigned long long atomicMin(unsigned long long* address, unsigned long long value) {
  const unsigned long long old = *address;
  if (value < old) *address = value;
  return old;
}
unsigned long long atomicMax(unsigned long long* address, unsigned long long value) {
  const unsigned long long old = *address;
  if (value > old) *address = value;
  return old;
}
unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  const unsigned long long old = *address;
  *address = old + value;
  return old;
}

template <class Kernel, class... Args>
void launch(Kernel kernel, unsigned grid, unsigned block, Args... args) {
  gridDim.x = grid;
  blockDim.x = block;
  for (unsigned b = 0; b < grid; ++b)
    for (unsigned t = 0; t < block; ++t) {
      blockIdx.x = b;
      threadIdx.x = t;
      kernel(args...);
    }
}
}  // namespace

#define __global__
#define __device__
#define __forceinline__ inline
#include "kernels.cu"

using u64 = unsigned long long;

extern "C" {
void shim_nap_step(unsigned g, unsigned b, float* w, const float* q, u64 n, float lr, float gate,
                   float decay) {
  launch(nap_step, g, b, w, q, n, lr, gate, decay);
}
void shim_nap_step_into(unsigned g, unsigned b, const float* w, const float* q, float* out, u64 n,
                        float lr, float gate, float decay, u64* nonfinite) {
  launch(nap_step_into, g, b, w, q, out, n, lr, gate, decay, nonfinite);
}
void shim_nap_step_scalar(unsigned g, unsigned b, float* w, float q, u64 n, float lr, float gate,
                          float decay) {
  launch(nap_step_scalar, g, b, w, q, n, lr, gate, decay);
}
void shim_nap_decay(unsigned g, unsigned b, float* w, u64 n, float decay, u64 k) {
  launch(nap_decay, g, b, w, n, decay, k);
}
void shim_nap_update_segments(unsigned g, unsigned b, float* w, const long long* ids,
                              const float* q, const long long* starts, u64 segments, u64 m,
                              float lr, float gate) {
  launch(nap_update_segments, g, b, w, ids, q, starts, segments, m, lr, gate);
}
void shim_nap_triad(unsigned g, unsigned b, float* w, const float* q, float s, u64 n) {
  launch(nap_triad, g, b, w, q, s, n);
}
void shim_nap_first_nonfinite(unsigned g, unsigned b, const float* x, u64 n, u64* first) {
  launch(nap_first_nonfinite, g, b, x, n, first);
}
void shim_nap_first_bad_id(unsigned g, unsigned b, const long long* ids, u64 m, long long n,
                           u64* first) {
  launch(nap_first_bad_id, g, b, ids, m, n, first);
}
void shim_nap_narrow_quality(unsigned g, unsigned b, const double* src, float* dst, u64 n) {
  launch(nap_narrow_quality, g, b, src, dst, n);
}
void shim_nap_exact_sums(unsigned g, unsigned b, const float* w, const unsigned char* labels,
                         u64 n, u64* bins) {
  launch(nap_exact_sums, g, b, w, labels, n, bins);
}
void shim_nap_rank_bins(unsigned g, unsigned b, const float* w, const unsigned char* labels,
                        u64 n, u64 low_key, u64 high_key, u64* bins, u64* ranks, u64* stats) {
  launch(nap_rank_bins, g, b, w, labels, n, low_key, high_key, bins, ranks, stats);
}
void shim_nap_gather_mixed(unsigned g, unsigned b, const float* w, const unsigned char* labels,
                           u64 n, const unsigned char* mixed, u64* cursors, unsigned int* out_p,
                           unsigned int* out_r) {
  launch(nap_gather_mixed, g, b, w, labels, n, mixed, cursors, out_p, out_r);
}
}
