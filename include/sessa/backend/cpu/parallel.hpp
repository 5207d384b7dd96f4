// sessa/backend/cpu/parallel.hpp: thread control for the CPU backend.
//
// The CPU backend runs its loops on OpenMP threads when the library is compiled with OpenMP, and on the
// calling thread otherwise. Every parallel region it opens names its thread count explicitly
// (`num_threads(n)`), taken from the call's execution context (backend::context<cpu>::threads) or, when that
// is 0, from the process-wide default that set_num_threads() sets. So the setting holds for calls made from
// any thread, not only the thread that made it (omp_set_num_threads() would set it for the caller only).
#pragma once

#include <atomic>
#include <exception>
#include <utility>

#include "../../config.hpp"

#if SESSA_HAS_OPENMP
#include <omp.h>
#endif

namespace sessa {

namespace detail {
/// The process-wide default thread count of CPU kernels; 0 = OpenMP's default (OMP_NUM_THREADS, the cores).
inline std::atomic<int>& default_threads() {
  static std::atomic<int> n{0};
  return n;
}
}  // namespace detail

/// Sets the number of threads CPU kernels use by default, in every thread of the process (n >= 1; 0 restores
/// OpenMP's default). A context's own `threads` setting overrides it. Without OpenMP this has no effect.
inline void set_num_threads(int n) { detail::default_threads().store(n >= 0 ? n : 0, std::memory_order_relaxed); }

inline namespace SESSA_CPU_ABI {  // these two depend on OpenMP (config.hpp)

/// The number of threads CPU kernels use by default.
inline int num_threads() {
#if SESSA_HAS_OPENMP
  const int n = detail::default_threads().load(std::memory_order_relaxed);
  return n > 0 ? n : omp_get_max_threads();
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

}  // inline namespace SESSA_CPU_ABI

namespace detail {

/// The first exception thrown on any thread of one parallel region, kept until the region has ended.
///
/// An exception must not leave an OpenMP region (the runtime calls std::terminate), and every thread of a
/// team must reach the same work-sharing loops. So code inside a region runs each piece that can throw
/// (growing a per-thread buffer, one work item) through run(): the first exception is recorded, every later
/// piece on every thread is skipped, the loops are still reached by all threads, and the caller rethrows
/// after the region. Outputs are then incomplete, which the caller's error makes visible.
class region_errors {
 public:
  region_errors() = default;
  region_errors(const region_errors&) = delete;
  region_errors& operator=(const region_errors&) = delete;

  /// f(), unless a piece of the region has failed already; false when skipped or when f() threw.
  template <class F>
  bool run(F&& f) noexcept {
    if (failed()) return false;
    try {
      std::forward<F>(f)();
      return true;
    } catch (...) {
      if (!failed_.exchange(true, std::memory_order_acq_rel)) error_ = std::current_exception();
      return false;
    }
  }
  bool failed() const noexcept { return failed_.load(std::memory_order_acquire); }
  /// Rethrows the recorded exception; call after the region (its closing barrier orders the write).
  void rethrow_if_failed() const {
    if (failed()) std::rethrow_exception(error_);
  }

 private:
  std::atomic<bool> failed_{false};
  std::exception_ptr error_;
};

}  // namespace detail

}  // namespace sessa
