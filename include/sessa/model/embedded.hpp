// sessa/model/embedded.hpp: decoders whose shapes are template arguments, whose weights can live in
// read-only data, and whose inference never touches the heap.
//
//   layer_spec<D, H, Hkv, Rope, GammaMax, LnEps, Variant>   one layer, checked by static_assert
//   decoder_spec<V, Tied, Layer...>                          embedding, the layers in order, norm, head;
//                                                            layers may differ in heads, RoPE, gain and
//                                                            attention variant, not in d_model
//   decoder_params<W, Spec>                                  pointers to the weights, stored as W (float, double,
//                                                            bfloat16, float16; e.g. constexpr arrays written by
//                                                            `sessa embed --dtype`)
//   static_state<P, Spec, Capacity, Batch, MaxChunk, Backend>  caches and scratch, stored inline, for a host
//                                                            backend (reference by default, or cpu)
//   static_decoder<P, Spec, Backend>                         forward / decode_step on a static_state of the same
//                                                            backend
// P is the numeric policy (core/numeric.hpp): `float`, or precision<float, bfloat16, float> for bf16 weights in
// read-only data (half the bytes) with a float32 cache and float32 arithmetic.
//
// The math is the runtime-shaped path's: static_decoder calls the same layer_forward, embed kernel and
// decoder_head on parameter views, with caches and workspace borrowed from the state's inline arrays.
// With backend::reference (the default here) a prefill and any number of decode steps allocate nothing.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../attention/variants.hpp"
#include "../backend/kernel_set.hpp"
#include "../backend/kernels.hpp"
#include "../backend/cpu/reference.hpp"
#include "../backend/tags.hpp"
#include "../concepts.hpp"
#include "../core/hparams.hpp"
#include "../core/tensor.hpp"
#include "cache.hpp"
#include "decoder.hpp"
#include "layer.hpp"
#include "weights.hpp"

namespace sessa::embedded {

/// One layer's hyperparameters at compile time. Every SPEC.md check is a static_assert.
template <index_t D, index_t H, index_t Hkv = H, bool Rope = true, double GammaMax = 0.999, double LnEps = 1e-5,
          auto Variant = attention::causal{}>
struct layer_spec {
  static_assert(D > 0, "sessa::embedded::layer_spec: d_model must be positive");
  static_assert(H > 0 && Hkv > 0, "sessa::embedded::layer_spec: n_heads and n_kv_heads must be positive");
  static_assert(D % H == 0, "sessa::embedded::layer_spec: d_model must be divisible by n_heads");
  static_assert(H % Hkv == 0, "sessa::embedded::layer_spec: n_heads must be divisible by n_kv_heads");
  static_assert(!Rope || (D / H) % 2 == 0,
                "sessa::embedded::layer_spec: the head width d_model / n_heads must be even when RoPE is on");
  static_assert(GammaMax > 0.0 && GammaMax < 1.0, "sessa::embedded::layer_spec: gamma_max must lie in (0, 1)");
  static_assert(LnEps > 0.0, "sessa::embedded::layer_spec: ln_eps must be positive");
  static_assert(attention_variant<decltype(Variant)>,
                "sessa::embedded::layer_spec: Variant must be an attention variant (see attention/variants.hpp)");

  using variant_type = std::remove_const_t<decltype(Variant)>;
  static constexpr variant_type variant = Variant;
  static constexpr layer_config config{D, H, Hkv, Rope, GammaMax, LnEps};
  static constexpr index_t d_model = D;
};

template <class T>
inline constexpr bool is_layer_spec = false;
template <index_t D, index_t H, index_t Hkv, bool R, double G, double E, auto V>
inline constexpr bool is_layer_spec<layer_spec<D, H, Hkv, R, G, E, V>> = true;

/// A decoder at compile time: vocabulary V, tied or separate head, and its layers in order.
template <index_t V, bool Tied, class... Layers>
struct decoder_spec {
  static_assert(sizeof...(Layers) >= 1, "sessa::embedded::decoder_spec: a decoder needs at least one layer");
  static_assert((is_layer_spec<Layers> && ...),
                "sessa::embedded::decoder_spec: every layer must be a sessa::embedded::layer_spec<...>");
  static_assert(V > 0, "sessa::embedded::decoder_spec: vocab_size must be positive");

