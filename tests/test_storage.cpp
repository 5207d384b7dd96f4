// Narrow weight storage on the cpu backend: precision<float, bfloat16, float> and precision<float, float16, float>
// (bf16 / f16 weights widened in registers, float32 cache and arithmetic) against the reference backend running the
// same policy, in every form (prefill, decode, chunked prefill) for layers and decoders; and the rounding of the
// weights alone against the float32 model, which bounds how far a narrow model's outputs move.
#include <catch2/catch.hpp>

#include <functional>

#include "support.hpp"

using namespace sessa;
using sessa::test::max_rel_diff;

namespace {

const std::vector<layer_config> shapes = {
    {32, 4, 2, true, 0.999, 1e-5},  // GQA with RoPE
    {16, 1, 1, false, 0.9, 1e-5},   // one head: no out_proj, no RoPE
    {48, 3, 3, true, 0.99, 1e-5},   // K = 48: a vector and a tail in the dot-product path
};

template <class P, class B>
using narrow_layer = test::host_model<layer<P, B>>;

}  // namespace

TEMPLATE_TEST_CASE("cpu with narrow weights: prefill, decode and chunked agree with the reference", "[storage]",
                   (precision<float, bfloat16, float>), (precision<float, float16, float>)) {
  using P = TestType;
  using W = weight_t<P>;
  STATIC_REQUIRE(backend::kernel_set<backend::cpu, P>);
  STATIC_REQUIRE(std::is_same_v<cache_t<P>, float>);
  for (const auto& cfg : shapes) {
    CAPTURE(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, storage_name<W>());
    const layer_weights<W> w = random_layer_weights<W>(cfg, 21);
    const narrow_layer<P, backend::cpu> fast(cfg, w);
    const narrow_layer<P, backend::reference> ref(cfg, w);
    const tensor<float> x = test::random_tensor<float>({2, 41, cfg.d_model}, 8);
    const tensor<float> y = ref.forward(x);
    CHECK(max_rel_diff(fast.forward(x).span(), y.span()) <= 2e-5);
    // token by token (the dot-product path) and in chunks
    auto cache = fast.init_cache(2, 41);
    tensor<float> yd(x.shape());
    for (index_t t = 0; t < 41; ++t) test::put_tokens(yd, fast.forward(test::slice_tokens(x, t, 1), cache), t);
    CHECK(max_rel_diff(yd.span(), y.span()) <= 2e-5);
    auto cache2 = fast.init_cache(2, 41);
    tensor<float> yc(x.shape());
    for (index_t t0 = 0; t0 < 41; t0 += 7) {
      const index_t n = std::min<index_t>(7, 41 - t0);
      test::put_tokens(yc, fast.forward(test::slice_tokens(x, t0, n), cache2), t0);
    }
    CHECK(max_rel_diff(yc.span(), y.span()) <= 2e-5);
  }
}

TEMPLATE_TEST_CASE("cpu decoder with narrow weights matches the reference decoder", "[storage]",
                   (precision<float, bfloat16, float>), (precision<float, float16, float>)) {
  using P = TestType;
  using W = weight_t<P>;
  const decoder_config dc{{32, 4, 2, true, 0.99, 1e-5}, 50, 2, false};
  const decoder_weights<W> w = random_decoder_weights<W>(dc, 5);
  const test::host_model<decoder<P, backend::cpu>> fast(dc, w);
  const test::host_model<decoder<P, backend::reference>> ref(dc, w);
  std::vector<std::int64_t> ids(2 * 30);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int64_t>((i * 7 + 3) % 50);
  const tensor<std::int64_t> tokens({2, 30}, std::span<const std::int64_t>(ids));
  const tensor<float> want = ref.forward(tokens);
  CHECK(max_rel_diff(fast.forward(tokens).span(), want.span()) <= 2e-5);
  auto cache = fast.init_cache(2, 30);
  tensor<float> got(want.shape());
  for (index_t t = 0; t < 30; ++t) {
    std::vector<std::int64_t> col = {ids[static_cast<std::size_t>(t)], ids[static_cast<std::size_t>(30 + t)]};
    test::put_tokens(got, fast.forward(tensor<std::int64_t>({2, 1}, std::span<const std::int64_t>(col)), cache), t);
  }
  CHECK(max_rel_diff(got.span(), want.span()) <= 2e-5);
}

