// The cpu backend's flash attention and blocked feedback solve (backend/cpu/attention.hpp, feedback.hpp)
// against the reference kernels, on the same caches and inputs: plain, GQA and MQA heads, head widths
// 8..64, model widths up to 256 (and widths that are no multiple of a SIMD batch), decode (n = 1, with and
// without split-K), chunks of 1..300 tokens crossing every tile and block boundary, chunks that start at 0
// and that extend a cache, batch 1 and 3, causal and sliding windows (1, 5, wider than the sequence), one
// and two threads, default tiles and tiny tiles (many blocks on small inputs). Cache rows the call must not
// read (past the chunk) hold NaN, and so do the chunk's s rows before the feedback writes them, so a read
// out of range or before a write shows up as NaN. Then whole layers: cpu against reference on prefill,
// chunked prefill and decode.
#include <catch2/catch.hpp>

#include "support.hpp"

#include <cstring>
#include <limits>
#include <random>

using namespace sessa;
using sessa::test::max_rel_diff;

namespace {

/// Tolerance of one kernel against the reference, relative to max |reference|.
template <class T>
constexpr double kernel_tol() {
  return std::is_same_v<T, float> ? 1e-4 : 1e-11;
}

using test::settings_guard;

/// The cache of compute type T stored as C (C = T, or bfloat16 / float16).
template <class T, class C>
using cache_of = layer_cache<std::conditional_t<std::is_same_v<T, C>, T, precision<T, T, C>>>;

/// A cache of capacity pos0 + n + 3 whose k, v, kb hold random values for positions [0, pos0 + n) and s for
/// [0, pos0); every other value is NaN.
template <class T, class C = T>
cache_of<T, C> random_cache(const layer_config& c, index_t batch, index_t pos0, index_t n, std::uint64_t seed,
                            double scale) {
  cache_of<T, C> cache(c, batch, pos0 + n + 3);
  random_stream rng(seed);
  const T nan = std::numeric_limits<T>::quiet_NaN();
  auto fill = [&](matrix<C> m, index_t valid, double sd) {
    for (index_t t = 0; t < m.rows; ++t)
      for (index_t k = 0; k < m.cols; ++k) m(t, k) = narrow<C>(t < valid ? static_cast<T>(sd * rng.normal()) : nan);
  };
  for (index_t b = 0; b < batch; ++b) {
    for (index_t h = 0; h < c.n_kv_heads; ++h) {
      fill(cache.k(b, h), pos0 + n, scale);
      fill(cache.v(b, h), pos0 + n, 1.0);
    }
    fill(cache.kb(b), pos0 + n, scale);
    fill(cache.s(b), pos0, 1.0);
  }
  return cache;
}

/// rows x cols random values in a buffer of row stride cols + pad (a view with ld > cols).
template <class T>
struct padded {
  buffer<T> data;
  matrix<T> view;
  padded(index_t rows, index_t cols, index_t pad, std::uint64_t seed, double scale) : data(rows * (cols + pad) + 1) {
    random_stream rng(seed);
    for (index_t i = 0; i < data.size(); ++i) data[i] = static_cast<T>(scale * rng.normal());
    view = matrix<T>(data.data(), rows, cols, cols + pad);
  }
  std::vector<double> values() const {
    std::vector<double> v;
    for (index_t i = 0; i < view.rows; ++i)
      for (index_t k = 0; k < view.cols; ++k) v.push_back(static_cast<double>(view(i, k)));
    return v;
  }
};

/// Runs `check` (which returns an error) at 1 thread with default tiles, 2 threads with default tiles each packed
/// per query tile (forced parallel even on small inputs, split-K from 16 keys), 2 threads with tiny tiles (many
/// tiles and blocks on small inputs) and 2 threads with middle-sized GEMM tiles packed once whenever a head has two
/// query tiles (key tiles of 24 keys, not a whole GEMM panel, so the shared packed tiles have padded panels and end
/// mid-panel), and CHECKs each error against tol.
template <class T, class F>
void over_settings(F&& check, double tol = kernel_tol<T>()) {
  for (int mode = 0; mode < 4; ++mode) {
    settings_guard guard;
    auto& p = backend::simd::flash_params;
    set_num_threads(mode == 0 ? 1 : 2);
    if (mode >= 1) {
      p.parallel_flops = 0;
      p.min_split_keys = 16;
    }
    if (mode == 1) p.pack_once = false;
    if (mode == 2) {
      p.query_rows = 12;
      p.key_tile = 16;
      p.fb_block = 8;
      p.fb_rows = 5;
      p.few_rows_tile = 256;
    }
    if (mode == 3) {
      p.pack_min_tiles = 1;
      p.query_rows = 40;
      p.key_tile = 24;
      p.fb_block = 20;
      p.fb_rows = 36;
    }
    CAPTURE(mode);
    CHECK(check() <= tol);
  }
}

/// The forward branch on one random case (the cache stored as C): the reference once, the cpu kernel in every
/// setting.
template <class T, class A, class C = T>
void check_attention(const layer_config& c, const A& variant, index_t batch, index_t pos0, index_t n,
                     std::uint64_t seed, double scale) {
  const cache_of<T, C> cache = random_cache<T, C>(c, batch, pos0, n, seed, scale);
  const index_t D = c.n_heads * c.head_dim(), rows = batch * n;
  const padded<T> q(rows, D, 3, seed + 1, scale);
  padded<T> ref(rows, D, 5, seed + 2, 1.0);
  backend::context<backend::reference> rctx;
  backend::context<backend::cpu> ctx;
  backend::kernels<backend::reference>::attention(rctx, variant, c, cmatrix<T>(q.view), cache.view(), pos0, n, ref.view);
  const std::vector<double> want = ref.values();
  over_settings<T>([&] {
    padded<T> got(rows, D, 1, seed + 3, 1.0);
    backend::kernels<backend::cpu>::attention(ctx, variant, c, cmatrix<T>(q.view), cache.view(), pos0, n, got.view);
    return max_rel_diff(got.values(), want);
  });
}

/// The feedback solve on one random case (the cache stored as C): its output and the s rows it writes to the
/// cache (and no row past them), the reference once, the cpu kernel in every setting, within tol.
template <class T, class C = T>
void check_feedback(const layer_config& c, index_t batch, index_t pos0, index_t n, std::uint64_t seed, double scale,
                    double tol = kernel_tol<T>()) {
  const cache_of<T, C> cache0 = random_cache<T, C>(c, batch, pos0, n, seed, scale);
  cache_of<T, C> cache_ref = cache0;
  const index_t D = c.d_model, rows = batch * n;
  const padded<T> qb(rows, D, 7, seed + 1, scale), f(rows, D, 2, seed + 2, 1.0);
  std::vector<T> gamma(static_cast<std::size_t>(rows));
  random_stream rng(seed + 3);
  for (auto& g : gamma) g = static_cast<T>(0.999 * std::tanh(1.0 + rng.normal()));
  padded<T> ref(rows, D, 0, seed + 4, 1.0);
  backend::context<backend::reference> rctx;
  backend::context<backend::cpu> ctx;
  backend::kernels<backend::reference>::feedback(rctx, c, cmatrix<T>(qb.view), gamma.data(), cmatrix<T>(f.view),
                                                 cache_ref.view(), pos0, n, ref.view);
  const std::vector<double> want = ref.values();
  auto cache_rows = [&](const cache_of<T, C>& cache) {
    std::vector<double> v;
    for (index_t b = 0; b < batch; ++b)
      for (index_t t = 0; t < pos0 + n; ++t)
        for (index_t k = 0; k < D; ++k) v.push_back(widen<double>(cache.s(b)(t, k)));
    return v;
  };
  const std::vector<double> want_s = cache_rows(cache_ref);
  over_settings<T>([&] {
    cache_of<T, C> cache = cache0;
    padded<T> got(rows, D, 4, seed + 5, 1.0);
    backend::kernels<backend::cpu>::feedback(ctx, c, cmatrix<T>(qb.view), gamma.data(), cmatrix<T>(f.view), cache.view(),
                                             pos0, n, got.view);
    double err = std::max(max_rel_diff(got.values(), want), max_rel_diff(cache_rows(cache), want_s));
    for (index_t b = 0; b < batch; ++b)
      for (index_t k = 0; k < D; ++k)
        if (!std::isnan(widen<double>(cache.s(b)(pos0 + n, k)))) err = INFINITY;
    return err;
  }, tol);
}

struct shape_case {
  index_t batch, pos0, n;
};

/// Layer shapes: H = Hkv, GQA, MQA; d = 8, 16, 32, 64; a D that is no multiple of a SIMD batch.
const std::vector<layer_config> kernel_shapes = {
    {64, 4, 4, true, 0.999, 1e-5},   // d = 16, H = Hkv
    {64, 8, 2, true, 0.999, 1e-5},   // d = 8, GQA g = 4
    {128, 2, 1, true, 0.999, 1e-5},  // d = 64, MQA g = 2
    {24, 3, 3, true, 0.999, 1e-5},   // d = 8, D = 24 (one float batch + 8 columns)
    {256, 8, 1, true, 0.999, 1e-5},  // d = 32, MQA g = 8, D = 256
};

/// Decode, small and boundary-crossing chunks, chunks extending a cache, batch 1 and 3. Bk is the default
/// block / key tile (the tiny-tile setting crosses its own boundaries on every case).
std::vector<shape_case> shape_cases(index_t D) {
  const index_t Bk = backend::simd::flash_tuning{}.fb_block;
  std::vector<shape_case> v = {{1, 0, 1},  {3, 1, 1},  {1, 700, 1},     {3, 333, 1},     {2, 0, 2},
                               {3, 0, 7},  {1, 5, 13}, {3, 200, 40},    {1, 1000, 3},    {1, 0, Bk - 1},
                               {3, 0, Bk}, {1, 37, Bk + 1}, {1, 0, 2 * Bk + 3}};
  if (D <= 128) v.push_back({1, 131, 300});
  return v;
}

bool large(const shape_case& sc) { return sc.n >= 100 || sc.pos0 >= 500; }

/// Unoptimized (sanitizer) builds run the large cases on one layer shape only; the tiny-tile setting
/// still crosses every tile and block boundary there.
#ifdef NDEBUG
constexpr bool all_large = true;
#else
constexpr bool all_large = false;
#endif
bool skip(const layer_config& c, const shape_case& sc) {
  const layer_config& gqa = kernel_shapes[1];
  return !all_large && large(sc) && (c.d_model != gqa.d_model || c.n_kv_heads != gqa.n_kv_heads);
}

}  // namespace

