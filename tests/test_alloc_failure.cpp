// An allocation that fails inside one of the cpu backend's OpenMP regions (a per-thread pack or tile buffer
// growing on first use) reaches the caller as std::bad_alloc: it never crosses the region's boundary (which
// would call std::terminate), and a decoder's caches are left as the call found them.
//
// This executable replaces the global aligned operator new (every library buffer comes from it) with one that
// can be told to fail inside parallel regions. Each case grows buffers of a scalar type no earlier case used,
// and checks that the failure was really injected, so a case cannot pass without exercising the path.
#include <catch2/catch.hpp>

#include <sessa/sessa.hpp>

#include <atomic>
#include <cstdlib>
#include <new>

#include "support.hpp"

#if !SESSA_HAS_OPENMP
#error "test_alloc_failure needs OpenMP (tests/CMakeLists.txt builds it only then)"
#endif
#include <omp.h>

namespace {
std::atomic<bool> fail_in_regions{false};
std::atomic<int> injected{0};
}  // namespace

// A replacement allocator pairs the global operator new with std::free on purpose: once GCC inlines a replaced
// operator delete into a caller, it would report free() on memory from operator new.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(std::size_t n, std::align_val_t al) {
  if (fail_in_regions.load() && omp_in_parallel()) {
    injected.fetch_add(1);
    throw std::bad_alloc();
  }
  const std::size_t a = static_cast<std::size_t>(al);
  if (void* p = std::aligned_alloc(a, (n + a - 1) / a * a)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

using namespace sessa;

namespace {
/// Arms the failure for its lifetime.
struct armed {
  armed() {
    injected = 0;
    fail_in_regions = true;
  }
  ~armed() { fail_in_regions = false; }
};
}  // namespace

TEST_CASE("a pack buffer that cannot grow inside a threaded GEMM gives bad_alloc to the caller",
          "[robustness][alloc]") {
  // Large enough for the blocked GEMM on 2 threads (threads_for: over 4 MFLOP).
  const index_t M = 300, N = 260, K = 200;
  const tensor<float> x = test::random_tensor<float>({M, K}, 1), w = test::random_tensor<float>({N, K}, 2);
  tensor<float> y({M, N});
  const auto run = [&] {
    backend::simd::linear<float>(cmatrix<float>(x.data(), M, K), cmatrix<float>(w.data(), N, K), nullptr,
                                 matrix<float>(y.data(), M, N), false, 2);
  };
  {
    armed a;
    CHECK_THROWS_AS(run(), std::bad_alloc);
  }
  REQUIRE(injected > 0);
  // The library is usable afterwards, with the right numbers.
  run();
  tensor<float> want({M, N});
  for (index_t i = 0; i < M; ++i)
    for (index_t j = 0; j < N; ++j) {
      double s = 0;
      for (index_t k = 0; k < K; ++k) s += static_cast<double>(x.data()[i * K + k]) * w.data()[j * K + k];
      want.data()[i * N + j] = static_cast<float>(s);
    }
  CHECK(test::max_rel_diff(y.span(), want.span()) < 1e-5);
}

TEST_CASE("a tile buffer that cannot grow inside threaded attention or feedback leaves the decoder's caches intact",
          "[robustness][alloc]") {
  set_num_threads(2);
  const decoder_config cfg{{64, 4, 2, true, 0.9, 1e-5}, 50, 2, true};
  const auto w = random_decoder_weights<double>(cfg, 3);
  const decoder<double, backend::cpu> M(cfg, w);
  const decoder<double, backend::reference> R(cfg, w);
  const tensor<std::int64_t> a = test::random_tokens(2, 40, 50, 1), b = test::random_tokens(2, 300, 50, 2);
  auto cache = M.init_cache(2, 400);
  (void)M.forward(a, cache);
  {
    armed f;
    CHECK_THROWS_AS(M.forward(b, cache), std::bad_alloc);
  }
  REQUIRE(injected > 0);
  for (const auto& l : cache.layers) CHECK(l.length() == 40);
  const tensor<double> got = M.forward(b, cache);
  auto ref_cache = R.init_cache(2, 400);
  (void)R.forward(a, ref_cache);
  const tensor<double> want = R.forward(b, ref_cache);
  CHECK(test::max_rel_diff(got.span(), want.span()) < 1e-9);
  set_num_threads(0);
}
