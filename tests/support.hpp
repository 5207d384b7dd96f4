// tests/support.hpp: small helpers shared by the test executables.
#pragma once

// The same test sources run on the host backends (default) and, built again with SESSA_TEST_THRUST_OMP,
// SESSA_TEST_THRUST_CUDA or SESSA_TEST_CUDA, on a device backend: `all_combinations` then names that backend, and the tests
// reach the models through host_model (below), which moves inputs into the backend's memory space and
// results back to the host.
#if defined(SESSA_TEST_THRUST_CUDA) || defined(SESSA_TEST_CUDA)
#include <sessa/cuda.cuh>
#elif defined(SESSA_TEST_THRUST_OMP)
#include <sessa/thrust_omp.hpp>
#else
#include <sessa/sessa.hpp>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace sessa::test {

/// Scalar x backend combinations every model-level test runs over.
#if defined(SESSA_TEST_CUDA)
#define SESSA_TEST_DEVICE_SUITE 1
using all_combinations = std::tuple<std::pair<float, backend::cuda>, std::pair<double, backend::cuda>>;
#elif defined(SESSA_TEST_THRUST_CUDA)
#define SESSA_TEST_DEVICE_SUITE 1
using all_combinations = std::tuple<std::pair<float, backend::thrust_cuda>, std::pair<double, backend::thrust_cuda>>;
#elif defined(SESSA_TEST_THRUST_OMP)
#define SESSA_TEST_DEVICE_SUITE 1
using all_combinations = std::tuple<std::pair<float, backend::thrust_omp>, std::pair<double, backend::thrust_omp>>;
#else
using all_combinations = std::tuple<std::pair<float, backend::reference>, std::pair<double, backend::reference>,
                                    std::pair<float, backend::cpu>, std::pair<double, backend::cpu>>;
#endif

/// A layer or decoder whose tensor forms take and return host tensors, whatever its backend's memory space:
/// inputs are copied into the space (to_space), outputs back (to_host). Tests are written once against it.
/// On a host backend the copies are plain copies.
template <class Model>
class host_model : public Model {
 public:
  using Model::Model;
  using T = typename Model::scalar_type;
  using S = typename Model::space;
  host_model(Model m) : Model(std::move(m)) {}

  /// layer: x (B, n, D) host -> y host; decoder: tokens (host) -> logits host. Extra arguments (a cache,
  /// logits_for) pass through.
  template <class X, class... A>
  tensor<T> forward(const X& x, A&&... a) const {
    if constexpr (std::is_same_v<X, tensor<std::int64_t>>) return to_host(Model::forward(x, std::forward<A>(a)...));
    else return to_host(Model::forward(to_space<S>(x), std::forward<A>(a)...));
  }
  template <class X, class Cache>
  tensor<T> decode_step(const X& x, Cache& cache) const {
    if constexpr (std::is_same_v<X, tensor<T>>) return to_host(Model::decode_step(to_space<S>(x), cache));
    else return to_host(Model::decode_step(x, cache));
  }
};

/// Restores the process-wide cpu settings (the default thread count and the tiles and thresholds in
/// backend::simd::flash_params) when a test or section ends, however it ends (a failed REQUIRE throws).
struct settings_guard {
  int threads = num_threads();
  backend::simd::flash_tuning params = backend::simd::flash_params;
  settings_guard() = default;
  settings_guard(const settings_guard&) = delete;
  settings_guard& operator=(const settings_guard&) = delete;
  ~settings_guard() {
    set_num_threads(threads);
    backend::simd::flash_params = params;
  }
};

/// Tolerance relative to max|reference| for a path in working type T.
template <class T>
constexpr double tolerance() {
  return std::is_same_v<T, float> ? 1e-4 : 1e-9;
}

template <class T>
tensor<T> random_tensor(shape_t shape, std::uint64_t seed, double scale = 1.0) {
  tensor<T> t(std::move(shape));
  random_stream rng(seed);
  for (auto& v : t.span()) v = static_cast<T>(scale * rng.normal());
  return t;
}

inline tensor<std::int64_t> random_tokens(index_t batch, index_t n, index_t vocab, std::uint64_t seed) {
  tensor<std::int64_t> t({batch, n});
  random_stream rng(seed);
  for (auto& v : t.span()) v = static_cast<std::int64_t>(rng.next() % static_cast<std::uint64_t>(vocab));
  return t;
}

/// max |a - b| / max(max |b|, tiny); infinity when the sizes differ, when either is empty, or when any
/// difference is NaN (a NaN never passes a tolerance).
template <class RA, class RB>
double max_rel_diff(const RA& a, const RB& b) {
  if (a.size() != b.size() || a.size() == 0) return INFINITY;
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    if (std::isnan(d)) return INFINITY;
    num = std::max(num, d);
    den = std::max(den, std::abs(static_cast<double>(b[i])));
  }
  return num / std::max(den, 1e-300);
}

/// Tokens [t0, t0 + n) of every batch row of a (B, T, ...) tensor.
template <class T>
tensor<T> slice_tokens(const tensor<T>& x, index_t t0, index_t n) {
  shape_t s = x.shape();
  const index_t B = s[0], Tn = s[1];
  index_t inner = 1;
  for (std::size_t i = 2; i < s.size(); ++i) inner *= s[i];
  s[1] = n;
  tensor<T> out(s);
  for (index_t b = 0; b < B; ++b)
    std::copy_n(x.data() + (b * Tn + t0) * inner, n * inner, out.data() + b * n * inner);
  return out;
}

/// Writes `part` (B, n, ...) into tokens [t0, t0 + n) of `x` (B, T, ...).
template <class T>
void put_tokens(tensor<T>& x, const tensor<T>& part, index_t t0) {
  const index_t B = x.dim(0), Tn = x.dim(1), n = part.dim(1), inner = x.size() / (B * Tn);
  for (index_t b = 0; b < B; ++b)
    std::copy_n(part.data() + b * n * inner, n * inner, x.data() + (b * Tn + t0) * inner);
}

}  // namespace sessa::test
