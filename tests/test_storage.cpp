// Narrow weight storage on the cpu backend: precision<float, bfloat16, float> and precision<float, float16, float>
// (bf16 / f16 weights widened in registers, float32 cache and arithmetic) against the reference backend running the
// same policy, in every form (prefill, decode, chunked prefill) for layers and decoders; and the rounding of the
// weights alone against the float32 model, which bounds how far a narrow model's outputs move.
#include <catch2/catch.hpp>

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
    layer_weights<S> n;
    auto src = std::vector<const buffer<float>*>{};
    for_each_parameter(cfg, w, [&](const std::string&, const shape_t&, const buffer<float>& b) { src.push_back(&b); });
    std::size_t i = 0;
    for_each_parameter(cfg, n, [&](const std::string&, const shape_t&, buffer<S>& b) {
      const buffer<float>& f = *src[i++];
      b = buffer<S>(f.size());
      for (index_t k = 0; k < f.size(); ++k) b.data()[k] = S(f.data()[k]);
    });
    n.mixer.rope_inv_freq = w.mixer.rope_inv_freq;
    return test::host_model<layer<precision<float, S, float>, backend::cpu>>(cfg, n).forward(x);
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
