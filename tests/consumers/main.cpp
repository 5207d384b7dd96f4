// A downstream program: it includes only <sessa/sessa.hpp>, loads a layer from a safetensors file and checks
// that a prefill and token-by-token decoding through the cache agree.
//
// The consumer tests (tests/consumers/CMakeLists.txt, label `consumer`) build this one file the ways a user
// would: through find_package of an installed sessa, through add_subdirectory of the repository, through
// pkg-config, with only the single header on the include path, and as CUDA source under nvcc (nvcc/main.cu).
// Exit status: 0 when prefill == decode, 1 on a mismatch or an error, 2 on a usage error.
//
//   consumer tests/data/layer_d32_h4_kv2.model.safetensors
#include <sessa/sessa.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <span>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s LAYER.safetensors\n", argv[0]);
    return 2;
  }
  try {
    const auto layer = sessa::io::load_layer<float>(argv[1]);  // float32, default (cpu) backend, causal
    const sessa::index_t B = 2, T = 12, D = layer.config().d_model;

    sessa::tensor<float> x({B, T, D});  // (batch, tokens, d_model)
    sessa::random_stream rng(7);
    for (float& v : x.span()) v = rng.normal();
    const sessa::tensor<float> y = layer.forward(x);  // prefill: (B, T, D)

    auto cache = layer.init_cache(B, T);
    double worst = 0, scale = 0;
    for (sessa::index_t t = 0; t < T; ++t) {
      sessa::tensor<float> x_t({B, D});  // token t of every batch row
      for (sessa::index_t b = 0; b < B; ++b)
        std::copy_n(x.data() + (b * T + t) * D, D, x_t.data() + b * D);
      const sessa::tensor<float> y_t = layer.decode_step(x_t, cache);  // (B, D)
      for (sessa::index_t b = 0; b < B; ++b)
        for (sessa::index_t k = 0; k < D; ++k) {
          const double want = y[(b * T + t) * D + k];
          worst = std::max(worst, std::fabs(static_cast<double>(y_t[b * D + k]) - want));
          scale = std::max(scale, std::fabs(want));
        }
    }
    const double tolerance = 1e-4 * std::max(1.0, scale);
    const bool ok = std::isfinite(worst) && worst <= tolerance && cache.length() == T;
    std::printf("sessa %s consumer: layer d_model=%lld n_heads=%lld; prefill vs decode max |diff| %.3g "
                "(tolerance %.3g): %s\n",
                SESSA_VERSION_STRING, static_cast<long long>(D), static_cast<long long>(layer.config().n_heads), worst,
                tolerance, ok ? "ok" : "MISMATCH");
    return ok ? 0 : 1;
  } catch (const sessa::error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
