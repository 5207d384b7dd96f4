// sessa/analysis/constructions.hpp: weights set by hand that show the two memory regimes of the feedback branch.
//
//   uniform_routing(n, gamma)   the paper's construction (SPEC.md, last section): q_b = k_b = 0, so every token
//                               attends uniformly to its strict past (alpha_{t,s} = 1/t), with a constant gain
//                               gamma. An impulse at token 0 reaches s_t with weight
//                               (gamma / t) prod_{k=1}^{t-1} (1 + gamma / k) ~ gamma t^(gamma - 1) / Gamma(1 + gamma):
//                               a power law in the lag with exponent beta = 1 - gamma.
//   retrieval_construction(n)   a whole layer (D = 8) whose feedback keys single out one marker token: its
//                               feedback key is K e_0, every other token's is 0, and every query is Q e_0, so
//                               after the marker every token's feedback attention puts all but
//                               ~t exp(-QK / sqrt D) of its weight on it and d s_t / d f_marker stays at the
//                               gain: an influence that does not decay, and is selective (it is the marker's
//                               content, not its position, that is retrieved).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "../backend/tags.hpp"
#include "../concepts.hpp"
#include "../core/hparams.hpp"
#include "../core/tensor.hpp"
#include "../error.hpp"
#include "../model/init.hpp"
#include "../model/weights.hpp"
#include "influence.hpp"

namespace sessa::analysis {

/// Channels of the uniform construction's system (one source per channel per solve).
inline constexpr index_t uniform_channels = 4;

/// The uniform-routing feedback system of n tokens with constant gain gamma in (0, 1).
template <numeric P, backend_tag Backend = backend::default_cpu>
feedback_system<P, Backend> uniform_routing(index_t n, double gamma) {
  using T = compute_t<P>;
  if (n < 2) throw value_error("uniform_routing: the sequence needs at least 2 tokens, got " + std::to_string(n));
  if (!(gamma > 0.0 && gamma < 1.0))
    throw value_error("uniform_routing: the gain gamma must lie in (0, 1), got " + std::to_string(gamma));
  const index_t D = uniform_channels;
  const layer_config c{D, 1, 1, false, 0.999, 1e-5};
  const tensor<T> zeros({n, D}, T(0));
  return feedback_system<P, Backend>(c, zeros, zeros, tensor<T>({n}, static_cast<T>(gamma)));
}

/// A layer and an input that make one token's influence on the feedback constant in the lag.
struct retrieval_case {
  layer_config config;           // D = 8, H = 2, Hkv = 1, no RoPE
  layer_weights<double> weights;
  tensor<double> x;              // (n, D): one-hot rows; the marker's row is e_0, every other row e_c, c in [1, D)
  index_t marker = 0;
  double gain = 0.0;             // the constant feedback gain, the influence's value
  double score_gap = 0.0;        // Q K / sqrt D: the marker's logit over every other token's
};

/// n tokens with the marker at position `marker`; gain in (0, 0.999); the other tokens' channels from `seed`.
inline retrieval_case retrieval_construction(index_t n, index_t marker = 10, double gain = 0.9, std::uint64_t seed = 1) {
  const index_t D = 8;
  if (n < 2) throw value_error("retrieval_construction: the sequence needs at least 2 tokens, got " + std::to_string(n));
  if (marker < 0 || marker >= n - 1)
    throw value_error("retrieval_construction: the marker position " + std::to_string(marker) +
                      " must lie in [0, n - 1) = [0, " + std::to_string(n - 1) + ")");
  retrieval_case r;
  r.config = layer_config{D, 2, 1, false, 0.999, 1e-5};
  if (!(gain > 0.0 && gain < r.config.gamma_max))
    throw value_error("retrieval_construction: the gain must lie in (0, " + std::to_string(r.config.gamma_max) +
                      "), got " + std::to_string(gain));
  r.marker = marker;
  r.gain = gain;
  // Forward branch and everything else random; then the parts that make the construction, by hand.
  r.weights = random_layer_weights<double>(r.config, seed);
  layer_weights<double>& w = r.weights;
  auto fill = [](buffer<double>& b, double v) { std::fill_n(b.data(), b.size(), v); };
  fill(w.ln_w, 1.0);
  fill(w.ln_b, 0.0);
  // W_in: a = u (identity), z = 1 (bias), so s * z = s.
  fill(w.in_w, 0.0);
  fill(w.in_b, 0.0);
  for (index_t k = 0; k < D; ++k) {
    w.in_w[k * D + k] = 1.0;
    w.in_b[D + k] = 1.0;
  }
  // LayerNorm of a one-hot row: the hot entry and the others; GELU of channel 0 for the marker and the rest.
  const double var = static_cast<double>(D - 1) / static_cast<double>(D * D);
  const double inv = 1.0 / std::sqrt(var + r.config.ln_eps);
  const double hot = (1.0 - 1.0 / static_cast<double>(D)) * inv, cold = (-1.0 / static_cast<double>(D)) * inv;
  auto gelu = [](double a) { return 0.5 * a * (1.0 + std::erf(a / std::sqrt(2.0))); };
  const double g_hot = gelu(hot), g_cold = gelu(cold);
  const double K = 10.0, Q = 10.0;
  // proj_fb: q_b = Q e_0 (bias only); k_b[0] = K (a_0 - g_cold) / (g_hot - g_cold): K for the marker, 0 otherwise.
  fill(w.mixer.fb_w, 0.0);
  fill(w.mixer.fb_b, 0.0);
  w.mixer.fb_b[0] = Q;
  const double slope = K / (g_hot - g_cold);
  w.mixer.fb_w[D * D + 0] = slope;  // row D (k_b channel 0), column 0
  w.mixer.fb_b[D] = -g_cold * slope;
  // A constant gain: gamma = gamma_max tanh(gamma_bias).
  fill(w.mixer.gamma_ctx, 0.0);
  w.mixer.gamma_bias[0] = std::atanh(gain / r.config.gamma_max);
  // W_out: identity, so the layer's output carries s.
  fill(w.out_w, 0.0);
  fill(w.out_b, 0.0);
  for (index_t k = 0; k < D; ++k) w.out_w[k * D + k] = 1.0;
  r.score_gap = Q * K / std::sqrt(static_cast<double>(D));

  random_stream rng(seed ^ 0x5bd1e995u);
  r.x = tensor<double>({n, D}, 0.0);
  for (index_t t = 0; t < n; ++t) {
    const index_t c = t == marker ? 0 : 1 + static_cast<index_t>(rng.next() % static_cast<std::uint64_t>(D - 1));
    r.x[t * D + c] = 1.0;
  }
  return r;
}

}  // namespace sessa::analysis
