// A device backend's kernel set one kernel at a time against the reference kernels, on the backend this
// executable is built for: thrust_omp (built with g++, run in CI), thrust_cuda or cuda (built by nvcc from
// tests/cuda/, run where a GPU is). Inputs are made on the host, copied into the backend's
// memory space, and results copied back: strided views (ld > cols), in-place calls, GQA and MQA heads, sliding
// windows, chunks that extend a cache, batches of two, float and double. Then the storage axis: bfloat16 and
// float16 weights and caches with float or double arithmetic, against the reference backend running the same
// numeric policy and against the exact model. And the memory spaces: transfers round-trip, scratch grows once.
#include <catch2/catch.hpp>

#if !defined(SESSA_TEST_THRUST_CUDA) && !defined(SESSA_TEST_CUDA)
#define SESSA_TEST_THRUST_OMP 1
#endif
#include "support.hpp"

#include <limits>

using namespace sessa;
using sessa::test::max_rel_diff;

namespace {

#if defined(SESSA_TEST_CUDA)
using TB = backend::cuda;
#elif defined(SESSA_TEST_THRUST_CUDA)
using TB = backend::thrust_cuda;
#else
using TB = backend::thrust_omp;
#endif
using S = space_of<TB>;
using ref = backend::kernels<backend::reference>;
using dev = backend::kernels<TB>;

template <class T>
constexpr double tol() {
  return std::is_same_v<T, float> ? 2e-5 : 1e-12;
}

/// Tolerance of a model with narrow storage P on TB against the reference backend running the same policy.
/// backend::cuda multiplies narrow weights on the tensor cores, which round the activations to the storage
/// type too (an operand rounding of 2^-8 for bfloat16, 2^-11 for float16, per product); the reference and the
/// Thrust kernels widen the weights and keep the activations. Other backends run the reference's math.
template <class P>
constexpr double storage_tol() {
  using T = compute_t<P>;
#if defined(SESSA_TEST_CUDA)
  if constexpr (std::is_same_v<T, float>) return std::is_same_v<weight_t<P>, bfloat16> ? 3e-2 : 5e-3;
#endif
  return std::is_same_v<T, float> ? 1e-4 : 1e-9;
}

/// A host tensor (rows, ld) of random values and its copy in the backend's space; views are column blocks.
template <class T>
struct pair {
  tensor<T> h;
  tensor<T, S> d;
  index_t rows, cols, ld;
  pair(index_t r, index_t c, index_t pad, std::uint64_t seed, double scale = 1.0)
      : h(test::random_tensor<T>({r, c + pad}, seed, scale)), d(to_space<S>(h)), rows(r), cols(c), ld(c + pad) {}
  matrix<T> hv() { return {h.data() + (ld - cols), rows, cols, ld}; }
  matrix<T, S> dv() { return {d.data() + (ld - cols), rows, cols, ld}; }
  /// The device values back on the host, in the host tensor's place: compare with values().
  std::vector<double> device_values() const {
    const tensor<T> back = to_host(d);
    return values_of(back);
  }
  std::vector<double> host_values() const { return values_of(h); }

