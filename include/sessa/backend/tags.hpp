// sessa/backend/tags.hpp: the backend tags of the host backends. No kernel code and no CUDA includes here.
//
// A backend is an empty tag type that names itself and its memory space (core/memory.hpp). Its kernels are
// the specialization backend::kernels<Tag> and its execution context backend::context<Tag>
// (backend/kernels.hpp). Host backends may extend one another: `struct cpu : reference`, kernels<cpu> derives
// from kernels<reference> and context<cpu> from context<reference>, so the cpu backend inherits the
// reference's kernels for the few small operations it does not accelerate (as xsimd's architectures do).
// Across memory spaces there is no such fallback: a device backend declares its whole kernel set, and its
// views are of its own space, which no host kernel accepts. The device tags live with their kernels:
// backend::thrust_omp (backend/thrust/omp.hpp) and backend::thrust_cuda (backend/cuda/, nvcc only).
#pragma once

#include <string_view>

#include "../core/memory.hpp"

namespace sessa::backend {

/// Straightforward scalar loops: the oracle every other backend is tested against.
struct reference {
  static constexpr std::string_view name = "reference";
  using memory_space = memory::host;
};

/// The fast CPU backend: xsimd vector kernels, cache-blocked GEMM, OpenMP threads.
struct cpu : reference {
  static constexpr std::string_view name = "cpu";
};

/// The backend used when none is named.
using default_cpu = cpu;

}  // namespace sessa::backend
