// sessa/thrust_omp.hpp: the CPU library plus backend::thrust_omp, the Thrust kernels on Thrust's OpenMP
// system. Never included by sessa/sessa.hpp: it needs OpenMP (-fopenmp) and the CUDA toolkit's CCCL headers
// on the include path (-isystem /usr/local/cuda/include/cccl); CMake users link sessa::thrust_omp.
//
//   sessa::layer<float, sessa::backend::thrust_omp> layer(cfg, host_weights);   // weights copied into its space
//   auto y = sessa::to_host(layer.forward(sessa::to_device<sessa::memory::thrust_omp_space>(x)));
#pragma once

#include "sessa.hpp"
#include "backend/thrust/omp.hpp"
