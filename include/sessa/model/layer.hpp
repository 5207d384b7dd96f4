// sessa/model/layer.hpp: the Sessa layer (SPEC.md "The layer"): pre-norm, gated, residual.
//
//   u = LayerNorm(x);  [a | z] = W_in u + b_in;  s = Mixer(GELU(a));  y = x + W_out (s * z) + b_out
//
// layer<P, Backend, Variant> owns its weights (in the backend's memory space) and its mixer. The core entry
// point works on matrix views and a caller-owned cache and workspace (no allocation once the workspace has
// grown); the tensor overloads are the convenient forms: forward() for a prefill or a chunk, decode_step()
// for one token. Tensors in and out are in the backend's memory space: a device backend's caller moves data
// with to_device / to_host (core/tensor.hpp).
#pragma once

#include <algorithm>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../attention/variants.hpp"
#include "../backend/kernel_set.hpp"
#include "../backend/tags.hpp"
#include "../concepts.hpp"
#include "../core/hparams.hpp"
#include "../core/tensor.hpp"
#include "cache.hpp"
#include "mixer.hpp"
#include "weights.hpp"

namespace sessa {

namespace detail {
/// Throws shape_error unless x has shape (batch, n, D) with every extent positive.
inline void check_activation_shape(const shape_t& s, index_t D, const char* what) {
  if (s.size() != 3 || s[0] <= 0 || s[1] <= 0 || s[2] != D)
    throw shape_error(std::string(what) + " must have shape (batch, tokens, " + std::to_string(D) +
                      ") with batch, tokens >= 1; got " + shape_string(s));
}

/// Values per row of the kernels' scratch that a forward pass plans for beyond its workspace: the row states of
/// the feedback (D + 2) and, for D >= 128, the cpu feedback's copy of the q_b rows in its GEMM's packed layout
/// (backend/cpu/feedback.hpp: made when 2 D >= the GEMM's K slice, 256 or 512 values on every target, at a row
/// stride of at most 2 D + 16). Planned for every backend: an upper bound.
inline constexpr index_t kernel_row_values(index_t D) noexcept { return D + 2 + (D >= 128 ? 2 * D + 16 : 0); }

/// Values of T of the kernels' tiles packed once for many rows that a pass of n tokens per sequence plans for (cache
/// values C): the backend's own figure where its kernel set gives one (kernels<cpu>::packed_tile_values, from the
/// tiles flash_params holds now); otherwise the cpu kernels' figure at their default tiles of 128 keys (GEMM panels of
/// at most 32 columns) for n > 16: one kv head's key and value tiles of up to `capacity` keys, and one feedback block
/// per sequence.
template <backend_tag Backend, class T, class C>
index_t kernel_tile_values(const layer_config& c, index_t batch, index_t n, index_t capacity) noexcept {
  using K = backend::kernels<Backend>;
  if constexpr (requires { K::template packed_tile_values<T, C>(c, batch, n, capacity); }) {
    return K::template packed_tile_values<T, C>(c, batch, n, capacity);
  } else {
    if (n <= 16) return 0;
    return (capacity + 128) * (2 * c.head_dim() + 31) + batch * 128 * (2 * c.d_model + 31);
  }
}
}  // namespace detail

/// Tokens per sequence that one pass of the layer's math covers. A longer call (a long prefill) runs as
/// consecutive blocks of this many tokens, each a chunked prefill extending the cache, so the workspace holds
/// batch * prefill_block rows however long the input: memory stays x + y + cache + a bounded workspace.
/// Blocks are exact (a block reads earlier tokens through the cache) and cost no speed: every block's
/// projections are still GEMMs of thousands of rows, and its attention reads all earlier keys.
inline constexpr index_t prefill_block = 4096;

namespace detail {

/// One pass of the layer's math over the rows of x, extending each segment's cache by its rows (shapes and
/// room already checked).
template <backend_tag Backend, numeric P, attention_variant Variant>
void layer_pass_segments(const layer_config& cfg, const layer_params<weight_t<P>, space_of<Backend>>& w,
                         const Variant& variant, cmatrix<compute_t<P>, space_of<Backend>> x,
                         std::span<const cache_segment<P, Backend>> segments, workspace<compute_t<P>, Backend>& ws,
                         matrix<compute_t<P>, space_of<Backend>> y) {
  using kernels = backend::kernels<Backend>;
  using T = compute_t<P>;
  using W = weight_t<P>;
  using S = space_of<Backend>;
  auto& ctx = ws.context;
  const index_t D = cfg.d_model, rows = x.rows;
  index_t capacity = 0;
  for (const auto& g : segments) capacity = std::max(capacity, g.cache->capacity());
  ws.reserve(cfg, rows, capacity);
  matrix<T, S> u(ws.u.data(), rows, D);        // (rows, D)   LayerNorm(x), later s * z
  matrix<T, S> az(ws.az.data(), rows, 2 * D);  // (rows, 2D)  [a | z]
  matrix<T, S> s(ws.s.data(), rows, D);        // (rows, D)   mixer output
  kernels::layer_norm(ctx, x, w.ln_w, w.ln_b, static_cast<T>(cfg.ln_eps), u);
  kernels::linear(ctx, cmatrix<T, S>(u), weight_matrix<W, S>(w.in_w, 2 * D, D), w.in_b, az, false);
  kernels::gelu(ctx, az.col_block(0, D));
  mixer_extend_segments<Backend, P>(cfg, w.mixer, variant, cmatrix<T, S>(az.col_block(0, D)), segments, ws, s);
  kernels::multiply(ctx, cmatrix<T, S>(s), cmatrix<T, S>(az.col_block(D, D)), u);
  if (raw(y.data) != raw(x.data)) kernels::copy(ctx, x, y);
  kernels::linear(ctx, cmatrix<T, S>(u), weight_matrix<W, S>(w.out_w, D, D), w.out_b, y, /*accumulate=*/true);
}

/// One pass over n = x.rows / batch tokens per sequence of one cache.
template <backend_tag Backend, numeric P, attention_variant Variant>
void layer_pass(const layer_config& cfg, const layer_params<weight_t<P>, space_of<Backend>>& w, const Variant& variant,
                cmatrix<compute_t<P>, space_of<Backend>> x, index_t batch, layer_cache<P, Backend>& cache,
                workspace<compute_t<P>, Backend>& ws, matrix<compute_t<P>, space_of<Backend>> y) {
  const cache_segment<P, Backend> one{&cache, 0, batch, x.rows / batch};
  layer_pass_segments<Backend, P>(cfg, w, variant, x, std::span<const cache_segment<P, Backend>>(&one, 1), ws, y);
}

}  // namespace detail

/// The layer's math on a parameter view. x (batch*n, D) batch-major -> y (batch*n, D); y may alias x.
/// Checks shapes and cache room, then extends the cache by n, in blocks of at most prefill_block tokens.
/// Shared by layer<> and model/embedded.hpp.
template <backend_tag Backend, numeric P, attention_variant Variant>
void layer_forward(const layer_config& cfg, const layer_params<weight_t<P>, space_of<Backend>>& w,
                   const Variant& variant, cmatrix<compute_t<P>, space_of<Backend>> x, index_t batch,
                   layer_cache<P, Backend>& cache, workspace<compute_t<P>, Backend>& ws,
                   matrix<compute_t<P>, space_of<Backend>> y) {
  using T = compute_t<P>;
  using S = space_of<Backend>;
  const index_t D = cfg.d_model, rows = x.rows;
  if (batch <= 0 || rows % batch != 0 || x.cols != D || y.rows != rows || y.cols != D)
    throw shape_error("layer::forward: x is (" + std::to_string(rows) + ", " + std::to_string(x.cols) + "), y is (" +
                      std::to_string(y.rows) + ", " + std::to_string(y.cols) + "), expected both (batch*tokens, " +
                      std::to_string(D) + ") with batch " + std::to_string(batch));
  const index_t n = rows / batch;
  cache.require(batch, n);  // room for all n tokens, before any block changes the cache
  if (n <= prefill_block) {
    detail::layer_pass<Backend, P>(cfg, w, variant, x, batch, cache, ws, y);
    return;
  }
  if (batch > 1 && ws.stage.size() < batch * prefill_block * D && !ws.stage.owning())
    throw shape_error("layer::forward: " + std::to_string(n) + " tokens of " + std::to_string(batch) +
                      " sequences exceed one pass (prefill_block = " + std::to_string(prefill_block) +
                      ") and this borrowed workspace has no staging buffer; pass at most prefill_block tokens "
                      "per call, or use an owning workspace");
  // A failure in a later pass (an allocation) rolls the cache back to where the call found it; y (and x,
  // when y aliases it) then holds the outputs of the passes that ran.
  const index_t length0 = cache.length();
  try {
    if (batch == 1) {  // a block of one sequence is a contiguous row block; y may alias x (block t reads only x_t)
      for (index_t t0 = 0; t0 < n; t0 += prefill_block) {
        const index_t c = std::min(prefill_block, n - t0);
        detail::layer_pass<Backend, P>(cfg, w, variant, x.row_block(t0, c), 1, cache, ws, y.row_block(t0, c));
      }
      return;
    }
    // Several sequences: gather block rows (b, t0 .. t0+c) of every sequence, run the pass in place, scatter.
    using kernels = backend::kernels<Backend>;
    ws.stage.reserve(batch * prefill_block * D);
    for (index_t t0 = 0; t0 < n; t0 += prefill_block) {
      const index_t c = std::min(prefill_block, n - t0);
      matrix<T, S> g(ws.stage.data(), batch * c, D);  // (batch*c, D)
      for (index_t b = 0; b < batch; ++b) kernels::copy(ws.context, x.row_block(b * n + t0, c), g.row_block(b * c, c));
      detail::layer_pass<Backend, P>(cfg, w, variant, cmatrix<T, S>(g), batch, cache, ws, g);
      for (index_t b = 0; b < batch; ++b)
        kernels::copy(ws.context, cmatrix<T, S>(g.row_block(b * c, c)), y.row_block(b * n + t0, c));
    }
  } catch (...) {
    cache.truncate(length0);
    throw;
  }
}

template <numeric P, backend_tag Backend = backend::default_cpu, attention_variant Variant = attention::causal>
class layer {
  static_assert(backend::verify_kernel_set<Backend, P>());

