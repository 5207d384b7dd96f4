// The core's memory and numeric types on the host: the storage types bfloat16 and float16 against the
// safetensors codec's independent rounding (every float16 pattern, millions of random floats, ties, subnormals,
// overflow, NaN), the numeric-policy traits, host memory spaces, borrowed buffers, the scratch arena; and the
// storage axis on the reference backend: a model whose weights and cache are bfloat16 runs, loads a BF16 file
// without rounding, agrees with prefill = decode, and differs from the exact model only by the cache's rounding.
#include <catch2/catch.hpp>

#include <sessa/io/model_file.hpp>

#include <bit>
#include <cmath>
#include <limits>

#include "support.hpp"

using namespace sessa;
using sessa::test::max_rel_diff;

namespace {

/// Random floats spread over every binade from below the float16 subnormals to beyond float16's range.
std::vector<float> probe_values(std::size_t n, std::uint64_t seed) {
  random_stream rng(seed);
  std::vector<float> v;
  for (std::size_t i = 0; i < n; ++i) {
    const double mag = std::ldexp(1.0 + rng.uniform(), static_cast<int>(rng.next() % 80) - 40);
    v.push_back(static_cast<float>(rng.next() & 1 ? mag : -mag));
  }
  return v;
}

/// A space tag for pointer arithmetic checks (no allocation needed).
struct device_like {
  static constexpr std::string_view name = "x";
  static constexpr bool host_accessible = false;
};

}  // namespace

TEST_CASE("float16 round-trips every pattern and rounds like the safetensors codec", "[core][numeric]") {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const float16 h = float16::from_bits(static_cast<std::uint16_t>(b));
    const float f = static_cast<float>(h);
    // Bit-exact widening, NaN payloads included.
    REQUIRE(std::bit_cast<std::uint32_t>(f) == std::bit_cast<std::uint32_t>(io::decode_f16(static_cast<std::uint16_t>(b))));
    if (std::isnan(f)) {
      CHECK(std::isnan(static_cast<float>(float16(f))));
    } else {
      REQUIRE(float16(f).bits == b);
    }
  }
  for (float x : probe_values(50000, 1)) {
    INFO(x);
    REQUIRE(float16(x).bits == io::encode_f16(static_cast<double>(x)));
  }
  // Ties to even at 1 + 2^-11 (halfway between 1 and the next float16) and at the largest finite value.
  CHECK(float16(1.0f + 0x1p-11f).bits == float16(1.0f).bits);
  CHECK(float16(1.0f + 3 * 0x1p-11f).bits == float16(1.0f + 0x1p-9f).bits);
  CHECK(static_cast<float>(float16(65519.0f)) == 65504.0f);
  CHECK(std::isinf(static_cast<float>(float16(65520.0f))));
  CHECK(static_cast<float>(float16(0x1p-24f)) == 0x1p-24f);  // smallest subnormal
  CHECK(float16(0x1p-25f).bits == 0);                         // half of it: ties to even, zero
  CHECK(std::signbit(static_cast<float>(float16(-0.0f))));
}

