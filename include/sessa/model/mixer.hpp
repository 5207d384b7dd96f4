// sessa/model/mixer.hpp: the Sessa mixer (SPEC.md "The mixer"), policy-based.
//
//   mixer<P, Backend, Variant>
//     P        numeric policy: float, double, or precision<Compute, Storage> (core/numeric.hpp)
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
#include "../backend/kernel_set.hpp"
#include "../backend/kernels.hpp"
#include "../backend/tags.hpp"
#include "../concepts.hpp"
#include "../core/hparams.hpp"
#include "../core/tensor.hpp"
#include "cache.hpp"
#include "weights.hpp"

namespace sessa {

/// The mixer's math on a parameter view: a (batch*n, D), rows batch-major -> s (batch*n, D); appends n
/// tokens per batch row to the cache. The caller has checked cache.require(batch, n). Every step is a kernel
/// of Backend (backend/kernel_set.hpp) running on ws.context; this function only sequences them. Shared by the
/// runtime-shaped mixer below and the compile-time-shaped models of model/embedded.hpp.
template <backend_tag Backend, numeric P, attention_variant Variant>
void mixer_extend(const layer_config& cfg, const mixer_params<weight_t<P>, space_of<Backend>>& w,
                  const Variant& variant, cmatrix<compute_t<P>, space_of<Backend>> a, index_t batch,
                  layer_cache<P, Backend>& cache, workspace<compute_t<P>, Backend>& ws,
                  matrix<compute_t<P>, space_of<Backend>> s) {
  using kernels = backend::kernels<Backend>;
  using T = compute_t<P>;
  using W = weight_t<P>;
  using S = space_of<Backend>;
  auto& ctx = ws.context;
  const index_t D = cfg.d_model, kv = cfg.kv_dim(), d = cfg.head_dim(), rows = a.rows, n = rows / batch;
  const index_t pos0 = cache.length();
  ws.reserve(cfg, rows, cache.capacity());

  matrix<T, S> q(ws.q.data(), rows, D);            // (rows, D)
  matrix<T, S> kvm(ws.kv.data(), rows, 2 * kv);    // (rows, 2 kv): [k | v]
  matrix<T, S> qbkb(ws.qbkb.data(), rows, 2 * D);  // (rows, 2D): [q_b | k_b]
  matrix<T, S> gam(ws.gamma.data(), rows, 1);      // (rows, 1)
  matrix<T, S> f(ws.f.data(), rows, D);            // (rows, D)

  kernels::linear(ctx, a, cmatrix<W, S>(w.q_w, D, D), w.q_b, q, false);
  kernels::linear(ctx, a, cmatrix<W, S>(w.k_w, kv, D), w.k_b, kvm.col_block(0, kv), false);
  kernels::linear(ctx, a, cmatrix<W, S>(w.v_w, kv, D), w.v_b, kvm.col_block(kv, kv), false);
  kernels::linear(ctx, a, cmatrix<W, S>(w.fb_w, 2 * D, D), w.fb_b, qbkb, false);
  kernels::linear(ctx, a, cmatrix<W, S>(w.gamma_ctx, 1, D), w.gamma_bias, gam, false);
  kernels::gain(ctx, gam.data, rows, static_cast<T>(cfg.gamma_max));
  if (cfg.use_rope) {
    kernels::rope(ctx, q, d, pos0, n, w.rope_inv_freq);
    kernels::rope(ctx, kvm.col_block(0, kv), d, pos0, n, w.rope_inv_freq);
  }
  // Append the chunk's k, v and k_b at positions [pos0, pos0 + n).
  kernels::append_cache(ctx, cfg, cmatrix<T, S>(kvm), cmatrix<T, S>(qbkb.col_block(D, D)), cache.view(), pos0, n);

  kernels::attention(ctx, variant, cfg, cmatrix<T, S>(q), std::as_const(cache).view(), pos0, n, f);
  cmatrix<T, S> f_out = f;
  if (cfg.has_out_proj()) {
    matrix<T, S> f2(ws.f2.data(), rows, D);
    kernels::linear(ctx, cmatrix<T, S>(f), cmatrix<W, S>(w.out_w, D, D), pointer<const W, S>{}, f2, false);
    f_out = f2;
  }
  kernels::feedback(ctx, cfg, cmatrix<T, S>(qbkb.col_block(0, D)), pointer<const T, S>(gam.data), f_out,
                    cache.view(), pos0, n, s);
  cache.advance(n);
}

template <numeric P, backend_tag Backend = backend::default_cpu, attention_variant Variant = attention::causal>
class mixer {
  static_assert(backend::verify_kernel_set<Backend, P>());

 public:
  using precision_type = P;
  using scalar_type = compute_t<P>;
  using backend_type = Backend;
  using variant_type = Variant;
  using space = space_of<Backend>;
  using weights_type = mixer_weights<weight_t<P>, space>;

  /// Checks the configuration and the weights' sizes before keeping them.
  mixer(const layer_config& c, weights_type w, Variant variant = {})
      : cfg_(c), w_(std::move(w)), variant_(std::move(variant)) {
    cfg_.check();
    variant_.check();
    if (cfg_.use_rope && w_.rope_inv_freq.empty()) w_.rope_inv_freq = to_space<space>(rope::inv_freq_table(cfg_.head_dim()));
    check_weights(cfg_, w_);
  }

  const layer_config& config() const noexcept { return cfg_; }
  const weights_type& weights() const noexcept { return w_; }
  const Variant& variant() const noexcept { return variant_; }

  /// a (batch*n, D), rows batch-major -> s (batch*n, D); appends n tokens per batch row to the cache.
  /// The caller has checked cache.require(batch, n).
  void extend(cmatrix<scalar_type, space> a, index_t batch, layer_cache<P, Backend>& cache,
              workspace<scalar_type, Backend>& ws, matrix<scalar_type, space> s) const {
    mixer_extend<Backend, P>(cfg_, params(w_), variant_, a, batch, cache, ws, s);
  }

 private:
  layer_config cfg_;
  weights_type w_;
  Variant variant_;
};

}  // namespace sessa
