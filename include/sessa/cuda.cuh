// sessa/cuda.cuh: the library with its CUDA backends. Include from .cu files compiled by nvcc (C++20) and link
// cuBLASLt (CMake: CUDA::cublasLt CUDA::cublas; nvcc: -lcublasLt -lcublas).
//
//   backend::thrust_cuda   the Thrust kernel set on the GPU (backend/cuda/thrust.cuh): the correctness baseline
//   backend::cuda          thrust_cuda with cuBLASLt projections and flash-style attention, LayerNorm and feedback
//                          kernels of its own (backend/cuda/cuda.cuh)
//
// Weights are loaded on the host and copied to the device by the model's constructor; inputs and outputs are
// device tensors (to_device / to_host, core/tensor.hpp):
//   sessa::layer<float, sessa::backend::cuda> layer(cfg, host_weights);
//   auto y = sessa::to_host(layer.forward(sessa::to_device<sessa::memory::cuda_device>(x)));
#pragma once

#include "sessa.hpp"
#include "backend/cuda/memory.cuh"
#include "backend/cuda/thrust.cuh"
#include "backend/cuda/blas.cuh"
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/cuda.cuh"
