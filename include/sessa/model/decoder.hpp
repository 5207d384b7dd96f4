// sessa/model/decoder.hpp: a Sessa decoder (SPEC.md "The decoder"): embedding, layers, final norm, head.
//
//   h_0 = embedding[tokens];  h_{l+1} = layer_l(h_l);  logits = LayerNorm(h_L; norm_f) W_head^T
//
// W_head is lm_head.weight, or embedding.weight when the embeddings are tied. The decoder's cache is one
// layer_cache per layer plus one shared workspace; all layers of a decoder share one length, and all batch rows
// of a cache share it too. Sequences of different lengths step together through step_rows, each in its own cache
// (a ragged batch).
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
#include "layer.hpp"
#include "weights.hpp"

namespace sessa {

/// Per-sequence state of a decoder: a cache per layer, the residual stream and shared scratch, in the memory
/// space of Backend.
template <numeric P, backend_tag Backend = backend::default_cpu>
struct decoder_cache {
  using space = space_of<Backend>;
  std::vector<layer_cache<P, Backend>> layers;
  workspace<compute_t<P>, Backend> scratch;
  buffer<compute_t<P>, space> h;      // (rows, D) residual stream of the current chunk
  buffer<std::int64_t, space> tokens;  // (rows) the chunk's token ids, when the space is not the host's

  index_t batch() const noexcept { return layers.empty() ? 0 : layers.front().batch(); }
  index_t capacity() const noexcept { return layers.empty() ? 0 : layers.front().capacity(); }
  index_t length() const noexcept { return layers.empty() ? 0 : layers.front().length(); }
  index_t remaining() const noexcept { return capacity() - length(); }
  index_t bytes() const noexcept {
    index_t n = 0;
    for (const auto& l : layers) n += l.bytes();
    return n;
  }
  void reset() noexcept {
    for (auto& l : layers) l.reset();
  }
  void truncate(index_t n) {
    if (n < 0 || n > length())
      throw cache_error("cannot truncate a cache of length " + std::to_string(length()) + " to " + std::to_string(n) +
                        " tokens");
    for (auto& l : layers) l.truncate(n);
  }
};

/// Scratch of a ragged step (decoder::step_rows): the layers' workspace, the residual stream of the step's rows
/// and the token ids in the backend's space. Not state; it only keeps its memory between steps. Kernels of a
/// step run on ws.context (its thread count or stream).
template <numeric P, backend_tag Backend = backend::default_cpu>
struct step_scratch {
  using space = space_of<Backend>;
  workspace<compute_t<P>, Backend> ws;
  buffer<compute_t<P>, space> h;       // (rows, D)
  buffer<std::int64_t, space> tokens;  // (rows), when the space is not the host's
};

/// Which rows of logits a forward pass produces.
enum class logits_for {
  all,  // every token of the chunk: (batch, n, V)
  last  // only the last token of each batch row: (batch, V), what generation needs
};

/// Throws value_error naming the first token id outside [0, V); tokens are (batch, n) row-major.
inline void check_tokens(std::span<const std::int64_t> tokens, index_t n, index_t V) {
  for (std::size_t r = 0; r < tokens.size(); ++r)
    if (tokens[r] < 0 || tokens[r] >= V)
      throw value_error("token id " + std::to_string(tokens[r]) + " at batch row " +
                        std::to_string(static_cast<index_t>(r) / n) + ", position " +
                        std::to_string(static_cast<index_t>(r) % n) + " is outside the vocabulary [0, " +
                        std::to_string(V) + ")");
}

/// h (rows, D) = embedding (V, D) rows of the (checked) tokens, on the host. (The models run the backend's
/// embed kernel; this is the same gather for callers assembling inputs on the host.)
template <scalar T>
void embed_tokens(const T* embedding, std::span<const std::int64_t> tokens, matrix<T> h) {
  for (index_t r = 0; r < h.rows; ++r)
    std::copy_n(embedding + tokens[static_cast<std::size_t>(r)] * h.cols, h.cols, h.row(r));
}

/// logits (out_rows, V) = LayerNorm(h; norm_w, norm_b) head (V, D)^T over every row of h (batch*n, D), or
/// over the last row of each batch row with logits_for::last. `scratch` holds >= out_rows * D values.
template <backend_tag Backend, numeric P>
void decoder_head(backend::context<Backend>& ctx, pointer<const vector_storage_t<weight_t<P>>, space_of<Backend>> norm_w,
                  pointer<const vector_storage_t<weight_t<P>>, space_of<Backend>> norm_b, compute_t<P> eps,
                  pointer<const weight_t<P>, space_of<Backend>> head, cmatrix<compute_t<P>, space_of<Backend>> h,
                  index_t batch, logits_for which, pointer<compute_t<P>, space_of<Backend>> scratch,
                  matrix<compute_t<P>, space_of<Backend>> logits) {
  using kernels = backend::kernels<Backend>;
  using T = compute_t<P>;
  using W = weight_t<P>;
  using S = space_of<Backend>;
  const index_t D = h.cols, n = h.rows / batch;
  matrix<T, S> hn(scratch, logits.rows, D);  // (out_rows, D)
  if (which == logits_for::all) kernels::layer_norm(ctx, h, norm_w, norm_b, eps, hn);
  else kernels::layer_norm(ctx, cmatrix<T, S>(h.data + (n - 1) * D, batch, D, n * D), norm_w, norm_b, eps, hn);  // row n-1 of each
  kernels::linear(ctx, cmatrix<T, S>(hn), weight_matrix<W, S>(head, logits.cols, D),
                  pointer<const vector_storage_t<W>, S>{}, logits, false);
}

template <numeric P, backend_tag Backend = backend::default_cpu, attention_variant Variant = attention::causal>
class decoder {
  static_assert(backend::verify_kernel_set<Backend, P>());

