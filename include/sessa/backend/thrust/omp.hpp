// sessa/backend/thrust/omp.hpp: backend::thrust_omp, the Thrust kernel set on Thrust's OpenMP system.
//
// Why this backend exists: it runs the device backends' kernels (backend/thrust/kernels.hpp, the same source
// thrust_cuda compiles for a GPU) on the CPU, so CI tests them, memory spaces included, on machines without a
// GPU. Its memory space, memory::thrust_omp_space, is host RAM that only kernels touch: a distinct type whose
// pointers host code cannot dereference, so a host access that would be a bug on a GPU is a compile error
// here too. Requires OpenMP (-fopenmp) and the CUDA toolkit's CCCL headers (Thrust 3); Debian's older
// libthrust-dev is not supported. Its context holds the scratch arena; the thread count is OpenMP's (Thrust's
// OpenMP system opens its own parallel regions).
#pragma once

#include <string_view>

#include "config.hpp"  // before any Thrust header

#include <thrust/system/omp/execution_policy.h>

#include "../../config.hpp"
#include "../../core/memory.hpp"
#include "../../core/tensor.hpp"
#include "../kernels.hpp"
#include "kernels.hpp"

#if !defined(_OPENMP)
#error "sessa/backend/thrust/omp.hpp (backend::thrust_omp) needs OpenMP: compile with -fopenmp"
#endif

namespace sessa {

namespace memory {

/// The Thrust OpenMP system's memory: host RAM, reachable only through kernels (host_accessible is false).
struct thrust_omp_space {
  static constexpr std::string_view name = "thrust_omp";
  static constexpr bool host_accessible = false;
  static void* allocate(std::size_t bytes) { return host::allocate(bytes); }
  static void deallocate(void* p, std::size_t bytes) noexcept { host::deallocate(p, bytes); }
  static void zero(void* p, std::size_t bytes) { host::zero(p, bytes); }
  static void copy(void* dst, const void* src, std::size_t bytes) { host::copy(dst, src, bytes); }
  static void copy_from_host(void* dst, const void* src, std::size_t bytes) { host::copy(dst, src, bytes); }
  static void copy_to_host(void* dst, const void* src, std::size_t bytes) { host::copy(dst, src, bytes); }
};

}  // namespace memory

namespace backend {

/// The Thrust kernels on Thrust's OpenMP system (CPU threads).
struct thrust_omp {
  static constexpr std::string_view name = "thrust_omp";
  using memory_space = memory::thrust_omp_space;
  /// The execution policy of every call: Thrust's OpenMP system.
  static auto policy(const context<thrust_omp>&) { return thrust::omp::par; }
};

/// thrust_omp's context: its scratch arena (in its own memory space).
template <>
struct context<thrust_omp> {
  scratch_arena<memory::thrust_omp_space> scratch;
};

template <>
struct kernels<thrust_omp> : thrust_kernels<thrust_omp> {};

}  // namespace backend

}  // namespace sessa
