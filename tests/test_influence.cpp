// The memory analysis (analysis/*.hpp) and the transposed feedback solve it rests on: every backend's
// feedback_transposed against the explicit inverse (I - Gamma A)^{-1} built here; feedback_system's columns and
// rows against the same inverse; a layer's routing against a float64 computation from its weights; the paper's
// uniform construction (exponent 1 - gamma, and the closed form) and the retrieval construction (a constant
// influence); end-to-end influences against plain finite differences of whole forward passes; profiles, fits,
// the SVG plot and every error path.
#include <catch2/catch.hpp>

#include "support.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

using namespace sessa;
using analysis::feedback_system;

#if defined(SESSA_TEST_CUDA)
using kernel_backends = std::tuple<backend::cuda>;
#elif defined(SESSA_TEST_THRUST_CUDA)
using kernel_backends = std::tuple<backend::thrust_cuda>;
#elif defined(SESSA_TEST_THRUST_OMP)
using kernel_backends = std::tuple<backend::thrust_omp>;
#else
using kernel_backends = std::tuple<backend::reference, backend::cpu>;
#endif

namespace {

std::vector<double> normals(random_stream& rng, index_t count, double scale) {
  std::vector<double> v(static_cast<std::size_t>(count));
  for (auto& e : v) e = scale * rng.normal();
  return v;
}

/// The explicit inverse of (I - Gamma A) over chunk positions [pos0, pos0 + n) of one sequence: kb holds the
/// keys of positions [0, pos0 + n) (rows of D), qb the chunk's queries, gamma its gains. Row-major (n, n).
std::vector<double> explicit_inverse(const double* qb, const double* kb, const double* gamma, index_t pos0, index_t n,
                                     index_t D) {
  std::vector<double> A(static_cast<std::size_t>(n * n), 0.0);
  for (index_t i = 0; i < n; ++i) {
    const index_t t = pos0 + i;
    if (t == 0) continue;
    std::vector<double> p(static_cast<std::size_t>(t));
    double mx = -HUGE_VAL;
    for (index_t j = 0; j < t; ++j) {
      double a = 0;
      for (index_t k = 0; k < D; ++k) a += qb[i * D + k] * kb[j * D + k];
      p[static_cast<std::size_t>(j)] = a / std::sqrt(static_cast<double>(D));
      mx = std::max(mx, p[static_cast<std::size_t>(j)]);
    }
    double sum = 0;
    for (auto& e : p) sum += (e = std::exp(e - mx));
    for (index_t j = pos0; j < t; ++j) A[static_cast<std::size_t>(i * n + j - pos0)] = gamma[i] * p[static_cast<std::size_t>(j)] / sum;
  }
  // (I - A) X = I by forward substitution, column by column.
  std::vector<double> X(static_cast<std::size_t>(n * n), 0.0);
  for (index_t c = 0; c < n; ++c)
    for (index_t i = 0; i < n; ++i) {
      double v = i == c ? 1.0 : 0.0;
      for (index_t j = 0; j < i; ++j) v += A[static_cast<std::size_t>(i * n + j)] * X[static_cast<std::size_t>(j * n + c)];
      X[static_cast<std::size_t>(i * n + c)] = v;
    }
  return X;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double e : v) m = std::max(m, std::abs(e));
  return m;
}