 private:
  std::vector<double> values_of(const tensor<T>& t) const {
    std::vector<double> v;
    for (index_t i = 0; i < rows; ++i)
      for (index_t k = ld - cols; k < ld; ++k) v.push_back(static_cast<double>(t[i * ld + k]));
    return v;
  }
};

/// A host cache and a device cache of the same random contents: k, v, kb for [0, pos0 + n), s for [0, pos0).
template <class T>
struct cache_pair {
  layer_cache<T, backend::reference> h;
  layer_cache<T, TB> d;
  /// With fill_chunk false, the chunk's rows [pos0, pos0 + n) are left zero (for the append to write).
  cache_pair(const layer_config& c, index_t batch, index_t pos0, index_t n, std::uint64_t seed, bool fill_chunk = true)
      : h(c, batch, pos0 + n + 2), d(c, batch, pos0 + n + 2) {
    random_stream rng(seed);
    const index_t filled = fill_chunk ? pos0 + n : pos0;
    for (index_t b = 0; b < batch; ++b) {
      for (index_t h2 = 0; h2 < c.n_kv_heads; ++h2)
        for (index_t t = 0; t < h.capacity(); ++t)
          for (index_t k = 0; k < c.head_dim(); ++k) h.k(b, h2)(t, k) = h.v(b, h2)(t, k) = T(0);
      for (index_t t = 0; t < h.capacity(); ++t)
        for (index_t k = 0; k < c.d_model; ++k) h.kb(b)(t, k) = h.s(b)(t, k) = T(0);
    }
    for (index_t b = 0; b < batch; ++b) {
      for (index_t h2 = 0; h2 < c.n_kv_heads; ++h2)
        for (index_t t = 0; t < filled; ++t)
          for (index_t k = 0; k < c.head_dim(); ++k) {
            h.k(b, h2)(t, k) = static_cast<T>(rng.normal());
            h.v(b, h2)(t, k) = static_cast<T>(rng.normal());
          }
      for (index_t t = 0; t < filled; ++t)
        for (index_t k = 0; k < c.d_model; ++k) {
          h.kb(b)(t, k) = static_cast<T>(0.3 * rng.normal());
          h.s(b)(t, k) = t < pos0 ? static_cast<T>(rng.normal()) : T(0);
        }
    }
    // The same bytes in the device cache: the views' base pointers cover (batch, Hkv, cap, d) and (batch, cap, D).
    const auto hv = std::as_const(h).view();
    const auto dv = d.view();
    const index_t kv = h.batch() * c.n_kv_heads * h.capacity() * c.head_dim(), fb = h.batch() * h.capacity() * c.d_model;
    memory::copy_n(hv.k_base(), kv, dv.k_base());
    memory::copy_n(hv.v_base(), kv, dv.v_base());
    memory::copy_n(hv.kb_base(), fb, dv.kb_base());
    memory::copy_n(hv.s_base(), fb, dv.s_base());
  }
  /// s rows [0, rows) of every sequence, from the device cache and from the host cache.
  std::pair<std::vector<double>, std::vector<double>> s_rows(index_t rows) {
    const index_t D = h.d_model(), fb = h.batch() * h.capacity() * D;
    buffer<T> back(fb);
    memory::copy_n(std::as_const(d).view().s_base(), fb, back.data());
    std::vector<double> a, b;
    for (index_t bb = 0; bb < h.batch(); ++bb)
      for (index_t t = 0; t < rows; ++t)
        for (index_t k = 0; k < D; ++k) {
          a.push_back(static_cast<double>(back[(bb * h.capacity() + t) * D + k]));
          b.push_back(static_cast<double>(h.s(bb)(t, k)));
        }
    return {a, b};
  }
};

}  // namespace

