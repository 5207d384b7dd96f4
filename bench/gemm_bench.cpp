// gemm_bench: the CPU GEMM kernels (sessa::backend::simd::linear, gemm_nt, gemm_nn) against OpenBLAS sgemm.
//
// Why this exists: prefill must run near the machine's sgemm rate and decode near its memory bandwidth
// (SPEC.md, "Cost model"); this measures both on the shapes of a Sessa layer and prints one JSON object
// per line:
//   {"kernel":..., "M":..,"N":..,"K":.., "threads":.., "gflops":.., "openblas_gflops":.., "ratio":..}
// small-M (decode) lines add "gbps" (bytes of w per second), "cold" (w rotated through more memory than
// the caches hold) and "openblas_call" (sgemv for M = 1, where it beats sgemm, else sgemm). Without
// OpenBLAS (SESSA_BENCH_OPENBLAS undefined) the comparison fields are null.
//
// --weights f32,bf16,f16,q8_0 (with --shape, M <= 16) instead compares weight storage types on the decode path in
// one process: w (N, K) is stored in each type (q8_0: int8 blocks of 32 with a float16 scale, 34 bytes per 32
// weights), streamed cold, and each line carries "weights", "bytes_per_weight", "gbps" (bytes of storage read per
// second) and "speedup_vs_f32" (the f32 time of the same run over this one's).
//
// usage: gemm_bench [--quick] [--threads 1,2] [--shape M,N,K] [--weights LIST] [--time SECONDS]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "sessa/backend/cpu/gemm.hpp"
#include "sessa/backend/cpu/parallel.hpp"
#include "sessa/core/quant.hpp"
#include "sessa/core/tensor.hpp"

#if SESSA_BENCH_OPENBLAS
// The two OpenBLAS entry points used, declared here so no cblas.h include path is needed.
extern "C" {
void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a, int lda,
                 const float* b, int ldb, float beta, float* c, int ldc);
void cblas_sgemv(int order, int trans, int m, int n, float alpha, const float* a, int lda, const float* x, int incx,
                 float beta, float* y, int incy);
void openblas_set_num_threads(int n);
}
#endif