TEMPLATE_TEST_CASE("the softmax's exponential is within 2 units of the last place and keeps inf and NaN", "[cpu]", float,
                   double) {
  using T = TestType;
  using B = xsimd::batch<T>;
  constexpr std::size_t W = B::size;
  const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
  const double ulp = static_cast<double>(std::numeric_limits<T>::epsilon());
  const double top = std::log(static_cast<double>(std::numeric_limits<T>::max()));
  const double tiny = static_cast<double>(std::numeric_limits<T>::min());
  alignas(64) T in[W], out[W];
  double worst = 0;
  index_t underflow_bad = 0;
  // Up to one below log(max): xsimd::exp (the double path) overflows a little early; the softmax's x are at most 8.
  for (double x0 = -120.0; x0 < top - 1; x0 += 0.0137 * static_cast<double>(W)) {
    for (std::size_t i = 0; i < W; ++i) in[i] = static_cast<T>(x0 + 0.0137 * static_cast<double>(i));
    backend::simd::flash_detail::exp_lanes(B::load_aligned(in)).store_aligned(out);
    for (std::size_t i = 0; i < W; ++i) {
      const double want = std::exp(static_cast<double>(in[i]));
      if (want > static_cast<double>(std::numeric_limits<T>::max())) continue;
      if (want < tiny) {  // the subnormal range: within the smallest normal of the truth
        underflow_bad += !(std::fabs(static_cast<double>(out[i]) - want) <= tiny);
        continue;
      }
      worst = std::max(worst, std::fabs(static_cast<double>(out[i]) - want) / want);
    }
  }
  CHECK(worst <= 2 * ulp);
  CHECK(underflow_bad == 0);
  const T special[] = {-inf, inf, nan, T(0), T(-0.0), T(-1000), T(1000)};
  for (const T x : special) {
    for (std::size_t i = 0; i < W; ++i) in[i] = x;
    backend::simd::flash_detail::exp_lanes(B::load_aligned(in)).store_aligned(out);
    CAPTURE(x);
    if (std::isnan(x))
      CHECK(std::isnan(out[0]));
    else
      CHECK(out[0] == std::exp(x));
  }
}