TEST_CASE("narrow weights move a layer's outputs by about their rounding", "[storage]") {
  // The float32 model and the same weights rounded to bf16 / f16: the outputs differ by the weights' rounding (bf16:
  // 8 significant bits, relative 2^-9; f16: 11 bits, 2^-12), amplified by a few through the layer, never more.
  const layer_config cfg{64, 4, 4, true, 0.99, 1e-5};
  const layer_weights<float> w = random_layer_weights<float>(cfg, 3);
  const tensor<float> x = test::random_tensor<float>({1, 64, cfg.d_model}, 4);
  const tensor<float> y = test::host_model<layer<float, backend::cpu>>(cfg, w).forward(x);
  auto narrowed = [&]<class S>() {
    return test::host_model<layer<precision<float, S, float>, backend::cpu>>(cfg, convert_weights<S>(cfg, w)).forward(x);
  };
  const double bf = max_rel_diff(narrowed.template operator()<bfloat16>().span(), y.span());
  const double h = max_rel_diff(narrowed.template operator()<float16>().span(), y.span());
  CAPTURE(bf, h);
  CHECK(bf > 1e-4);  // the rounding is there (a path that silently used float weights would show 0)
  CHECK(bf < 2e-2);
  CHECK(h > 1e-5);
  CHECK(h < 3e-3);
  CHECK(h < bf);
}

namespace {
// Numeric policies with a narrow cache (named without commas: test names are filters).
using f64_bf16_cache = precision<double, double, bfloat16>;
using f64_f16_all = precision<double, float16>;
using f32_q8_bf16_cache = precision<float, q8_0, bfloat16>;
}  // namespace

TEMPLATE_TEST_CASE("cpu decoder with a bfloat16 or float16 cache matches the reference decoder in every form",
                   "[storage][cache]", f64_bf16_cache, f64_f16_all, f32_q8_bf16_cache) {
  // In double the two backends agree to the double tolerance: both round each cached value the same way, and
  // every row reads the s of earlier rows as the cache holds them, so prefill, chunks and decode steps are one
  // computation. In float a value the two summation orders round to different sides of a bf16 boundary moves
  // by one unit in bf16's last place, hence the looser bound.
  using P = TestType;
  using T = compute_t<P>;
  using W = weight_t<P>;
  STATIC_REQUIRE(backend::kernel_set<backend::cpu, P>);
  const double tol = std::is_same_v<T, double> ? 1e-11 : 3e-2;
  const decoder_config dc{{32, 4, 2, true, 0.99, 1e-5}, 50, 2, false};
  const decoder_weights<W> w = std::is_same_v<W, q8_0> ? convert_weights<W>(dc, random_decoder_weights<float>(dc, 5))
                                                       : random_decoder_weights<W>(dc, 5);
  const test::host_model<decoder<P, backend::cpu>> fast(dc, w);
  const test::host_model<decoder<P, backend::reference>> ref(dc, w);
  const index_t n = 45;
  std::vector<std::int64_t> ids(static_cast<std::size_t>(2 * n));
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int64_t>((i * 7 + 3) % 50);
  const tensor<std::int64_t> tokens({2, n}, std::span<const std::int64_t>(ids));
  const tensor<T> want = ref.forward(tokens);
  CHECK(max_rel_diff(fast.forward(tokens).span(), want.span()) <= tol);
  // Decode, token by token.
  auto cache = fast.init_cache(2, n);
  tensor<T> got(want.shape());
  for (index_t t = 0; t < n; ++t) {
    std::vector<std::int64_t> col = {ids[static_cast<std::size_t>(t)], ids[static_cast<std::size_t>(n + t)]};
    test::put_tokens(got, fast.forward(tensor<std::int64_t>({2, 1}, std::span<const std::int64_t>(col)), cache), t);
  }
  CHECK(max_rel_diff(got.span(), want.span()) <= tol);
  // Chunks of 13 over tiny tiles: blocks and key tiles cross inside every chunk.
  tensor<T> chunked(want.shape());
  {
    const test::settings_guard guard;
    backend::simd::flash_params.fb_block = 4;
    backend::simd::flash_params.key_tile = 8;
    backend::simd::flash_params.query_rows = 8;
    auto cache2 = fast.init_cache(2, n);
    for (index_t t0 = 0; t0 < n; t0 += 13) {
      const index_t m = std::min<index_t>(13, n - t0);
      std::vector<std::int64_t> part;
      for (index_t b = 0; b < 2; ++b)
        for (index_t t = t0; t < t0 + m; ++t) part.push_back(ids[static_cast<std::size_t>(b * n + t)]);
      const tensor<std::int64_t> ids_part({2, m}, std::span<const std::int64_t>(part));
      test::put_tokens(chunked, fast.forward(ids_part, cache2), t0);
    }
  }
  CHECK(max_rel_diff(chunked.span(), want.span()) <= tol);
}

