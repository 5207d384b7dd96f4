// bench/yardstick.hpp: the machine's own limits, measured inside the benchmark run that is judged by them.
//
// Why this exists: absolute times drift between machines and with load (BASELINES.md), so sessa-bench
// reports every time next to the figure that bounds it, measured in the same process a moment later:
//   * sgemm_gflops(n, repeat)   OpenBLAS cblas_sgemm on n x n x n, row major, no transposes, best of
//                               `repeat` after one warm-up call. Prefill is judged against it (SPEC.md
//                               "Cost model": a prefill is mostly GEMM-shaped work).
//   * stream_read_gbps(bytes)   a streaming read of `bytes` (an OpenMP parallel simd sum of floats), best of
//                               `repeat` after a parallel first touch. A decode step reads the weights and
//                               the whole cache once, so it is judged against this bandwidth; sessa-bench
//                               decode pairs one read (stream_probe) with each timed repetition instead.
// These are the methods BASELINES.md used for its "machine's own limits" table. OpenBLAS is optional: the
// bench is built with SESSA_BENCH_HAVE_OPENBLAS=1 when CMake found libopenblas and its cblas.h; without it
// sgemm_gflops() returns NaN and the JSON says null.
// Also here: peak and current resident set size (getrusage, /proc/self/statm), used for the memory columns.
#pragma once

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#ifndef SESSA_BENCH_HAVE_OPENBLAS
#define SESSA_BENCH_HAVE_OPENBLAS 0
#endif
#if SESSA_BENCH_HAVE_OPENBLAS
#include <cblas.h>  // OpenBLAS's own cblas.h: also declares openblas_set_num_threads, openblas_get_corename
#endif

namespace sessa_bench {

using clock_type = std::chrono::steady_clock;

inline double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

/// Lets spinning worker threads (OpenBLAS's pthreads, libgomp's) go to sleep before the next measurement,
/// so two thread pools never fight over the same cores.
inline void settle() { std::this_thread::sleep_for(std::chrono::milliseconds(150)); }

inline constexpr bool have_openblas() noexcept { return SESSA_BENCH_HAVE_OPENBLAS != 0; }

/// The OpenBLAS kernel family in use (it honours OPENBLAS_CORETYPE), or "" without OpenBLAS.
inline std::string openblas_corename() {
#if SESSA_BENCH_HAVE_OPENBLAS
  const char* name = openblas_get_corename();
  return name ? std::string(name) : std::string();
#else
  return {};
#endif
}

/// Sets OpenBLAS's thread count (no effect without OpenBLAS).
inline void set_blas_threads(int threads) {
#if SESSA_BENCH_HAVE_OPENBLAS
  openblas_set_num_threads(threads);
#else
  (void)threads;
#endif
}

/// OpenBLAS sgemm GFLOP/s on n x n x n (C = A B, row major), best of `repeat` after one warm-up; NaN without
/// OpenBLAS. Uses `threads` OpenBLAS threads.
inline double sgemm_gflops(int n, int repeat, int threads) {
#if SESSA_BENCH_HAVE_OPENBLAS
  set_blas_threads(threads);
  const std::size_t nn = static_cast<std::size_t>(n) * static_cast<std::size_t>(n);
  std::vector<float> a(nn), b(nn), c(nn);  // (n, n) each
  std::uint32_t s = 12345u;
  for (std::size_t i = 0; i < nn; ++i) {
    s = s * 1664525u + 1013904223u;
    a[i] = static_cast<float>(s >> 8) * (1.0f / 16777216.0f) - 0.5f;
    s = s * 1664525u + 1013904223u;
    b[i] = static_cast<float>(s >> 8) * (1.0f / 16777216.0f) - 0.5f;
  }
  auto call = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
  };
  call();  // warm-up: thread start, page faults
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r < std::max(1, repeat); ++r) {
    const auto t0 = clock_type::now();
    call();
    best = std::min(best, seconds_since(t0));
  }
  settle();
  return 2.0 * static_cast<double>(n) * n * n / best * 1e-9;
#else
  (void)n, (void)repeat, (void)threads;
  return std::numeric_limits<double>::quiet_NaN();
#endif
}

/// An sgemm figure and the OpenBLAS kernel family that gave it.
struct sgemm_figure {
  double gflops = std::numeric_limits<double>::quiet_NaN();
  std::string core;
};

/// OpenBLAS kernel families worth trying on this CPU besides the one it autodetects: OpenBLAS 0.3.21 takes some
/// new CPUs for older ones (an AVX-512 Zen 4 / Zen 5 runs its Haswell kernels, 186 against SkylakeX's 363
/// GFLOP/s on 2 threads; others fall back to "Prescott", 45). OPENBLAS_CORETYPE is read when the library loads,
/// so each family is measured in a child process (sgemm_probe).
inline std::vector<std::string> openblas_candidates() {
  std::vector<std::string> c;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) c.push_back("SkylakeX");
  if (__builtin_cpu_supports("avx2")) {
    c.push_back("Haswell");
    c.push_back("Zen");
  }
