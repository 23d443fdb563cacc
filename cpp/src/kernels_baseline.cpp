/// \file kernels_baseline.cpp
/// \brief The core's vector loops for the build's baseline instruction set.
#define NAP_ISA isa_baseline
#define NAP_KERNELS_NAME kernels_baseline
#include "kernels.inl"