TEMPLATE_TEST_CASE("Thrust kernels match the reference kernels: dense and elementwise", "[thrust]", float, double) {
  using T = TestType;
  backend::context<backend::reference> rc;
  backend::context<TB> dc;
  const auto [M, K, N] = GENERATE(table<index_t, index_t, index_t>({{1, 8, 5}, {7, 33, 19}, {40, 64, 96}}));
  CAPTURE(M, K, N);

  SECTION("linear, with and without bias, = and +=") {
    pair<T> x(M, K, 3, 1), w(N, K, 1, 2), bias(1, N, 0, 3), y(M, N, 2, 4);
    for (bool acc : {false, true})
      for (bool with_bias : {false, true}) {
        CAPTURE(acc, with_bias);
        ref::linear(rc, cmatrix<T>(x.hv()), cmatrix<T>(w.hv()), with_bias ? bias.h.data() : nullptr, y.hv(), acc);
        dev::linear(dc, cmatrix<T, S>(x.dv()), cmatrix<T, S>(w.dv()),
                    with_bias ? pointer<const T, S>(bias.d.data()) : pointer<const T, S>{}, y.dv(), acc);
        CHECK(max_rel_diff(y.device_values(), y.host_values()) <= tol<T>());
      }
  }
  SECTION("layer_norm out of place and in place; gelu; multiply with aliasing; copy") {
    pair<T> x(M, K, 2, 5, 2.0), g(1, K, 0, 6), b(1, K, 0, 7), y(M, K, 1, 8);
    ref::layer_norm(rc, cmatrix<T>(x.hv()), g.h.data(), b.h.data(), T(1e-5), y.hv());
    dev::layer_norm(dc, cmatrix<T, S>(x.dv()), g.d.data(), b.d.data(), T(1e-5), y.dv());
    CHECK(max_rel_diff(y.device_values(), y.host_values()) <= tol<T>());
    ref::layer_norm(rc, cmatrix<T>(x.hv()), g.h.data(), b.h.data(), T(1e-5), x.hv());
    dev::layer_norm(dc, cmatrix<T, S>(x.dv()), g.d.data(), b.d.data(), T(1e-5), x.dv());
    CHECK(max_rel_diff(x.device_values(), x.host_values()) <= tol<T>());
    ref::gelu(rc, x.hv());
    dev::gelu(dc, x.dv());
    CHECK(max_rel_diff(x.device_values(), x.host_values()) <= tol<T>());
    ref::multiply(rc, cmatrix<T>(x.hv()), cmatrix<T>(y.hv()), y.hv());
    dev::multiply(dc, cmatrix<T, S>(x.dv()), cmatrix<T, S>(y.dv()), y.dv());
    CHECK(max_rel_diff(y.device_values(), y.host_values()) <= tol<T>());
    pair<T> z(M, K, 4, 9);
    ref::copy(rc, cmatrix<T>(y.hv()), z.hv());
    dev::copy(dc, cmatrix<T, S>(y.dv()), z.dv());
    CHECK(max_rel_diff(z.device_values(), z.host_values()) == 0.0);
  }
  SECTION("gain; rope at positions pos0 + r % n") {
    pair<T> g(1, N, 0, 10);
    ref::gain(rc, g.h.data(), N, T(0.9));
    dev::gain(dc, g.d.data(), N, T(0.9));
    CHECK(max_rel_diff(g.device_values(), g.host_values()) <= tol<T>());
    const index_t d = 8, heads = 3;
    const buffer<float> freq_h = rope::inv_freq_table(d);
    const buffer<float, S> freq_d = to_space<S>(freq_h);
    for (index_t pos0 : {index_t{0}, index_t{517}}) {
      pair<T> x(2 * M, heads * d, 2, 11);
      ref::rope(rc, x.hv(), d, pos0, M, freq_h.data());
      dev::rope(dc, x.dv(), d, pos0, M, freq_d.data());
      CAPTURE(pos0);
      CHECK(max_rel_diff(x.device_values(), x.host_values()) <= tol<T>());
    }
  }
  SECTION("embed") {
    pair<T> table(N, K, 0, 12), h(4, K, 1, 13);
    const std::vector<std::int64_t> tok = {0, N - 1, N / 2, 0};
    buffer<std::int64_t, S> tok_d(4);
    memory::copy_n(tok.data(), 4, tok_d.data());
    ref::embed(rc, cmatrix<T>(table.hv()), tok.data(), h.hv());
    dev::embed(dc, cmatrix<T, S>(table.dv()), pointer<const std::int64_t, S>(tok_d.data()), h.dv());
    CHECK(max_rel_diff(h.device_values(), h.host_values()) == 0.0);
  }
}

