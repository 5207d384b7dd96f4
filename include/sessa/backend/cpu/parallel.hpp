// sessa/backend/cpu/parallel.hpp: thread control for the CPU backend.
//
// The CPU backend runs its loops on OpenMP threads when the library is compiled with OpenMP, and on the
// calling thread otherwise; set_num_threads() is the one knob (the CLI's --threads calls it).
#pragma once

#include "../../config.hpp"

#if SESSA_HAS_OPENMP
#include <omp.h>
#endif

namespace sessa {

/// Sets the number of threads CPU kernels use (n >= 1). Without OpenMP this has no effect.
inline void set_num_threads(int n) {
#if SESSA_HAS_OPENMP
  if (n >= 1) omp_set_num_threads(n);
#else
  (void)n;
#endif
}

/// The number of threads CPU kernels will use.
inline int num_threads() {
#if SESSA_HAS_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// Index of the calling thread inside a parallel region (0 outside or without OpenMP).
inline int thread_index() {
#if SESSA_HAS_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

}  // namespace sessa
