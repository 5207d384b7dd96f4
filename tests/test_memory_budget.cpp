// Memory limits: every request (loading a file, making a cache, a forward call) computes what it will allocate
// and checks it against sessa::set_memory_limit before allocating anything; the error names each size.
//
// This executable counts the bytes the global operator new hands out, so each case also checks the plan is
// honest: a request allocates no more than its plan plus the per-thread kernel buffers (docs/API.md, "Memory
// limits"), and a refused request allocates (almost) nothing.
#include <catch2/catch.hpp>

#include <sessa/io/model_file.hpp>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <new>

#include <malloc.h>

#include "support.hpp"

namespace {
std::atomic<std::int64_t> live{0}, peak{0};
void note(void* p) {
  const auto n = static_cast<std::int64_t>(malloc_usable_size(p));
  const std::int64_t now = live.fetch_add(n) + n;
  std::int64_t old = peak.load();
  while (now > old && !peak.compare_exchange_weak(old, now)) {
  }
}
void* counted(std::size_t n, std::size_t align) {
  void* p = align <= alignof(std::max_align_t) ? std::malloc(n ? n : 1) : std::aligned_alloc(align, (n + align - 1) / align * align);
  if (!p) throw std::bad_alloc();
  note(p);
  return p;
}
void release(void* p) {
  if (!p) return;
  live.fetch_sub(static_cast<std::int64_t>(malloc_usable_size(p)));
  std::free(p);
}

/// Bytes allocated beyond what was live when it started, at the peak of f().
template <class F>
std::int64_t peak_growth(F&& f) {
  const std::int64_t base = live.load();
  peak.store(base);
  f();
  return peak.load() - base;
}

/// Per-thread kernel buffers (GEMM packing, tiles, RoPE tables) are outside the plans: at most this much.
constexpr std::int64_t thread_allowance = std::int64_t{16} << 20;
}  // namespace

