// tools/common/backends.hpp: the backends a build of the project's executables (the `sessa` CLI, sessa-bench)
// contains, and the one place a --backend name becomes a backend type.
//
//   reference, cpu     always
//   thrust_omp         when built with SESSA_WITH_THRUST_OMP (CMake: backend::thrust_omp found; g++ builds)
//   thrust_cuda, cuda  when built with SESSA_WITH_THRUST_CUDA (the nvcc builds, sessa-cuda and sessa-bench-cuda)
//
// A name this build lacks is a usage error that says which build has it.
#pragma once

#if defined(SESSA_WITH_THRUST_CUDA)
#include <sessa/cuda.cuh>
#endif
#if defined(SESSA_WITH_THRUST_OMP)
#include <sessa/thrust_omp.hpp>
#endif
#include <sessa/sessa.hpp>

#include <cstdio>
#include <string>

#if SESSA_HAS_OPENMP
#include <omp.h>
#endif

#include "options.hpp"

namespace sessa::tools {

/// The backends of this build, for messages: "cpu, reference, thrust_omp".
inline std::string built_backends() {
  std::string s = "cpu, reference";
#if defined(SESSA_WITH_THRUST_OMP)
  s += ", thrust_omp";
#endif
#if defined(SESSA_WITH_THRUST_CUDA)
  s += ", thrust_cuda, cuda";
#endif
  return s;
}

/// Calls f.template operator()<Backend>() for the backend named `name`; a usage_error for a name this build
/// does not contain, saying where it is.
template <class F>
void with_backend(const std::string& name, F&& f) {
  if (name == "cpu") return f.template operator()<backend::cpu>();
  if (name == "reference") return f.template operator()<backend::reference>();
#if defined(SESSA_WITH_THRUST_OMP)
  if (name == "thrust_omp") return f.template operator()<backend::thrust_omp>();
#endif
#if defined(SESSA_WITH_THRUST_CUDA)
  if (name == "thrust_cuda") return f.template operator()<backend::thrust_cuda>();
  if (name == "cuda") return f.template operator()<backend::cuda>();
#endif
  if (name == "thrust_omp")
    throw usage_error("this build has no thrust_omp backend (built: " + built_backends() +
                      "); it is built by g++ when CMake finds OpenMP and the CUDA toolkit's Thrust headers "
                      "(-DSESSA_THRUST_OMP=ON to require it)");
  if (name == "thrust_cuda" || name == "cuda")
    throw usage_error("this build has no " + name + " backend (built: " + built_backends() +
                      "); it is in the nvcc builds sessa-cuda and sessa-bench-cuda, made when CMake finds the CUDA "
                      "toolkit (-DSESSA_CUDA=ON to require it)");
  throw usage_error("unknown --backend '" + name + "' (this build has: " + built_backends() + ")");
}

namespace detail {
struct no_backend_work {
  template <class B>
  void operator()() const {}
};
}  // namespace detail

/// Throws the usage_error with_backend would for a name this build lacks; does nothing else.
inline void require_backend(const std::string& name) { with_backend(name, detail::no_backend_work{}); }

/// Applies --threads N (0: leave the default): the CPU kernels' process-wide default and OpenMP's, which
/// Thrust's OpenMP system uses.
inline void apply_threads(long long n, const char* program) {
#if SESSA_HAS_OPENMP
  (void)program;
  if (n > 0) {
    set_num_threads(static_cast<int>(n));
    omp_set_num_threads(static_cast<int>(n));
  }
#else
  if (n > 1) std::fprintf(stderr, "%s: note: built without OpenMP, --threads %lld runs on one thread\n", program, n);
#endif
}

}  // namespace sessa::tools
