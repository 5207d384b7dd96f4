// sessa/backend/thrust/config.hpp: what Thrust needs to know before its first header is read.
//
// Under a host compiler (g++) Thrust's default device system is CUDA, which only nvcc can compile. The
// Thrust backends name their system in every call (thrust::omp::par, thrust::cuda::par), so the default is
// never used; under a host compiler it is set to OpenMP only so that the headers parse. Define
// THRUST_DEVICE_SYSTEM yourself before including sessa to choose otherwise.
#pragma once

#if !defined(__CUDACC__) && !defined(THRUST_DEVICE_SYSTEM)
#define THRUST_DEVICE_SYSTEM THRUST_DEVICE_SYSTEM_OMP
#endif
