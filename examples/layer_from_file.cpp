// Load one Sessa layer from a safetensors file and run it three ways: a prefill over the whole
// sequence, token-by-token decoding through the cache, and a chunked prefill. The three agree.
//
//   example_layer_from_file tests/data/layer_d32_h4_kv2.model.safetensors
#include <sessa/sessa.hpp>
#include <sessa/io/model_file.hpp>

#include <cmath>
#include <cstdio>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s MODEL.safetensors (a layer file)\n", argv[0]);
    return 2;
  }
  try {
    const auto layer = sessa::io::load_layer<float>(argv[1]);  // float32 on the default (fast CPU) backend
    const sessa::index_t B = 2, T = 24, D = layer.config().d_model;

    sessa::tensor<float> x({B, T, D});  // (batch, tokens, d_model)
    sessa::random_stream rng(42);
    for (float& v : x.span()) v = rng.normal();

    const sessa::tensor<float> y = layer.forward(x);  // prefill: (B, T, D)

    auto cache = layer.init_cache(B, T);  // decode: one token of each batch row per step
    double worst = 0;
    for (sessa::index_t t = 0; t < T; ++t) {
      sessa::tensor<float> xt({B, D});
      for (sessa::index_t b = 0; b < B; ++b)
        for (sessa::index_t k = 0; k < D; ++k) xt[b * D + k] = x[(b * T + t) * D + k];
      const sessa::tensor<float> yt = layer.decode_step(xt, cache);
      for (sessa::index_t b = 0; b < B; ++b)
        for (sessa::index_t k = 0; k < D; ++k)
          worst = std::fmax(worst, std::fabs(yt[b * D + k] - y[(b * T + t) * D + k]));
    }
    std::printf("layer: d_model %lld, %lld heads, %lld kv heads, RoPE %s\n", static_cast<long long>(D),
                static_cast<long long>(layer.config().n_heads), static_cast<long long>(layer.config().n_kv_heads),
                layer.config().use_rope ? "on" : "off");
    std::printf("prefill y[0, 0, :4] = %+.5f %+.5f %+.5f %+.5f\n", y[0], y[1], y[2], y[3]);
    std::printf("decode vs prefill: max |diff| = %.2e over %lld tokens\n", worst, static_cast<long long>(T));
    return worst < 1e-4 ? 0 : 1;
  } catch (const sessa::error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
