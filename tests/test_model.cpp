// Model-level properties on random weights, over scalar x backend:
// prefill = decode = chunked prefill, causality, batch independence, the fast backend against the
// reference, the feedback's analytic power-law kernel, attention variants, and every error path of the
// model API (configuration checks, shapes, cache capacity, token range).
#include <catch2/catch.hpp>

#include "support.hpp"

using namespace sessa;
using sessa::test::max_rel_diff;

namespace {

/// Tolerance between two orders of the same computation in working type T.
template <class T>
constexpr double tight() {
  return std::is_same_v<T, float> ? 2e-5 : 1e-12;
}

const std::vector<layer_config> layer_shapes = {
    {32, 4, 2, true, 0.999, 1e-5},  // GQA with RoPE
    {16, 1, 1, false, 0.9, 1e-5},   // one head: no out_proj, no RoPE
    {24, 3, 3, true, 0.99, 1e-5},   // odd head count, d = 8
    {32, 8, 1, true, 0.5, 1e-6},    // MQA, d = 4
};

template <class Layer, class T>
tensor<T> run_chunked(const Layer& L, const tensor<T>& x, index_t chunk) {
  auto cache = L.init_cache(x.dim(0), x.dim(1));
  tensor<T> y(x.shape());
  for (index_t t0 = 0; t0 < x.dim(1); t0 += chunk) {
    const index_t n = std::min(chunk, x.dim(1) - t0);
    test::put_tokens(y, L.forward(test::slice_tokens(x, t0, n), cache), t0);
  }
  return y;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("layer: prefill, decode and chunked prefill agree", "[model]", test::all_combinations) {
  using T = typename TestType::first_type;
  using B = typename TestType::second_type;
  for (const auto& cfg : layer_shapes) {
    CAPTURE(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.use_rope);
    const test::host_model<layer<T, B>> L(cfg, random_layer_weights<T>(cfg, 11));
    const tensor<T> x = test::random_tensor<T>({2, 37, cfg.d_model}, 5);
    const tensor<T> y = L.forward(x);
    for (index_t chunk : {1, 2, 3, 5, 16, 36, 37}) {
      CAPTURE(chunk);
      const tensor<T> yc = run_chunked(L, x, chunk);
      CHECK(max_rel_diff(yc.span(), y.span()) <= tight<T>());
    }
    // decode_step takes (B, D) and gives (B, D).
    auto cache = L.init_cache(2, 37);
    double worst = 0;
    for (index_t t = 0; t < 37; ++t) {
      tensor<T> xt({2, cfg.d_model});
      std::copy_n(test::slice_tokens(x, t, 1).data(), xt.size(), xt.data());
      const tensor<T> yt = L.decode_step(xt, cache);
      const tensor<T> ref = test::slice_tokens(y, t, 1);
      worst = std::max(worst, max_rel_diff(yt.span(), ref.span()));
    }
    CHECK(worst <= tight<T>());
    CHECK(cache.length() == 37);
  }
}

TEMPLATE_LIST_TEST_CASE("decoder: prefill, decode and chunked prefill agree", "[model]", test::all_combinations) {
  using T = typename TestType::first_type;
  using B = typename TestType::second_type;
  for (bool tied : {true, false}) {
    const decoder_config cfg{{32, 4, 2, true, 0.999, 1e-5}, 41, 2, tied};
    const test::host_model<decoder<T, B>> M(cfg, random_decoder_weights<T>(cfg, 3));
    const tensor<std::int64_t> tok = test::random_tokens(2, 29, 41, 9);
    const tensor<T> logits = M.forward(tok);
    REQUIRE(logits.shape() == shape_t{2, 29, 41});
    for (index_t chunk : {1, 4, 28}) {
      auto cache = M.init_cache(2, 29);
      tensor<T> lc(logits.shape());
      for (index_t t0 = 0; t0 < 29; t0 += chunk) {
        const index_t n = std::min<index_t>(chunk, 29 - t0);
        test::put_tokens(lc, M.forward(test::slice_tokens(tok, t0, n), cache), t0);
      }
      CAPTURE(tied, chunk);
      CHECK(max_rel_diff(lc.span(), logits.span()) <= tight<T>());
    }
    // logits_for::last gives the last row of each batch row.
    auto cache = M.init_cache(2, 29);
    const tensor<T> last = M.forward(tok, cache, logits_for::last);
    REQUIRE(last.shape() == shape_t{2, 41});
    const tensor<T> ref_last = test::slice_tokens(logits, 28, 1);
    CHECK(max_rel_diff(last.span(), ref_last.span()) <= tight<T>());
  }
}

TEMPLATE_LIST_TEST_CASE("causality: a later token leaves earlier outputs bit-identical", "[model]",
                        test::all_combinations) {
  using T = typename TestType::first_type;
  using B = typename TestType::second_type;
  const layer_config cfg{32, 4, 2, true, 0.999, 1e-5};
  const test::host_model<layer<T, B>> L(cfg, random_layer_weights<T>(cfg, 21));
  const index_t Tn = 70;
  const tensor<T> x = test::random_tensor<T>({1, Tn, 32}, 8);
  const tensor<T> y = L.forward(x);
  for (index_t j : {0, 1, 33, 69}) {
    tensor<T> x2 = x;
    for (index_t k = 0; k < 32; ++k) x2[j * 32 + k] += T(3);
    const tensor<T> y2 = L.forward(x2);
    bool same_before = true, changed_at = false;
    for (index_t i = 0; i < j * 32; ++i) same_before = same_before && (y[i] == y2[i]);
    for (index_t k = 0; k < 32; ++k) changed_at = changed_at || (y[j * 32 + k] != y2[j * 32 + k]);
    CAPTURE(j);
    CHECK(same_before);
    CHECK(changed_at);
  }
  // Decoder: changing token j.
  const decoder_config dc{cfg, 30, 2, true};
  const test::host_model<decoder<T, B>> M(dc, random_decoder_weights<T>(dc, 4));
  const tensor<std::int64_t> tok = test::random_tokens(1, 40, 30, 2);
  const tensor<T> lg = M.forward(tok);
  tensor<std::int64_t> tok2 = tok;
  tok2[25] = (tok2[25] + 1) % 30;
  const tensor<T> lg2 = M.forward(tok2);
  bool same_before = true;
  for (index_t i = 0; i < 25 * 30; ++i) same_before = same_before && (lg[i] == lg2[i]);
  CHECK(same_before);
}

TEMPLATE_LIST_TEST_CASE("batch rows are independent", "[model]", test::all_combinations) {
  using T = typename TestType::first_type;
  using B = typename TestType::second_type;
  const layer_config cfg{32, 4, 2, true, 0.999, 1e-5};
  const test::host_model<layer<T, B>> L(cfg, random_layer_weights<T>(cfg, 2));
  const tensor<T> x = test::random_tensor<T>({3, 25, 32}, 1);
  const tensor<T> y = L.forward(x);
  for (index_t b = 0; b < 3; ++b) {
    tensor<T> xb({1, 25, 32}, std::span<const T>(x.data() + b * 25 * 32, 25 * 32));
    const tensor<T> yb = L.forward(xb);
    CAPTURE(b);
    CHECK(max_rel_diff(yb.span(), std::span<const T>(y.data() + b * 25 * 32, 25 * 32)) <= tight<T>());
  }
}

TEMPLATE_LIST_TEST_CASE("ragged steps: sequences of different lengths step together, each row as if alone",
                        "[model][batch]", test::all_combinations) {
  using T = typename TestType::first_type;
  using B = typename TestType::second_type;
  const decoder_config cfg{{32, 4, 2, true, 0.999, 1e-5}, 41, 2, true};
  const test::host_model<decoder<T, B>> M(cfg, random_decoder_weights<T>(cfg, 5));
  using C = typename decoder<T, B>::cache_type;
  // Sequence i has length[i] tokens; its logits from one prefill of all its tokens are the reference.
  const std::vector<index_t> length = {4, 13, 9};
  std::vector<tensor<std::int64_t>> seq;
  std::vector<tensor<T>> want;
  for (std::size_t i = 0; i < length.size(); ++i) {
    seq.push_back(test::random_tokens(1, length[i] + 3, 41, 70 + i));
    want.push_back(M.forward(seq.back()));  // (1, length + 3, V)
  }
  // Prefill each to its length, then three ragged steps of all three rows (the last without row 0).
  std::vector<C> caches;
  for (std::size_t i = 0; i < length.size(); ++i) {
    caches.push_back(M.init_cache(1, 32));
    M.forward(test::slice_tokens(seq[i], 0, length[i]), caches.back(), logits_for::last);
  }
  step_scratch<T, B> scratch;
  for (index_t step = 0; step < 3; ++step) {
    std::vector<C*> rows;
    std::vector<std::int64_t> ids;
    std::vector<std::size_t> which;
    for (std::size_t i : {std::size_t{2}, std::size_t{0}, std::size_t{1}}) {
      if (step == 2 && i == 0) continue;
      rows.push_back(&caches[i]);
      ids.push_back(seq[i][length[i] + step]);
      which.push_back(i);
    }
    const tensor<T> got = to_host(M.step_rows(ids, std::span<C* const>(rows), scratch));
    for (std::size_t r = 0; r < rows.size(); ++r) {
      const std::size_t i = which[r];
      const tensor<T> ref = test::slice_tokens(want[i], length[i] + step, 1);
      CAPTURE(step, i);
      CHECK(max_rel_diff(std::span<const T>(got.data() + static_cast<index_t>(r) * 41, 41), ref.span()) <= tight<T>());
      CHECK(caches[i].length() == length[i] + step + 1);
    }
  }
}

#ifndef SESSA_TEST_DEVICE_SUITE  // host backends only: the cpu backend's blocking and borrowed workspaces
TEMPLATE_TEST_CASE("the cpu backend matches the reference backend", "[model][cpu]", float, double) {
  using T = TestType;
  for (const auto& cfg : layer_shapes) {
    CAPTURE(cfg.d_model, cfg.n_heads, cfg.n_kv_heads);
    const auto w = random_layer_weights<T>(cfg, 17);
    const layer<T, backend::reference> R(cfg, w);
    const layer<T, backend::cpu> C(cfg, w);
    const tensor<T> x = test::random_tensor<T>({2, 150, cfg.d_model}, 3);
    CHECK(max_rel_diff(C.forward(x).span(), R.forward(x).span()) <= tight<T>());
  }
}

TEMPLATE_TEST_CASE("a prefill longer than prefill_block runs in blocks: exact, with a bounded workspace",
                   "[model][cpu][slow]", float, double) {
  using T = TestType;
  const layer_config cfg{16, 2, 1, true, 0.99, 1e-5};
  const layer<T, backend::cpu> L(cfg, random_layer_weights<T>(cfg, 21));
  const auto own = L.weights();
  const auto P = params(own, L.get_mixer().weights());
  const index_t D = cfg.d_model;
  // (batch, tokens already cached, tokens of the long call, in place): the in-place row-block path of one
  // sequence, the staged path of two, a call that is an exact multiple of prefill_block after a cached prefix
  // (one sequence: two would only double the longest case of the sanitizer configuration).
  const auto [batch, prefix, n, in_place] = GENERATE(table<index_t, index_t, index_t, bool>(
      {{1, 0, prefill_block + 333, true}, {2, 0, prefill_block + 333, true}, {1, 7, 2 * prefill_block, false}}));
  CAPTURE(batch, prefix, n, in_place);
  const tensor<T> x0 = test::random_tensor<T>({batch, prefix, D}, 7);
  const tensor<T> x = test::random_tensor<T>({batch, n, D}, 8);
  const auto start = [&](layer_cache<T>& c) {
    if (prefix > 0) (void)L.forward(x0, c);
  };
  // One pass over all n tokens (what layer_forward did before blocking): the oracle.
  auto one_cache = L.init_cache(batch, prefix + n);
  start(one_cache);
  workspace<T> one_ws;
  tensor<T> want(x.shape());
  detail::layer_pass<backend::cpu, T>(cfg, P, attention::causal{}, x.as_matrix(), batch, one_cache, one_ws,
                                   want.as_matrix());
  // The layer's forward: passes of prefill_block tokens.
  auto cache = L.init_cache(batch, prefix + n);
  start(cache);
  workspace<T> ws;
  tensor<T> y = in_place ? x : tensor<T>(x.shape());
  L.forward(in_place ? y.as_matrix() : x.as_matrix(), batch, cache, ws, y.as_matrix());
  CHECK(cache.length() == prefix + n);
  CHECK(max_rel_diff(y.span(), want.span()) <= tight<T>());
  // The workspace holds one pass's rows, not n.
  CHECK(ws.u.size() == batch * prefill_block * D);
  CHECK(one_ws.u.size() == batch * n * D);
}

TEST_CASE("a long call of several sequences on a borrowed workspace is refused before any state changes",
          "[model][errors]") {
  const layer_config cfg{8, 2, 1, true, 0.99, 1e-5};
  const layer<float, backend::reference> L(cfg, random_layer_weights<float>(cfg, 3));
  const index_t n = prefill_block + 1;
  using ws_type = workspace<float, backend::reference>;
  const auto layout = ws_type::sizes(cfg, 2 * prefill_block, n);
  std::vector<float> storage(static_cast<std::size_t>(ws_type::total(layout)) + 16);
  auto ws = ws_type::borrow(storage.data(), layout);
  auto cache = L.init_cache(2, n);
  tensor<float> x({2, n, 8}, 0.5f);
  CHECK_THROWS_WITH(L.forward(x.as_matrix(), 2, cache, ws, x.as_matrix()),
                    Catch::Contains("borrowed workspace has no staging buffer") && Catch::Contains("4096"));
  CHECK(cache.length() == 0);
}

TEMPLATE_TEST_CASE("a decoder prefill longer than prefill_block: every row of logits, blocked head", "[model][cpu][slow]",
                   float, double) {
  using T = TestType;
  const decoder_config cfg{{8, 2, 1, true, 0.99, 1e-5}, 11, 2, true};
  const decoder<T, backend::cpu> model(cfg, random_decoder_weights<T>(cfg, 5));
  const index_t n = prefill_block + 150;
  const tensor<std::int64_t> tok = test::random_tokens(2, n, 11, 6);
  const tensor<T> all = model.forward(tok);  // (2, n, 11) in one call
  // The same tokens in chunks of 1500 through a cache.
  auto cache = model.init_cache(2, n);
  tensor<T> want(all.shape());
  for (index_t t0 = 0; t0 < n; t0 += 1500) {
    const index_t c = std::min<index_t>(1500, n - t0);
    tensor<std::int64_t> part({2, c});
    for (index_t b = 0; b < 2; ++b)
      for (index_t i = 0; i < c; ++i) part[b * c + i] = tok[b * n + t0 + i];
    const tensor<T> got = model.forward(part, cache);
    for (index_t b = 0; b < 2; ++b)
      std::copy_n(got.data() + b * c * 11, c * 11, want.data() + (b * n + t0) * 11);
  }
  CHECK(max_rel_diff(all.span(), want.span()) <= tight<T>());
  // The head's scratch is one block of rows, not n.
  CHECK(cache.scratch.u.size() <= 2 * prefill_block * 8);
}

#endif  // SESSA_TEST_DEVICE_SUITE

TEMPLATE_LIST_TEST_CASE("feedback: uniform routing and a constant gain give the power-law kernel", "[model]",
                        test::all_combinations) {
  // With q_b = 0 every past token gets alpha = 1/t; with gain gamma and f = e_j (one channel), SPEC.md's
  // solve gives s_t = (gamma / t) prod_{k=j+1}^{t-1} (1 + gamma / k) for t > j, s_j = 1, s_t = 0 for t < j.
  using T = typename TestType::first_type;
  using B = typename TestType::second_type;
  const layer_config cfg{8, 1, 1, false, 0.999, 1e-5};
  const index_t Tn = 300, D = 8, j = 7;
  const double gamma = 0.75;
  using S = space_of<B>;
  layer_cache<T, B> cache(cfg, 1, Tn);
  backend::context<B> ctx;
  // Any feedback keys (q_b = 0 makes every past key weigh 1/t), written through the backend's cache append.
  const tensor<T> keys = test::random_tensor<T>({Tn, D}, 5);
  const tensor<T> kv({Tn, 2 * cfg.kv_dim()}, T(0));
  const tensor<T, S> keys_d = to_space<S>(keys), kv_d = to_space<S>(kv);
  backend::kernels<B>::append_cache(ctx, cfg, kv_d.as_matrix(), keys_d.as_matrix(), cache.view(), 0, Tn);
  tensor<T> qb({Tn, D}, T(0)), f({Tn, D}, T(0));
  tensor<T> g({Tn}, static_cast<T>(gamma));
  for (index_t k = 0; k < D; ++k) f[j * D + k] = T(1);
  const tensor<T, S> qb_d = to_space<S>(qb), f_d = to_space<S>(f), g_d = to_space<S>(g);
  tensor<T, S> out_d({Tn, D});
  backend::kernels<B>::feedback(ctx, cfg, qb_d.as_matrix(), g_d.data(), f_d.as_matrix(), cache.view(), 0, Tn,
                                out_d.as_matrix());
  const tensor<T> out = to_host(out_d);
  double worst = 0, prod = 1;
  for (index_t t = 0; t < Tn; ++t) {
    double expect = t < j ? 0.0 : (t == j ? 1.0 : gamma / static_cast<double>(t) * prod);
    if (t > j) prod *= 1 + gamma / static_cast<double>(t);
    for (index_t k = 0; k < D; ++k) worst = std::max(worst, std::abs(static_cast<double>(out[t * D + k]) - expect));
  }
  CHECK(worst <= (std::is_same_v<T, float> ? 1e-5 : 1e-13));
  // The tail is a power law: s_t ~ t^(gamma - 1), so s_{2t} / s_t -> 2^(gamma - 1).
  const double ratio = static_cast<double>(out[(2 * 140) * D]) / static_cast<double>(out[140 * D]);
  CHECK(ratio == Approx(std::pow(2.0, gamma - 1)).epsilon(0.02));
}

TEMPLATE_LIST_TEST_CASE("sliding window: a window as long as the sequence is causal attention", "[model]",
                        test::all_combinations) {
  using T = typename TestType::first_type;
  using B = typename TestType::second_type;
  const layer_config cfg{32, 4, 2, true, 0.999, 1e-5};
  const auto w = random_layer_weights<T>(cfg, 31);
  const tensor<T> x = test::random_tensor<T>({2, 40, 32}, 6);
  const test::host_model<layer<T, B>> full(cfg, w);
  const test::host_model<layer<T, B, attention::sliding_window>> wide(cfg, w, attention::sliding_window{40});
  const test::host_model<layer<T, B, attention::sliding_window>> narrow(cfg, w, attention::sliding_window{4});
  const tensor<T> y = full.forward(x);
  CHECK(max_rel_diff(wide.forward(x).span(), y.span()) <= tight<T>());
  // The first 4 tokens see the same keys under both; later tokens differ.
  const tensor<T> yn = narrow.forward(x);
  CHECK(max_rel_diff(test::slice_tokens(yn, 0, 4).span(), test::slice_tokens(y, 0, 4).span()) <= tight<T>());
  CHECK(max_rel_diff(test::slice_tokens(yn, 10, 30).span(), test::slice_tokens(y, 10, 30).span()) > 1e-3);
  // Decode and chunked agree under the window too.
  auto cache = narrow.init_cache(2, 40);
  tensor<T> yc(x.shape());
  for (index_t t0 = 0; t0 < 40; t0 += 3) {
    const index_t n = std::min<index_t>(3, 40 - t0);
    test::put_tokens(yc, narrow.forward(test::slice_tokens(x, t0, n), cache), t0);
  }
  CHECK(max_rel_diff(yc.span(), yn.span()) <= tight<T>());
}

#ifndef SESSA_TEST_DEVICE_SUITE  // error paths of the model API, on the reference backend
TEST_CASE("cache: capacity, reset and truncate", "[model][errors]") {
  const layer_config cfg{16, 2, 2, true, 0.999, 1e-5};
  const layer<double, backend::reference> L(cfg, random_layer_weights<double>(cfg, 1));
  const tensor<double> x = test::random_tensor<double>({1, 10, 16}, 2);
  auto cache = L.init_cache(1, 10);
  const tensor<double> y = L.forward(x, cache);
  CHECK(cache.length() == 10);
  CHECK(cache.remaining() == 0);
  CHECK_THROWS_AS(L.forward(test::slice_tokens(x, 0, 1), cache), cache_error);
  CHECK_THROWS_WITH(L.forward(test::slice_tokens(x, 0, 1), cache),
                    Catch::Contains("cache full") && Catch::Contains("capacity 10"));
  CHECK(cache.length() == 10);  // a refused call changes nothing
  // Truncate and re-run the tail: exact, since token t depends only on the past.
  cache.truncate(6);
  const tensor<double> tail = L.forward(test::slice_tokens(x, 6, 4), cache);
  CHECK(max_rel_diff(tail.span(), test::slice_tokens(y, 6, 4).span()) == 0.0);
  CHECK_THROWS_WITH(cache.truncate(11), Catch::Contains("cannot truncate"));
  CHECK_THROWS_AS(cache.truncate(-1), cache_error);
  cache.reset();
  CHECK(cache.length() == 0);
  CHECK(max_rel_diff(L.forward(x, cache).span(), y.span()) == 0.0);
  // Batch mismatch.
  auto c2 = L.init_cache(2, 10);
  CHECK_THROWS_WITH(L.forward(x, c2), Catch::Contains("batch 1") && Catch::Contains("batch 2"));
  CHECK_THROWS_AS(L.init_cache(0, 10), cache_error);
  CHECK_THROWS_AS(L.init_cache(1, 0), cache_error);
  layer_cache<double, backend::reference> never;
  CHECK_THROWS_WITH(L.forward(x, never), Catch::Contains("init_cache"));
}

TEST_CASE("configuration checks name the bad value", "[model][errors]") {
  auto bad = [](layer_config c) { return [c] { c.check(); }; };
  CHECK_THROWS_WITH(bad({30, 4, 4, true, 0.9, 1e-5})(), Catch::Contains("d_model (30)") && Catch::Contains("n_heads (4)"));
  CHECK_THROWS_WITH(bad({32, 4, 3, true, 0.9, 1e-5})(), Catch::Contains("n_kv_heads (3)"));
  CHECK_THROWS_WITH(bad({12, 4, 4, true, 0.9, 1e-5})(), Catch::Contains("d = d_model / n_heads = 3"));
  CHECK_NOTHROW(bad({12, 4, 4, false, 0.9, 1e-5})());  // odd head width is fine without RoPE
  CHECK_THROWS_WITH(bad({16, 2, 2, true, 1.0, 1e-5})(), Catch::Contains("gamma_max must lie in (0, 1), got 1"));
  CHECK_THROWS_WITH(bad({16, 2, 2, true, 0.0, 1e-5})(), Catch::Contains("gamma_max"));
  CHECK_THROWS_WITH(bad({16, 2, 2, true, -0.5, 1e-5})(), Catch::Contains("got -0.5"));
  CHECK_THROWS_WITH(bad({16, 2, 2, true, 0.9, 0.0})(), Catch::Contains("ln_eps"));
  CHECK_THROWS_WITH(bad({0, 1, 1, true, 0.9, 1e-5})(), Catch::Contains("d_model must be positive"));
  CHECK_THROWS_WITH(bad({16, 0, 1, true, 0.9, 1e-5})(), Catch::Contains("n_heads must be positive"));
  CHECK_THROWS_WITH(bad({16, 2, 0, true, 0.9, 1e-5})(), Catch::Contains("n_kv_heads must be positive"));
  decoder_config dc{{16, 2, 2, true, 0.9, 1e-5}, 0, 1, true};
  CHECK_THROWS_WITH(dc.check(), Catch::Contains("vocab_size must lie in [1, 16777216], got 0"));
  dc.vocab_size = 10;
  dc.n_layers = 0;
  CHECK_THROWS_WITH(dc.check(), Catch::Contains("n_layers must lie in [1, 4096], got 0"));
  // The check runs before anything is allocated: constructing with a bad config throws config_error.
  layer_config c{30, 4, 4, true, 0.9, 1e-5};
  CHECK_THROWS_AS((layer<float, backend::reference>(c, layer_weights<float>{})), config_error);
  CHECK_THROWS_AS(attention::sliding_window{0}.check(), config_error);
}

TEST_CASE("weights of the wrong size are rejected by name", "[model][errors]") {
  const layer_config cfg{16, 2, 2, true, 0.9, 1e-5};
  auto w = random_layer_weights<float>(cfg, 1);
  w.mixer.k_w.resize(3);
  CHECK_THROWS_WITH((layer<float, backend::reference>(cfg, w)),
                    Catch::Contains("mixer.k_proj.weight") && Catch::Contains("(16, 16)"));
  auto w2 = random_layer_weights<float>(cfg, 1);
  w2.mixer.rope_inv_freq.resize(3);
  CHECK_THROWS_WITH((layer<float, backend::reference>(cfg, w2)), Catch::Contains("rope_inv_freq"));
  const decoder_config dc{cfg, 20, 2, true};
  auto dw = random_decoder_weights<float>(dc, 2);
  dw.layers.pop_back();
  CHECK_THROWS_WITH((decoder<float, backend::reference>(dc, dw)), Catch::Contains("1 layers"));
  auto dw2 = random_decoder_weights<float>(dc, 2);
  dw2.head.resize(20 * 16);
  CHECK_THROWS_WITH((decoder<float, backend::reference>(dc, dw2)), Catch::Contains("lm_head.weight"));
}

TEST_CASE("inputs of the wrong shape and tokens out of range are rejected", "[model][errors]") {
  const layer_config cfg{16, 2, 2, true, 0.9, 1e-5};
  const layer<float, backend::reference> L(cfg, random_layer_weights<float>(cfg, 1));
  CHECK_THROWS_WITH(L.forward(tensor<float>({1, 4, 15})), Catch::Contains("(batch, tokens, 16)") && Catch::Contains("(1, 4, 15)"));
  CHECK_THROWS_AS(L.forward(tensor<float>({4, 16})), shape_error);
  CHECK_THROWS_AS(L.forward(tensor<float>({1, 0, 16})), shape_error);
  auto cache = L.init_cache(1, 4);
  CHECK_THROWS_WITH(L.decode_step(tensor<float>({1, 1, 16}), cache), Catch::Contains("(batch, 16)"));

  const decoder_config dc{cfg, 20, 1, true};
  const decoder<float, backend::reference> M(dc, random_decoder_weights<float>(dc, 2));
  tensor<std::int64_t> tok({1, 5}, std::int64_t{3});
  tok[3] = 20;
  auto dcache = M.init_cache(1, 8);
  CHECK_THROWS_WITH(M.forward(tok, dcache), Catch::Contains("token id 20") && Catch::Contains("position 3") &&
                                                Catch::Contains("[0, 20)"));
  tok[3] = -1;
  CHECK_THROWS_AS(M.forward(tok, dcache), value_error);
  CHECK(dcache.length() == 0);  // nothing was appended
  CHECK_THROWS_AS(M.forward(tensor<std::int64_t>({5})), shape_error);
  tensor<std::int64_t> ok({1, 9}, std::int64_t{1});
  CHECK_THROWS_WITH(M.forward(ok, dcache), Catch::Contains("cache full"));
  decoder_cache<float, backend::reference> empty;
  CHECK_THROWS_WITH(M.forward(tensor<std::int64_t>({1, 2}, std::int64_t{0}), empty), Catch::Contains("init_cache"));
}

#endif  // SESSA_TEST_DEVICE_SUITE