 public:
  using precision_type = P;
  using scalar_type = compute_t<P>;
  using backend_type = Backend;
  using variant_type = Variant;
  using space = space_of<Backend>;
  using layer_type = layer<P, Backend, Variant>;
  using cache_type = decoder_cache<P, Backend>;
  using weights_type = decoder_weights<weight_t<P>, space>;
  using host_weights_type = decoder_weights<weight_t<P>, memory::host>;
  using tensor_type = tensor<scalar_type, space>;

  /// Checks the configuration and the weights, then keeps them.
  decoder(const decoder_config& c, weights_type w, Variant variant = {}) : cfg_(c) {
    cfg_.check();
    variant.check();
    w = checked(cfg_, std::move(w));
    layers_.reserve(w.layers.size());
    for (auto& lw : w.layers) layers_.emplace_back(cfg_.layer, std::move(lw), variant);
    w.layers.clear();
    w_ = std::move(w);
  }
  /// A device backend's decoder from weights on the host: checked there, then copied to the device.
  template <class HW>
    requires(std::is_same_v<HW, host_weights_type> && !std::is_same_v<HW, weights_type>)
  decoder(const decoder_config& c, const HW& w, Variant variant = {})
      : decoder(c, to_space<space>(c, checked((c.check(), c), HW(w))), std::move(variant)) {}

  const decoder_config& config() const noexcept { return cfg_; }
  const std::vector<layer_type>& layers() const noexcept { return layers_; }
  /// A copy of every parameter of the decoder, its layers' included (to save the model, or to build it on
  /// another backend). Each layer's are also in layers()[i].weights().
  weights_type weights() const {
    weights_type w = w_;  // embedding, final norm and head; the layers own the rest
    w.layers.reserve(layers_.size());
    for (const layer_type& l : layers_) w.layers.push_back(l.weights());
    return w;
  }

  cache_type init_cache(index_t batch, index_t capacity) const {
    cache_plan(batch, capacity).check();  // every layer's, before the first is made
    cache_type c;
    c.layers.reserve(static_cast<std::size_t>(cfg_.n_layers));
    for (const auto& l : layers_) c.layers.push_back(l.init_cache(batch, capacity));
    return c;
  }

  /// What a cache of `batch` x `capacity` tokens allocates (every layer's).
  memory_plan cache_plan(index_t batch, index_t capacity) const {
    memory_plan p("a decoder cache of " + std::to_string(cfg_.n_layers) + " layers, batch " + std::to_string(batch) +
                  " and capacity " + std::to_string(capacity) + " tokens");
    const auto per_layer = static_cast<std::uint64_t>(layer_cache<P, Backend>::storage_size(cfg_.layer, batch, capacity));
    p.add("keys, values, feedback keys and states of every layer", per_layer * static_cast<std::uint64_t>(cfg_.n_layers),
          sizeof(cache_t<P>));
    return p;
  }