TEMPLATE_TEST_CASE("Thrust kernels match the reference kernels: cache append, attention, feedback", "[thrust]", float,
                   double) {
  using T = TestType;
  backend::context<backend::reference> rc;
  backend::context<TB> dc;
  const layer_config c = GENERATE(layer_config{32, 4, 2, true, 0.999, 1e-5}, layer_config{24, 3, 1, true, 0.9, 1e-5},
                                  layer_config{16, 1, 1, false, 0.5, 1e-5});
  const auto [batch, pos0, n] = GENERATE(table<index_t, index_t, index_t>({{1, 0, 9}, {2, 0, 1}, {2, 13, 7}, {1, 40, 1}}));
  CAPTURE(c.d_model, c.n_heads, c.n_kv_heads, batch, pos0, n);
  const index_t rows = batch * n, D = c.d_model;

  SECTION("append_cache writes keys, values and feedback keys at [pos0, pos0 + n)") {
    cache_pair<T> cp(c, batch, pos0, n, 20, /*fill_chunk=*/false);
    pair<T> kv(rows, 2 * c.kv_dim(), 1, 21), kb(rows, D, 3, 22);
    ref::append_cache(rc, c, cmatrix<T>(kv.hv()), cmatrix<T>(kb.hv()), cp.h.view(), pos0, n);
    dev::append_cache(dc, c, cmatrix<T, S>(kv.dv()), cmatrix<T, S>(kb.dv()), cp.d.view(), pos0, n);
    const index_t all = batch * c.n_kv_heads * cp.h.capacity() * c.head_dim(), fb = batch * cp.h.capacity() * D;
    buffer<T> k(all), v(all), kbb(fb);
    memory::copy_n(std::as_const(cp.d).view().k_base(), all, k.data());
    memory::copy_n(std::as_const(cp.d).view().v_base(), all, v.data());
    memory::copy_n(std::as_const(cp.d).view().kb_base(), fb, kbb.data());
    const auto hv = std::as_const(cp.h).view();
    CHECK(std::equal(k.data(), k.data() + all, hv.k_base()));
    CHECK(std::equal(v.data(), v.data() + all, hv.v_base()));
    CHECK(std::equal(kbb.data(), kbb.data() + fb, hv.kb_base()));
  }
  SECTION("attention: causal and a sliding window of 3") {
    cache_pair<T> cp(c, batch, pos0, n, 23);
    pair<T> q(rows, D, 2, 24), o(rows, D, 1, 25);
    ref::attention(rc, attention::causal{}, c, cmatrix<T>(q.hv()), std::as_const(cp.h).view(), pos0, n, o.hv());
    dev::attention(dc, attention::causal{}, c, cmatrix<T, S>(q.dv()), std::as_const(cp.d).view(), pos0, n, o.dv());
    CHECK(max_rel_diff(o.device_values(), o.host_values()) <= tol<T>());
    ref::attention(rc, attention::sliding_window{3}, c, cmatrix<T>(q.hv()), std::as_const(cp.h).view(), pos0, n, o.hv());
    dev::attention(dc, attention::sliding_window{3}, c, cmatrix<T, S>(q.dv()), std::as_const(cp.d).view(), pos0, n,
                   o.dv());
    CHECK(max_rel_diff(o.device_values(), o.host_values()) <= tol<T>());
  }
  SECTION("feedback: out and the cache's s rows") {
    cache_pair<T> cp(c, batch, pos0, n, 26);
    pair<T> qb(rows, D, 1, 27), f(rows, D, 2, 28), g(1, rows, 0, 29), o(rows, D, 0, 30);
    ref::gain(rc, g.h.data(), rows, T(0.99));
    dev::gain(dc, g.d.data(), rows, T(0.99));
    ref::feedback(rc, c, cmatrix<T>(qb.hv()), g.h.data(), cmatrix<T>(f.hv()), cp.h.view(), pos0, n, o.hv());
    dev::feedback(dc, c, cmatrix<T, S>(qb.dv()), pointer<const T, S>(g.d.data()), cmatrix<T, S>(f.dv()), cp.d.view(),
                  pos0, n, o.dv());
    CHECK(max_rel_diff(o.device_values(), o.host_values()) <= tol<T>());
    const auto [got, want] = cp.s_rows(pos0 + n);
    CHECK(max_rel_diff(got, want) <= tol<T>());
  }
}

TEMPLATE_TEST_CASE("bfloat16 and float16 storage: weights and cache narrow, arithmetic in the compute type", "[thrust][storage]",
                   (precision<float, bfloat16>), (precision<double, bfloat16>), (precision<float, float16>)) {
  using P = TestType;
  using T = compute_t<P>;
  using W = weight_t<P>;
  const layer_config cfg{32, 4, 2, true, 0.999, 1e-5};
  const auto w = random_layer_weights<W>(cfg, 41);
  const tensor<T> x = test::random_tensor<T>({2, 30, 32}, 42);
  // The same numeric policy on the reference backend: the same math.
  const test::host_model<layer<P, backend::reference>> R(cfg, w);
  const test::host_model<layer<P, TB>> L(cfg, w);
  const tensor<T> want = R.forward(x);
  CHECK(max_rel_diff(L.forward(x).span(), want.span()) <= storage_tol<P>());
  // Decode agrees with prefill (the cache is narrow in both, written and read the same way).
  auto cache = L.init_cache(2, 30);
  tensor<T> yd(x.shape());
  for (index_t t = 0; t < 30; ++t) {
    tensor<T> xt({2, 32});
    std::copy_n(test::slice_tokens(x, t, 1).data(), xt.size(), xt.data());
    const tensor<T> yt = L.decode_step(xt, cache);
    test::put_tokens(yd, tensor<T>({2, 1, 32}, yt.span()), t);
  }
  CHECK(max_rel_diff(yd.span(), want.span()) <= storage_tol<P>());
  // Against the exact model on the same (narrow-valued) weights: only the cache rounding differs.
  layer_weights<T> wide;
  for_each_parameter(cfg, wide, [](const std::string&, const shape_t& s, buffer<T>& b) { b.resize(shape_numel(s)); });
  {
    std::vector<const buffer<W>*> src;
    for_each_parameter(cfg, w, [&](const std::string&, const shape_t&, const buffer<W>& b) { src.push_back(&b); });
    std::size_t i = 0;
    for_each_parameter(cfg, wide, [&](const std::string&, const shape_t&, buffer<T>& b) {
      for (index_t k = 0; k < b.size(); ++k) b[k] = widen<T>((*src[i])[k]);
      ++i;
    });
    wide.mixer.rope_inv_freq = w.mixer.rope_inv_freq;
  }
  const layer<T, backend::reference> exact(cfg, wide);
  const double err = max_rel_diff(want.span(), exact.forward(x).span());
  INFO("narrow cache vs exact cache: " << err);
  CHECK(err > 0);      // the cache really is narrow
  CHECK(err < 5e-2);   // and close: a few ulps of the storage type
}

