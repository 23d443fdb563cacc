/// \file kernels_avx2.cpp
/// \brief The core's vector loops for avx2 (compiled with its flags; chosen at run time).
#define NAP_ISA isa_avx2
#define NAP_KERNELS_NAME kernels_avx2
#include "kernels.inl"