 public:
  using precision_type = P;
  using scalar_type = compute_t<P>;
  using backend_type = Backend;
  using variant_type = Variant;
  using space = space_of<Backend>;
  using mixer_type = sessa::mixer<P, Backend, Variant>;
  using cache_type = layer_cache<P, Backend>;
  using workspace_type = workspace<scalar_type, Backend>;
  using weights_type = layer_weights<weight_t<P>, space>;
  using host_weights_type = layer_weights<weight_t<P>, memory::host>;
  using tensor_type = tensor<scalar_type, space>;

  /// Checks the configuration and the weights, then keeps them.
  layer(const layer_config& c, weights_type w, Variant variant = {})
      : cfg_((c.check(), c)), w_(checked(c, std::move(w))), mixer_(c, std::move(w_.mixer), std::move(variant)) {}
  /// A device backend's layer from weights on the host: checked there, then copied to the device.
  template <class HW>
    requires(std::is_same_v<HW, host_weights_type> && !std::is_same_v<HW, weights_type>)
  layer(const layer_config& c, const HW& w, Variant variant = {})
      : layer(c, to_space<space>(c, checked(c, HW(w))), std::move(variant)) {}

  const layer_config& config() const noexcept { return cfg_; }
  const mixer_type& get_mixer() const noexcept { return mixer_; }
  /// A copy of every parameter of the layer, its mixer's included (to save the model, or to build it on another
  /// backend). The mixer's alone are in get_mixer().weights(), without a copy.
  weights_type weights() const {
    weights_type w = w_;  // the layer's own parameters; its mixer owns the rest
    w.mixer = mixer_.weights();
    return w;
  }