TEST_CASE("a narrow cache moves a layer's outputs by about its rounding", "[storage][cache]") {
  // The float32 layer with its cache (k, v, k_b and the recurrent s) stored as bf16 / f16: the outputs differ by
  // the cache's rounding, amplified by a few through attention and the feedback recurrence, never more.
  const layer_config cfg{64, 4, 4, true, 0.99, 1e-5};
  const layer_weights<float> w = random_layer_weights<float>(cfg, 3);
  const tensor<float> x = test::random_tensor<float>({1, 200, cfg.d_model}, 4);
  const tensor<float> y = test::host_model<layer<float, backend::cpu>>(cfg, w).forward(x);
  auto narrowed = [&]<class C>() {
    return test::host_model<layer<precision<float, float, C>, backend::cpu>>(cfg, w).forward(x);
  };
  const double bf = max_rel_diff(narrowed.template operator()<bfloat16>().span(), y.span());
  const double h = max_rel_diff(narrowed.template operator()<float16>().span(), y.span());
  CAPTURE(bf, h);
  CHECK(bf > 1e-4);  // the rounding is there (a cache silently kept in float32 would show 0)
  CHECK(bf < 3e-2);
  CHECK(h > 1e-5);
  CHECK(h < 4e-3);
  CHECK(h < bf);
}

TEST_CASE("reference and cpu kernels read q8_0 weights as the float32 matrix of their dequantized values",
          "[storage][quant]") {
  const index_t N = 37, K = 70, cols = storage_cols<q8_0>(K);
  const tensor<float> src = test::random_tensor<float>({N, K}, 31);
  std::vector<q8_0> q(static_cast<std::size_t>(N * cols));
  std::vector<float> deq(static_cast<std::size_t>(N * K)), bias(static_cast<std::size_t>(N));
  for (index_t j = 0; j < N; ++j) {
    quantize_row_q8_0(src.data() + j * K, K, q.data() + j * cols);
    dequantize_row_q8_0(q.data() + j * cols, K, deq.data() + j * K);
    bias[static_cast<std::size_t>(j)] = 0.01f * static_cast<float>(j);
  }
  const cmatrix<q8_0> wq(q.data(), N, cols);
  const cmatrix<float> wf(deq.data(), N, K);
  backend::context<backend::reference> rctx;
  backend::context<backend::cpu> cctx;
  for (const index_t M : {1, 3, 40}) {
    CAPTURE(M);
    const tensor<float> x = test::random_tensor<float>({M, K}, 32);
    tensor<float> yq({M, N}), yf({M, N}), cq({M, N}), cf({M, N});
    const cmatrix<float> xv(x.data(), M, K);
    backend::kernels<backend::reference>::linear(rctx, xv, wq, bias.data(), matrix<float>(yq.data(), M, N));
    backend::kernels<backend::reference>::linear(rctx, xv, wf, bias.data(), matrix<float>(yf.data(), M, N));
    CHECK(max_rel_diff(yq.span(), yf.span()) <= 1e-6);  // the same products (rounding of the sums may differ)
    backend::kernels<backend::cpu>::linear(cctx, xv, wq, bias.data(), matrix<float>(cq.data(), M, N));
    backend::kernels<backend::cpu>::linear(cctx, xv, wf, bias.data(), matrix<float>(cf.data(), M, N));
    CHECK(max_rel_diff(cq.span(), yf.span()) <= 1e-5);
    CHECK(max_rel_diff(cf.span(), yf.span()) <= 1e-5);
  }
  // embedding rows
  const std::vector<std::int64_t> tokens{5, 0, 36, 5};
  tensor<float> hq({4, K}), hf({4, K});
  backend::kernels<backend::reference>::embed(rctx, wq, tokens.data(), matrix<float>(hq.data(), 4, K));
  backend::kernels<backend::reference>::embed(rctx, wf, tokens.data(), matrix<float>(hf.data(), 4, K));
  CHECK(max_rel_diff(hq.span(), hf.span()) == 0.0);
}