namespace {
template <class Sp>
constexpr bool buffer_indexable = requires(buffer<float, Sp> b) { b[0]; };
template <class Sp>
constexpr bool tensor_spannable = requires(tensor<float, Sp> t) { t.span(); };
template <class Sp>
constexpr bool matrix_indexable = requires(matrix<float, Sp> m) { m(0, 0); };
template <class Sp>
constexpr bool pointer_dereferenceable = requires(pointer<float, Sp> p) { *p; };
}  // namespace

TEST_CASE("memory spaces: explicit transfers round-trip, scratch grows once", "[thrust][memory]") {
  static_assert(!S::host_accessible);
  static_assert(!buffer_indexable<S> && buffer_indexable<memory::host>, "device buffers have no host element access");
  static_assert(!tensor_spannable<S> && tensor_spannable<memory::host>, "device tensors have no host span");
  static_assert(!matrix_indexable<S> && matrix_indexable<memory::host>, "device views have no host element access");
  static_assert(!pointer_dereferenceable<S> && pointer_dereferenceable<memory::host>, "device pointers do not deref");
  const tensor<double> x = test::random_tensor<double>({3, 5, 7}, 1);
  const tensor<double, S> xd = to_device<S>(x);
  CHECK(xd.shape() == x.shape());
  const tensor<double> back = to_host(xd);
  CHECK(std::equal(back.span().begin(), back.span().end(), x.span().begin()));
  // Within the space: a deep copy.
  tensor<double, S> copy = xd;
  CHECK(raw(copy.data()) != raw(xd.data()));
  CHECK(test::max_rel_diff(to_host(copy).span(), x.span()) == 0.0);
  // A zeroed buffer reads back as zeros.
  buffer<float, S> z(9);
  z.zero();
  const buffer<float> zh = to_host(z);
  CHECK(std::all_of(zh.span().begin(), zh.span().end(), [](float v) { return v == 0.0f; }));
  // The arena: a slot grows when asked for more, keeps its place otherwise; a borrowed slot refuses to grow.
  scratch_arena<S> arena;
  const auto p1 = arena.get<float>(1, 100);
  CHECK(arena.get<float>(1, 50) == p1);
  CHECK(arena.bytes() >= 400);
  buffer<std::byte, S> lent(64);
  arena.borrow(2, lent.data(), 64);
  CHECK_NOTHROW(arena.get<double>(2, 8));
  CHECK_THROWS_WITH(arena.get<double>(2, 9), Catch::Contains("slot 2 borrows 64 bytes"));
  CHECK_THROWS_WITH(arena.get<float>(7, 1), Catch::Contains("slot 7 does not exist"));
}

TEST_CASE("a Thrust-backend model keeps its weights, caches and outputs in its own space", "[thrust][memory]") {
  const decoder_config cfg{{16, 2, 1, true, 0.99, 1e-5}, 13, 2, false};
  const decoder<float, TB> M(cfg, random_decoder_weights<float>(cfg, 3));
  static_assert(std::is_same_v<std::remove_cvref_t<decltype(M.weights().embedding)>, buffer<float, S>>);
  auto cache = M.init_cache(1, 8);
  static_assert(std::is_same_v<std::remove_cvref_t<decltype(cache.layers[0].view())>, cache_view<float, S>>);
  const std::int64_t tok[] = {1, 2, 3};
  const tensor<float, S> logits = M.forward(tensor<std::int64_t>({1, 3}, std::span<const std::int64_t>(tok)), cache);
  CHECK(logits.shape() == shape_t{1, 3, 13});
  // Errors are checked on the host before any kernel runs, as on every backend.
  const std::int64_t bad = 13;
  CHECK_THROWS_WITH(M.decode_step(std::span<const std::int64_t>(&bad, 1), cache), Catch::Contains("token id 13"));
  CHECK(cache.length() == 3);
}