// A replacement allocator pairs the global operator new with std::free on purpose: once GCC inlines a replaced
// operator delete into a caller, it would report free() on memory from operator new.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(std::size_t n) { return counted(n, alignof(std::max_align_t)); }
void* operator new[](std::size_t n) { return counted(n, alignof(std::max_align_t)); }
void* operator new(std::size_t n, std::align_val_t a) { return counted(n, static_cast<std::size_t>(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return counted(n, static_cast<std::size_t>(a)); }
// The nothrow forms too (Catch2 uses them): every form of the global operator new must come from one allocator.
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return counted(n, alignof(std::max_align_t));
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return operator new(n, t); }
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  try {
    return counted(n, static_cast<std::size_t>(a));
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t& t) noexcept { return operator new(n, a, t); }
void operator delete(void* p, const std::nothrow_t&) noexcept { release(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { release(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { release(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { release(p); }
void operator delete(void* p) noexcept { release(p); }
void operator delete[](void* p) noexcept { release(p); }
void operator delete(void* p, std::size_t) noexcept { release(p); }
void operator delete[](void* p, std::size_t) noexcept { release(p); }
void operator delete(void* p, std::align_val_t) noexcept { release(p); }
void operator delete[](void* p, std::align_val_t) noexcept { release(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { release(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { release(p); }

using namespace sessa;

namespace {
/// Sets a limit for its lifetime.
struct limit {
  explicit limit(std::uint64_t bytes) { set_memory_limit(bytes); }
  ~limit() { set_memory_limit(0); }
};
}  // namespace

TEST_CASE("a request over the memory limit is refused before it allocates, naming every size", "[budget][errors]") {
  const decoder_config cfg{{32, 4, 2, true, 0.9, 1e-5}, 1000, 2, true};
  const decoder<float, backend::cpu> M(cfg, random_decoder_weights<float>(cfg, 1));
  const tensor<std::int64_t> tokens = test::random_tokens(2, 3000, 1000, 2);
  const memory_plan plan = M.forward_plan(2, 3000, 3000, logits_for::all, true, true);
  // logits alone: 2 x 3000 x 1000 floats = 24 MB.
  REQUIRE(plan.total() > 24'000'000);
  {
    limit l(plan.total() - 1);
    std::string what;
    const std::int64_t grew = peak_growth([&] {
      try {
        (void)M.forward(tokens);
      } catch (const memory_error& e) {
        what = e.what();
      }
    });
    CHECK_THAT(what, Catch::Contains("decoder forward of batch 2 x 3000 tokens needs") &&
                         Catch::Contains("over the memory limit of") && Catch::Contains("logits 24000000 bytes") &&
                         Catch::Contains("cache ") && Catch::Contains("layer workspace "));
    CHECK(grew < 64 * 1024);  // the message, not the request
  }
  {
    limit l(1 << 20);
    CHECK_THROWS_WITH(M.init_cache(4, 100000), Catch::Contains("a decoder cache of 2 layers, batch 4 and capacity 100000 "
                                                               "tokens needs 307200000 bytes (293.0 MiB)"));
    auto cache = M.init_cache(1, 100);  // 2 x 100 x 96 floats: under the limit
    set_memory_limit(200'000);          // under the 400 kB of logits of 100 tokens
    CHECK_THROWS_WITH(M.forward(test::random_tokens(1, 100, 1000, 3), cache), Catch::Contains("logits 400000 bytes"));
    CHECK(cache.length() == 0);  // refused before anything changed
  }
  CHECK_NOTHROW(M.init_cache(4, 1000));
}

TEST_CASE("what a request allocates stays within its plan", "[budget]") {
  const decoder_config cfg{{32, 4, 2, true, 0.9, 1e-5}, 500, 2, false};
  const decoder<float, backend::cpu> M(cfg, random_decoder_weights<float>(cfg, 4));
  const tensor<std::int64_t> tokens = test::random_tokens(2, 600, 500, 5);
  (void)M.forward(test::random_tokens(1, 8, 500, 6));  // the kernels' per-thread buffers exist from here on
  const std::int64_t grew = peak_growth([&] { (void)M.forward(tokens); });
  const auto plan = M.forward_plan(2, 600, 600, logits_for::all, true, true);
  CAPTURE(grew, plan.total());
  CHECK(grew <= static_cast<std::int64_t>(plan.total()) + thread_allowance);
  CHECK(grew >= static_cast<std::int64_t>(plan.total()) / 2);  // and the plan is not a wild overestimate

  // A layer call longer than prefill_block with two sequences (the staging buffer).
  const layer_config lc{16, 2, 1, true, 0.9, 1e-5};
  const layer<float, backend::cpu> L(lc, random_layer_weights<float>(lc, 7));
  const tensor<float> x = test::random_tensor<float>({2, prefill_block + 100, 16}, 8);
  auto cache = L.init_cache(2, prefill_block + 100);
  const std::int64_t g2 = peak_growth([&] { (void)L.forward(x, cache); });
  const auto p2 = L.forward_plan(2, prefill_block + 100, prefill_block + 100);
  CAPTURE(g2, p2.total());
  CHECK(g2 <= static_cast<std::int64_t>(p2.total()) + thread_allowance);
}

TEST_CASE("a plan counts the kernels' tiles at the tile sizes set now", "[budget]") {
  // Long feedback blocks and key tiles (flash_params) make the kernels' scratch far larger than at the default
  // tiles: a feedback block of 2048 rows holds 2048 x 2050 values per sequence (16 MiB, 33 MiB for two); the plans
  // must count them, or a request passes a limit it then exceeds.
  const test::settings_guard guard;
  const layer_config lc{32, 4, 2, true, 0.9, 1e-5};
  const layer<float, backend::cpu> L(lc, random_layer_weights<float>(lc, 9));
  const tensor<float> x = test::random_tensor<float>({2, 600, 32}, 10);
  (void)L.forward(test::random_tensor<float>({1, 8, 32}, 11));  // the per-thread buffers, at the default tiles
  const auto plan_default = L.forward_plan(2, 600, 600, true);
  backend::simd::flash_params.fb_block = 2048;
  backend::simd::flash_params.key_tile = 1024;
  const auto plan = L.forward_plan(2, 600, 600, true);
  CAPTURE(plan_default.total(), plan.total());
  CHECK(plan.total() > plan_default.total() + std::uint64_t{2} * 2000 * 2000 * sizeof(float));
  const std::int64_t grew = peak_growth([&] { (void)L.forward(x); });
  CAPTURE(grew);
  CHECK(grew <= static_cast<std::int64_t>(plan.total()) + thread_allowance);
  CHECK(grew >= static_cast<std::int64_t>(plan.total()) / 2);

  const decoder_config dc{lc, 300, 1, false};
  const decoder<float, backend::cpu> M(dc, random_decoder_weights<float>(dc, 12));
  const tensor<std::int64_t> tokens = test::random_tokens(2, 600, 300, 13);
  const auto dplan = M.forward_plan(2, 600, 600, logits_for::all, true, true);
  const std::int64_t dgrew = peak_growth([&] { (void)M.forward(tokens); });
  CAPTURE(dgrew, dplan.total());
  CHECK(dgrew <= static_cast<std::int64_t>(dplan.total()) + thread_allowance);
  {
    limit l(dplan.total() - 1);  // refused before it allocates, naming the tiles
    CHECK_THROWS_WITH(M.forward(tokens), Catch::Contains("kernel packed tiles"));
  }
}

TEST_CASE("loading is planned too: the file's bytes and the weights", "[budget][io][errors]") {
  const decoder_config cfg{{32, 4, 2, true, 0.9, 1e-5}, 2000, 2, false};
  const auto dir = std::filesystem::temp_directory_path() / "sessa_test_memory_budget";
  std::filesystem::create_directories(dir);
  const auto path = dir / "decoder.safetensors";
  io::save_model(path, cfg, random_decoder_weights<float>(cfg, 9));
  const auto bytes = std::filesystem::file_size(path);
  {
    limit l(bytes - 1);
    CHECK_THROWS_WITH(io::load_decoder<float>(path), Catch::Contains("reading " + path.string() + " needs " +
                                                                     std::to_string(bytes) + " bytes"));
  }
  {
    // Enough for the file, not for float64 weights beside it.
    limit l(bytes + bytes / 2);
    const io::safetensors_file f = io::safetensors_file::load(path);
    CHECK_THROWS_WITH(io::load_decoder<double>(f), Catch::Contains("the weights of a decoder with vocab_size=2000") &&
                                                       Catch::Contains("parameters "));
  }
  CHECK_NOTHROW(io::load_decoder<double>(path));
  std::filesystem::remove_all(dir);
}
