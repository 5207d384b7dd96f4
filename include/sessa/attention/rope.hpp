// sessa/attention/rope.hpp: rotary position embedding, SPEC.md's exact convention.
//
// Pair i of a head of width d rotates by theta = t * omega_i at absolute position t, with
// omega_i = 10000^(-2i/d) rounded to float32 (the public modules keep it in a float32 buffer,
// `mixer.rope_inv_freq`); theta is formed in the working type from the float32 omega. When a weight file
// carries that buffer the loader uses its exact bits (they can differ from a correctly rounded power by
// one ulp), otherwise rope_inv_freq() computes the correctly rounded value.
#pragma once

#include <cmath>
#include <vector>

#include "../config.hpp"
#include "../core/tensor.hpp"

namespace sessa::rope {

/// omega_i = 10000^(-2i/d) for i in [0, d/2), as float32. The exponent is formed in float32 like the
/// public modules do, the power in double, then rounded once.
inline std::vector<float> inv_freq(index_t head_dim) {
  std::vector<float> w(static_cast<std::size_t>(head_dim / 2));
  for (index_t i = 0; i < head_dim / 2; ++i) {
    const float e = (-2.0f * static_cast<float>(i)) / static_cast<float>(head_dim);
    w[static_cast<std::size_t>(i)] = static_cast<float>(std::pow(10000.0, static_cast<double>(e)));
  }
  return w;
}

/// The same table in a host buffer (what weights hold; to_space copies it to a device).
inline buffer<float> inv_freq_table(index_t head_dim) {
  const std::vector<float> w = inv_freq(head_dim);
  return buffer<float>(std::span<const float>(w));
}

/// Rotates one head row x (d values) in place for absolute position `pos`.
template <class T>
SESSA_HOST_DEVICE inline void rotate(T* x, index_t head_dim, index_t pos, const float* inv_freq) {
  const T t = static_cast<T>(pos);
  for (index_t i = 0; i < head_dim / 2; ++i) {
    const T theta = t * static_cast<T>(inv_freq[i]);
    const T c = std::cos(theta), s = std::sin(theta);
    const T x0 = x[2 * i], x1 = x[2 * i + 1];
    x[2 * i] = x0 * c - x1 * s;
    x[2 * i + 1] = x0 * s + x1 * c;
  }
}

}  // namespace sessa::rope
