// sessa/model/init.hpp: deterministic random weights, for tests, benchmarks and demos without a file.
//
// The values follow the usual initialization (Linear weights ~ N(0, 1/fan_in), LayerNorm weights near 1,
// small biases) with a feedback gain bias near 1 so the recurrence is strong. The generator is a fixed
// splitmix64 stream, so the same seed gives the same weights on every platform, in float and double
// (doubles are the float values promoted, like weights trained in float32).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "../concepts.hpp"
#include "../core/hparams.hpp"
#include "../core/tensor.hpp"
#include "../attention/rope.hpp"
#include "weights.hpp"

namespace sessa {

/// splitmix64 with a Box-Muller normal; float-valued so float and double models hold the same numbers.
class random_stream {
 public:
  explicit random_stream(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// Uniform in (0, 1).
  double uniform() { return (static_cast<double>(next() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
  /// Standard normal, rounded to float.
  float normal() {
    const double u1 = uniform(), u2 = uniform();
    return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }

 private:
  std::uint64_t state_;
};

namespace detail {
inline auto random_filler(random_stream& rng) {
  return [&rng](const std::string& name, const shape_t& s, auto& b) {
    using T = typename std::remove_reference_t<decltype(b)>::value_type;  // the parameter's storage type
    const auto ends_with = [&](const char* suffix) {
      const std::string x(suffix);
      return name.size() >= x.size() && name.compare(name.size() - x.size(), x.size(), x) == 0;
    };
    double mean = 0.0, sd;
    if (ends_with("gamma_bias")) {
      mean = 1.0, sd = 0.1;
    } else if (ends_with("ln.weight") || ends_with("norm_f.weight")) {
      mean = 1.0, sd = 0.1;
    } else if (ends_with(".bias") || ends_with("ln.bias")) {
      sd = 0.1;
    } else if (ends_with("embedding.weight")) {
      sd = 1.0;
    } else {
      sd = 1.0 / std::sqrt(static_cast<double>(s.back()));  // Linear: (out, in)
    }
    if constexpr (is_block_quantized<T>) {  // draw the values as for float32, then quantize each row
      const index_t cols = s.empty() ? 1 : s.back(), rows = shape_numel(s) / std::max<index_t>(1, cols);
      b.resize(rows * storage_cols<T>(cols));
      std::vector<float> row(static_cast<std::size_t>(cols));
      for (index_t r = 0; r < rows; ++r) {
        for (float& v : row) v = static_cast<float>(mean + sd * rng.normal());
        quantize_row_q8_0(row.data(), cols, b.data() + r * storage_cols<T>(cols), name);
      }
    } else {
      b.resize(shape_numel(s));
      for (index_t i = 0; i < b.size(); ++i) b[i] = narrow<T>(static_cast<float>(mean + sd * rng.normal()));
    }
  };
}
}  // namespace detail

template <weight_storage_type T>
layer_weights<T> random_layer_weights(const layer_config& c, std::uint64_t seed) {
  c.check();
  random_stream rng(seed);
  layer_weights<T> w;
  for_each_parameter(c, w, detail::random_filler(rng));
  if (c.use_rope) w.mixer.rope_inv_freq = rope::inv_freq_table(c.head_dim());
  return w;
}

template <weight_storage_type T>
decoder_weights<T> random_decoder_weights(const decoder_config& c, std::uint64_t seed) {
  c.check();
  random_stream rng(seed);
  decoder_weights<T> w;
  w.layers.resize(static_cast<std::size_t>(c.n_layers));
  for_each_parameter(c, w, detail::random_filler(rng));
  if (c.layer.use_rope)
    for (auto& l : w.layers) l.mixer.rope_inv_freq = rope::inv_freq_table(c.layer.head_dim());
  return w;
}

}  // namespace sessa