namespace {
/// accumulate_few on (rows, nk) probabilities and (nk, dv) values stored as C, against the same call made one value
/// row at a time (the one-row loop): the four-row loop must give the same bits, for every count of rows left over.
template <class T, class C>
void check_accumulate_few() {
  for (const index_t rows : {1, 2, 5})
    for (const index_t nk : {0, 1, 3, 4, 5, 8, 11, 37})
      for (const index_t dv : {1, 7, 16, 64, 67}) {
        CAPTURE(rows, nk, dv);
        const index_t ld = dv + 3;  // rows of v with a stride, as in a cache
        std::vector<T> p(static_cast<std::size_t>(rows * nk)), acc(static_cast<std::size_t>(rows * dv)), one;
        std::vector<C> v(static_cast<std::size_t>(std::max<index_t>(nk, 1) * ld));
        std::mt19937 g(static_cast<unsigned>(rows * 1000 + nk * 10 + dv));
        std::uniform_real_distribution<double> u(-1.0, 1.0);
        for (auto& x : p) x = static_cast<T>(u(g));
        for (auto& x : v) x = C(static_cast<T>(u(g)));
        for (auto& x : acc) x = static_cast<T>(u(g));
        one = acc;
        backend::simd::flash_detail::accumulate_few(cmatrix<T>(p.data(), rows, nk), cmatrix<C>(v.data(), nk, dv, ld),
                                                    matrix<T>(acc.data(), rows, dv));
        for (index_t j = 0; j < nk; ++j)
          backend::simd::flash_detail::accumulate_few(cmatrix<T>(p.data() + j, rows, 1, nk),
                                                      cmatrix<C>(v.data() + j * ld, 1, dv, ld),
                                                      matrix<T>(one.data(), rows, dv));
        CHECK(std::memcmp(acc.data(), one.data(), acc.size() * sizeof(T)) == 0);
      }
}
}  // namespace

