// sessa/backend/tags.hpp: the backend tags. No kernel code and no CUDA includes here.
//
// A backend is an empty tag type that names itself. Tags derive from the backend they extend
// (`struct cpu : reference`), and backend::kernels<cpu> derives from backend::kernels<reference>, so a
// backend that lacks a kernel falls back to the nearest base by plain inheritance (as xsimd's
// architectures and Thrust's systems do). The CUDA tag lives in backend/cuda and only exists under nvcc.
#pragma once

#include <string_view>

namespace sessa::backend {

/// Straightforward scalar loops: the oracle every other backend is tested against.
struct reference {
  static constexpr std::string_view name = "reference";
};

/// The fast CPU backend: xsimd vector kernels, cache-blocked GEMM, OpenMP threads.
struct cpu : reference {
  static constexpr std::string_view name = "cpu";
};

/// The backend used when none is named.
using default_cpu = cpu;

}  // namespace sessa::backend
