// sessa/core/hparams.hpp: the hyperparameters of a Sessa layer and of a Sessa decoder, and their checks.
//
// Hyperparameters, weights (model/weights.hpp) and per-sequence state (model/cache.hpp) are separate
// types. `check()` enforces SPEC.md's checks and is called once, before anything is allocated, by every
// constructor and loader; its messages name the offending value.
#pragma once

#include <cmath>
#include <sstream>
#include <string>

#include "../config.hpp"
#include "../error.hpp"

namespace sessa {

/// Upper bounds of the configuration values, far above any model this library targets. They keep every size
/// the library derives from a configuration (parameter counts, per-token cache sizes, row widths) inside
/// index_t, so a hostile file cannot make an arithmetic overflow or a huge allocation out of a few bytes.
inline constexpr index_t max_d_model = index_t{1} << 16;      // 65536
inline constexpr index_t max_vocab_size = index_t{1} << 24;   // 16,777,216
inline constexpr index_t max_n_layers = index_t{1} << 12;     // 4096

/// Hyperparameters of one Sessa layer (and its mixer).
struct layer_config {
  index_t d_model = 0;     // D
  index_t n_heads = 1;     // H, forward-branch query heads
  index_t n_kv_heads = 1;  // Hkv, forward-branch key/value heads
  bool use_rope = true;
  double gamma_max = 0.999;  // feedback gain bound, in (0, 1)
  double ln_eps = 1e-5;

  constexpr index_t head_dim() const noexcept { return n_heads > 0 ? d_model / n_heads : 0; }  // d = D / H
  constexpr index_t group_size() const noexcept { return n_kv_heads > 0 ? n_heads / n_kv_heads : 0; }  // g
  constexpr index_t kv_dim() const noexcept { return n_kv_heads * head_dim(); }  // Hkv * d
  constexpr bool has_out_proj() const noexcept { return n_heads > 1; }
  /// Cached values per token per batch row: k and v (Hkv*d each), k_b and s (D each).
  constexpr index_t cache_values_per_token() const noexcept { return 2 * kv_dim() + 2 * d_model; }

  /// Throws config_error naming the first violated check.
  void check() const {
    auto fail = [](const std::string& m) { throw config_error("invalid layer configuration: " + m); };
    if (d_model <= 0) fail("d_model must be positive, got " + std::to_string(d_model));
    if (d_model > max_d_model)
      fail("d_model " + std::to_string(d_model) + " exceeds the limit of " + std::to_string(max_d_model));
    if (n_heads <= 0) fail("n_heads must be positive, got " + std::to_string(n_heads));
    if (n_kv_heads <= 0) fail("n_kv_heads must be positive, got " + std::to_string(n_kv_heads));
    if (d_model % n_heads != 0)
      fail("d_model (" + std::to_string(d_model) + ") must be divisible by n_heads (" + std::to_string(n_heads) + ")");
    if (n_heads % n_kv_heads != 0)
      fail("n_heads (" + std::to_string(n_heads) + ") must be divisible by n_kv_heads (" +
           std::to_string(n_kv_heads) + ")");
    if (use_rope && head_dim() % 2 != 0)
      fail("head width d = d_model / n_heads = " + std::to_string(head_dim()) + " must be even when use_rope is on");
    if (!(gamma_max > 0.0 && gamma_max < 1.0)) {
      std::ostringstream s;
      s << "gamma_max must lie in (0, 1), got " << gamma_max;
      fail(s.str());
    }
    if (!(ln_eps > 0.0) || !std::isfinite(ln_eps)) {
      std::ostringstream s;
      s << "ln_eps must be positive and finite, got " << ln_eps;
      fail(s.str());
    }
  }
};

/// Hyperparameters of a Sessa decoder: embedding, n_layers identical-shape layers, final norm, head.
struct decoder_config {
  layer_config layer;
  index_t vocab_size = 0;
  index_t n_layers = 0;
  bool tie_embeddings = true;

  void check() const {
    layer.check();
    if (vocab_size <= 0 || vocab_size > max_vocab_size)
      throw config_error("invalid decoder configuration: vocab_size must lie in [1, " +
                         std::to_string(max_vocab_size) + "], got " + std::to_string(vocab_size));
    if (n_layers <= 0 || n_layers > max_n_layers)
      throw config_error("invalid decoder configuration: n_layers must lie in [1, " + std::to_string(max_n_layers) +
                         "], got " + std::to_string(n_layers));
  }
};

}  // namespace sessa