/// kernels<B>::feedback_transposed on a random case against Minv^T g, the cache stored as C (double, or bfloat16 /
/// float16: the keys are then drawn as values C holds exactly, so the explicit inverse sees what the cache holds).
template <class B, class C = double>
void check_transposed_kernel(index_t batch, index_t pos0, index_t n, index_t D, std::uint64_t seed) {
  using T = double;
  using S = space_of<B>;
  const layer_config c{D, 1, 1, false, 0.999, 1e-5};
  const index_t len = pos0 + n, kv = c.kv_dim();
  random_stream rng(seed);
  std::vector<double> kb = normals(rng, batch * len * D, 1.5);
  for (double& e : kb) e = widen<double>(narrow<C>(e));
  const std::vector<double> qb = normals(rng, batch * n * D, 1.5), g = normals(rng, batch * n * D, 1.0);
  std::vector<double> gam(static_cast<std::size_t>(batch * n));
  for (auto& e : gam) e = 0.95 * std::tanh(static_cast<double>(rng.normal()));

  layer_cache<precision<T, T, C>, B> cache(c, batch, len);
  backend::context<B> ctx;
  const buffer<T, S> kvd = to_space<S>(buffer<T>(std::vector<T>(static_cast<std::size_t>(batch * len * 2 * kv), 0.0)));
  const buffer<T, S> kbd = to_space<S>(buffer<T>(kb)), qbd = to_space<S>(buffer<T>(qb)), gd = to_space<S>(buffer<T>(g)),
                     gamd = to_space<S>(buffer<T>(gam));
  backend::kernels<B>::append_cache(ctx, c, cmatrix<T, S>(kvd.data(), batch * len, 2 * kv),
                                    cmatrix<T, S>(kbd.data(), batch * len, D), cache.view(), 0, len);
  buffer<T, S> outd(batch * n * D);
  backend::kernels<B>::feedback_transposed(ctx, c, cmatrix<T, S>(qbd.data(), batch * n, D), gamd.data(),
                                           cmatrix<T, S>(gd.data(), batch * n, D), std::as_const(cache).view(), pos0, n,
                                           matrix<T, S>(outd.data(), batch * n, D));
  const buffer<T> out = to_host(outd);

  // In place (out aliasing g) gives the same numbers.
  buffer<T, S> inplace = to_space<S>(buffer<T>(g));
  backend::kernels<B>::feedback_transposed(ctx, c, cmatrix<T, S>(qbd.data(), batch * n, D), gamd.data(),
                                           cmatrix<T, S>(inplace.data(), batch * n, D), std::as_const(cache).view(),
                                           pos0, n, matrix<T, S>(inplace.data(), batch * n, D));
  const buffer<T> in = to_host(inplace);

  for (index_t b = 0; b < batch; ++b) {
    const std::vector<double> X =
        explicit_inverse(qb.data() + b * n * D, kb.data() + b * len * D, gam.data() + b * n, pos0, n, D);
    std::vector<double> want(static_cast<std::size_t>(n * D), 0.0);
    for (index_t j = 0; j < n; ++j)
      for (index_t i = j; i < n; ++i)
        for (index_t k = 0; k < D; ++k)
          want[static_cast<std::size_t>(j * D + k)] += X[static_cast<std::size_t>(i * n + j)] * g[static_cast<std::size_t>((b * n + i) * D + k)];
    const double scale = std::max(1.0, max_abs(want));
    double err = 0, err_in = 0;
    for (index_t r = 0; r < n * D; ++r) {
      err = std::max(err, std::abs(out[b * n * D + r] - want[static_cast<std::size_t>(r)]));
      err_in = std::max(err_in, std::abs(in[b * n * D + r] - want[static_cast<std::size_t>(r)]));
    }
    INFO("batch row " << b << " of " << batch << ", pos0 " << pos0 << ", n " << n << ", D " << D << ", cache "
                       << storage_name<C>());
    CHECK(err / scale < 1e-11);
    CHECK(err_in / scale < 1e-11);
  }
}