  using layers = std::tuple<Layers...>;
  static constexpr index_t vocab_size = V;
  static constexpr bool tie_embeddings = Tied;
  static constexpr index_t n_layers = sizeof...(Layers);
  static constexpr index_t d_model = std::tuple_element_t<0, layers>::d_model;
  static_assert(((Layers::d_model == d_model) && ...),
                "sessa::embedded::decoder_spec: every layer must have the same d_model (the width of the residual "
                "stream that flows through them)");
  static constexpr std::array<layer_config, sizeof...(Layers)> configs{Layers::config...};
  /// ln_eps of the final norm: the first layer's (a runtime decoder has one ln_eps for all).
  static constexpr double norm_eps = std::tuple_element_t<0, layers>::config.ln_eps;
};

/// Pointers to a decoder's weights, stored as W (shapes as in decoder_weights; head == embedding when tied).
template <weight_storage_type W, class Spec>
struct decoder_params {
  const W* embedding = nullptr;                   // (V, D)
  std::array<layer_params<W>, Spec::n_layers> layers{};
  const vector_storage_t<W>* norm_w = nullptr;   // (D)
  const vector_storage_t<W>* norm_b = nullptr;   // (D)
  const W* head = nullptr;                        // (V, D)
};

/// Per-sequence state of a static decoder: one cache per layer and the scratch of a chunk, all stored
/// inline (declare it static or global for large capacities). Batch rows and Capacity tokens at most;
/// forward() runs long inputs in chunks of at most MaxChunk tokens.
template <numeric P, class Spec, index_t Capacity, index_t Batch = 1, index_t MaxChunk = 64,
          backend_tag Backend = backend::reference>
class static_state {
  using T = compute_t<P>;
  using C = cache_t<P>;
  static_assert(Capacity > 0 && Batch > 0 && MaxChunk > 0, "sessa::embedded::static_state: sizes must be positive");
  static_assert(std::is_same_v<space_of<Backend>, memory::host>,
                "sessa::embedded::static_state: compile-time-shaped models run on host backends (reference, cpu)");
  static_assert(Batch == 1 || MaxChunk <= prefill_block,
                "sessa::embedded::static_state: with Batch > 1, MaxChunk must not exceed sessa::prefill_block (one "
                "pass of a layer; longer chunks of several sequences need a staging buffer)");

  static constexpr index_t cache_elems(std::size_t l) {
    return layer_cache<P, Backend>::storage_size(Spec::configs[l], Batch, Capacity);
  }
  static constexpr index_t total_cache() {
    index_t n = 0;
    for (std::size_t l = 0; l < Spec::configs.size(); ++l) n += cache_elems(l);
    return n;
  }
  static constexpr typename workspace<T, Backend>::sizes_t layout() {
    auto s = workspace<T, Backend>::sizes(Spec::configs[0], Batch * MaxChunk, Capacity);
    for (std::size_t l = 1; l < Spec::configs.size(); ++l)
      s = workspace<T, Backend>::max(s, workspace<T, Backend>::sizes(Spec::configs[l], Batch * MaxChunk, Capacity));
    return s;
  }
  static constexpr index_t h_elems = Batch * MaxChunk * Spec::d_model;

 public:
  static constexpr index_t capacity = Capacity, batch = Batch, max_chunk = MaxChunk;
  /// Bytes held inline (caches, scratch, residual stream).
  static constexpr index_t storage_bytes = total_cache() * static_cast<index_t>(sizeof(C)) +
                                           (workspace<T, Backend>::total(layout()) + h_elems) *
                                               static_cast<index_t>(sizeof(T));

  using backend_type = Backend;

  static_state() : ws_(workspace<T, Backend>::borrow(ws_store_.data(), layout())) {
    C* p = cache_store_.data();
    for (std::size_t l = 0; l < caches_.size(); ++l) {
      caches_[l] = layer_cache<P, Backend>(Spec::configs[l], Batch, Capacity, p);
      p += cache_elems(l);
    }
  }
  static_state(const static_state&) = delete;  // the caches borrow this object's arrays
  static_state& operator=(const static_state&) = delete;

  index_t length() const noexcept { return caches_[0].length(); }
  index_t remaining() const noexcept { return Capacity - length(); }
  void reset() noexcept {
    for (auto& c : caches_) c.reset();
  }
  void truncate(index_t n) {
    for (auto& c : caches_) c.truncate(n);
  }

  layer_cache<P, Backend>& cache(std::size_t l) noexcept { return caches_[l]; }
  workspace<T, Backend>& scratch() noexcept { return ws_; }
  matrix<T> residual(index_t rows) noexcept { return {h_store_.data(), rows, Spec::d_model}; }
  std::int64_t* token_scratch() noexcept { return token_store_.data(); }

 private:
  alignas(buffer_alignment) std::array<C, static_cast<std::size_t>(total_cache())> cache_store_{};
  alignas(buffer_alignment) std::array<T, static_cast<std::size_t>(workspace<T, Backend>::total(layout()))> ws_store_{};
  alignas(buffer_alignment) std::array<T, static_cast<std::size_t>(h_elems)> h_store_{};
  std::array<std::int64_t, static_cast<std::size_t>(Batch * MaxChunk)> token_store_{};
  std::array<layer_cache<P, Backend>, Spec::n_layers> caches_;
  workspace<T, Backend> ws_;
};

/// A decoder whose shapes are the template arguments of Spec, numeric policy P (weights stored as weight_t<P>).
/// Holds only pointers to its weights, so a constexpr decoder_params in read-only data makes a model with no
/// file I/O and no heap.
template <numeric P, class Spec, backend_tag Backend = backend::reference>
class static_decoder {
  static_assert(std::is_same_v<space_of<Backend>, memory::host>,
                "sessa::embedded::static_decoder: compile-time-shaped models run on host backends (reference, cpu)");
  static_assert(backend::verify_kernel_set<Backend, P>());
  using T = compute_t<P>;
  using W = weight_t<P>;

