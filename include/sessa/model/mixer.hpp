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
// and they agree to rounding with the public modules' parallel and recurrent forms. Underneath is
// mixer_extend_segments, which also steps several caches of different lengths together (a ragged batch).
#pragma once

#include <algorithm>
#include <cstring>
#include <span>
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

/// A run of rows of one pass that extends one cache: rows [row0, row0 + batch * n) of the pass, batch-major,
/// are n new tokens of each of the cache's `batch` sequences, at the cache's current length.
template <numeric P, backend_tag Backend>
struct cache_segment {
  layer_cache<P, Backend>* cache;
  index_t row0;
  index_t batch;
  index_t n;
};

/// The mixer's math over segments: a (rows, D) -> s (rows, D), the rows of each segment appended to its cache.
/// The projections (the weights' one read) run once over all rows; the position-dependent kernels (RoPE, cache
/// append, attention, feedback) run per segment at that cache's own length. One segment is a prefill, a chunk
/// or a decode step of one cache; one segment per sequence, each its own cache, is a ragged batch (sequences of
/// different lengths stepping together, model/decoder.hpp step_rows). Both are this one code path. The caller
/// has checked every cache's room and that no cache appears twice. Every step is a kernel of Backend
/// (backend/kernel_set.hpp) running on ws.context; this function only sequences them.
template <backend_tag Backend, numeric P, attention_variant Variant>
void mixer_extend_segments(const layer_config& cfg, const mixer_params<weight_t<P>, space_of<Backend>>& w,
                           const Variant& variant, cmatrix<compute_t<P>, space_of<Backend>> a,
                           std::span<const cache_segment<P, Backend>> segments, workspace<compute_t<P>, Backend>& ws,
                           matrix<compute_t<P>, space_of<Backend>> s) {
  using kernels = backend::kernels<Backend>;
  using T = compute_t<P>;
  using W = weight_t<P>;
  using S = space_of<Backend>;
  auto& ctx = ws.context;
  const index_t D = cfg.d_model, kv = cfg.kv_dim(), d = cfg.head_dim(), rows = a.rows;
  index_t capacity = 0;
  for (const auto& g : segments) capacity = std::max(capacity, g.cache->capacity());
  ws.reserve(cfg, rows, capacity);

  matrix<T, S> q(ws.q.data(), rows, D);            // (rows, D)
  matrix<T, S> kvm(ws.kv.data(), rows, 2 * kv);    // (rows, 2 kv): [k | v]
  matrix<T, S> qbkb(ws.qbkb.data(), rows, 2 * D);  // (rows, 2D): [q_b | k_b]
  matrix<T, S> gam(ws.gamma.data(), rows, 1);      // (rows, 1)
  matrix<T, S> f(ws.f.data(), rows, D);            // (rows, D)

  kernels::linear(ctx, a, weight_matrix<W, S>(w.q_w, D, D), w.q_b, q, false);
  kernels::linear(ctx, a, weight_matrix<W, S>(w.k_w, kv, D), w.k_b, kvm.col_block(0, kv), false);
  kernels::linear(ctx, a, weight_matrix<W, S>(w.v_w, kv, D), w.v_b, kvm.col_block(kv, kv), false);
  kernels::linear(ctx, a, weight_matrix<W, S>(w.fb_w, 2 * D, D), w.fb_b, qbkb, false);
  kernels::linear(ctx, a, weight_matrix<W, S>(w.gamma_ctx, 1, D), w.gamma_bias, gam, false);
  kernels::gain(ctx, gam.data, rows, static_cast<T>(cfg.gamma_max));
  for (const auto& g : segments) {
    const index_t pos0 = g.cache->length(), r = g.batch * g.n;
    const matrix<T, S> qg = q.row_block(g.row0, r), kvg = kvm.row_block(g.row0, r);
    if (cfg.use_rope) {
      kernels::rope(ctx, qg, d, pos0, g.n, w.rope_inv_freq);
      kernels::rope(ctx, kvg.col_block(0, kv), d, pos0, g.n, w.rope_inv_freq);
    }
    // Append the segment's k, v and k_b at positions [pos0, pos0 + n), then attend.
    kernels::append_cache(ctx, cfg, cmatrix<T, S>(kvg), cmatrix<T, S>(qbkb.row_block(g.row0, r).col_block(D, D)),
                          g.cache->view(), pos0, g.n);
    kernels::attention(ctx, variant, cfg, cmatrix<T, S>(qg), std::as_const(*g.cache).view(), pos0, g.n,
                       f.row_block(g.row0, r));
  }
  cmatrix<T, S> f_out = f;
  if (cfg.has_out_proj()) {
    matrix<T, S> f2(ws.f2.data(), rows, D);
    kernels::linear(ctx, cmatrix<T, S>(f), weight_matrix<W, S>(w.out_w, D, D), pointer<const vector_storage_t<W>, S>{},
                    f2, false);
    f_out = f2;
  }
  for (const auto& g : segments) {
    const index_t pos0 = g.cache->length(), r = g.batch * g.n;
    kernels::feedback(ctx, cfg, cmatrix<T, S>(qbkb.row_block(g.row0, r).col_block(0, D)),
                      pointer<const T, S>(gam.data + g.row0), f_out.row_block(g.row0, r), g.cache->view(), pos0, g.n,
                      s.row_block(g.row0, r));
  }
  for (const auto& g : segments) g.cache->advance(g.n);
}

/// The mixer's math on a parameter view: a (batch*n, D), rows batch-major -> s (batch*n, D); appends n
/// tokens per batch row to the cache. The caller has checked cache.require(batch, n). One segment of
/// mixer_extend_segments. Shared by the runtime-shaped mixer below and the compile-time-shaped models of
/// model/embedded.hpp.
template <backend_tag Backend, numeric P, attention_variant Variant>
void mixer_extend(const layer_config& cfg, const mixer_params<weight_t<P>, space_of<Backend>>& w,
                  const Variant& variant, cmatrix<compute_t<P>, space_of<Backend>> a, index_t batch,
                  layer_cache<P, Backend>& cache, workspace<compute_t<P>, Backend>& ws,
                  matrix<compute_t<P>, space_of<Backend>> s) {
  const cache_segment<P, Backend> one{&cache, 0, batch, a.rows / batch};
  mixer_extend_segments<Backend, P>(cfg, w, variant, a, std::span<const cache_segment<P, Backend>>(&one, 1), ws, s);
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
