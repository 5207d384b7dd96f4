// Shared by the two translation units of test_mixed_flags: a prefill and decode steps of one layer on the cpu
// backend against the reference backend, in float, large enough that every GEMM path (packed and dot) and the
// flash kernels run.
#pragma once

#include <sessa/sessa.hpp>

#include <algorithm>
#include <cmath>
#include <string>

namespace sessa_odr {

struct result {
  double err;       // max |cpu - reference| / max |reference|
  std::string abi;  // the inline namespace whose kernels ran (sessa::backend::simd::cpu_abi())
};

/// Internal linkage: each unit keeps its own copy (an inline function would itself be merged across the units).
[[maybe_unused]] static result cpu_vs_reference() {
  using namespace sessa;
  const layer_config cfg{64, 4, 2, true, 0.999, 1e-5};
  const auto w = random_layer_weights<float>(cfg, 5);
  const layer<float, backend::cpu> fast(cfg, w);
  const layer<float, backend::reference> ref(cfg, w);
  tensor<float> x({1, 300, 64});
  random_stream rng(9);
  for (float& v : x.span()) v = rng.normal();
  const tensor<float> a = fast.forward(x), b = ref.forward(x);
  double num = 0, den = 0;
  for (index_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::fabs(static_cast<double>(a[i]) - b[i]));
    den = std::max(den, std::fabs(static_cast<double>(b[i])));
  }
  return {std::isfinite(num) ? num / den : INFINITY, backend::simd::cpu_abi()};
}

}  // namespace sessa_odr