  /// Everything a call of `batch` x `n` tokens allocates against a cache of `capacity` tokens: the logits when the
  /// call returns them (`with_logits`), a fresh cache of n tokens when `stateless`, the residual stream, the
  /// layers' workspace for one pass and the head's rows. Checked against the memory limit before any allocation.
  memory_plan forward_plan(index_t batch, index_t n, index_t capacity, logits_for which, bool with_logits,
                           bool stateless = false) const {
    const index_t D = cfg_.layer.d_model, V = cfg_.vocab_size, rows = batch * n;
    const index_t pass_rows = batch * std::min(n, prefill_block);
    const index_t out_rows = which == logits_for::all ? rows : batch;
    const auto u = [](index_t v) { return static_cast<std::uint64_t>(v); };
    using T = scalar_type;
    memory_plan p("decoder forward of batch " + std::to_string(batch) + " x " + std::to_string(n) + " tokens");
    if (with_logits) p.add("logits", u(out_rows) * u(V), sizeof(T));
    if (stateless) p.add("cache", cache_plan(batch, n).total(), 1);
    p.add("residual stream", u(rows) * u(D), sizeof(T));
    p.add("layer workspace", workspace<T, Backend>::bytes(cfg_.layer, pass_rows, capacity), 1);
    if (n > prefill_block && batch > 1) p.add("staging", u(batch) * u(prefill_block) * u(D), sizeof(T));
    p.add("kernel row states", u(pass_rows) * u(detail::kernel_row_values(D)), sizeof(T));
    if (const index_t tiles = detail::kernel_tile_values<Backend, T, cache_t<P>>(cfg_.layer, batch, std::min(n, prefill_block), capacity); tiles > 0)
      p.add("kernel packed tiles", u(tiles), sizeof(T));
    p.add("head rows", u(std::min(out_rows, prefill_block)) * u(D), sizeof(T));
    if constexpr (!std::is_same_v<space, memory::host>) p.add("token ids on the device", u(rows), sizeof(std::int64_t));
    return p;
  }

  /// Core form. tokens (batch, n) row-major, on the host -> logits (batch*n, V), or (batch, V) with
  /// logits_for::last. Every token id and the cache room are checked before any state changes. Kernels run on
  /// cache.scratch.context.
  void forward(std::span<const std::int64_t> tokens, index_t batch, cache_type& cache, matrix<scalar_type, space> logits,
               logits_for which = logits_for::all) const {
    using T = scalar_type;
    using W = weight_t<P>;
    const index_t D = cfg_.layer.d_model, V = cfg_.vocab_size;
    if (batch <= 0 || tokens.empty() || static_cast<index_t>(tokens.size()) % batch != 0)
      throw shape_error("decoder::forward: " + std::to_string(tokens.size()) + " tokens do not form " +
                        std::to_string(batch) + " non-empty batch rows");
    const index_t rows = static_cast<index_t>(tokens.size()), n = rows / batch;
    const index_t out_rows = which == logits_for::all ? rows : batch;
    if (logits.rows != out_rows || logits.cols != V)
      throw shape_error("decoder::forward: logits view is (" + std::to_string(logits.rows) + ", " +
                        std::to_string(logits.cols) + "), expected (" + std::to_string(out_rows) + ", " +
                        std::to_string(V) + ")");
    if (static_cast<index_t>(cache.layers.size()) != cfg_.n_layers)
      throw cache_error("the cache holds " + std::to_string(cache.layers.size()) + " layers, the decoder has " +
                        std::to_string(cfg_.n_layers) + "; make it with init_cache");
    check_tokens(tokens, n, V);
    for (auto& l : cache.layers) l.require(batch, n);
    forward_plan(batch, n, cache.layers.front().capacity(), which, false).check();

    // A failure anywhere below (an allocation, a device error) rolls every layer's cache back to the length
    // the call found, so the next call starts from consistent state; `logits` is then unspecified.
    const index_t length0 = cache.length();
    try {
      auto& ctx = cache.scratch.context;
      cache.h.reserve(rows * D);
      matrix<T, space> h(cache.h.data(), rows, D);  // (rows, D) residual stream
      backend::kernels<Backend>::embed(ctx, weight_matrix<W, space>(w_.embedding.data(), V, D),
                                       token_ids(tokens, cache), h);
      for (std::size_t l = 0; l < layers_.size(); ++l) layers_[l].forward(h, batch, cache.layers[l], cache.scratch, h);
      // The head in row blocks of at most prefill_block rows, so its scratch stays bounded like the layers'.
      const T eps = static_cast<T>(cfg_.layer.ln_eps);
      const index_t block = std::min(out_rows, prefill_block);
      cache.scratch.u.reserve(block * D);
      if (which == logits_for::last) {
        decoder_head<Backend, P>(ctx, w_.norm_w.data(), w_.norm_b.data(), eps, w_.head_matrix().data(),
                                 cmatrix<T, space>(h), batch, which, cache.scratch.u.data(), logits);
        return;
      }
      for (index_t r0 = 0; r0 < rows; r0 += block) {
        const index_t c = std::min(block, rows - r0);
        decoder_head<Backend, P>(ctx, w_.norm_w.data(), w_.norm_b.data(), eps, w_.head_matrix().data(),
                                 cmatrix<T, space>(h.row_block(r0, c)), 1, which, cache.scratch.u.data(),
                                 logits.row_block(r0, c));
      }
    } catch (...) {
      for (auto& l : cache.layers)
        if (l.length() > length0) l.truncate(length0);
      throw;
    }
  }