  /// A cache for `batch` sequences of up to `capacity` tokens.
  cache_type init_cache(index_t batch, index_t capacity) const { return cache_type(cfg_, batch, capacity); }

  /// Core form. x (batch*n, D) batch-major -> y (batch*n, D); y may alias x. Extends the cache by n. Kernels run
  /// on ws.context.
  void forward(cmatrix<scalar_type, space> x, index_t batch, cache_type& cache, workspace_type& ws,
               matrix<scalar_type, space> y) const {
    layer_forward<Backend, P>(cfg_, params(w_, mixer_.weights()), mixer_.variant(), x, batch, cache, ws, y);
  }

  /// Ragged step: one new token for each of m = x.rows sequences at their own lengths, row i of x (m, D) the
  /// token of caches[i] (a cache of batch 1) -> y (m, D); y may alias x. The projections read the weights once
  /// for all m rows; attention and feedback run per row against its own cache (model/mixer.hpp). Every cache's
  /// room is checked first; a failure rolls every cache back.
  void step_rows(cmatrix<scalar_type, space> x, std::span<cache_type* const> caches, workspace_type& ws,
                 matrix<scalar_type, space> y) const {
    const index_t m = static_cast<index_t>(caches.size());
    if (m == 0 || x.rows != m || x.cols != cfg_.d_model || y.rows != m || y.cols != cfg_.d_model)
      throw shape_error("layer::step_rows: x is (" + std::to_string(x.rows) + ", " + std::to_string(x.cols) +
                        "), y is (" + std::to_string(y.rows) + ", " + std::to_string(y.cols) + ") for " +
                        std::to_string(m) + " caches; expected both (" + std::to_string(m) + ", " +
                        std::to_string(cfg_.d_model) + ") with at least one cache");
    std::vector<cache_segment<P, Backend>> seg(caches.size());
    std::vector<index_t> length0(caches.size());
    for (index_t i = 0; i < m; ++i) {
      cache_type* c = caches[static_cast<std::size_t>(i)];
      if (!c) throw cache_error("layer::step_rows: cache " + std::to_string(i) + " is null");
      for (index_t j = 0; j < i; ++j)
        if (caches[static_cast<std::size_t>(j)] == c)
          throw cache_error("layer::step_rows: caches " + std::to_string(j) + " and " + std::to_string(i) +
                            " are the same cache (each row steps its own sequence)");
      try {
        c->require(1, 1);
      } catch (const cache_error& e) {
        throw cache_error("layer::step_rows: cache " + std::to_string(i) + ": " + e.what());
      }
      seg[static_cast<std::size_t>(i)] = {c, i, 1, 1};
      length0[static_cast<std::size_t>(i)] = c->length();
    }
    try {
      detail::layer_pass_segments<Backend, P>(cfg_, params(w_, mixer_.weights()), mixer_.variant(), x,
                                              std::span<const cache_segment<P, Backend>>(seg), ws, y);
    } catch (...) {
      for (std::size_t i = 0; i < caches.size(); ++i)
        if (caches[i]->length() > length0[i]) caches[i]->truncate(length0[i]);
      throw;
    }
  }

