// sessa/model/weights.hpp: the immutable parameters of a mixer, a layer and a decoder.
//
// Each parameter is a flat buffer<W, S> in PyTorch's layout ((out, in) row-major for Linear weights): W is the
// storage type (weight_t of the model's numeric policy, core/numeric.hpp), S the memory space of the backend
// that runs them. Weights are loaded and made on the host; to_space<S>(w) copies a whole set to a device.
// mixer_params / layer_params are the read-only views the math runs on: the runtime-shaped modules make
// them from their buffers, compile-time-shaped models (model/embedded.hpp) from arrays in read-only data,
// so both run the same code.
// for_each_parameter() is the one table that ties SPEC.md's parameter names and shapes to these
// buffers: the loader, the writer, the random initializer and the parameter count all walk it, so a
// name or a shape is written down exactly once.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../concepts.hpp"
#include "../core/hparams.hpp"
#include "../core/numeric.hpp"
#include "../core/quant.hpp"
#include "../core/tensor.hpp"

namespace sessa {

template <weight_storage_type T, class S = memory::host>
struct mixer_weights {
  using value_type = T;
  using vector_type = vector_storage_t<T>;  // biases and the gate's scalar: T, or float32 for q8_0 matrices
  using space = S;
  buffer<T, S> q_w;                  // (D, D)          mixer.q_proj.weight
  buffer<vector_type, S> q_b;        // (D)             mixer.q_proj.bias
  buffer<T, S> k_w;                  // (Hkv*d, D)      mixer.k_proj.weight
  buffer<vector_type, S> k_b;        // (Hkv*d)         mixer.k_proj.bias
  buffer<T, S> v_w;                  // (Hkv*d, D)      mixer.v_proj.weight
  buffer<vector_type, S> v_b;        // (Hkv*d)         mixer.v_proj.bias
  buffer<T, S> out_w;                // (D, D)          mixer.out_proj.weight, only when H > 1 (empty otherwise)
  buffer<T, S> fb_w;                 // (2D, D)         mixer.proj_fb.weight: rows [0, D) -> q_b, [D, 2D) -> k_b
  buffer<vector_type, S> fb_b;       // (2D)            mixer.proj_fb.bias
  buffer<vector_type, S> gamma_bias; // ()  one value   mixer.gamma_bias
  buffer<T, S> gamma_ctx;            // (1, D)          mixer.gamma_ctx.weight
  buffer<float, S> rope_inv_freq;    // (d/2) float32 omega_i; filled by the loader or rope::inv_freq
};

template <weight_storage_type T, class S = memory::host>
struct layer_weights {
  using value_type = T;
  using vector_type = vector_storage_t<T>;
  using space = S;
  buffer<vector_type, S> ln_w;  // (D)       ln.weight
  buffer<vector_type, S> ln_b;  // (D)       ln.bias
  buffer<T, S> in_w;            // (2D, D)   W_in.weight: rows [0, D) -> a, [D, 2D) -> z
  buffer<vector_type, S> in_b;  // (2D)      W_in.bias
  mixer_weights<T, S> mixer;
  buffer<T, S> out_w;           // (D, D)    W_out.weight
  buffer<vector_type, S> out_b; // (D)       W_out.bias
};

template <weight_storage_type T, class S = memory::host>
struct decoder_weights {
  using value_type = T;
  using vector_type = vector_storage_t<T>;
  using space = S;
  buffer<T, S> embedding;          // (V, D)  embedding.weight
  std::vector<layer_weights<T, S>> layers;
  buffer<vector_type, S> norm_w;   // (D)     norm_f.weight
  buffer<vector_type, S> norm_b;   // (D)     norm_f.bias
  buffer<T, S> head;               // (V, D)  lm_head.weight; empty when the embeddings are tied
  const buffer<T, S>& head_matrix() const noexcept { return head.empty() ? embedding : head; }
};

/// Read-only view of a mixer's parameters (shapes as in mixer_weights; out_w null when H == 1,
/// rope_inv_freq null when RoPE is off).
template <weight_storage_type T, class S = memory::host>
struct mixer_params {
  using ptr = pointer<const T, S>;                      // matrices
  using vptr = pointer<const vector_storage_t<T>, S>;  // vectors
  ptr q_w{};
  vptr q_b{};
  ptr k_w{};
  vptr k_b{};
  ptr v_w{};
  vptr v_b{};
  ptr out_w{};
  ptr fb_w{};
  vptr fb_b{}, gamma_bias{};
  ptr gamma_ctx{};
  pointer<const float, S> rope_inv_freq{};  // (d/2)
};

/// Read-only view of a layer's parameters.
template <weight_storage_type T, class S = memory::host>
struct layer_params {
  using ptr = pointer<const T, S>;
  using vptr = pointer<const vector_storage_t<T>, S>;
  vptr ln_w{}, ln_b{};
  ptr in_w{};
  vptr in_b{};
  mixer_params<T, S> mixer;
  ptr out_w{};
  vptr out_b{};
};

template <class T, class S>
mixer_params<T, S> params(const mixer_weights<T, S>& w) noexcept {
  mixer_params<T, S> p;
  p.q_w = w.q_w.data(), p.q_b = w.q_b.data(), p.k_w = w.k_w.data(), p.k_b = w.k_b.data();
  p.v_w = w.v_w.data(), p.v_b = w.v_b.data();
  if (!w.out_w.empty()) p.out_w = w.out_w.data();
  p.fb_w = w.fb_w.data(), p.fb_b = w.fb_b.data(), p.gamma_bias = w.gamma_bias.data(), p.gamma_ctx = w.gamma_ctx.data();
  if (!w.rope_inv_freq.empty()) p.rope_inv_freq = w.rope_inv_freq.data();
  return p;
}

template <class T, class S>
layer_params<T, S> params(const layer_weights<T, S>& w, const mixer_weights<T, S>& m) noexcept {
  layer_params<T, S> p;
  p.ln_w = w.ln_w.data(), p.ln_b = w.ln_b.data(), p.in_w = w.in_w.data(), p.in_b = w.in_b.data();
  p.mixer = params(m);
  p.out_w = w.out_w.data(), p.out_b = w.out_b.data();
  return p;
}

/// The (rows, cols) weight matrix at p stored as W in space S, as the kernels take it: (rows, storage_cols<W>(cols))
/// elements, which for q8_0 are the blocks of each row.
template <class W, class S, class Ptr>
cmatrix<W, S> weight_matrix(Ptr p, index_t rows, index_t cols) noexcept {
  return cmatrix<W, S>(p, rows, storage_cols<W>(cols));
}

/// Elements of storage type E that hold a parameter of shape s: its values, or for a block-quantized E the blocks of
/// its rows (the last dimension cut into blocks; a matrix (rows, cols) takes rows * ceil(cols / 32) q8_0 blocks).
template <class E>
index_t storage_numel(const shape_t& s) {
  if constexpr (is_block_quantized<E>) {
    if (s.empty()) return 1;
    return shape_numel(s) / std::max<index_t>(1, s.back()) * storage_cols<E>(s.back());
  } else {
    return shape_numel(s);
  }
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

/// Bytes of a layer's / decoder's parameters with matrices stored as T and vectors as vector_storage_t<T>.
template <weight_storage_type T, class Config>
std::uint64_t parameter_bytes(const Config& c) {
  std::uint64_t n = 0;
  auto count = [&](const std::string&, const shape_t& s, auto& b) {
    using E = typename std::remove_reference_t<decltype(b)>::value_type;
    n += static_cast<std::uint64_t>(storage_numel<E>(s)) * sizeof(E);
  };
  if constexpr (std::is_same_v<Config, decoder_config>) {
    decoder_weights<T> shapes_only;
    shapes_only.layers.resize(static_cast<std::size_t>(c.n_layers));
    for_each_parameter(c, shapes_only, count);
  } else {
    layer_weights<T> shapes_only;
    for_each_parameter(c, shapes_only, count);
  }
  return n;
}

namespace detail {
template <class T, class S>
void check_rope_table(const layer_config& c, const mixer_weights<T, S>& m, const std::string& prefix) {
  if (c.use_rope && m.rope_inv_freq.size() != c.head_dim() / 2)
    throw shape_error("parameter '" + prefix + "mixer.rope_inv_freq' has " + std::to_string(m.rope_inv_freq.size()) +
                      " values, expected " + std::to_string(c.head_dim() / 2));
}
inline auto size_checker() {
  return [](const std::string& name, const shape_t& s, const auto& b) {
    using E = typename std::decay_t<decltype(b)>::value_type;
    if (b.size() != storage_numel<E>(s))
      throw shape_error("parameter '" + name + "' has " + std::to_string(b.size()) + " " +
                        (is_block_quantized<E> ? "blocks" : "values") + ", shape " + shape_string(s) + " needs " +
                        std::to_string(storage_numel<E>(s)));
  };
}
}  // namespace detail

/// Checks that every buffer has the size its shape requires; throws shape_error naming the parameter.
template <class T, class S>
void check_weights(const layer_config& c, const mixer_weights<T, S>& m, const std::string& prefix = "") {
  for_each_mixer_parameter(c, m, detail::size_checker(), prefix + "mixer.");
  detail::check_rope_table(c, m, prefix);
}

template <class T, class S>
void check_weights(const layer_config& c, const layer_weights<T, S>& w, const std::string& prefix = "") {
  for_each_parameter(c, w, detail::size_checker(), prefix);
  detail::check_rope_table(c, w.mixer, prefix);
}

template <class T, class S>
void check_weights(const decoder_config& c, const decoder_weights<T, S>& w) {
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

namespace detail {
/// out = a copy of w in space Dst, parameter by parameter through the parameter table (and the RoPE table).
template <class Dst, class W, class DW, class Config>
void copy_weights(const Config& c, const W& w, DW& out) {
  // Walk both sets in step: the table visits parameters in one fixed order.
  std::vector<const void*> src;
  for_each_parameter(c, w, [&](const std::string&, const shape_t&, const auto& b) { src.push_back(&b); });
  std::size_t i = 0;
  for_each_parameter(c, out, [&](const std::string&, const shape_t&, auto& b) {
    using B = std::remove_reference_t<decltype(b)>;
    using T = typename B::value_type;
    const auto& from = *static_cast<const buffer<T, typename W::space>*>(src[i++]);
    b = to_space<Dst>(from);
  });
}
}  // namespace detail

namespace detail {
/// The `cols` values of a row stored as E, as doubles.
template <class E>
void row_values(const E* row, index_t cols, double* out) {
  for (index_t k = 0; k < cols; ++k) out[k] = weight_at<double>(row, k);
}
/// `cols` values stored into a row of E: rounded once (narrow types), or quantized (q8_0; value_error naming `what`
/// for a weight q8_0 cannot hold).
template <class E>
void store_row(const double* v, index_t cols, E* row, const std::string& what) {
  if constexpr (is_block_quantized<E>) quantize_row_q8_0(v, cols, row, what);
  else
    for (index_t k = 0; k < cols; ++k) row[k] = narrow<E>(v[k]);
}
/// Rows and columns of a parameter of shape s as its storage sees it: matrices (rank 2) are rows of their last
/// dimension, everything else one row.
inline std::pair<index_t, index_t> rows_cols(const shape_t& s) {
  if (s.size() == 2) return {s[0], s[1]};
  return {1, shape_numel(s)};
}

/// out = w (host) with every matrix stored as U and every vector as vector_storage_t<U>, through doubles.
template <class U, class T, class DW, class Config>
void convert_weights(const Config& c, const T& w, DW& out) {
  std::vector<const void*> src;
  for_each_parameter(c, w, [&](const std::string&, const shape_t&, const auto& b) { src.push_back(&b); });
  std::size_t i = 0;
  std::vector<double> row;
  for_each_parameter(c, out, [&](const std::string& name, const shape_t& s, auto& b) {
    using E = typename std::remove_reference_t<decltype(b)>::value_type;  // U or vector_storage_t<U>
    using SrcM = typename T::value_type;
    const std::pair<index_t, index_t> rc = rows_cols(s);
    const index_t rows = rc.first, cols = rc.second;
    const void* from = src[i++];
    auto convert = [&](const auto* src_buffer) {
      using Src = typename std::remove_pointer_t<decltype(src_buffer)>::value_type;
      b = buffer<E>(rows * storage_cols<E>(cols));
      row.resize(static_cast<std::size_t>(cols));
      for (index_t r = 0; r < rows; ++r) {
        row_values<Src>(src_buffer->data() + r * storage_cols<Src>(cols), cols, row.data());
        store_row<E>(row.data(), cols, b.data() + r * storage_cols<E>(cols),
                     name + (rows > 1 ? " row " + std::to_string(r) : std::string()));
      }
    };
    // Matrices (rank 2) are stored as the weights' type, vectors as its vector type, on both sides.
    if (s.size() == 2) convert(static_cast<const buffer<SrcM>*>(from));
    else convert(static_cast<const buffer<vector_storage_t<SrcM>>*>(from));
  });
}
}  // namespace detail

/// The same layer weights with matrices stored as U (float, double, bfloat16, float16, q8_0) and vectors as
/// vector_storage_t<U>: values rounded once, or quantized per row of 32-weight blocks; a q8_0 source is dequantized
/// exactly first. Host memory. value_error naming the parameter for a weight U cannot hold.
template <weight_storage_type U, class T>
layer_weights<U> convert_weights(const layer_config& c, const layer_weights<T>& w) {
  check_weights(c, w);
  layer_weights<U> out;
  detail::convert_weights<U>(c, w, out);
  out.mixer.rope_inv_freq = w.mixer.rope_inv_freq;
  return out;
}

/// The same decoder weights with matrices stored as U and vectors as vector_storage_t<U> (see the layer form).
template <weight_storage_type U, class T>
decoder_weights<U> convert_weights(const decoder_config& c, const decoder_weights<T>& w) {
  check_weights(c, w);
  decoder_weights<U> out;
  out.layers.resize(w.layers.size());
  detail::convert_weights<U>(c, w, out);
  for (std::size_t l = 0; l < w.layers.size(); ++l) out.layers[l].mixer.rope_inv_freq = w.layers[l].mixer.rope_inv_freq;
  return out;
}

/// A copy of a layer's weights in memory space Dst (the upload of weights loaded on the host).
template <class Dst, class T, class Src>
layer_weights<T, Dst> to_space(const layer_config& c, const layer_weights<T, Src>& w) {
  layer_weights<T, Dst> out;
  detail::copy_weights<Dst>(c, w, out);
  out.mixer.rope_inv_freq = to_space<Dst>(w.mixer.rope_inv_freq);
  return out;
}

/// A copy of a decoder's weights in memory space Dst.
template <class Dst, class T, class Src>
decoder_weights<T, Dst> to_space(const decoder_config& c, const decoder_weights<T, Src>& w) {
  decoder_weights<T, Dst> out;
  out.layers.resize(w.layers.size());
  detail::copy_weights<Dst>(c, w, out);
  for (std::size_t l = 0; l < w.layers.size(); ++l)
    out.layers[l].mixer.rope_inv_freq = to_space<Dst>(w.layers[l].mixer.rope_inv_freq);
  return out;
}

}  // namespace sessa