TEMPLATE_TEST_CASE("decode's value accumulation four rows at a time gives the bits of one row at a time", "[cpu]",
                   float, double) {
  check_accumulate_few<TestType, TestType>();
  if constexpr (std::is_same_v<TestType, float>) {
    check_accumulate_few<float, bfloat16>();
    check_accumulate_few<float, float16>();
  }
}

TEMPLATE_TEST_CASE("cpu attention matches the reference kernel", "[cpu][attention]", float, double) {
  using T = TestType;
  std::uint64_t seed = 100;
  for (const auto& cfg : kernel_shapes)
    for (const auto& sc : shape_cases(cfg.d_model)) {
      if (skip(cfg, sc)) continue;
      CAPTURE(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, sc.batch, sc.pos0, sc.n);
      const double scale = (seed % 3 == 0) ? 3.0 : 1.0;  // some cases with sharp softmaxes
      check_attention<T>(cfg, attention::causal{}, sc.batch, sc.pos0, sc.n, ++seed, scale);
      for (index_t w : {5, 1, 100000}) {
        if (large(sc) && w != 5) continue;
        CAPTURE(w);
        check_attention<T>(cfg, attention::sliding_window{w}, sc.batch, sc.pos0, sc.n, ++seed, scale);
      }
    }
}

TEMPLATE_TEST_CASE("cpu feedback solve matches the reference kernel", "[cpu][feedback]", float, double) {
  using T = TestType;
  std::uint64_t seed = 500;
  for (const auto& cfg : kernel_shapes)
    for (const auto& sc : shape_cases(cfg.d_model)) {
      if (skip(cfg, sc)) continue;
      CAPTURE(cfg.d_model, sc.batch, sc.pos0, sc.n);
      const double scale = (seed % 3 == 0) ? 3.0 : 1.0;
      check_feedback<T>(cfg, sc.batch, sc.pos0, sc.n, ++seed, scale);
    }
}