 public:
  using spec = Spec;
  using policy = P;
  using scalar_type = T;
  using weight_type = W;
  using backend_type = Backend;

  constexpr explicit static_decoder(const decoder_params<W, Spec>& p) noexcept : p_(p) {}

  /// tokens (Batch, n) row-major -> logits: (Batch*n, V) with logits_for::all, (Batch, V) with ::last.
  /// Extends the state by n tokens, in chunks of at most MaxChunk. Everything is checked before any state
  /// changes: token ids, the room left in the state, the logits view's shape.
  template <index_t C, index_t B, index_t M>
  void forward(std::span<const std::int64_t> tokens, static_state<P, Spec, C, B, M, Backend>& st, matrix<T> logits,
               logits_for which = logits_for::all) const {
    const index_t rows = static_cast<index_t>(tokens.size()), n = rows / B, V = Spec::vocab_size;
    if (rows == 0 || rows % B != 0)
      throw shape_error("static_decoder::forward: " + std::to_string(rows) + " tokens do not form " +
                        std::to_string(B) + " non-empty batch rows");
    const index_t out_rows = which == logits_for::all ? rows : B;
    if (logits.rows != out_rows || logits.cols != V)
      throw shape_error("static_decoder::forward: logits view is (" + std::to_string(logits.rows) + ", " +
                        std::to_string(logits.cols) + "), expected (" + std::to_string(out_rows) + ", " +
                        std::to_string(V) + ")");
    check_tokens(tokens, n, V);
    check_variants(std::make_index_sequence<Spec::n_layers>{});
    if (n > st.remaining())
      throw cache_error("cache full: capacity " + std::to_string(C) + " tokens, " + std::to_string(st.length()) +
                        " held, " + std::to_string(n) + " more requested");
    const index_t length0 = st.length();
    try {
      run_chunks(tokens, st, logits, which, n);
    } catch (...) {  // every cache back to where the call found it (as the runtime decoder does)
      st.truncate(length0);
      throw;
    }
  }

  /// One token per batch row: tokens (Batch) -> logits (Batch, V).
  template <index_t C, index_t B, index_t M>
  void decode_step(std::span<const std::int64_t> tokens, static_state<P, Spec, C, B, M, Backend>& st,
                   matrix<T> logits) const {
    forward(tokens, st, logits, logits_for::all);
  }

  const decoder_params<W, Spec>& params() const noexcept { return p_; }

 private:
  /// Each layer's attention variant checked (throws config_error: sliding_window{0} is not a variant).
  template <std::size_t... L>
  static void check_variants(std::index_sequence<L...>) {
    (std::tuple_element_t<L, typename Spec::layers>::variant.check(), ...);
  }

  template <index_t C, index_t B, index_t M>
  void run_chunks(std::span<const std::int64_t> tokens, static_state<P, Spec, C, B, M, Backend>& st, matrix<T> logits,
                  logits_for which, index_t n) const {
    const index_t V = Spec::vocab_size;
    std::int64_t* part = st.token_scratch();  // (B * M) ids of one chunk, inside the state (not the stack)
    for (index_t t0 = 0; t0 < n; t0 += M) {
      const index_t c = std::min(M, n - t0);
      for (index_t b = 0; b < B; ++b)
        for (index_t i = 0; i < c; ++i)
          part[b * c + i] = tokens[static_cast<std::size_t>(b * n + t0 + i)];
      const std::span<const std::int64_t> chunk(part, static_cast<std::size_t>(B * c));
      matrix<T> h = st.residual(B * c);  // (B*c, D)
      backend::kernels<Backend>::embed(st.scratch().context, weight_matrix<W, memory::host>(p_.embedding, V, Spec::d_model),
                                       chunk.data(), h);
      run_layers(h, st, std::make_index_sequence<Spec::n_layers>{});
      const T eps = static_cast<T>(Spec::norm_eps);
      if (which == logits_for::last) {
        if (t0 + c == n)
          decoder_head<Backend, P>(st.scratch().context, p_.norm_w, p_.norm_b, eps, p_.head, cmatrix<T>(h), B, which,
                                   st.scratch().u.data(), logits);
      } else {
        for (index_t b = 0; b < B; ++b)  // rows (b, t0 .. t0+c) of the (B*n, V) logits
          decoder_head<Backend, P>(st.scratch().context, p_.norm_w, p_.norm_b, eps, p_.head,
                                   cmatrix<T>(h.row_block(b * c, c)), 1, which, st.scratch().u.data(),
                                   logits.row_block(b * n + t0, c));
      }
    }
  }

  template <class State, std::size_t... L>
  void run_layers(matrix<T> h, State& st, std::index_sequence<L...>) const {
    (layer_forward<Backend, P>(std::tuple_element_t<L, typename Spec::layers>::config, p_.layers[L],
                            std::tuple_element_t<L, typename Spec::layers>::variant, cmatrix<T>(h), State::batch,
                            st.cache(L), st.scratch(), h),
     ...);
  }

  decoder_params<W, Spec> p_;
};

}  // namespace sessa::embedded