namespace {

using sessa::index_t;
using clock_type = std::chrono::steady_clock;

double g_time = 0.25;  // seconds of measurement per kernel and shape

/// Best seconds per call of fn over ~g_time seconds (5 rounds of enough calls to last >= g_time / 5).
template <class F>
double best_seconds(F&& fn) {
  fn();  // warm-up: pack buffers, page faults, thread start
  auto t0 = clock_type::now();
  fn();
  const double once = std::max(1e-7, std::chrono::duration<double>(clock_type::now() - t0).count());
  const int inner = std::max(1, static_cast<int>(g_time / 5 / once));
  double best = 1e30;
  for (int round = 0; round < 5; ++round) {
    t0 = clock_type::now();
    for (int i = 0; i < inner; ++i) fn();
    best = std::min(best, std::chrono::duration<double>(clock_type::now() - t0).count() / inner);
  }
  return best;
}

/// Lets the other library's spinning worker threads go to sleep before the next measurement (OpenBLAS's
/// spin for about 2^28 cycles after a call, libgomp's for a few ms; on 2 cores a spinner halves the rate).
void settle() { std::this_thread::sleep_for(std::chrono::milliseconds(200)); }

std::vector<float> random_vector(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  std::vector<float> v(n);
  for (auto& e : v) e = dist(gen);
  return v;
}

void print_line(const char* kernel, index_t M, index_t N, index_t K, int threads, double gflops, double ob_gflops,
                const std::string& extra = "") {
  std::printf("{\"kernel\":\"%s\",\"M\":%lld,\"N\":%lld,\"K\":%lld,\"threads\":%d,\"gflops\":%.1f,", kernel,
              static_cast<long long>(M), static_cast<long long>(N), static_cast<long long>(K), threads, gflops);
  if (ob_gflops > 0)
    std::printf("\"openblas_gflops\":%.1f,\"ratio\":%.3f", ob_gflops, gflops / ob_gflops);
  else
    std::printf("\"openblas_gflops\":null,\"ratio\":null");
  std::printf("%s}\n", extra.c_str());
  std::fflush(stdout);
}

/// linear (x (M,K), w (N,K)) on `threads` threads; cold: cycle through enough copies of w to miss the caches.
void bench_linear(index_t M, index_t N, index_t K, int threads, bool cold = false) {
  const std::size_t wsize = static_cast<std::size_t>(N * K);
  const int copies = cold ? static_cast<int>(std::max<std::size_t>(2, (768u << 20) / (wsize * sizeof(float)) + 1)) : 1;
  std::vector<float> x = random_vector(static_cast<std::size_t>(M * K), 1);
  std::vector<float> w = random_vector(wsize * static_cast<std::size_t>(copies), 2);
  std::vector<float> bias = random_vector(static_cast<std::size_t>(N), 3);
  std::vector<float> y(static_cast<std::size_t>(M * N));
  const double flops = 2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
  int next = 0;

  sessa::set_num_threads(threads);
  const double t = best_seconds([&] {
    const float* wp = w.data() + wsize * static_cast<std::size_t>(next);
    next = (next + 1) % copies;
    sessa::backend::simd::linear<float>({x.data(), M, K}, {wp, N, K}, bias.data(), {y.data(), M, N}, false);
  });
  settle();
  double ob = 0;
#if SESSA_BENCH_OPENBLAS
  openblas_set_num_threads(threads);
  const double tob = best_seconds([&] {
    const float* wp = w.data() + wsize * static_cast<std::size_t>(next);
    next = (next + 1) % copies;
    if (M == 1)  // y = w x: OpenBLAS's matrix-vector kernel is its best for one row
      cblas_sgemv(101 /*row major*/, 111 /*no trans*/, static_cast<int>(N), static_cast<int>(K), 1.f, wp,
                  static_cast<int>(K), x.data(), 1, 0.f, y.data(), 1);
    else
      cblas_sgemm(101 /*row major*/, 111 /*no trans*/, 112 /*trans*/, static_cast<int>(M), static_cast<int>(N),
                  static_cast<int>(K), 1.f, x.data(), static_cast<int>(K), wp, static_cast<int>(K), 0.f, y.data(),
                  static_cast<int>(N));
  });
  ob = flops / tob * 1e-9;
  settle();
#endif
  std::string extra;
  if (M <= 16) {
    char buf[96];
    std::snprintf(buf, sizeof buf, ",\"gbps\":%.1f,\"cold\":%s,\"openblas_call\":\"%s\"",
                  static_cast<double>(wsize * sizeof(float)) / t * 1e-9, cold ? "true" : "false",
                  M == 1 ? "sgemv" : "sgemm");
    extra = buf;
  }
  print_line(M <= 16 ? "linear_small_m" : "linear", M, N, K, threads, flops / t * 1e-9, ob, extra);
}

/// Seconds per call of linear (x (M, K), w (N, K) stored as S) with w cold: enough copies rotated to miss the caches.
template <class S>
double time_storage(index_t M, index_t N, index_t K, int threads) {
  const index_t cols = sessa::storage_cols<S>(K);
  const std::size_t wsize = static_cast<std::size_t>(N * cols);
  const int copies = static_cast<int>(std::max<std::size_t>(2, (768u << 20) / (wsize * sizeof(S)) + 1));
  std::vector<S> w(wsize * static_cast<std::size_t>(copies));
  const std::vector<float> src = random_vector(static_cast<std::size_t>(N * K), 2);
  for (index_t j = 0; j < N; ++j) {
    S* row = w.data() + j * cols;
    if constexpr (sessa::is_block_quantized<S>)
      sessa::quantize_row_q8_0(src.data() + j * K, K, row);
    else
      for (index_t k = 0; k < K; ++k) row[k] = S(src[static_cast<std::size_t>(j * K + k)]);
  }
  for (int c = 1; c < copies; ++c) std::copy(w.begin(), w.begin() + static_cast<long>(wsize), w.begin() + static_cast<long>(wsize) * c);
  std::vector<float> x = random_vector(static_cast<std::size_t>(M * K), 1);
  std::vector<sessa::vector_storage_t<S>> bias(static_cast<std::size_t>(N));
  for (std::size_t j = 0; j < bias.size(); ++j) bias[j] = sessa::vector_storage_t<S>(0.5f);
  std::vector<float> y(static_cast<std::size_t>(M * N));
  sessa::set_num_threads(threads);
  int next = 0;
  return best_seconds([&] {
    const S* wp = w.data() + wsize * static_cast<std::size_t>(next);
    next = (next + 1) % copies;
    sessa::backend::simd::linear<float, S>({x.data(), M, K}, {wp, N, cols}, bias.data(), {y.data(), M, N}, false);
  });
}

/// The decode path over each weight storage type in `names`, one process, cold weights.
int bench_storage(index_t M, index_t N, index_t K, const std::vector<std::string>& names,
                  const std::vector<int>& threads) {
  for (int t : threads) {
    double t_f32 = 0;
    for (const std::string& name : names) {
      double sec = 0, bpw = 0;
      if (name == "f32") sec = time_storage<float>(M, N, K, t), bpw = sessa::bytes_per_weight<float>();
      else if (name == "bf16") sec = time_storage<sessa::bfloat16>(M, N, K, t), bpw = sessa::bytes_per_weight<sessa::bfloat16>();
      else if (name == "f16") sec = time_storage<sessa::float16>(M, N, K, t), bpw = sessa::bytes_per_weight<sessa::float16>();
      else if (name == "q8_0") sec = time_storage<sessa::q8_0>(M, N, K, t), bpw = sessa::bytes_per_weight<sessa::q8_0>();
      else {
        std::fprintf(stderr, "gemm_bench: unknown weight storage '%s' (f32, bf16, f16, q8_0)\n", name.c_str());
        return 2;
      }
      if (name == "f32") t_f32 = sec;
      settle();
      const double weights = static_cast<double>(N) * static_cast<double>(K);
      std::printf("{\"kernel\":\"linear_small_m\",\"weights\":\"%s\",\"M\":%lld,\"N\":%lld,\"K\":%lld,\"threads\":%d,"
                  "\"cold\":true,\"bytes_per_weight\":%.4f,\"gbps\":%.1f,\"gflops\":%.1f,\"speedup_vs_f32\":",
                  name.c_str(), static_cast<long long>(M), static_cast<long long>(N), static_cast<long long>(K), t, bpw,
                  weights * bpw / sec * 1e-9, 2.0 * static_cast<double>(M) * weights / sec * 1e-9);
      if (t_f32 > 0) std::printf("%.3f}\n", t_f32 / sec);
      else std::printf("null}\n");
      std::fflush(stdout);
    }
  }
  return 0;
}

/// One-thread tile products: gemm_nt (a (M,K), b (N,K)) or gemm_nn (a (M,K), b (K,N)).
void bench_tile(bool nt, index_t M, index_t N, index_t K) {
  std::vector<float> a = random_vector(static_cast<std::size_t>(M * K), 4);
  std::vector<float> b = random_vector(static_cast<std::size_t>(N * K), 5);
  std::vector<float> c(static_cast<std::size_t>(M * N));
  const double flops = 2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
  const double t = best_seconds([&] {
    if (nt)
      sessa::backend::simd::gemm_nt<float>({a.data(), M, K}, {b.data(), N, K}, {c.data(), M, N}, 1.f, 0.f);
    else
      sessa::backend::simd::gemm_nn<float>({a.data(), M, K}, {b.data(), K, N}, {c.data(), M, N}, 1.f, 0.f);
  });
  double ob = 0;
#if SESSA_BENCH_OPENBLAS
  settle();
  openblas_set_num_threads(1);
  const double tob = best_seconds([&] {
    cblas_sgemm(101, 111, nt ? 112 : 111, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), 1.f, a.data(),
                static_cast<int>(K), b.data(), static_cast<int>(nt ? K : N), 0.f, c.data(), static_cast<int>(N));
  });
  ob = flops / tob * 1e-9;
#endif
  print_line(nt ? "gemm_nt" : "gemm_nn", M, N, K, 1, flops / t * 1e-9, ob);
}

