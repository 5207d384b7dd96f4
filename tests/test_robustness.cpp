// Hostile inputs and failures in the middle of a call: configuration values past the library's limits, size
// products that would overflow, a weight file whose metadata promises more layers than it holds, a failure in a
// later layer of a decoder (every cache must be back where the call found it), invalid attention variants in
// compile-time models, and the test helpers themselves (a size mismatch or a NaN never passes).
#include <catch2/catch.hpp>

#include <sessa/io/model_file.hpp>

#include <filesystem>

#include "support.hpp"

using namespace sessa;

namespace {

/// A host backend whose feedback kernel throws on its `fail_at`-th call (counting from 1): a failure inside a
/// later layer of a decoder.
struct failing {
  static constexpr std::string_view name = "failing";
  using memory_space = memory::host;
};
inline int feedback_calls = 0;
inline int fail_at = 0;

}  // namespace

namespace sessa::backend {
template <>
struct context<failing> : context<reference> {};
template <>
struct kernels<failing> : kernels<reference> {
  template <scalar T, class C>
  static void feedback(context<reference>& ctx, const layer_config& c, cmatrix<T> qb, const T* gamma, cmatrix<T> f,
                       cache_view<C> cache, index_t pos0, index_t n, matrix<T> out) {
    if (++feedback_calls == fail_at) throw backend_error("injected failure in feedback call " + std::to_string(fail_at));
    kernels<reference>::feedback(ctx, c, qb, gamma, f, cache, pos0, n, out);
  }
};
}  // namespace sessa::backend

TEST_CASE("configuration values past the library's limits are rejected by name", "[robustness][errors]") {
  CHECK_THROWS_WITH((layer_config{index_t{1} << 20, 1, 1, false, 0.9, 1e-5}.check()),
                    Catch::Contains("d_model 1048576 exceeds the limit of 65536"));
  CHECK_THROWS_WITH((layer_config{index_t{1} << 62, 1, 1, false, 0.9, 1e-5}.check()), Catch::Contains("exceeds"));
  const layer_config ok{16, 2, 2, true, 0.9, 1e-5};
  CHECK_THROWS_WITH((decoder_config{ok, index_t{1} << 40, 1, true}.check()), Catch::Contains("vocab_size must lie in"));
  CHECK_THROWS_WITH((decoder_config{ok, 10, 100000000, true}.check()),
                    Catch::Contains("n_layers must lie in [1, 4096], got 100000000"));
  CHECK_NOTHROW((decoder_config{ok, max_vocab_size, max_n_layers, true}.check()));
}

TEST_CASE("size products that overflow are errors, not undefined behaviour or huge allocations",
          "[robustness][errors]") {
  CHECK_THROWS_AS(shape_numel({index_t{1} << 40, index_t{1} << 40}), shape_error);
  CHECK_THROWS_AS((tensor<float>({index_t{1} << 31, index_t{1} << 31, 4})), shape_error);
  CHECK_THROWS_WITH(buffer<double>(std::numeric_limits<index_t>::max() / 4), Catch::Contains("do not fit"));
  const layer_config cfg{16, 2, 2, true, 0.9, 1e-5};
  CHECK_THROWS_WITH((layer_cache<float, backend::reference>(cfg, index_t{1} << 40, index_t{1} << 40)),
                    Catch::Contains("does not fit"));
  CHECK(mul_fits(index_t{1} << 31, index_t{1} << 31));
  CHECK_FALSE(mul_fits(index_t{1} << 32, index_t{1} << 31));
  CHECK_FALSE(mul_fits(-1, 2));
}

