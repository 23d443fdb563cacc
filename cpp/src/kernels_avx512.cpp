/// \file kernels_avx512.cpp
/// \brief The core's vector loops for avx512 (compiled with its flags; chosen at run time).
#define NAP_ISA isa_avx512
#define NAP_KERNELS_NAME kernels_avx512
#include "kernels.inl"
