// sessa/model/mixer.hpp: the Sessa mixer (SPEC.md "The mixer"), policy-based.
//
//   mixer<T, Backend, Variant>
//     T        scalar type of weights, activations and cache (float, double)
//     Backend  backend tag; its kernels are backend::kernels<Backend>
//     Variant  attention variant of the forward branch (attention/variants.hpp)
//
// There is one way to run it: extend(), which takes n new tokens of every batch row, appends their
// keys, values and feedback keys to the cache, runs the forward branch and the feedback solve, and writes
// the n outputs s. A prefill is extend() on an empty cache, a decode step is extend() with n = 1, and a
// chunked prefill is a sequence of extend() calls: the three forms are one code path by construction,
// and they agree to rounding with the public modules' parallel and recurrent forms.
#pragma once

#include <cstring>
#include <utility>

#include "../attention/rope.hpp"
#include "../attention/variants.hpp"
#include "../backend/kernels.hpp"
#include "../backend/tags.hpp"
#include "../concepts.hpp"
#include "../core/hparams.hpp"
#include "../core/tensor.hpp"
#include "cache.hpp"
#include "weights.hpp"

namespace sessa {

/// The mixer's math on a parameter view: a (batch*n, D), rows batch-major -> s (batch*n, D); appends n
/// tokens per batch row to the cache. The caller has checked cache.require(batch, n). Shared by the
/// runtime-shaped mixer below and the compile-time-shaped models of model/embedded.hpp.
template <backend_tag Backend, scalar T, attention_variant Variant>
void mixer_extend(const layer_config& cfg, const mixer_params<T>& w, const Variant& variant, cmatrix<T> a,
                  index_t batch, layer_cache<T>& cache, workspace<T>& ws, matrix<T> s) {
  using kernels = backend::kernels<Backend>;
  const index_t D = cfg.d_model, kv = cfg.kv_dim(), d = cfg.head_dim(), rows = a.rows, n = rows / batch;
  const index_t pos0 = cache.length();
  ws.reserve(cfg, rows, cache.capacity());

  matrix<T> q(ws.q.data(), rows, D);            // (rows, D)
  matrix<T> kvm(ws.kv.data(), rows, 2 * kv);    // (rows, 2 kv): [k | v]
  matrix<T> qbkb(ws.qbkb.data(), rows, 2 * D);  // (rows, 2D): [q_b | k_b]
  matrix<T> gam(ws.gamma.data(), rows, 1);      // (rows, 1)
  matrix<T> f(ws.f.data(), rows, D);            // (rows, D)

  kernels::linear(a, cmatrix<T>(w.q_w, D, D), w.q_b, q);
  kernels::linear(a, cmatrix<T>(w.k_w, kv, D), w.k_b, kvm.col_block(0, kv));
  kernels::linear(a, cmatrix<T>(w.v_w, kv, D), w.v_b, kvm.col_block(kv, kv));
  kernels::linear(a, cmatrix<T>(w.fb_w, 2 * D, D), w.fb_b, qbkb);
  kernels::linear(a, cmatrix<T>(w.gamma_ctx, 1, D), w.gamma_bias, gam);
  kernels::gain(gam.data, rows, static_cast<T>(cfg.gamma_max));
  if (cfg.use_rope) {
    kernels::rope(q, d, pos0, n, w.rope_inv_freq);
    kernels::rope(kvm.col_block(0, kv), d, pos0, n, w.rope_inv_freq);
  }
  // Append the chunk's k, v and k_b at positions [pos0, pos0 + n).
  const cmatrix<T> kb = qbkb.col_block(D, D);
  for (index_t b = 0; b < batch; ++b)
    for (index_t i = 0; i < n; ++i) {
      const index_t r = b * n + i;
      for (index_t h = 0; h < cfg.n_kv_heads; ++h) {
        std::memcpy(cache.k(b, h).row(pos0 + i), kvm.row(r) + h * d, sizeof(T) * d);
        std::memcpy(cache.v(b, h).row(pos0 + i), kvm.row(r) + kv + h * d, sizeof(T) * d);
      }
      std::memcpy(cache.kb(b).row(pos0 + i), kb.row(r), sizeof(T) * D);
    }

  kernels::attention(variant, cfg, cmatrix<T>(q), std::as_const(cache), pos0, n, f, ws);
  cmatrix<T> f_out = f;
  if (cfg.has_out_proj()) {
    matrix<T> f2(ws.f2.data(), rows, D);
    kernels::linear(cmatrix<T>(f), cmatrix<T>(w.out_w, D, D), static_cast<const T*>(nullptr), f2);
    f_out = f2;
  }
  kernels::feedback(cfg, cmatrix<T>(qbkb.col_block(0, D)), gam.data, f_out, cache, pos0, n, s, ws);
  cache.advance(n);
}

template <scalar T, backend_tag Backend = backend::default_cpu, attention_variant Variant = attention::causal>
class mixer {
 public:
  using scalar_type = T;
  using backend_type = Backend;
  using variant_type = Variant;

  /// Checks the configuration and the weights' sizes before keeping them.
  mixer(const layer_config& c, mixer_weights<T> w, Variant variant = {})
      : cfg_(c), w_(std::move(w)), variant_(std::move(variant)) {
    cfg_.check();
    variant_.check();
    if (cfg_.use_rope && w_.rope_inv_freq.empty()) w_.rope_inv_freq = rope::inv_freq(cfg_.head_dim());
    check_weights(cfg_, w_);
  }

  const layer_config& config() const noexcept { return cfg_; }
  const mixer_weights<T>& weights() const noexcept { return w_; }
  const Variant& variant() const noexcept { return variant_; }

  /// a (batch*n, D), rows batch-major -> s (batch*n, D); appends n tokens per batch row to the cache.
  /// The caller has checked cache.require(batch, n).
  void extend(cmatrix<T> a, index_t batch, layer_cache<T>& cache, workspace<T>& ws, matrix<T> s) const {
    mixer_extend<Backend>(cfg_, params(w_), variant_, a, batch, cache, ws, s);
  }

 private:
  layer_config cfg_;
  mixer_weights<T> w_;
  Variant variant_;
};

}  // namespace sessa