TEMPLATE_TEST_CASE("q8_0 weights: a layer runs the float32 layer of its dequantized weights, in every form",
                   "[storage][quant]", backend::reference, backend::cpu) {
  using B = TestType;
  using P = precision<float, q8_0>;  // the cache defaults to float32 (vector_storage_t<q8_0>)
  STATIC_REQUIRE(std::is_same_v<cache_t<P>, float>);
  STATIC_REQUIRE(backend::kernel_set<B, P>);
  for (const auto& cfg : shapes) {  // d_model 32 (whole blocks), 16 and 48 (a partial last block)
    CAPTURE(cfg.d_model, cfg.n_heads, cfg.n_kv_heads);
    const layer_weights<float> wf = random_layer_weights<float>(cfg, 21);
    const layer_weights<q8_0> wq = convert_weights<q8_0>(cfg, wf);
    const layer_weights<float> wd = convert_weights<float>(cfg, wq);  // the dequantized values, exactly
    CHECK(wq.in_w.size() == 2 * cfg.d_model * ((cfg.d_model + 31) / 32));
    const test::host_model<layer<P, B>> quant(cfg, wq);
    const test::host_model<layer<float, backend::reference>> plain(cfg, wd);
    const tensor<float> x = test::random_tensor<float>({2, 41, cfg.d_model}, 8);
    const tensor<float> y = plain.forward(x);
    CHECK(max_rel_diff(quant.forward(x).span(), y.span()) <= 2e-5);
    auto cache = quant.init_cache(2, 41);
    tensor<float> yd(x.shape());
    for (index_t t = 0; t < 41; ++t) test::put_tokens(yd, quant.forward(test::slice_tokens(x, t, 1), cache), t);
    CHECK(max_rel_diff(yd.span(), y.span()) <= 2e-5);
    auto cache2 = quant.init_cache(2, 41);
    tensor<float> yc(x.shape());
    for (index_t t0 = 0; t0 < 41; t0 += 7) {
      const index_t n = std::min<index_t>(7, 41 - t0);
      test::put_tokens(yc, quant.forward(test::slice_tokens(x, t0, n), cache2), t0);
    }
    CHECK(max_rel_diff(yc.span(), y.span()) <= 2e-5);
    // and the quantization is really there: the float32 weights give other outputs
    const tensor<float> y32 = test::host_model<layer<float, backend::reference>>(cfg, wf).forward(x);
    CHECK(max_rel_diff(y32.span(), y.span()) > 1e-4);
    CHECK(max_rel_diff(y32.span(), y.span()) < 5e-2);
  }
}