TEMPLATE_TEST_CASE("cpu kernels: wide feedback and long decode", "[cpu][feedback][attention]", float, double) {
  using T = TestType;
  const layer_config wide{256, 4, 2, true, 0.999, 1e-5};  // d = 64, D = 256
  const index_t Bk = backend::simd::flash_tuning{}.fb_block;
  for (const shape_case sc : {shape_case{1, 150, 2 * Bk + 3}, shape_case{3, 2000, 1}, shape_case{1, 3000, 1}}) {
    if (!all_large && sc.n > 1) continue;
    CAPTURE(sc.batch, sc.pos0, sc.n);
    check_feedback<T>(wide, sc.batch, sc.pos0, sc.n, 900 + sc.n, 1.0);
    check_attention<T>(wide, attention::causal{}, sc.batch, sc.pos0, sc.n, 950 + sc.n, 1.0);
  }
}

// A bfloat16 / float16 cache: the kernels widen what they read and round the s they write exactly as the reference
// does, and every row of a chunk reads the s of earlier rows as the cache stores them. In double the cpu kernels
// agree with the reference to the double tolerance (a rounding of s that the two summation orders push to different
// sides of a C rounding boundary is then vanishingly rare); in float (the in-register widening) such a flip moves a
// value by one unit of C's last place, so the bound is a few of those.
namespace {
// Compute type and cache type (named without a comma: test names are filters).
using f64_bf16_cache = std::pair<double, bfloat16>;
using f64_f16_cache = std::pair<double, float16>;
using f32_bf16_cache = std::pair<float, bfloat16>;
using f32_f16_cache = std::pair<float, float16>;
}  // namespace

TEMPLATE_TEST_CASE("cpu kernels on a bfloat16 or float16 cache match the reference kernel", "[cpu][attention][feedback]",
                   f64_bf16_cache, f64_f16_cache, f32_bf16_cache, f32_f16_cache) {
  using T = typename TestType::first_type;
  using C = typename TestType::second_type;
  const double tol = std::is_same_v<T, double> ? kernel_tol<T>() : (std::is_same_v<C, bfloat16> ? 3e-2 : 4e-3);
  const index_t Bk = backend::simd::flash_tuning{}.fb_block;
  std::uint64_t seed = 1300;
  for (const auto& cfg : kernel_shapes)
    for (const shape_case sc : {shape_case{1, 0, 1}, shape_case{3, 333, 1}, shape_case{1, 700, 1}, shape_case{3, 0, 7},
                                shape_case{1, 5, 13}, shape_case{3, 200, 40}, shape_case{1, 37, Bk + 1},
                                shape_case{1, 0, 2 * Bk + 3}}) {
      if (skip(cfg, sc)) continue;
      CAPTURE(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, sc.batch, sc.pos0, sc.n, storage_name<C>());
      check_attention<T, attention::causal, C>(cfg, attention::causal{}, sc.batch, sc.pos0, sc.n, ++seed, 1.0);
      check_attention<T, attention::sliding_window, C>(cfg, attention::sliding_window{5}, sc.batch, sc.pos0, sc.n, ++seed,
                                                       1.0);
      check_feedback<T, C>(cfg, sc.batch, sc.pos0, sc.n, ++seed, 1.0, tol);
    }
}

TEMPLATE_TEST_CASE("cpu kernels leave their scratch grown: a second call allocates nothing new", "[cpu]", float, double) {
  using T = TestType;
  settings_guard guard;
  const layer_config c{64, 4, 2, true, 0.999, 1e-5};
  layer_cache<T> cache = random_cache<T>(c, 1, 500, 1, 3, 1.0);
  const padded<T> q(1, 64, 0, 4, 1.0), f(1, 64, 0, 5, 1.0);
  padded<T> out(1, 64, 0, 6, 1.0);
  const T gamma = T(0.5);
  backend::context<backend::cpu> ctx;
  for (int threads : {1, 2}) {
    ctx.threads = threads;  // the context's own setting, not the process-wide default
    backend::simd::flash_params.parallel_flops = 0;
    backend::kernels<backend::cpu>::attention(ctx, attention::causal{}, c, cmatrix<T>(q.view), std::as_const(cache).view(), 500, 1, out.view);
    backend::kernels<backend::cpu>::feedback(ctx, c, cmatrix<T>(q.view), &gamma, cmatrix<T>(f.view), cache.view(), 500, 1, out.view);
    const std::byte* p[3] = {ctx.scratch.where(1), ctx.scratch.where(2), ctx.scratch.where(3)};
    backend::kernels<backend::cpu>::attention(ctx, attention::causal{}, c, cmatrix<T>(q.view), std::as_const(cache).view(), 500, 1, out.view);
    backend::kernels<backend::cpu>::feedback(ctx, c, cmatrix<T>(q.view), &gamma, cmatrix<T>(f.view), cache.view(), 500, 1, out.view);
    CHECK(p[0] == ctx.scratch.where(1));
    CHECK(p[1] == ctx.scratch.where(2));
    CHECK(p[2] == ctx.scratch.where(3));
  }
}