#endif
  return c;
}

/// The best sgemm of n x n x n among the autodetected kernel family (measured here) and every candidate family
/// (measured by running `probe_command` with OPENBLAS_CORETYPE set; the command prints
/// {"sgemm_gflops":G,"openblas_corename":"NAME"}). A probe that fails is skipped.
inline sgemm_figure best_sgemm(int n, int repeat, int threads, const std::string& probe_command) {
  sgemm_figure best{sgemm_gflops(n, repeat, threads), openblas_corename()};
#if SESSA_BENCH_HAVE_OPENBLAS
  for (const std::string& core : openblas_candidates()) {
    if (core == best.core) continue;
    const std::string cmd = "OPENBLAS_CORETYPE=" + core + " " + probe_command + " --n " + std::to_string(n) +
                            " --threads " + std::to_string(threads) + " --repeat " + std::to_string(repeat) +
                            " 2>/dev/null";
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) continue;
    char line[512] = {0};
    const bool got = std::fgets(line, sizeof line, p) != nullptr;
    const int rc = pclose(p);
    double g = 0;
    char name[64] = {0};
    if (got && rc == 0 && std::sscanf(line, "{\"sgemm_gflops\":%lf,\"openblas_corename\":\"%63[^\"]\"", &g, name) == 2 &&
        (!(best.gflops >= g)))
      best = {g, name};
  }
#else
  (void)probe_command;
#endif
  return best;
}

/// A streaming read over `bytes` of floats, placed by a parallel first touch (so each thread reads the
/// pages it placed); read_gbps() times one parallel simd sum over it (GB/s, 1e9 bytes/s) with the current OpenMP
/// thread count. A decode run pairs one read with each timed repetition: on a shared machine the bandwidth moves
/// with the neighbours' load (2 cores of one VM here read 40 GB/s at one moment and 75 a few seconds later), so a
/// rate is judged against the bandwidth of the same moment, not against the best of a separate measurement.
class stream_probe {
 public:
  explicit stream_probe(std::size_t bytes)
      : n_(static_cast<std::int64_t>(bytes / sizeof(float)) / block * block),
        owner_(new float[static_cast<std::size_t>(n_)]) {  // (n) uninitialized: touched below
    float* a = owner_.get();
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
    for (std::int64_t i = 0; i < n_; ++i) a[i] = static_cast<float>(i & 7) * 0.125f;
  }
  /// Bytes one read covers.
  std::size_t bytes() const noexcept { return static_cast<std::size_t>(n_) * sizeof(float); }
  /// One timed pass: GB/s.
  double read_gbps() {
    const float* a = owner_.get();
    const std::int64_t blocks = n_ / block;
    const auto t0 = clock_type::now();
    float total = 0.0f;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) reduction(+ : total)
#endif
    for (std::int64_t j = 0; j < blocks; ++j) {
      // Four quarters summed side by side: four independent vector accumulators, so the adds' latency
      // never limits the read rate.
      const float* p = a + j * block;
      constexpr std::int64_t q = block / 4;
      float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#if defined(_OPENMP)
#pragma omp simd reduction(+ : s0, s1, s2, s3)
#endif
      for (std::int64_t i = 0; i < q; ++i) {
        s0 += p[i];
        s1 += p[q + i];
        s2 += p[2 * q + i];
        s3 += p[3 * q + i];
      }
      total += (s0 + s1) + (s2 + s3);
    }
    const double t = seconds_since(t0);
    sink_ = total;
    return static_cast<double>(bytes()) / t * 1e-9;
  }

 private:
  static constexpr std::int64_t block = 1 << 14;  // floats per work item (64 KiB)
  std::int64_t n_;
  std::unique_ptr<float[]> owner_;
  volatile float sink_ = 0.0f;
};

/// Streaming read GB/s: the best of `repeat` reads of a stream_probe over `bytes`.
inline double stream_read_gbps(std::size_t bytes, int repeat) {
  stream_probe probe(bytes);
  double best = 0.0;
  for (int r = 0; r < std::max(1, repeat); ++r) best = std::max(best, probe.read_gbps());
  settle();
  return best;
}

/// Peak resident set size of this process so far, in bytes (getrusage ru_maxrss, KiB on Linux).
inline std::int64_t peak_rss_bytes() {
  struct rusage u {};
  if (getrusage(RUSAGE_SELF, &u) != 0) return -1;
  return static_cast<std::int64_t>(u.ru_maxrss) * 1024;
}

/// Current resident set size in bytes (/proc/self/statm), or -1 where that file does not exist.
inline std::int64_t current_rss_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return -1;
  long long size = 0, resident = 0;
  const int got = std::fscanf(f, "%lld %lld", &size, &resident);
  std::fclose(f);
  if (got != 2) return -1;
  return static_cast<std::int64_t>(resident) * static_cast<std::int64_t>(sysconf(_SC_PAGESIZE));
}

}  // namespace sessa_bench
