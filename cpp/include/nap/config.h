/// \file config.h
/// \brief The one place that knows CUDA exists: NAP_HOST_DEVICE marks the law's functions so
/// the same header compiles for the CPU (C++ core) and, unchanged, for the GPU (NVRTC/nvcc).
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define NAP_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define NAP_HOST_DEVICE inline
#endif
