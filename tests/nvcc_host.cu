// Compiled by nvcc: the CPU umbrella header must build under the CUDA compiler (host code only, so it
// runs without a GPU). Checks prefill = decode on both CPU backends and exits non-zero on a mismatch.
#include <sessa/sessa.hpp>

#include <cmath>
#include <cstdio>

template <class T, class B>
static bool prefill_equals_decode() {
  const sessa::layer_config cfg{32, 4, 2, true, 0.999, 1e-5};
  const sessa::layer<T, B> L(cfg, sessa::random_layer_weights<T>(cfg, 7));
  sessa::tensor<T> x({1, 12, 32});
  sessa::random_stream rng(3);
  for (auto& v : x.span()) v = static_cast<T>(rng.normal());
  const sessa::tensor<T> y = L.forward(x);
  auto cache = L.init_cache(1, 12);
  double worst = 0, scale = 0;
  for (sessa::index_t t = 0; t < 12; ++t) {
    sessa::tensor<T> xt({1, 32}, std::span<const T>(x.data() + t * 32, 32));
    const sessa::tensor<T> yt = L.decode_step(xt, cache);
    for (int k = 0; k < 32; ++k) {
      worst = std::fmax(worst, std::fabs(static_cast<double>(yt[k] - y[t * 32 + k])));
      scale = std::fmax(scale, std::fabs(static_cast<double>(y[t * 32 + k])));
    }
  }
  const double tol = sizeof(T) == 4 ? 2e-5 : 1e-12;
  std::printf("%-9s %-6s prefill vs decode: %.3g (tolerance %.1g)\n", B::name.data(), sizeof(T) == 4 ? "float" : "double",
              worst / scale, tol);
  return worst / scale <= tol;
}

int main() {
  bool ok = prefill_equals_decode<float, sessa::backend::reference>();
  ok = prefill_equals_decode<double, sessa::backend::reference>() && ok;
  ok = prefill_equals_decode<float, sessa::backend::cpu>() && ok;
  ok = prefill_equals_decode<double, sessa::backend::cpu>() && ok;
  std::printf(ok ? "nvcc host build: all checks passed\n" : "nvcc host build: FAILED\n");
  return ok ? 0 : 1;
}