TEST_CASE("a decoder file whose metadata promises more layers than it holds fails before sizing them",
          "[robustness][io][errors]") {
  // A one-layer decoder file relabelled as n_layers = 4000: the loader must say so, without building 4000 layers.
  const decoder_config real{{16, 2, 1, true, 0.9, 1e-5}, 11, 1, true};
  const auto w = random_decoder_weights<float>(real, 1);
  const auto dir = std::filesystem::temp_directory_path() / "sessa_test_robustness";
  std::filesystem::create_directories(dir);
  const auto path = dir / "layers_4000.safetensors";
  {
    io::safetensors_writer out;
    decoder_config lie = real;
    lie.n_layers = 4000;
    for (auto& [k, v] : io::config_metadata(lie)) out.set_metadata(k, v);
    for_each_parameter(real, w, [&](const std::string& name, const shape_t& s, const buffer<float>& b) {
      out.add<float>(name, s, std::vector<float>(b.span().begin(), b.span().end()));
    });
    out.write(path);
  }
  CHECK_THROWS_WITH(io::load_decoder<float>(path),
                    Catch::Contains("n_layers = 4000") && Catch::Contains("tensors of 1 layer"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("a failure in a later layer leaves every cache of the decoder as the call found it",
          "[robustness][model]") {
  const decoder_config cfg{{16, 2, 1, true, 0.9, 1e-5}, 13, 3, true};
  const auto w = random_decoder_weights<double>(cfg, 4);
  const decoder<double, failing> M(cfg, w);
  const decoder<double, backend::reference> R(cfg, w);
  const tensor<std::int64_t> a = test::random_tokens(2, 5, 13, 1), b = test::random_tokens(2, 4, 13, 2);
  auto cache = M.init_cache(2, 16);
  feedback_calls = 0;
  fail_at = 0;  // no failure: a prefill of a
  (void)M.forward(a, cache);
  REQUIRE(cache.length() == 5);
  // The next call fails in the third layer's feedback (calls: a took 3; b's are 4, 5, 6).
  fail_at = 6;
  CHECK_THROWS_WITH(M.forward(b, cache), Catch::Contains("injected failure"));
  for (const auto& l : cache.layers) CHECK(l.length() == 5);
  // And the state is exactly as before: continuing gives the reference's numbers.
  fail_at = 0;
  const tensor<double> got = M.forward(b, cache);
  auto ref_cache = R.init_cache(2, 16);
  (void)R.forward(a, ref_cache);
  const tensor<double> want = R.forward(b, ref_cache);
  CHECK(test::max_rel_diff(got.span(), want.span()) == 0.0);
}

TEST_CASE("the test helper never passes a size mismatch, an empty comparison or a NaN", "[robustness]") {
  const std::vector<double> a{1, 2, 3}, b{1, 2}, n{1, std::nan(""), 3}, e{};
  CHECK(test::max_rel_diff(a, b) == INFINITY);
  CHECK(test::max_rel_diff(b, a) == INFINITY);
  CHECK(test::max_rel_diff(e, e) == INFINITY);
  CHECK(test::max_rel_diff(n, a) == INFINITY);
  CHECK(test::max_rel_diff(a, a) == 0.0);
}

TEST_CASE("a compile-time model with an invalid attention variant refuses to run", "[robustness][embedded]") {
  using bad_layer = embedded::layer_spec<16, 2, 2, true, 0.9, 1e-5, attention::sliding_window{0}>;
  using spec = embedded::decoder_spec<11, true, bad_layer>;
  const decoder_config shell{bad_layer::config, 11, 1, true};
  const auto w = random_decoder_weights<float>(shell, 3);
  embedded::decoder_params<float, spec> p;
  p.embedding = w.embedding.data();
  p.layers = {params(w.layers[0], w.layers[0].mixer)};
  p.norm_w = w.norm_w.data();
  p.norm_b = w.norm_b.data();
  p.head = w.embedding.data();
  const embedded::static_decoder<float, spec> model(p);
  static embedded::static_state<float, spec, 8> st;
  float out[11];
  const std::int64_t tok = 1;
  CHECK_THROWS_WITH(model.decode_step(std::span<const std::int64_t>(&tok, 1), st, matrix<float>(out, 1, 11)),
                    Catch::Contains("sliding_window.window must be >= 1"));
  CHECK(st.length() == 0);
}

TEST_CASE("weights() returns every parameter: a model rebuilt from it computes the same numbers",
          "[robustness][model]") {
  const decoder_config cfg{{16, 2, 1, true, 0.9, 1e-5}, 13, 2, false};
  const decoder<float, backend::cpu> M(cfg, random_decoder_weights<float>(cfg, 5));
  const auto w = M.weights();
  REQUIRE(w.layers.size() == 2);
  CHECK(w.layers[1].mixer.q_w.size() == 16 * 16);
  const decoder<float, backend::reference> again(cfg, w);
  const tensor<std::int64_t> t = test::random_tokens(2, 9, 13, 3);
  CHECK(test::max_rel_diff(again.forward(t).span(), M.forward(t).span()) < 1e-5);
  // A layer's, through a file.
  const auto& L = M.layers()[0];
  const auto lw = L.weights();
  CHECK(lw.mixer.fb_w.size() == 2 * 16 * 16);
  const auto dir = std::filesystem::temp_directory_path() / "sessa_test_weights_copy";
  std::filesystem::create_directories(dir);
  io::save_model(dir / "layer.safetensors", cfg.layer, lw);
  const auto L2 = io::load_layer<float, backend::cpu>(dir / "layer.safetensors");
  const tensor<float> x = test::random_tensor<float>({1, 6, 16}, 4);
  CHECK(test::max_rel_diff(L2.forward(x).span(), L.forward(x).span()) == 0.0);
  std::filesystem::remove_all(dir);
}

TEST_CASE("an invalid attention window in a configuration is reported with the file it came from",
          "[robustness][io][errors]") {
  // Every other configuration error names its source; the window check once ran outside the code that adds it
  // (found by tests/fuzz/fuzz_config_json).
  const char* text = R"({"d_model": 32, "n_heads": 4, "attention": "sliding_window", "window": 0})";
  CHECK_THROWS_WITH(io::parse_config_json(text, "c.json"),
                    Catch::StartsWith("c.json: ") && Catch::Contains("sliding_window.window must be >= 1, got 0"));
  io::safetensors_writer out;
  for (auto& [k, v] : io::config_metadata(layer_config{32, 4, 2, true, 0.999, 1e-5})) out.set_metadata(k, v);
  out.set_metadata("sessa.attention", "sliding_window");
  out.set_metadata("sessa.window", "-3");
  const io::safetensors_file f = io::safetensors_file::parse(out.serialize(), "m.safetensors");
  CHECK_THROWS_WITH(io::read_model_info(f), Catch::StartsWith("m.safetensors: ") &&
                                                Catch::Contains("sliding_window.window must be >= 1, got -3"));
}