TEST_CASE("q8_0 weights: a decoder on cpu matches the reference and the dequantized float32 decoder",
          "[storage][quant]") {
  using P = precision<float, q8_0>;
  const decoder_config dc{{48, 4, 2, true, 0.99, 1e-5}, 50, 2, false};
  const decoder_weights<q8_0> wq = random_decoder_weights<q8_0>(dc, 5);
  const decoder_weights<float> wd = convert_weights<float>(dc, wq);
  const test::host_model<decoder<P, backend::cpu>> fast(dc, wq);
  const test::host_model<decoder<P, backend::reference>> ref(dc, wq);
  const test::host_model<decoder<float, backend::cpu>> plain(dc, wd);
  std::vector<std::int64_t> ids(2 * 30);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int64_t>((i * 7 + 3) % 50);
  const tensor<std::int64_t> tokens({2, 30}, std::span<const std::int64_t>(ids));
  const tensor<float> want = ref.forward(tokens);
  CHECK(max_rel_diff(fast.forward(tokens).span(), want.span()) <= 2e-5);
  CHECK(max_rel_diff(plain.forward(tokens).span(), want.span()) <= 2e-5);
  auto cache = fast.init_cache(2, 30);
  tensor<float> got(want.shape());
  for (index_t t = 0; t < 30; ++t) {
    std::vector<std::int64_t> col = {ids[static_cast<std::size_t>(t)], ids[static_cast<std::size_t>(30 + t)]};
    test::put_tokens(got, fast.forward(tensor<std::int64_t>({2, 1}, std::span<const std::int64_t>(col)), cache), t);
  }
  CHECK(max_rel_diff(got.span(), want.span()) <= 2e-5);
}

TEST_CASE("convert_weights refuses weights q8_0 cannot hold, naming the parameter and row", "[storage][quant]") {
  const layer_config cfg{32, 4, 2, true, 0.99, 1e-5};
  layer_weights<float> w = random_layer_weights<float>(cfg, 2);
  w.mixer.k_w.data()[32 * 3 + 5] = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(convert_weights<q8_0>(cfg, w), Catch::Contains("mixer.k_proj.weight row 3") &&
                                                      Catch::Contains("column 5"));
  w = random_layer_weights<float>(cfg, 2);
  w.in_b = buffer<float>(3);
  CHECK_THROWS_AS(convert_weights<q8_0>(cfg, w), shape_error);
}

namespace {
/// A decoder's weights in a file image: config metadata, then add_parameters; `edit` may change the writer after.
template <class W>
io::safetensors_file q8_image(const decoder_config& dc, const decoder_weights<W>& w,
                              const std::function<void(io::safetensors_writer&)>& edit = {}) {
  io::safetensors_writer out;
  for (auto& [k, v] : io::config_metadata(dc)) out.set_metadata(k, v);
  io::add_parameters(out, dc, w);
  if (edit) edit(out);
  return io::safetensors_file::parse(out.serialize(), "q8.safetensors");
}
}  // namespace

TEST_CASE("q8_0 model files: I8 values with F16 scales round-trip exactly, and load into every storage type",
          "[storage][quant]") {
  const decoder_config dc{{48, 4, 2, true, 0.99, 1e-5}, 50, 2, false};
  const decoder_weights<float> wf = random_decoder_weights<float>(dc, 9);
  const decoder_weights<q8_0> wq = convert_weights<q8_0>(dc, wf);
  const io::safetensors_file f = q8_image(dc, wq);
  const io::tensor_entry* e = f.find("layers.1.W_in.weight");
  REQUIRE(e);
  CHECK(e->type == io::dtype::I8);
  CHECK(e->shape == shape_t{96, 48});
  const io::tensor_entry* s = f.find("layers.1.W_in.weight.scale");
  REQUIRE(s);
  CHECK(s->type == io::dtype::F16);
  CHECK(s->shape == shape_t{96, 2});
  CHECK(f.find("layers.1.W_in.bias")->type == io::dtype::F32);  // vectors stay float
  // Back as q8_0: the same blocks.
  const decoder_weights<q8_0> back = io::read_decoder_weights<q8_0>(f, dc);
  std::vector<const void*> a;
  for_each_parameter(dc, wq, [&](const std::string&, const shape_t&, const auto& b) { a.push_back(&b); });
  std::size_t i = 0, differ = 0;
  for_each_parameter(dc, back, [&](const std::string&, const shape_t&, const auto& b) {
    using B = std::remove_cvref_t<decltype(b)>;
    const B& orig = *static_cast<const B*>(a[i++]);
    differ += orig.size() != b.size() || !std::equal(orig.data(), orig.data() + orig.size(), b.data());
  });
  CHECK(differ == 0);
  // As float32: the dequantized values, exactly; and a float32 file loaded as q8_0 quantizes to the same blocks.
  const decoder_weights<float> deq = io::read_decoder_weights<float>(f, dc);
  const decoder_weights<float> want = convert_weights<float>(dc, wq);
  CHECK(std::equal(deq.layers[0].mixer.fb_w.data(), deq.layers[0].mixer.fb_w.data() + deq.layers[0].mixer.fb_w.size(),
                   want.layers[0].mixer.fb_w.data()));
  const decoder_weights<q8_0> from_f32 = io::read_decoder_weights<q8_0>(q8_image(dc, wf), dc);
  CHECK(std::equal(from_f32.head.data(), from_f32.head.data() + from_f32.head.size(), wq.head.data()));
  // The loaded model runs.
  const auto model = io::load_decoder<precision<float, q8_0>, backend::cpu>(f);
  const tensor<std::int64_t> tokens({1, 3}, std::span<const std::int64_t>(std::vector<std::int64_t>{1, 2, 3}));
  CHECK(std::isfinite(model.forward(tokens).data()[0]));
}