std::vector<int> parse_list(const std::string& s) {
  std::vector<int> out;
  std::size_t pos = 0;
  while (pos < s.size()) {
    out.push_back(std::atoi(s.c_str() + pos));
    pos = s.find(',', pos);
    if (pos == std::string::npos) break;
    ++pos;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::vector<int> threads{1, 2};
  std::vector<int> shape;
  std::vector<std::string> storages;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick")
      quick = true;
    else if (arg == "--threads" && i + 1 < argc)
      threads = parse_list(argv[++i]);
    else if (arg == "--shape" && i + 1 < argc)
      shape = parse_list(argv[++i]);
    else if (arg == "--time" && i + 1 < argc)
      g_time = std::atof(argv[++i]);
    else if (arg == "--weights" && i + 1 < argc) {
      const std::string list = argv[++i];
      for (std::size_t b = 0, e; b <= list.size(); b = e + 1) {
        e = list.find(',', b);
        if (e == std::string::npos) e = list.size();
        storages.push_back(list.substr(b, e - b));
      }
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [--threads 1,2] [--shape M,N,K] [--weights f32,bf16,f16,q8_0] "
                           "[--time SECONDS]\n", argv[0]);
      return 2;
    }
  }
  if (quick) g_time = std::min(g_time, 0.1);

  if (!storages.empty()) {
    if (shape.size() != 3 || shape[0] > 16) {
      std::fprintf(stderr, "gemm_bench: --weights compares the decode path: give --shape M,N,K with M <= 16\n");
      return 2;
    }
    return bench_storage(shape[0], shape[1], shape[2], storages, threads);
  }
  if (shape.size() == 3) {
    for (int t : threads) bench_linear(shape[0], shape[1], shape[2], t);
    if (shape[0] <= 16)
      for (int t : threads) bench_linear(shape[0], shape[1], shape[2], t, true);
    return 0;
  }
  // Prefill projections.
  const index_t large[][3] = {{4096, 512, 512}, {4096, 2048, 512}, {2048, 2048, 2048}, {1000, 1000, 1000}};
  for (const auto& s : large)
    for (int t : threads) bench_linear(s[0], s[1], s[2], t);
  // Decode projections: weights hot in cache, then cold (streamed from memory).
  const index_t small[][2] = {{2048, 2048}, {1024, 512}};
  for (const auto& s : small)
    for (index_t m : {1, 4, 16}) {
      if (quick && m == 4) continue;
      for (int t : threads) bench_linear(m, s[0], s[1], t);
      for (int t : threads) bench_linear(m, s[0], s[1], t, true);
    }
  // Attention tiles, one thread.
  const index_t tiles[][3] = {{64, 64, 64}, {128, 128, 64}, {64, 64, 512}, {128, 128, 512}};
  for (const auto& s : tiles) bench_tile(true, s[0], s[1], s[2]);
  for (const auto& s : tiles) bench_tile(false, s[0], s[2], s[1]);  // P (M, keys) . V (keys, d)
  return 0;
}
