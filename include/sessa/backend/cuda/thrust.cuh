// sessa/backend/cuda/thrust.cuh: backend::thrust_cuda, the Thrust kernel set (backend/thrust/kernels.hpp) on
// Thrust's CUDA system.
//
// Why this backend exists: it is the GPU's correctness baseline. It runs the same kernel source that CI runs on
// the CPU as backend::thrust_omp, on the device, in device memory (memory::cuda_device), on the context's
// stream. The fast CUDA kernels are tested against it and against the reference backend. Compile with nvcc
// (C++20, --expt-relaxed-constexpr not needed); for Hopper, -gencode arch=compute_90a,code=sm_90a.
#pragma once

#include <string_view>

#include <thrust/system/cuda/execution_policy.h>

#include "../../config.hpp"
#include "../../core/tensor.hpp"
#include "../kernels.hpp"
#include "../thrust/kernels.hpp"
#include "memory.cuh"

namespace sessa::backend {

/// The Thrust kernels on Thrust's CUDA system.
struct thrust_cuda {
  static constexpr std::string_view name = "thrust_cuda";
  using memory_space = memory::cuda_device;
  /// The execution policy of every call: Thrust's CUDA system on the context's stream.
  static auto policy(const context<thrust_cuda>& ctx);
};

/// thrust_cuda's context: the stream its kernels run on (0: the default stream) and its scratch arena.
template <>
struct context<thrust_cuda> {
  cudaStream_t stream = nullptr;
  scratch_arena<memory::cuda_device> scratch;
};

inline auto thrust_cuda::policy(const context<thrust_cuda>& ctx) { return thrust::cuda::par.on(ctx.stream); }

template <>
struct kernels<thrust_cuda> : thrust_kernels<thrust_cuda> {};

}  // namespace sessa::backend