TEST_CASE("bfloat16 rounds like the safetensors codec", "[core][numeric]") {
  for (float x : probe_values(50000, 2)) {
    INFO(x);
    REQUIRE(bfloat16(x).bits == io::encode_bf16(static_cast<double>(x)));
    REQUIRE(static_cast<float>(bfloat16(x)) == io::decode_bf16(bfloat16(x).bits));
  }
  CHECK(bfloat16(1.0f + 0x1p-8f).bits == bfloat16(1.0f).bits);  // a tie: to even
  CHECK(static_cast<float>(bfloat16(1.0f + 0x1p-7f)) == 1.0f + 0x1p-7f);
  CHECK(std::isinf(static_cast<float>(bfloat16(std::numeric_limits<float>::max()))));
  CHECK(std::isnan(static_cast<float>(bfloat16(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(std::isnan(static_cast<float>(bfloat16(std::bit_cast<float>(0x7F800001u)))));  // a NaN that would round to inf
  CHECK(widen<double>(bfloat16(0.5f)) == 0.5);
  CHECK(narrow<bfloat16>(0.5).bits == bfloat16(0.5f).bits);
}

TEST_CASE("numeric policies name compute, weight and cache types", "[core][numeric]") {
  static_assert(std::is_same_v<compute_t<float>, float> && std::is_same_v<cache_t<double>, double>);
  using P = precision<float, bfloat16>;
  static_assert(std::is_same_v<compute_t<P>, float> && std::is_same_v<weight_t<P>, bfloat16> &&
                std::is_same_v<cache_t<P>, bfloat16>);
  static_assert(numeric<float> && numeric<P> && numeric<precision<double, float16>> && !numeric<int>);
  static_assert(storage_name<bfloat16>() == "bf16" && storage_name<float16>() == "f16");
  // The reference and cpu backends read every storage type, weights and cache.
  static_assert(backend::kernel_set<backend::reference, P>);
  static_assert(backend::kernel_set<backend::cpu, double> && backend::kernel_set<backend::cpu, P> &&
                backend::kernel_set<backend::cpu, precision<double, double, float16>>);
}

TEST_CASE("host memory: buffers, borrowing, transfers and the scratch arena", "[core][memory]") {
  static_assert(std::is_same_v<pointer<float, memory::host>, float*>);
  buffer<float> a(5, 2.0f);
  const buffer<float> b = to_space<memory::host>(a);  // a deep copy
  CHECK(b.data() != a.data());
  CHECK(b[4] == 2.0f);
  float store[8] = {};
  auto borrowed = buffer<float>::borrow(store, 8);
  CHECK_FALSE(borrowed.owning());
  borrowed.resize(6);  // within what it borrowed
  CHECK_THROWS_WITH(borrowed.resize(9), Catch::Contains("borrowed storage of 8 elements cannot hold 9"));
  memory::copy_n(a.data(), 5, borrowed.data());
  CHECK(store[3] == 2.0f);
  CHECK_THROWS_AS(buffer<float>(-1), shape_error);
  const tensor<double> t({2, 3}, 1.5);
  const tensor<double> u = to_host(t);
  CHECK(u.shape() == t.shape());
  CHECK(u[5] == 1.5);
  CHECK_THROWS_WITH((tensor<double>({2, 3}, buffer<double>(5))), Catch::Contains("5 values given for shape (2, 3)"));
  scratch_arena<> arena;
  float* p = arena.get<float>(0, 10);
  CHECK(arena.get<float>(0, 3) == p);  // no regrowth for less
  CHECK(arena.get<double>(0, 100) != nullptr);
  CHECK(arena.bytes() >= 800);
  CHECK_THROWS_AS(arena.get<float>(-1, 1), error);
  // space_ptr: arithmetic without dereference.
  float raw_store[4] = {1, 2, 3, 4};
  const space_ptr<float, device_like> q(raw_store);
  CHECK(raw(q + 2) == raw_store + 2);
  CHECK((q + 3) - q == 3);
  const space_ptr<const float, device_like> cq = q;
  CHECK(raw(cq) == raw_store);
  CHECK(space_ptr<float, device_like>{} == nullptr);
}

TEMPLATE_TEST_CASE("bfloat16 storage on the reference backend: the cache is narrow, the rest exact", "[core][storage]",
                   float, double) {
  using T = TestType;
  using P = precision<T, bfloat16>;
  const layer_config cfg{32, 4, 2, true, 0.999, 1e-5};
  const auto w = random_layer_weights<bfloat16>(cfg, 5);
  const layer<P, backend::reference> L(cfg, w);
  static_assert(std::is_same_v<typename decltype(L.init_cache(1, 1))::value_type, bfloat16>);
  const tensor<T> x = test::random_tensor<T>({2, 20, 32}, 6);
  const tensor<T> y = L.forward(x);
  // Prefill = decode (both write and read the same narrow cache).
  auto cache = L.init_cache(2, 20);
  CHECK(cache.bytes() == 2 * 20 * cfg.cache_values_per_token() * 2);  // 2 bytes per value
  tensor<T> yd(x.shape());
  for (index_t t = 0; t < 20; ++t) {
    tensor<T> xt({2, 32});
    std::copy_n(test::slice_tokens(x, t, 1).data(), xt.size(), xt.data());
    test::put_tokens(yd, tensor<T>({2, 1, 32}, L.decode_step(xt, cache).span()), t);
  }
  CHECK(max_rel_diff(yd.span(), y.span()) <= (std::is_same_v<T, float> ? 1e-5 : 1e-12));
  // The exact model on the same weights differs by the cache's rounding only: a few bf16 ulps.
  layer_weights<T> wide;
  std::vector<const buffer<bfloat16>*> src;
  for_each_parameter(cfg, w, [&](const std::string&, const shape_t&, const buffer<bfloat16>& b) { src.push_back(&b); });
  std::size_t i = 0;
  for_each_parameter(cfg, wide, [&](const std::string&, const shape_t& s, buffer<T>& b) {
    b.resize(shape_numel(s));
    for (index_t k = 0; k < b.size(); ++k) b[k] = widen<T>((*src[i])[k]);
    ++i;
  });
  const double err = max_rel_diff(y.span(), layer<T, backend::reference>(cfg, wide).forward(x).span());
  INFO("bf16 cache vs exact: " << err);
  CHECK(err > 0);
  CHECK(err < 5e-2);
}

TEST_CASE("a BF16 weight file loads into bfloat16 storage without rounding", "[core][storage][io]") {
  const std::string path = std::string(SESSA_TEST_DATA_DIR) + "/layer_d32_h4_kv2_bf16.model.safetensors";
  using P = precision<float, bfloat16>;
  const auto L = io::load_layer<P, backend::reference>(path);
  const io::safetensors_file f = io::safetensors_file::load(path);
  const std::vector<float> want = f.read_as<float>("W_in.weight");
  const auto lw = L.weights();
  const auto& got = lw.in_w;
  REQUIRE(got.size() == static_cast<index_t>(want.size()));
  for (index_t k = 0; k < got.size(); ++k) REQUIRE(static_cast<float>(got[k]) == want[static_cast<std::size_t>(k)]);
  // And it runs: against the float64 golden output (exact weights, exact cache) within the cache's rounding.
  const io::safetensors_file io_file =
      io::safetensors_file::load(std::string(SESSA_TEST_DATA_DIR) + "/layer_d32_h4_kv2_bf16.io.safetensors");
  const tensor<float> x(io_file.at("x").shape, std::span<const float>(io_file.read_as<float>("x")));
  const double err = max_rel_diff(L.forward(x).span(), io_file.read_as<double>("y"));
  INFO("bf16 storage vs the float64 golden: " << err);
  CHECK(err < 5e-2);
}
