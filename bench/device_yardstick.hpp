// bench/device_yardstick.hpp: the GPU's own limits, measured in the same run as the work they judge (the nvcc
// build, sessa-bench-cuda). Prefill is judged against cuBLASLt's bf16 GEMM rate on random data, decode against the
// device-to-device copy bandwidth, counting bytes read plus bytes written (what a memory-bound kernel moves).
// Timed with CUDA events after a warm-up; the best of `repeat` runs.
#pragma once

#include <sessa/cuda.cuh>

#include <cuda_runtime.h>

#include <cstdint>

namespace sessa_bench::gpu {

namespace detail {
/// p[i] = a bf16 value in [-1, 1) from a hash of i and the seed (random data: zeros would run faster).
__global__ void fill_bf16(sessa::bfloat16* p, std::int64_t n, std::uint32_t seed) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::uint32_t h = static_cast<std::uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 16;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = sessa::bfloat16(static_cast<float>(h & 0xFFFFFF) / 8388608.0f - 1.0f);
  }
}

/// Milliseconds of f() on the default stream, best of `repeat` after one warm-up.
template <class F>
double best_ms(int repeat, F&& f) {
  cudaEvent_t a, b;
  sessa::gpu::check(cudaEventCreate(&a), "cudaEventCreate");
  sessa::gpu::check(cudaEventCreate(&b), "cudaEventCreate");
  f();
  sessa::gpu::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  float best = 1e30f;
  for (int r = 0; r < repeat; ++r) {
    sessa::gpu::check(cudaEventRecord(a), "cudaEventRecord");
    f();
    sessa::gpu::check(cudaEventRecord(b), "cudaEventRecord");
    sessa::gpu::check(cudaEventSynchronize(b), "cudaEventSynchronize");
    float ms = 0;
    sessa::gpu::check(cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime");
    best = ms < best ? ms : best;
  }
  (void)cudaEventDestroy(a);
  (void)cudaEventDestroy(b);
  return best;
}
}  // namespace detail

/// cuBLASLt bf16 x bf16 -> float (float accumulation) on n x n x n random matrices: TFLOP/s.
inline double bf16_gemm_tflops(std::int64_t n, int repeat) {
  sessa::buffer<sessa::bfloat16, sessa::memory::cuda_device> a(n * n), b(n * n);
  sessa::buffer<float, sessa::memory::cuda_device> c(n * n);
  sessa::buffer<std::byte, sessa::memory::cuda_device> ws(std::int64_t{32} << 20);
  detail::fill_bf16<<<1024, 256>>>(sessa::raw(a.data()), n * n, 1u);
  detail::fill_bf16<<<1024, 256>>>(sessa::raw(b.data()), n * n, 2u);
  sessa::gpu::check_launch("fill_bf16");
  sessa::gpu::blas_handle h;
  const double ms = detail::best_ms(repeat, [&] {
    h.gemm_tn<sessa::bfloat16, float>(n, n, n, sessa::raw(a.data()), n, sessa::raw(b.data()), n, sessa::raw(c.data()), n,
                                      0.0f, sessa::raw(ws.data()), std::size_t{32} << 20, nullptr);
  });
  return 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) / (ms * 1e-3) * 1e-12;
}

/// Device-to-device copy of `bytes`: GB/s counting bytes read plus bytes written.
inline double copy_gbps(std::size_t bytes, int repeat) {
  sessa::buffer<std::byte, sessa::memory::cuda_device> src(static_cast<std::int64_t>(bytes)),
      dst(static_cast<std::int64_t>(bytes));
  src.zero();
  const double ms = detail::best_ms(repeat, [&] {
    sessa::gpu::check(cudaMemcpyAsync(sessa::raw(dst.data()), sessa::raw(src.data()), bytes, cudaMemcpyDeviceToDevice),
                      "cudaMemcpyAsync");
  });
  return 2.0 * static_cast<double>(bytes) / (ms * 1e-3) * 1e-9;
}

/// The device's name, for the JSON lines.
inline std::string device_name() {
  int dev = 0;
  cudaDeviceProp p{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess) return "unknown";
  return p.name;
}

}  // namespace sessa_bench::gpu
