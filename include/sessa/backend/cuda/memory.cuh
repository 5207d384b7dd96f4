// sessa/backend/cuda/memory.cuh: the CUDA device's global memory as a memory space, and CUDA error checking.
//
// memory::cuda_device allocates with cudaMalloc, clears with cudaMemset and copies with cudaMemcpy (synchronous,
// so a buffer copy is complete when it returns). host_accessible is false: host code cannot dereference its
// pointers (core/memory.hpp). Every failing CUDA call throws sessa::backend_error naming the call and CUDA's
// message; nothing aborts.
#pragma once

#include <cuda_runtime.h>

#include <string>
#include <string_view>

#include "../../config.hpp"
#include "../../core/memory.hpp"
#include "../../error.hpp"

namespace sessa {

namespace gpu {

/// Throws backend_error("`what` failed: <CUDA's message>") unless e is cudaSuccess.
inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw backend_error(std::string("CUDA: ") + what + " failed: " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}

/// Number of CUDA devices this process can use (0 when there is none or no driver).
inline int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

}  // namespace gpu

namespace memory {

/// Global memory of the current CUDA device.
struct cuda_device {
  static constexpr std::string_view name = "cuda";
  static constexpr bool host_accessible = false;
  static void* allocate(std::size_t bytes) {
    void* p = nullptr;
    gpu::check(cudaMalloc(&p, bytes), "cudaMalloc");
    return p;
  }
  static void deallocate(void* p, std::size_t) noexcept { (void)cudaFree(p); }
  static void zero(void* p, std::size_t bytes) { gpu::check(cudaMemset(p, 0, bytes), "cudaMemset"); }
  static void copy(void* dst, const void* src, std::size_t bytes) {
    gpu::check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpy (device to device)");
  }
  static void copy_from_host(void* dst, const void* src, std::size_t bytes) {
    gpu::check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy (host to device)");
  }
  static void copy_to_host(void* dst, const void* src, std::size_t bytes) {
    gpu::check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy (device to host)");
  }
};

}  // namespace memory

}  // namespace sessa