  /// Prefill or chunk: tokens (batch, n) -> logits (batch, n, V), or (batch, V) with logits_for::last.
  tensor_type forward(const tensor<std::int64_t>& tokens, cache_type& cache, logits_for which = logits_for::all) const {
    if (tokens.rank() != 2 || tokens.dim(0) <= 0 || tokens.dim(1) <= 0)
      throw shape_error("tokens must have shape (batch, tokens) with both >= 1; got " + shape_string(tokens.shape()));
    const index_t B = tokens.dim(0), n = tokens.dim(1), V = cfg_.vocab_size;
    if (!cache.layers.empty()) forward_plan(B, n, cache.layers.front().capacity(), which, true).check();
    tensor_type out(which == logits_for::all ? shape_t{B, n, V} : shape_t{B, V});
    forward(tokens.span(), B, cache, out.as_matrix(), which);
    return out;
  }

  /// Stateless prefill: tokens (batch, T) -> logits (batch, T, V).
  tensor_type forward(const tensor<std::int64_t>& tokens) const {
    if (tokens.rank() != 2 || tokens.dim(0) <= 0 || tokens.dim(1) <= 0)
      throw shape_error("tokens must have shape (batch, tokens) with both >= 1; got " + shape_string(tokens.shape()));
    forward_plan(tokens.dim(0), tokens.dim(1), tokens.dim(1), logits_for::all, true, true).check();
    auto cache = init_cache(tokens.dim(0), tokens.dim(1));
    return forward(tokens, cache);
  }

  /// Ragged step: one token for each of m sequences of different lengths, each in its own cache of batch 1.
  /// tokens[i] (on the host) enters caches[i] at that cache's length -> logits row i (m, V). The weights are
  /// read once for all rows (the projections and the head are GEMMs of m rows), attention and feedback run per
  /// row against its own cache, so row i's logits are those of a decode step of caches[i] alone, within
  /// rounding. Sequences join and leave between steps freely: this is how sessions generate together
  /// (generate/batch.hpp). Every id, cache and room is checked before any state changes; a failure rolls every
  /// cache back. Kernels run on scratch.ws.context.
  void step_rows(std::span<const std::int64_t> tokens, std::span<cache_type* const> caches,
                 step_scratch<P, Backend>& scratch, matrix<scalar_type, space> logits) const {
    using T = scalar_type;
    using W = weight_t<P>;
    const index_t D = cfg_.layer.d_model, V = cfg_.vocab_size, m = static_cast<index_t>(tokens.size());
    if (m == 0 || static_cast<index_t>(caches.size()) != m)
      throw shape_error("decoder::step_rows: " + std::to_string(tokens.size()) + " tokens for " +
                        std::to_string(caches.size()) + " caches; expected one token per cache, at least one");
    if (logits.rows != m || logits.cols != V)
      throw shape_error("decoder::step_rows: logits view is (" + std::to_string(logits.rows) + ", " +
                        std::to_string(logits.cols) + "), expected (" + std::to_string(m) + ", " + std::to_string(V) +
                        ")");
    check_tokens(tokens, 1, V);
    for (index_t i = 0; i < m; ++i) {
      const cache_type* c = caches[static_cast<std::size_t>(i)];
      if (!c) throw cache_error("decoder::step_rows: cache " + std::to_string(i) + " is null");
      if (static_cast<index_t>(c->layers.size()) != cfg_.n_layers)
        throw cache_error("decoder::step_rows: cache " + std::to_string(i) + " holds " + std::to_string(c->layers.size()) +
                          " layers, the decoder has " + std::to_string(cfg_.n_layers) + "; make it with init_cache");
      if (c->batch() != 1)
        throw cache_error("decoder::step_rows: cache " + std::to_string(i) + " was made for batch " +
                          std::to_string(c->batch()) + "; each row of a ragged step is a cache of batch 1");
      if (c->remaining() < 1)
        throw cache_error("decoder::step_rows: cache " + std::to_string(i) + " is full (capacity " +
                          std::to_string(c->capacity()) + " tokens, all held)");
      for (index_t j = 0; j < i; ++j)
        if (caches[static_cast<std::size_t>(j)] == c)
          throw cache_error("decoder::step_rows: caches " + std::to_string(j) + " and " + std::to_string(i) +
                            " are the same cache (each row steps its own sequence)");
    }
    index_t capacity = 0;
    for (const cache_type* c : caches) capacity = std::max(capacity, c->capacity());
    forward_plan(m, 1, capacity, logits_for::all, false).check();

    std::vector<index_t> length0(caches.size());
    for (std::size_t i = 0; i < caches.size(); ++i) length0[i] = caches[i]->length();
    try {
      auto& ctx = scratch.ws.context;
      scratch.h.reserve(m * D);
      matrix<T, space> h(scratch.h.data(), m, D);  // (m, D) residual stream, row i of sequence i
      backend::kernels<Backend>::embed(ctx, weight_matrix<W, space>(w_.embedding.data(), V, D),
                                       token_ids(tokens, scratch.tokens), h);
      std::vector<layer_cache<P, Backend>*> lc(caches.size());
      for (std::size_t l = 0; l < layers_.size(); ++l) {
        for (std::size_t i = 0; i < caches.size(); ++i) lc[i] = &caches[i]->layers[l];
        layers_[l].step_rows(h, std::span<layer_cache<P, Backend>* const>(lc), scratch.ws, h);
      }
      const T eps = static_cast<T>(cfg_.layer.ln_eps);
      const index_t block = std::min(m, prefill_block);
      scratch.ws.u.reserve(block * D);
      for (index_t r0 = 0; r0 < m; r0 += block) {
        const index_t c = std::min(block, m - r0);
        decoder_head<Backend, P>(ctx, w_.norm_w.data(), w_.norm_b.data(), eps, w_.head_matrix().data(),
                                 cmatrix<T, space>(h.row_block(r0, c)), 1, logits_for::all, scratch.ws.u.data(),
                                 logits.row_block(r0, c));
      }
    } catch (...) {
      for (std::size_t i = 0; i < caches.size(); ++i)
        for (auto& l : caches[i]->layers)
          if (l.length() > length0[i]) l.truncate(length0[i]);
      throw;
    }
  }