TEST_CASE("q8_0 model files: missing or damaged scales and blocks are refused by name", "[storage][quant]") {
  const decoder_config dc{{32, 4, 2, true, 0.99, 1e-5}, 40, 1, true};
  const decoder_weights<q8_0> wq = random_decoder_weights<q8_0>(dc, 4);
  const std::string name = "layers.0.mixer.q_proj.weight";
  // Rebuilding one tensor pair: the writer refuses duplicates, so these start from a writer without it.
  const io::safetensors_file good = q8_image(dc, wq);
  auto rebuilt = [&](const std::function<void(io::safetensors_writer&)>& add_pair) {
    io::safetensors_writer out;
    for (const auto& [k, v] : good.metadata()) out.set_metadata(k, v);
    for (const io::tensor_entry& t : good.entries()) {
      if (t.name == name || t.name == name + ".scale") continue;
      const auto r = good.raw(t);
      out.add(t.name, t.type, t.shape, std::span<const std::byte>(r.data(), r.size()));
    }
    add_pair(out);
    return io::safetensors_file::parse(out.serialize(), "q8.safetensors");
  };
  const auto q = good.raw(*good.find(name));
  const auto d = good.raw(*good.find(name + ".scale"));
  std::vector<std::byte> qb(q.begin(), q.end()), db(d.begin(), d.end());
  auto check = [&](const io::safetensors_file& f, const std::string& what) {
    CAPTURE(what);
    CHECK_THROWS_WITH(io::read_decoder_weights<q8_0>(f, dc), Catch::Contains(name) && Catch::Contains(what));
    CHECK_THROWS_AS(io::read_decoder_weights<float>(f, dc), format_error);
  };
  check(rebuilt([&](auto& out) { out.add(name, io::dtype::I8, shape_t{32, 32}, qb); }), "has no scales");
  check(rebuilt([&](auto& out) {
          out.add(name, io::dtype::I8, shape_t{32, 32}, qb);
          std::vector<double> v(32, 0.01);
          out.add_converted(name + ".scale", io::dtype::F32, shape_t{32, 1}, v);
        }),
        "must be F16");
  auto bad_q = qb;
  bad_q[70] = std::byte{0x80};  // -128
  check(rebuilt([&](auto& out) {
          out.add(name, io::dtype::I8, shape_t{32, 32}, bad_q);
          out.add(name + ".scale", io::dtype::F16, shape_t{32, 1}, db);
        }),
        "row 2");
  auto bad_d = db;
  bad_d[7] = std::byte{0xBC};  // row 3's scale negative
  check(rebuilt([&](auto& out) {
          out.add(name, io::dtype::I8, shape_t{32, 32}, qb);
          out.add(name + ".scale", io::dtype::F16, shape_t{32, 1}, bad_d);
        }),
        "row 3");
  // A stray scale beside a float tensor is an unexpected tensor; an I8 vector is refused.
  check(rebuilt([&](auto& out) {
          std::vector<double> v(32 * 32, 0.1);
          out.add_converted(name, io::dtype::F32, shape_t{32, 32}, v);
          out.add(name + ".scale", io::dtype::F16, shape_t{32, 1}, db);
        }),
        ".scale");
}
