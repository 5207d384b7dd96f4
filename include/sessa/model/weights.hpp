// sessa/model/weights.hpp: the immutable parameters of a mixer, a layer and a decoder.
//
// Each parameter is a flat buffer<T> in PyTorch's layout ((out, in) row-major for Linear weights).
// mixer_params / layer_params are the read-only views the math runs on: the runtime-shaped modules make
// them from their buffers, compile-time-shaped models (model/embedded.hpp) from arrays in read-only data,
// so both run the same code.
// for_each_parameter() is the one table that ties SPEC.md's parameter names and shapes to these
// buffers: the loader, the writer, the random initializer and the parameter count all walk it, so a
// name or a shape is written down exactly once.
#pragma once

#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../concepts.hpp"
#include "../core/hparams.hpp"
#include "../core/tensor.hpp"

namespace sessa {

template <scalar T>
struct mixer_weights {
  buffer<T> q_w;         // (D, D)          mixer.q_proj.weight
  buffer<T> q_b;         // (D)             mixer.q_proj.bias
  buffer<T> k_w;         // (Hkv*d, D)      mixer.k_proj.weight
  buffer<T> k_b;         // (Hkv*d)         mixer.k_proj.bias
  buffer<T> v_w;         // (Hkv*d, D)      mixer.v_proj.weight
  buffer<T> v_b;         // (Hkv*d)         mixer.v_proj.bias
  buffer<T> out_w;       // (D, D)          mixer.out_proj.weight, only when H > 1 (empty otherwise)
  buffer<T> fb_w;        // (2D, D)         mixer.proj_fb.weight: rows [0, D) -> q_b, [D, 2D) -> k_b
  buffer<T> fb_b;        // (2D)            mixer.proj_fb.bias
  buffer<T> gamma_bias;  // ()  one value   mixer.gamma_bias
  buffer<T> gamma_ctx;   // (1, D)          mixer.gamma_ctx.weight
  std::vector<float> rope_inv_freq;  // (d/2) float32 omega_i; filled by the loader or rope::inv_freq
};

template <scalar T>
struct layer_weights {
  buffer<T> ln_w;   // (D)       ln.weight
  buffer<T> ln_b;   // (D)       ln.bias
  buffer<T> in_w;   // (2D, D)   W_in.weight: rows [0, D) -> a, [D, 2D) -> z
  buffer<T> in_b;   // (2D)      W_in.bias
  mixer_weights<T> mixer;
  buffer<T> out_w;  // (D, D)    W_out.weight
  buffer<T> out_b;  // (D)       W_out.bias
};

template <scalar T>
struct decoder_weights {
  buffer<T> embedding;  // (V, D)  embedding.weight
  std::vector<layer_weights<T>> layers;
  buffer<T> norm_w;     // (D)     norm_f.weight
  buffer<T> norm_b;     // (D)     norm_f.bias
  buffer<T> head;       // (V, D)  lm_head.weight; empty when the embeddings are tied
  const buffer<T>& head_matrix() const noexcept { return head.empty() ? embedding : head; }
};

/// Read-only view of a mixer's parameters (shapes as in mixer_weights; out_w null when H == 1,
/// rope_inv_freq null when RoPE is off).
template <scalar T>
struct mixer_params {
  const T *q_w = nullptr, *q_b = nullptr, *k_w = nullptr, *k_b = nullptr, *v_w = nullptr, *v_b = nullptr;
  const T* out_w = nullptr;
  const T *fb_w = nullptr, *fb_b = nullptr, *gamma_bias = nullptr, *gamma_ctx = nullptr;
  const float* rope_inv_freq = nullptr;  // (d/2)
};

/// Read-only view of a layer's parameters.
template <scalar T>
struct layer_params {
  const T *ln_w = nullptr, *ln_b = nullptr, *in_w = nullptr, *in_b = nullptr;
  mixer_params<T> mixer;
  const T *out_w = nullptr, *out_b = nullptr;
};

template <scalar T>
mixer_params<T> params(const mixer_weights<T>& w) noexcept {
  return {w.q_w.data(),  w.q_b.data(),  w.k_w.data(),        w.k_b.data(),       w.v_w.data(),
          w.v_b.data(),  w.out_w.empty() ? nullptr : w.out_w.data(),              w.fb_w.data(),
          w.fb_b.data(), w.gamma_bias.data(), w.gamma_ctx.data(),
          w.rope_inv_freq.empty() ? nullptr : w.rope_inv_freq.data()};
}

template <scalar T>
layer_params<T> params(const layer_weights<T>& w, const mixer_weights<T>& m) noexcept {
  return {w.ln_w.data(), w.ln_b.data(), w.in_w.data(), w.in_b.data(), params(m), w.out_w.data(), w.out_b.data()};
}

/// Calls fn(name, shape, buffer) for every parameter of a mixer, in SPEC.md's order. `MW` is
/// mixer_weights<T> or const mixer_weights<T>; `prefix` ends with "mixer.".
template <class MW, class F>
void for_each_mixer_parameter(const layer_config& c, MW& m, F&& fn, const std::string& prefix = "mixer.") {
  const index_t D = c.d_model, kv = c.kv_dim();
  fn(prefix + "q_proj.weight", shape_t{D, D}, m.q_w);
  fn(prefix + "q_proj.bias", shape_t{D}, m.q_b);
  fn(prefix + "k_proj.weight", shape_t{kv, D}, m.k_w);
  fn(prefix + "k_proj.bias", shape_t{kv}, m.k_b);
  fn(prefix + "v_proj.weight", shape_t{kv, D}, m.v_w);
  fn(prefix + "v_proj.bias", shape_t{kv}, m.v_b);
  if (c.has_out_proj()) fn(prefix + "out_proj.weight", shape_t{D, D}, m.out_w);
  fn(prefix + "proj_fb.weight", shape_t{2 * D, D}, m.fb_w);
  fn(prefix + "proj_fb.bias", shape_t{2 * D}, m.fb_b);
  fn(prefix + "gamma_bias", shape_t{}, m.gamma_bias);
  fn(prefix + "gamma_ctx.weight", shape_t{1, D}, m.gamma_ctx);
}

/// Calls fn(name, shape, buffer) for every parameter of a layer, in SPEC.md's order. `LW` is
/// layer_weights<T> or const layer_weights<T>.
template <class LW, class F>
void for_each_parameter(const layer_config& c, LW& w, F&& fn, const std::string& prefix = "") {
  const index_t D = c.d_model;
  fn(prefix + "ln.weight", shape_t{D}, w.ln_w);
  fn(prefix + "ln.bias", shape_t{D}, w.ln_b);
  fn(prefix + "W_in.weight", shape_t{2 * D, D}, w.in_w);
  fn(prefix + "W_in.bias", shape_t{2 * D}, w.in_b);
  for_each_mixer_parameter(c, w.mixer, fn, prefix + "mixer.");
  fn(prefix + "W_out.weight", shape_t{D, D}, w.out_w);
  fn(prefix + "W_out.bias", shape_t{D}, w.out_b);
}

/// Calls fn(name, shape, buffer) for every parameter of a decoder. `DW` is decoder_weights<T> or const.
/// The layers vector must already hold c.n_layers entries.
template <class DW, class F>
void for_each_parameter(const decoder_config& c, DW& w, F&& fn) {
  const index_t D = c.layer.d_model, V = c.vocab_size;
  fn(std::string("embedding.weight"), shape_t{V, D}, w.embedding);
  for (index_t i = 0; i < c.n_layers; ++i)
    for_each_parameter(c.layer, w.layers[static_cast<std::size_t>(i)], fn, "layers." + std::to_string(i) + ".");
  fn(std::string("norm_f.weight"), shape_t{D}, w.norm_w);
  fn(std::string("norm_f.bias"), shape_t{D}, w.norm_b);
  if (!c.tie_embeddings) fn(std::string("lm_head.weight"), shape_t{V, D}, w.head);
}

/// Number of parameters of a layer / decoder (a tied head counted once).
template <class Config>
index_t parameter_count(const Config& c) {
  index_t n = 0;
  auto count = [&](const std::string&, const shape_t& s, auto&) { n += shape_numel(s); };
  if constexpr (std::is_same_v<Config, decoder_config>) {
    decoder_weights<float> shapes_only;
    shapes_only.layers.resize(static_cast<std::size_t>(c.n_layers));
    for_each_parameter(c, shapes_only, count);
  } else {
    layer_weights<float> shapes_only;
    for_each_parameter(c, shapes_only, count);
  }
  return n;
}

namespace detail {
template <scalar T>
void check_rope_table(const layer_config& c, const mixer_weights<T>& m, const std::string& prefix) {
  if (c.use_rope && static_cast<index_t>(m.rope_inv_freq.size()) != c.head_dim() / 2)
    throw shape_error("parameter '" + prefix + "mixer.rope_inv_freq' has " + std::to_string(m.rope_inv_freq.size()) +
                      " values, expected " + std::to_string(c.head_dim() / 2));
}
inline auto size_checker() {
  return [](const std::string& name, const shape_t& s, const auto& b) {
    if (b.size() != shape_numel(s))
      throw shape_error("parameter '" + name + "' has " + std::to_string(b.size()) + " values, shape " +
                        shape_string(s) + " needs " + std::to_string(shape_numel(s)));
  };
}
}  // namespace detail

/// Checks that every buffer has the size its shape requires; throws shape_error naming the parameter.
template <scalar T>
void check_weights(const layer_config& c, const mixer_weights<T>& m, const std::string& prefix = "") {
  for_each_mixer_parameter(c, m, detail::size_checker(), prefix + "mixer.");
  detail::check_rope_table(c, m, prefix);
}

template <scalar T>
void check_weights(const layer_config& c, const layer_weights<T>& w, const std::string& prefix = "") {
  for_each_parameter(c, w, detail::size_checker(), prefix);
  detail::check_rope_table(c, w.mixer, prefix);
}

template <scalar T>
void check_weights(const decoder_config& c, const decoder_weights<T>& w) {
  if (static_cast<index_t>(w.layers.size()) != c.n_layers)
    throw shape_error("decoder weights hold " + std::to_string(w.layers.size()) + " layers, configuration says " +
                      std::to_string(c.n_layers));
  for_each_parameter(c, w, detail::size_checker());
  for (index_t i = 0; i < c.n_layers; ++i)
    detail::check_rope_table(c.layer, w.layers[static_cast<std::size_t>(i)].mixer,
                             "layers." + std::to_string(i) + ".");
  if (c.tie_embeddings && !w.head.empty())
    throw shape_error("decoder weights carry lm_head.weight but the configuration ties the embeddings");
}

}  // namespace sessa