  /// The same, logits returned: (m, V) in the backend's space.
  tensor_type step_rows(std::span<const std::int64_t> tokens, std::span<cache_type* const> caches,
                        step_scratch<P, Backend>& scratch) const {
    const index_t m = static_cast<index_t>(tokens.size());
    tensor_type out(shape_t{std::max<index_t>(m, 1), cfg_.vocab_size});
    step_rows(tokens, caches, scratch, out.as_matrix());
    return out;
  }

  /// One token per batch row: tokens (batch) -> logits (batch, V).
  tensor_type decode_step(std::span<const std::int64_t> tokens, cache_type& cache) const {
    const index_t B = static_cast<index_t>(tokens.size());
    if (B > 0 && !cache.layers.empty()) forward_plan(B, 1, cache.layers.front().capacity(), logits_for::all, true).check();
    tensor_type out(shape_t{B, cfg_.vocab_size});
    forward(tokens, B, cache, out.as_matrix(), logits_for::all);
    return out;
  }

 private:
  /// The token ids where the kernels read them: the caller's host memory, or a copy in the backend's space.
  static pointer<const std::int64_t, space> token_ids(std::span<const std::int64_t> tokens, cache_type& cache) {
    return token_ids(tokens, cache.tokens);
  }
  static pointer<const std::int64_t, space> token_ids(std::span<const std::int64_t> tokens,
                                                      buffer<std::int64_t, space>& staging) {
    if constexpr (std::is_same_v<space, memory::host>) {
      return tokens.data();
    } else {
      staging.reserve(static_cast<index_t>(tokens.size()));
      memory::copy_n(tokens.data(), static_cast<index_t>(tokens.size()), staging.data());
      return staging.data();
    }
  }
  template <class DW>
  static DW checked(const decoder_config& c, DW w) {
    for (auto& l : w.layers)
      if (c.layer.use_rope && l.mixer.rope_inv_freq.empty())
        l.mixer.rope_inv_freq = to_space<typename DW::space>(rope::inv_freq_table(c.layer.head_dim()));
    check_weights(c, w);
    return w;
  }

  decoder_config cfg_;
  std::vector<layer_type> layers_;
  weights_type w_;
};

}  // namespace sessa