  /// Everything a call of `batch` x `n` tokens allocates, against a cache of `capacity` tokens (with a fresh cache
  /// of n tokens when `stateless`): checked against the memory limit before anything is allocated.
  memory_plan forward_plan(index_t batch, index_t n, index_t capacity, bool stateless = false) const {
    const index_t D = cfg_.d_model, rows = batch * std::min(n, prefill_block);
    const auto u = [](index_t v) { return static_cast<std::uint64_t>(v); };
    memory_plan p("layer forward of batch " + std::to_string(batch) + " x " + std::to_string(n) + " tokens");
    p.add("output", u(batch) * u(n) * u(D), sizeof(scalar_type));
    if (stateless) p.add("cache", u(cache_type::storage_size(cfg_, batch, n)), sizeof(typename cache_type::value_type));
    p.add("workspace", workspace_type::bytes(cfg_, rows, capacity), 1);
    if (n > prefill_block && batch > 1) p.add("staging", u(batch) * u(prefill_block) * u(D), sizeof(scalar_type));
    p.add("kernel row states", u(rows) * u(detail::kernel_row_values(D)), sizeof(scalar_type));
    if (const index_t tiles = detail::kernel_tile_values<Backend, scalar_type, cache_t<P>>(cfg_, batch, std::min(n, prefill_block), capacity); tiles > 0)
      p.add("kernel packed tiles", u(tiles), sizeof(scalar_type));
    return p;
  }

  /// Prefill or chunk: x (batch, n, D) -> y (batch, n, D), extending the cache (its scratch is used).
  tensor_type forward(const tensor_type& x, cache_type& cache) const {
    detail::check_activation_shape(x.shape(), cfg_.d_model, "layer input x");
    forward_plan(x.dim(0), x.dim(1), cache.capacity()).check();
    tensor_type y(x.shape());
    forward(x.as_matrix(), x.dim(0), cache, cache.scratch, y.as_matrix());
    return y;
  }

  /// Stateless prefill: x (batch, T, D) -> y (batch, T, D) with a fresh cache of capacity T.
  tensor_type forward(const tensor_type& x) const {
    detail::check_activation_shape(x.shape(), cfg_.d_model, "layer input x");
    forward_plan(x.dim(0), x.dim(1), x.dim(1), true).check();
    auto cache = init_cache(x.dim(0), x.dim(1));
    return forward(x, cache);
  }

  /// One token per batch row: x_t (batch, D) -> y_t (batch, D).
  tensor_type decode_step(const tensor_type& x_t, cache_type& cache) const {
    if (x_t.rank() != 2 || x_t.dim(0) <= 0 || x_t.dim(1) != cfg_.d_model)
      throw shape_error("decode_step input must have shape (batch, " + std::to_string(cfg_.d_model) + "); got " +
                        shape_string(x_t.shape()));
    forward_plan(x_t.dim(0), 1, cache.capacity()).check();
    tensor_type y(x_t.shape());
    forward(x_t.as_matrix(), x_t.dim(0), cache, cache.scratch, y.as_matrix());
    return y;
  }

 private:
  template <class LW>
  static LW checked(const layer_config& c, LW w) {
    c.check();
    if (c.use_rope && w.mixer.rope_inv_freq.empty())
      w.mixer.rope_inv_freq = to_space<typename LW::space>(rope::inv_freq_table(c.head_dim()));
    check_weights(c, w);
    return w;
  }

  layer_config cfg_;
  weights_type w_;
  mixer_type mixer_;
};

}  // namespace sessa