/// A float64 computation of a layer's routing from its host weights: q_b (n, D) and gamma (n).
std::pair<std::vector<double>, std::vector<double>> routing_by_hand(const layer_config& c, const layer_weights<double>& w,
                                                                    const tensor<double>& x) {
  const index_t D = c.d_model, n = x.shape()[0];
  std::vector<double> qb(static_cast<std::size_t>(n * D)), gam(static_cast<std::size_t>(n));
  std::vector<double> u(static_cast<std::size_t>(D)), a(static_cast<std::size_t>(D));
  for (index_t t = 0; t < n; ++t) {
    double mean = 0, var = 0;
    for (index_t k = 0; k < D; ++k) mean += x[t * D + k];
    mean /= static_cast<double>(D);
    for (index_t k = 0; k < D; ++k) var += (x[t * D + k] - mean) * (x[t * D + k] - mean);
    var /= static_cast<double>(D);
    for (index_t k = 0; k < D; ++k)
      u[static_cast<std::size_t>(k)] = (x[t * D + k] - mean) / std::sqrt(var + c.ln_eps) * w.ln_w[k] + w.ln_b[k];
    for (index_t o = 0; o < D; ++o) {
      double v = w.in_b[o];
      for (index_t k = 0; k < D; ++k) v += w.in_w[o * D + k] * u[static_cast<std::size_t>(k)];
      a[static_cast<std::size_t>(o)] = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
    }
    for (index_t o = 0; o < D; ++o) {
      double v = w.mixer.fb_b[o];
      for (index_t k = 0; k < D; ++k) v += w.mixer.fb_w[o * D + k] * a[static_cast<std::size_t>(k)];
      qb[static_cast<std::size_t>(t * D + o)] = v;
    }
    double gpre = w.mixer.gamma_bias[0];
    for (index_t k = 0; k < D; ++k) gpre += w.mixer.gamma_ctx[k] * a[static_cast<std::size_t>(k)];
    gam[static_cast<std::size_t>(t)] = c.gamma_max * std::tanh(gpre);
  }
  return {qb, gam};
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("feedback_transposed equals the explicit (I - Gamma A)^-T over the chunk", "[influence][kernel]",
                        kernel_backends) {
  using B = TestType;
  std::uint64_t seed = 40;
  for (const auto& [batch, pos0, n] : {std::tuple<index_t, index_t, index_t>{1, 0, 1}, {1, 0, 2}, {2, 0, 9},
                                       {1, 5, 1}, {2, 13, 17}, {1, 0, 70}, {2, 40, 45}})
    check_transposed_kernel<B>(batch, pos0, n, 6, ++seed);
  if constexpr (std::is_same_v<B, backend::cpu>) {
    // Tiles far smaller than the sequence: many blocks, pushes into earlier rows split over threads.
    const test::settings_guard guard;
    backend::simd::flash_params.fb_block = 8;
    backend::simd::flash_params.fb_rows = 16;
    backend::simd::flash_params.key_tile = 8;
    backend::simd::flash_params.parallel_flops = 0;
    for (const auto& [batch, pos0, n, D] : {std::tuple<index_t, index_t, index_t, index_t>{1, 0, 70, 6}, {2, 21, 53, 6},
                                            {3, 9, 100, 19}, {1, 0, 33, 40}}) {
      check_transposed_kernel<B>(batch, pos0, n, D, ++seed);
      check_transposed_kernel<B, bfloat16>(batch, pos0, n, D, ++seed);  // the widened k_b tiles
    }
  }
  // A bfloat16 / float16 cache: every backend reads its k_b as stored.
  for (const auto& [batch, pos0, n] : {std::tuple<index_t, index_t, index_t>{1, 0, 9}, {2, 13, 17}, {1, 5, 1}}) {
    check_transposed_kernel<B, bfloat16>(batch, pos0, n, 6, ++seed);
    check_transposed_kernel<B, float16>(batch, pos0, n, 6, ++seed);
  }
}

TEMPLATE_LIST_TEST_CASE("feedback_system: columns and rows are the inverse's, forward and transposed", "[influence]",
                        kernel_backends) {
  using B = TestType;
  const index_t n = 40, D = 5;
  random_stream rng(7);
  const std::vector<double> qb = normals(rng, n * D, 1.2), kb = normals(rng, n * D, 1.2);
  std::vector<double> gam(static_cast<std::size_t>(n));
  for (auto& e : gam) e = 0.9 * std::tanh(1.0 + static_cast<double>(rng.normal()));
  const layer_config c{D, 1, 1, false, 0.999, 1e-5};
  const feedback_system<double, B> sys(c, tensor<double>({n, D}, std::span<const double>(qb)),
                                       tensor<double>({n, D}, std::span<const double>(kb)),
                                       tensor<double>({n}, std::span<const double>(gam)));
  REQUIRE(sys.length() == n);
  const std::vector<double> X = explicit_inverse(qb.data(), kb.data(), gam.data(), 0, n, D);
  // Seven sources: more than D, so two solves share the work.
  const std::vector<index_t> sources = {0, 7, 39, 12, 1, 20, 7};
  const tensor<double> cols = sys.columns(sources);
  REQUIRE(cols.shape() == shape_t{n, 7});
  double err = 0;
  for (index_t t = 0; t < n; ++t)
    for (index_t s = 0; s < 7; ++s)
      err = std::max(err, std::abs(cols[t * 7 + s] - X[static_cast<std::size_t>(t * n + sources[static_cast<std::size_t>(s)])]));
  CHECK(err < 1e-12);
  const std::vector<index_t> targets = {39, 20, 0, 3, 38, 11, 30};
  const tensor<double> rows = sys.rows(targets);
  REQUIRE(rows.shape() == shape_t{7, n});
  err = 0;
  for (index_t r = 0; r < 7; ++r)
    for (index_t j = 0; j < n; ++j)
      err = std::max(err, std::abs(rows[r * n + j] - X[static_cast<std::size_t>(targets[static_cast<std::size_t>(r)] * n + j)]));
  CHECK(err < 1e-12);
  // Causality: nothing before a source, 1 at it; nothing after a target, 1 at it.
  CHECK(cols[0 * 7 + 1] == 0.0);
  CHECK(cols[7 * 7 + 1] == 1.0);
  CHECK(rows[1 * n + 21] == 0.0);
  CHECK(rows[1 * n + 20] == 1.0);

  CHECK_THROWS_WITH(sys.columns(std::vector<index_t>{3, 40}), Catch::Contains("source position 40 is outside the sequence [0, 40)"));
  CHECK_THROWS_WITH(sys.rows(std::vector<index_t>{-1}), Catch::Contains("target position -1 is outside"));
  CHECK_THROWS_WITH(sys.columns(std::vector<index_t>{}), Catch::Contains("no source positions"));
  CHECK_THROWS_WITH(sys.solve(tensor<double>({n, D + 1}, 0.0)), Catch::Contains("must have shape (tokens, 5)"));
  CHECK_THROWS_WITH(sys.solve_transposed(tensor<double>({n + 1, D}, 0.0)), Catch::Contains("has 41 tokens; the system has 40"));
  CHECK_THROWS_WITH((feedback_system<double, B>(c, tensor<double>({n, D}, 0.0), tensor<double>({n, D + 1}, 0.0),
                                                tensor<double>({n}, 0.5))),
                    Catch::Contains("kb must have qb's shape"));
  CHECK_THROWS_WITH((feedback_system<double, B>(c, tensor<double>({n, D}, 0.0), tensor<double>({n, D}, 0.0),
                                                tensor<double>({n - 1}, 0.5))),
                    Catch::Contains("one gain per token"));
  CHECK_THROWS_WITH((feedback_system<double, B>(c, tensor<double>({n, D}, 0.0), tensor<double>({n, D}, 0.0),
                                                tensor<double>({n}, 1.0))),
                    Catch::Contains("is not in (-1, 1)"));
}

TEMPLATE_LIST_TEST_CASE("feedback_system of a layer: the routing its projections form", "[influence]", kernel_backends) {
  using B = TestType;
  const layer_config c{8, 2, 1, true, 0.999, 1e-5};
  const layer_weights<double> hw = random_layer_weights<double>(c, 11);
  const layer<double, B> l(c, hw);
  random_stream rng(3);
  const index_t n = 30;
  const tensor<double> x({n, 8}, std::span<const double>(normals(rng, n * 8, 1.0)));
  const feedback_system<double, B> sys(l, x);
  const auto [qb, gam] = routing_by_hand(c, hw, x);
  const tensor<double> q = sys.qb(), g = sys.gamma();
  double err = 0;
  for (index_t i = 0; i < n * 8; ++i) err = std::max(err, std::abs(q[i] - qb[static_cast<std::size_t>(i)]));
  for (index_t i = 0; i < n; ++i) err = std::max(err, std::abs(g[i] - gam[static_cast<std::size_t>(i)]));
  CHECK(err < 1e-12);
  // The same input as (1, n, D).
  const feedback_system<double, B> sys3(l, tensor<double>({1, n, 8}, x.storage()));
  const std::vector<index_t> src = {0, 4, 29};
  const tensor<double> a = sys.columns(src), b = sys3.columns(src);
  for (index_t i = 0; i < a.size(); ++i) REQUIRE(a[i] == b[i]);
  CHECK_THROWS_WITH((feedback_system<double, B>(l, tensor<double>({2, n, 8}, 0.0))),
                    Catch::Contains("must have shape (tokens, 8) or (1, tokens, 8)"));
}

#if !defined(SESSA_TEST_DEVICE_SUITE)

TEST_CASE("uniform routing: the power law of exponent 1 - gamma, and its closed form", "[influence][construction]") {
  const index_t n = 10001;
  for (const double gamma : {0.5, 0.8, 0.95}) {
    const auto sys = analysis::uniform_routing<double, backend::cpu>(n, gamma);
    const std::vector<index_t> src = {0};
    const tensor<double> col = sys.columns(src);
    // Exact: s_t = (gamma / t) prod_{k=1}^{t-1} (1 + gamma / k).
    double prod = 1.0, err = 0.0;
    for (index_t t = 1; t < n; ++t) {
      const double want = gamma / static_cast<double>(t) * prod;
      err = std::max(err, std::abs(col[t] - want) / want);
      prod *= 1.0 + gamma / static_cast<double>(t);
    }
    INFO("gamma " << gamma);
    CHECK(err < 1e-9);
    tensor<double> by_source({1, n});
    for (index_t t = 0; t < n; ++t) by_source[t] = col[t];
    const analysis::lag_profile p = analysis::profile_by_lag(by_source, src);
    const analysis::power_fit f = analysis::fit_power_law(p, 100, 10000);
    CHECK(std::abs(f.exponent - (1.0 - gamma)) < 0.02);
    CHECK(f.r2 > 0.999);
    CHECK(f.points > 50);
  }
  CHECK_THROWS_WITH((analysis::uniform_routing<double, backend::cpu>(100, 1.0)), Catch::Contains("must lie in (0, 1)"));
  CHECK_THROWS_WITH((analysis::uniform_routing<double, backend::cpu>(100, 0.0)), Catch::Contains("must lie in (0, 1)"));
  CHECK_THROWS_WITH((analysis::uniform_routing<double, backend::cpu>(1, 0.5)), Catch::Contains("at least 2 tokens"));
}

TEST_CASE("retrieval construction: one token's influence stays constant out to lag 10^4", "[influence][construction]") {
  const index_t n = 10011;
  const analysis::retrieval_case rc = analysis::retrieval_construction(n, 10, 0.9, 5);
  const layer<double, backend::cpu> l(rc.config, rc.weights);
  const feedback_system<double, backend::cpu> sys(l, rc.x);
  const std::vector<index_t> src = {rc.marker, 500};  // the marker, and a token after it that nobody retrieves
  const tensor<double> col = sys.columns(src);
  const double at10 = col[(rc.marker + 10) * 2];
  CHECK(std::abs(at10 - rc.gain) < 1e-6);
  double worst = 0;
  for (index_t lag = 10; lag <= 10000; ++lag) worst = std::max(worst, std::abs(col[(rc.marker + lag) * 2] / at10 - 1.0));
  CHECK(worst < 0.05);
  // Selective: a token after the marker reaches the next token at most through e^-gap, and nothing later.
  CHECK(std::abs(col[(500 + 100) * 2 + 1]) < 1e-9);
  CHECK(rc.score_gap > 30);
  CHECK_THROWS_WITH(analysis::retrieval_construction(100, 99), Catch::Contains("marker position 99 must lie in [0, n - 1)"));
  CHECK_THROWS_WITH(analysis::retrieval_construction(100, 10, 1.0), Catch::Contains("gain must lie in"));
}

TEST_CASE("end-to-end influence equals finite differences of whole forward passes", "[influence][end-to-end]") {
  const layer_config c{8, 2, 1, true, 0.999, 1e-5};
  const layer<double, backend::cpu> l(c, random_layer_weights<double>(c, 21));
  random_stream rng(9);
  const index_t n = 12, D = 8;
  const tensor<double> x({n, D}, std::span<const double>(normals(rng, n * D, 1.0)));
  const std::vector<index_t> src = {0, 5, 11};
  const tensor<double> got = analysis::end_to_end_influence(l, x, src);
  REQUIRE(got.shape() == shape_t{3, n});
  // By hand: every Jacobian column from two full passes on fresh caches.
  const double eps = 1e-5;
  for (std::size_t c0 = 0; c0 < src.size(); ++c0) {
    const index_t j = src[c0];
    std::vector<double> sq(static_cast<std::size_t>(n), 0.0);
    for (index_t e = 0; e < D; ++e) {
      tensor<double> xp({1, n, D}, x.storage()), xm({1, n, D}, x.storage());
      xp[j * D + e] += eps;
      xm[j * D + e] -= eps;
      const tensor<double> yp = l.forward(xp), ym = l.forward(xm);
      for (index_t t = 0; t < n; ++t)
        for (index_t k = 0; k < D; ++k) {
          const double d = (yp[t * D + k] - ym[t * D + k]) / (2 * eps);
          sq[static_cast<std::size_t>(t)] += d * d;
        }
    }
    for (index_t t = 0; t < n; ++t) {
      INFO("source " << j << ", t " << t);
      if (t < j) CHECK(got[static_cast<index_t>(c0) * n + t] == 0.0);
      else CHECK(got[static_cast<index_t>(c0) * n + t] == Approx(std::sqrt(sq[static_cast<std::size_t>(t)])).epsilon(1e-7));
    }
  }
  // Random sign probes estimate the same norms (Hutchinson); with 256 probes the mean ratio is within a few percent.
  analysis::finite_difference_options o;
  o.probes = 256;
  const tensor<double> est = analysis::end_to_end_influence(l, x, std::vector<index_t>{0}, o);
  double ratio = 0;
  for (index_t t = 0; t < n; ++t) ratio += est[t] / got[t];
  CHECK(std::abs(ratio / static_cast<double>(n) - 1.0) < 0.1);

  o.probes = -1;
  CHECK_THROWS_WITH(analysis::end_to_end_influence(l, x, src, o), Catch::Contains("probes must be 0"));
  o.probes = 0;
  o.epsilon = 0;
  CHECK_THROWS_WITH(analysis::end_to_end_influence(l, x, src, o), Catch::Contains("epsilon must be positive"));
  CHECK_THROWS_WITH(analysis::end_to_end_influence(l, x, std::vector<index_t>{12}), Catch::Contains("outside the sequence"));
}

TEST_CASE("end-to-end influence of a decoder: final hidden states against the embeddings", "[influence][end-to-end]") {
  decoder_config dc;
  dc.layer = layer_config{8, 2, 2, true, 0.999, 1e-5};
  dc.vocab_size = 11;
  dc.n_layers = 2;
  const decoder<double, backend::cpu> m(dc, random_decoder_weights<double>(dc, 4));
  const std::vector<std::int64_t> tokens = {1, 5, 3, 3, 9, 0, 10, 2, 7};
  const index_t n = 9, D = 8;
  const std::vector<index_t> src = {2};
  const tensor<double> got = analysis::end_to_end_influence(m, tokens, src);
  const tensor<double> h0 = analysis::hidden_states(m, tokens, 0);
  const double eps = 1e-5;
  std::vector<double> sq(static_cast<std::size_t>(n), 0.0);
  auto run = [&](tensor<double> h) {
    for (const auto& l : m.layers()) h = l.forward(h);
    return h;
  };
  for (index_t e = 0; e < D; ++e) {
    tensor<double> hp({1, n, D}, h0.storage()), hm({1, n, D}, h0.storage());
    hp[2 * D + e] += eps;
    hm[2 * D + e] -= eps;
    const tensor<double> yp = run(hp), ym = run(hm);
    for (index_t t = 0; t < n; ++t)
      for (index_t k = 0; k < D; ++k) {
        const double d = (yp[t * D + k] - ym[t * D + k]) / (2 * eps);
        sq[static_cast<std::size_t>(t)] += d * d;
      }
  }
  for (index_t t = 2; t < n; ++t) CHECK(got[t] == Approx(std::sqrt(sq[static_cast<std::size_t>(t)])).epsilon(1e-7));
  // hidden_states(m, tokens, L) is the decoder's own last hidden state: its logits through norm_f and the head.
  const tensor<double> hL = analysis::hidden_states(m, tokens, 2);
  REQUIRE(hL.shape() == shape_t{n, D});
  CHECK_THROWS_WITH(analysis::hidden_states(m, std::vector<std::int64_t>{1, 11}, 0), Catch::Contains("token 11 at position 1"));
  CHECK_THROWS_WITH(analysis::hidden_states(m, tokens, 3), Catch::Contains("layer 3 is outside [0, 2]"));
}

TEST_CASE("lag profiles, power-law fits, comparison curves and the SVG plot", "[influence][profile]") {
  const std::vector<index_t> g = analysis::lag_grid(20000);
  REQUIRE(g.front() == 1);
  REQUIRE(g.back() == 20000);
  for (std::size_t i = 1; i < g.size(); ++i) REQUIRE(g[i] > g[i - 1]);
  CHECK(g.size() < 200);
  // Three sources of an exact power law 2 l^-0.3, scaled 1x, 2x, 4x: median is the 2x one.
  const index_t n = 5000;
  const std::vector<index_t> src = {0, 100, 1000};
  tensor<double> inf({3, n}, 0.0);
  for (index_t c = 0; c < 3; ++c)
    for (index_t t = src[static_cast<std::size_t>(c)] + 1; t < n; ++t)
      inf[c * n + t] = -(1 << c) * 2.0 * std::pow(static_cast<double>(t - src[static_cast<std::size_t>(c)]), -0.3);  // sign ignored
  const analysis::lag_profile p = analysis::profile_by_lag(inf, src);
  CHECK(p.full_lag == 3999);
  const auto [lo, hi] = analysis::default_fit_range(p);
  CHECK(lo == 20);
  CHECK(hi == 1999);
  const analysis::power_fit f = analysis::fit_power_law(p, lo, hi);
  CHECK(f.exponent == Approx(0.3).margin(1e-12));
  CHECK(f.at(10.0) == Approx(4.0 * std::pow(10.0, -0.3)).epsilon(1e-12));
  CHECK(f.r2 == Approx(1.0).margin(1e-12));
  CHECK(p.low[10] < p.median[10]);
  CHECK(p.median[10] < p.high[10]);
  // Half-life of an exponential 2^-(l-1)/h is h.
  analysis::lag_profile e;
  for (index_t l = 1; l <= 200; ++l) {
    e.lags.push_back(l);
    e.median.push_back(std::exp2(-(static_cast<double>(l) - 1.0) / 17.0));
  }
  CHECK(analysis::half_life(e) == Approx(18.0).epsilon(1e-9));
  const analysis::reference_curves rc = analysis::comparison_curves(p);
  CHECK(rc.diffuse[9] == Approx(p.median[0] / 10.0));
  CHECK(rc.half_life > 1);

  CHECK_THROWS_WITH(analysis::fit_power_law(p, 0, 10), Catch::Contains("must satisfy 1 <= min < max"));
  CHECK_THROWS_WITH(analysis::fit_power_law(p, 4000, 4001), Catch::Contains("need at least 3"));
  CHECK_THROWS_WITH(analysis::profile_by_lag(inf, std::vector<index_t>{0, 1}), Catch::Contains("one row per source"));
  CHECK_THROWS_WITH(analysis::profile_by_lag(inf, std::vector<index_t>{0, 1, n}), Catch::Contains("outside"));

  analysis::loglog_plot plot;
  plot.title = "t <&> \"q\"";
  plot.x_label = "lag";
  plot.y_label = "weight";
  std::vector<double> xs;
  for (const index_t l : p.lags) xs.push_back(static_cast<double>(l));
  plot.bands.push_back({"10-90%", xs, p.low, p.high});
  plot.lines.push_back({"median", xs, p.median});
  plot.lines.push_back({"exponential", xs, rc.exponential, "#d62728", true});
  plot.notes.push_back("exponent 0.300");
  const std::string svg = analysis::to_svg(plot);
  CHECK(svg.rfind("<svg", 0) == 0);
  CHECK(svg.find("</svg>") != std::string::npos);
  CHECK(svg.find("t &lt;&amp;&gt; &quot;q&quot;") != std::string::npos);
  CHECK(svg.find("<polyline") != std::string::npos);
  CHECK(svg.find("<polygon") != std::string::npos);
  CHECK(svg.find("nan") == std::string::npos);
  CHECK(svg.find("inf") == std::string::npos);
  CHECK(svg.find("exponent 0.300") != std::string::npos);
}

#endif