namespace {

/// Numeric policy P (compute type T; weights and cache as P stores them): layer<P, cpu> against layer<P, reference>.
template <class T, class A, class P = T>
void check_layers(const layer_config& cfg, const A& variant, index_t batch, index_t Tn, double tol = test::tolerance<T>()) {
  const auto w = random_layer_weights<weight_t<P>>(cfg, 77);
  const layer<P, backend::reference, A> R(cfg, w, variant);
  const layer<P, backend::cpu, A> C(cfg, w, variant);
  const tensor<T> x = test::random_tensor<T>({batch, Tn, cfg.d_model}, 78);
  const tensor<T> ref = R.forward(x);
  // Prefill.
  CHECK(max_rel_diff(C.forward(x).span(), ref.span()) <= tol);
  // Chunked prefill: uneven chunks extending the cache.
  {
    auto cache = C.init_cache(batch, Tn);
    tensor<T> y(x.shape());
    for (index_t t0 = 0, k = 0; t0 < Tn; ++k) {
      const index_t n = std::min<index_t>(Tn - t0, k % 2 ? 61 : 7);
      test::put_tokens(y, C.forward(test::slice_tokens(x, t0, n), cache), t0);
      t0 += n;
    }
    CHECK(max_rel_diff(y.span(), ref.span()) <= tol);
  }
  // Decode: a prefill of half, then one token at a time.
  {
    auto cache = C.init_cache(batch, Tn);
    tensor<T> y(x.shape());
    const index_t half = Tn / 2;
    test::put_tokens(y, C.forward(test::slice_tokens(x, 0, half), cache), 0);
    for (index_t t = half; t < Tn; ++t) {
      tensor<T> xt({batch, cfg.d_model});
      std::copy_n(test::slice_tokens(x, t, 1).data(), xt.size(), xt.data());
      const tensor<T> yt = C.decode_step(xt, cache);
      tensor<T> yt3({batch, 1, cfg.d_model}, yt.span());
      test::put_tokens(y, yt3, t);
    }
    CHECK(max_rel_diff(y.span(), ref.span()) <= tol);
  }
}

}  // namespace

TEMPLATE_TEST_CASE("layer<cpu> matches layer<reference>: prefill, chunked prefill, decode", "[cpu][model]", float,
                   double) {
  using T = TestType;
  for (int threads : {1, 2}) {
    settings_guard guard;
    set_num_threads(threads);
    if (threads == 2) backend::simd::flash_params.parallel_flops = 0;
    CAPTURE(threads);
    check_layers<T>(layer_config{64, 4, 2, true, 0.999, 1e-5}, attention::causal{}, 2, 150);
    check_layers<T>(layer_config{32, 1, 1, false, 0.9, 1e-5}, attention::causal{}, 1, 140);
    check_layers<T>(layer_config{48, 6, 1, true, 0.99, 1e-5}, attention::sliding_window{9}, 3, 70);
    // bfloat16 / float16 caches (with float32 or narrow weights): in double exact to the double tolerance; in float
    // within a few units of the cache type's last place (see the kernel test above).
    using bf16_cache = precision<T, T, bfloat16>;
    using f16_all = precision<T, float16>;
    const bool dbl = std::is_same_v<T, double>;
    check_layers<T, attention::causal, bf16_cache>(layer_config{64, 4, 2, true, 0.999, 1e-5}, attention::causal{}, 2, 150,
                                                   dbl ? test::tolerance<T>() : 3e-2);
    check_layers<T, attention::sliding_window, f16_all>(layer_config{48, 6, 1, true, 0.99, 1e-5},
                                                        attention::sliding_window{9}, 3, 70, dbl ? test::tolerance<T>() : 4e-3);
  }
}
