// sessa/io/model_file.hpp: Sessa models in safetensors files (SPEC.md "Weight files").
//
// The configuration travels as strings in __metadata__ (sessa.arch, sessa.d_model, ...); a bare state
// dict without them loads when the caller gives the configuration. Every parameter name and shape is
// checked against the configuration through the one parameter table (model/weights.hpp); all problems
// are reported together in one format_error that lists what is missing, unexpected or mis-shaped. The
// public modules' buffers are accepted: mixer.rope_inv_freq (checked against our own to 2 ulp, then its
// exact bits are used) and the boolean causal masks.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <type_traits>
#include <string>
#include <system_error>
#include <vector>

#include "../attention/rope.hpp"
#include "../attention/variants.hpp"
#include "../concepts.hpp"
#include "../core/hparams.hpp"
#include "../error.hpp"
#include "../model/decoder.hpp"
#include "../model/layer.hpp"
#include "../model/weights.hpp"
#include "json.hpp"
#include "safetensors.hpp"

namespace sessa::io {

enum class model_arch { layer, decoder };

/// What a model file declares: its kind, its shape and its forward-branch attention variant.
struct model_info {
  model_arch arch = model_arch::layer;
  decoder_config config;              // for a layer file only config.layer is meaningful
  std::string attention = "causal";   // "causal" | "sliding_window"
  index_t window = 0;                 // sliding_window only
};

namespace detail {

inline const std::string* find_meta(const std::map<std::string, std::string>& m, const std::string& key) {
  auto it = m.find(key);
  return it == m.end() ? nullptr : &it->second;
}

inline const std::string& need_meta(const std::map<std::string, std::string>& m, const std::string& key,
                                    const std::string& src) {
  if (auto* v = find_meta(m, key)) return *v;
  throw format_error(src + ": metadata key '" + key + "' is missing");
}

inline index_t meta_int(const std::string& v, const std::string& key, const std::string& src) {
  index_t out = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc{} || p != v.data() + v.size())
    throw format_error(src + ": metadata '" + key + "' = '" + v + "' is not an integer");
  return out;
}

inline double meta_double(const std::string& v, const std::string& key, const std::string& src) {
  double out = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc{} || p != v.data() + v.size() || !std::isfinite(out))
    throw format_error(src + ": metadata '" + key + "' = '" + v + "' is not a finite number");
  return out;
}

inline bool meta_bool(const std::string& v, const std::string& key, const std::string& src) {
  if (v == "true" || v == "True") return true;
  if (v == "false" || v == "False") return false;
  throw format_error(src + ": metadata '" + key + "' = '" + v + "' is not 'true' or 'false'");
}

/// True when a and b are within `ulps` units in the last place (both finite floats).
inline bool within_ulps(float a, float b, int ulps) {
  std::int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  if ((ia < 0) != (ib < 0)) return a == b;
  return std::abs(static_cast<std::int64_t>(ia) - ib) <= ulps;
}

}  // namespace detail

/// True when the file carries sessa.* configuration metadata.
inline bool has_config_metadata(const safetensors_file& f) { return f.metadata().count("sessa.arch") != 0; }

/// Reads the configuration from the file's metadata; format_error naming the key when one is missing or bad,
/// config_error when the values violate SPEC.md's checks.
inline model_info read_model_info(const safetensors_file& f) {
  const auto& m = f.metadata();
  const std::string& src = f.source();
  if (!has_config_metadata(f))
    throw format_error(src + ": no sessa.* configuration in __metadata__ (a bare state dict); "
                             "give the configuration explicitly");
  model_info info;
  const std::string& arch = detail::need_meta(m, "sessa.arch", src);
  if (arch == "layer") info.arch = model_arch::layer;
  else if (arch == "decoder") info.arch = model_arch::decoder;
  else throw format_error(src + ": metadata 'sessa.arch' = '" + arch + "' is neither 'layer' nor 'decoder'");
  auto& L = info.config.layer;
  L.d_model = detail::meta_int(detail::need_meta(m, "sessa.d_model", src), "sessa.d_model", src);
  L.n_heads = detail::meta_int(detail::need_meta(m, "sessa.n_heads", src), "sessa.n_heads", src);
  L.n_kv_heads = detail::meta_int(detail::need_meta(m, "sessa.n_kv_heads", src), "sessa.n_kv_heads", src);
  L.use_rope = detail::meta_bool(detail::need_meta(m, "sessa.use_rope", src), "sessa.use_rope", src);
  L.gamma_max = detail::meta_double(detail::need_meta(m, "sessa.gamma_max", src), "sessa.gamma_max", src);
  L.ln_eps = detail::meta_double(detail::need_meta(m, "sessa.ln_eps", src), "sessa.ln_eps", src);
  if (info.arch == model_arch::decoder) {
    auto& c = info.config;
    c.vocab_size = detail::meta_int(detail::need_meta(m, "sessa.vocab_size", src), "sessa.vocab_size", src);
    c.n_layers = detail::meta_int(detail::need_meta(m, "sessa.n_layers", src), "sessa.n_layers", src);
    c.tie_embeddings =
        detail::meta_bool(detail::need_meta(m, "sessa.tie_embeddings", src), "sessa.tie_embeddings", src);
  }
  if (auto* a = detail::find_meta(m, "sessa.attention")) {
    info.attention = *a;
    if (*a == "sliding_window") {
      info.window = detail::meta_int(detail::need_meta(m, "sessa.window", src), "sessa.window", src);
    } else if (*a != "causal") {
      throw format_error(src + ": metadata 'sessa.attention' = '" + *a + "' is not 'causal' or 'sliding_window'");
    }
  }
  try {
    if (info.attention == "sliding_window") attention::sliding_window{info.window}.check();
    if (info.arch == model_arch::decoder) info.config.check();
    else info.config.layer.check();
  } catch (const config_error& e) {
    throw config_error(src + ": " + e.what());
  }
  return info;
}

/// The shortest text that reads back as exactly `v` ("0.999", "1e-05").
inline std::string shortest(double v) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

/// Every field of a model_info, in one line (for messages and for comparing two descriptions).
inline std::string describe(const model_info& m) {
  const layer_config& L = m.config.layer;
  std::ostringstream s;
  s << (m.arch == model_arch::decoder ? "decoder" : "layer") << " d_model=" << L.d_model << " n_heads=" << L.n_heads
    << " n_kv_heads=" << L.n_kv_heads << " use_rope=" << (L.use_rope ? "true" : "false")
    << " gamma_max=" << shortest(L.gamma_max) << " ln_eps=" << shortest(L.ln_eps);
  if (m.arch == model_arch::decoder)
    s << " vocab_size=" << m.config.vocab_size << " n_layers=" << m.config.n_layers
      << " tie_embeddings=" << (m.config.tie_embeddings ? "true" : "false");
  s << " attention=" << m.attention;
  if (m.attention == "sliding_window") s << " window=" << m.window;
  return s.str();
}

/// Reads a configuration from a JSON object (for weight files without sessa.* metadata):
///   {"arch": "layer"|"decoder", "d_model": 32, "n_heads": 4, "n_kv_heads": 2, "use_rope": true,
///    "gamma_max": 0.999, "ln_eps": 1e-5, "vocab_size": 50, "n_layers": 2, "tie_embeddings": true,
///    "attention": "causal"|"sliding_window", "window": 8}
/// d_model and n_heads are required (plus vocab_size and n_layers for a decoder); the rest default to the
/// public modules' defaults (n_kv_heads = n_heads). Unknown keys are errors.
/// Largest configuration text accepted: a configuration is a dozen keys, and a JSON tree costs about 100 bytes
/// per value, so an unbounded text could take far more memory than its size.
inline constexpr std::size_t max_config_json_bytes = std::size_t{1} << 16;

inline model_info parse_config_json(std::string_view text, const std::string& src) {
  if (text.size() > max_config_json_bytes)
    throw format_error(src + ": the configuration is " + std::to_string(text.size()) +
                       " bytes, over the limit of " + std::to_string(max_config_json_bytes) +
                       " bytes for a JSON configuration");
  json::value doc;
  try {
    doc = json::parse(text);
  } catch (const format_error& e) {
    throw format_error(src + ": " + e.what());
  }
  if (!doc.is_object()) throw format_error(src + ": the configuration must be a JSON object");
  auto fail = [&](const std::string& m) { throw format_error(src + ": " + m); };
  auto integer = [&](const char* key, std::optional<index_t> dflt) -> index_t {
    const json::value* v = doc.find(key);
    if (!v) {
      if (!dflt) fail(std::string("configuration key '") + key + "' is missing");
      return *dflt;
    }
    auto i = v->as_int64();
    if (!i) fail(std::string("configuration key '") + key + "' must be an integer");
    return *i;
  };
  auto number = [&](const char* key, double dflt) {
    const json::value* v = doc.find(key);
    if (!v) return dflt;
    if (!v->is_number()) fail(std::string("configuration key '") + key + "' must be a number");
    return v->as_number();
  };
  auto boolean = [&](const char* key, bool dflt) {
    const json::value* v = doc.find(key);
    if (!v) return dflt;
    if (!v->is_bool()) fail(std::string("configuration key '") + key + "' must be true or false");
    return v->as_bool();
  };
  auto text_of = [&](const char* key, const char* dflt) {
    const json::value* v = doc.find(key);
    if (!v) return std::string(dflt);
    if (!v->is_string()) fail(std::string("configuration key '") + key + "' must be a string");
    return v->as_string();
  };
  static const std::set<std::string> known = {"arch",     "d_model",  "n_heads",   "n_kv_heads",     "use_rope",
                                              "gamma_max", "ln_eps",  "vocab_size", "n_layers",      "tie_embeddings",
                                              "attention", "window"};
  for (const auto& [k, v] : doc.as_object())
    if (!known.count(k)) fail("unknown configuration key '" + k + "'");
  model_info info;
  const std::string arch = text_of("arch", "layer");
  if (arch == "decoder") info.arch = model_arch::decoder;
  else if (arch != "layer") fail("configuration 'arch' = '" + arch + "' is neither 'layer' nor 'decoder'");
  layer_config& L = info.config.layer;
  L.d_model = integer("d_model", std::nullopt);
  L.n_heads = integer("n_heads", std::nullopt);
  L.n_kv_heads = integer("n_kv_heads", L.n_heads);
  L.use_rope = boolean("use_rope", true);
  L.gamma_max = number("gamma_max", 0.999);
  L.ln_eps = number("ln_eps", 1e-5);
  if (info.arch == model_arch::decoder) {
    info.config.vocab_size = integer("vocab_size", std::nullopt);
    info.config.n_layers = integer("n_layers", std::nullopt);
    info.config.tie_embeddings = boolean("tie_embeddings", true);
  }
  info.attention = text_of("attention", "causal");
  if (info.attention == "sliding_window") {
    info.window = integer("window", std::nullopt);
  } else if (info.attention != "causal") {
    fail("configuration 'attention' = '" + info.attention + "' is not 'causal' or 'sliding_window'");
  }
  try {
    if (info.attention == "sliding_window") attention::sliding_window{info.window}.check();
    if (info.arch == model_arch::decoder) info.config.check();
    else L.check();
  } catch (const config_error& e) {
    throw config_error(src + ": " + e.what());
  }
  return info;
}

/// parse_config_json on a file.
inline model_info read_config_json(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw io_error(path.string() + ": cannot open the configuration file");
  std::ostringstream text;
  text << f.rdbuf();
  if (f.bad()) throw io_error(path.string() + ": cannot read the configuration file");
  return parse_config_json(text.str(), path.string());
}

/// Metadata for a configuration (what writers put in __metadata__).
inline std::map<std::string, std::string> config_metadata(const layer_config& c) {
  return {{"sessa.arch", "layer"},
          {"sessa.d_model", std::to_string(c.d_model)},
          {"sessa.n_heads", std::to_string(c.n_heads)},
          {"sessa.n_kv_heads", std::to_string(c.n_kv_heads)},
          {"sessa.use_rope", c.use_rope ? "true" : "false"},
          {"sessa.gamma_max", shortest(c.gamma_max)},
          {"sessa.ln_eps", shortest(c.ln_eps)}};
}
inline std::map<std::string, std::string> config_metadata(const decoder_config& c) {
  auto m = config_metadata(c.layer);
  m["sessa.arch"] = "decoder";
  m["sessa.vocab_size"] = std::to_string(c.vocab_size);
  m["sessa.n_layers"] = std::to_string(c.n_layers);
  m["sessa.tie_embeddings"] = c.tie_embeddings ? "true" : "false";
  return m;
}

/// Name suffix of the scales of a q8_0 tensor in a model file: tensor `name` (I8, the parameter's shape (rows,
/// cols)) holds the int8 values q, tensor `name.scale` (F16, (rows, ceil(cols / 32))) the block scales d.
inline constexpr const char* q8_0_scale_suffix = ".scale";

namespace detail {

inline const layer_config& cfg_layer(const layer_config& c) { return c; }
inline const layer_config& cfg_layer(const decoder_config& c) { return c.layer; }

/// The mixer whose buffer `name` belongs to ("mixer.x" for a layer, "layers.{i}.mixer.x" for a decoder).
template <weight_storage_type T>
mixer_weights<T>* mixer_for(const layer_config&, layer_weights<T>& w, const std::string& name) {
  return name.rfind("mixer.", 0) == 0 ? &w.mixer : nullptr;
}
template <weight_storage_type T>
mixer_weights<T>* mixer_for(const decoder_config& c, decoder_weights<T>& w, const std::string& name) {
  if (name.rfind("layers.", 0) != 0) return nullptr;
  index_t i = 0;
  const char* b = name.data() + 7;
  auto [p, ec] = std::from_chars(b, name.data() + name.size(), i);
  if (ec != std::errc{} || p == b || *p != '.' || i < 0 || i >= c.n_layers) return nullptr;
  if (name.compare(static_cast<std::size_t>(p - name.data()) + 1, 6, "mixer.") != 0) return nullptr;
  return &w.layers[static_cast<std::size_t>(i)].mixer;
}

/// Matches the file's tensors against the parameter table of `cfg` and fills the weights; throws one
/// format_error listing every missing, unexpected and mis-shaped name.
/// The tensor `name` of f converted to storage type T: float and double read exactly (or rounded once from a
/// wider file type), bfloat16 and float16 rounded once from the value the file holds.
template <storage_type T>
buffer<T> read_storage(const safetensors_file& f, const std::string& name) {
  if constexpr (scalar<T>) {
    const std::vector<T> v = f.template read_as<T>(name);
    return buffer<T>(std::span<const T>(v));
  } else {
    const std::vector<double> v = f.template read_as<double>(name);
    buffer<T> b(static_cast<index_t>(v.size()));
    for (std::size_t i = 0; i < v.size(); ++i) b[static_cast<index_t>(i)] = T(v[i]);
    return b;
  }
}

/// A q8_0 tensor of the file (I8 values and their F16 scales) as storage E: the blocks themselves for q8_0, else
/// the values d * q rounded once to E. format_error for a missing or mis-typed scale tensor; value_error naming the
/// row for a damaged block (a scale that is negative or not finite, a value of -128).
template <class E>
buffer<E> read_q8_0(const safetensors_file& f, const std::string& name, const shape_t& shape) {
  if (shape.size() != 2)
    throw format_error(f.source() + ": tensor '" + name + "' is I8 (q8_0) but the parameter is not a matrix: " +
                       "only matrices are stored quantized");
  const index_t rows = shape[0], cols = shape[1], nb = storage_cols<q8_0>(cols);
  const std::string sname = name + q8_0_scale_suffix;
  const shape_t sshape{rows, nb};
  const tensor_entry* se = f.find(sname);
  if (!se)
    throw format_error(f.source() + ": q8_0 tensor '" + name + "' has no scales: tensor '" + sname + "' (F16 " +
                       shape_string(sshape) + ") is missing");
  if (se->type != dtype::F16 || se->shape != sshape)
    throw format_error(f.source() + ": the scales '" + sname + "' of q8_0 tensor '" + name + "' must be F16 " +
                       shape_string(sshape) + ", got " + std::string(dtype_name(se->type)) + " " +
                       shape_string(se->shape));
  const std::vector<std::int32_t> q = f.template read_as<std::int32_t>(name);
  const std::vector<float> d = f.template read_as<float>(sname);  // float16 decoded exactly
  std::vector<q8_0> row(static_cast<std::size_t>(nb));
  buffer<E> out(rows * storage_cols<E>(cols));
  std::vector<double> values(static_cast<std::size_t>(cols));
  for (index_t r = 0; r < rows; ++r) {
    for (index_t b = 0; b < nb; ++b) {
      q8_0& blk = row[static_cast<std::size_t>(b)];
      blk = q8_0{};
      blk.d = float16(d[static_cast<std::size_t>(r * nb + b)]);
      for (index_t i = 0; i < q8_0::block && b * q8_0::block + i < cols; ++i)
        blk.q[i] = static_cast<std::int8_t>(q[static_cast<std::size_t>(r * cols + b * q8_0::block + i)]);
    }
    check_row_q8_0(row.data(), cols, f.source() + ": q8_0 tensor '" + name + "' row " + std::to_string(r));
    if constexpr (is_block_quantized<E>) {
      std::copy(row.begin(), row.end(), out.data() + r * nb);
    } else {
      dequantize_row_q8_0(row.data(), cols, values.data());
      for (index_t k = 0; k < cols; ++k) out.data()[r * cols + k] = narrow<E>(values[static_cast<std::size_t>(k)]);
    }
  }
  return out;
}

/// A floating-point tensor of the file quantized to q8_0 as it loads (per row of the last dimension); value_error
/// naming the row and column of a weight q8_0 cannot hold.
template <class E>
buffer<E> quantize_tensor(const safetensors_file& f, const std::string& name, const shape_t& shape) {
  const std::vector<double> v = f.template read_as<double>(name);
  const index_t cols = shape.empty() ? 1 : shape.back(), rows = shape_numel(shape) / std::max<index_t>(1, cols);
  buffer<E> out(rows * storage_cols<E>(cols));
  for (index_t r = 0; r < rows; ++r)
    quantize_row_q8_0(v.data() + r * cols, cols, out.data() + r * storage_cols<E>(cols),
                      f.source() + ": tensor '" + name + "' row " + std::to_string(r));
  return out;
}

/// The index of the first NaN or infinity in a weight buffer, or -1.
template <storage_type T>
index_t first_non_finite(const buffer<T>& b) {
  for (index_t i = 0; i < b.size(); ++i)
    if (!std::isfinite(static_cast<double>(b[i]))) return i;
  return -1;
}

/// Why weight `name`[i] is not finite: a NaN or infinity in the file, or a finite value of the file that
/// storage type T cannot hold (a double beyond float's range, a value beyond float16's 65504).
template <storage_type T>
std::string non_finite_weight(const safetensors_file& f, const std::string& name, index_t i) {
  const double v = f.template read_as<double>(name)[static_cast<std::size_t>(i)];
  const std::string at = name + "[" + std::to_string(i) + "]";
  if (std::isfinite(v))
    return at + " = " + shortest(v) + " overflows the storage type " + std::string(storage_name<T>()) + " (weights must be finite)";
  return at + " is " + (std::isnan(v) ? "NaN" : v > 0 ? "+infinity" : "-infinity") + " (weights must be finite)";
}

template <weight_storage_type T, class Config, class Weights>
void fill_weights(const safetensors_file& f, const Config& cfg, Weights& w, const std::string& describe) {
  std::vector<std::string> missing, misshaped, unexpected, other;
  std::set<std::string> used;
  for_each_parameter(cfg, w, [&](const std::string& name, const shape_t& shape, auto& b) {
    using E = typename std::remove_reference_t<decltype(b)>::value_type;  // T, or vector_storage_t<T>
    const tensor_entry* e = f.find(name);
    if (!e) return missing.push_back(name);
    used.insert(name);
    if (e->shape != shape)
      return misshaped.push_back(name + " is " + shape_string(e->shape) + ", expected " + shape_string(shape));
    const bool q8_file = e->type == dtype::I8;
    try {
      if (q8_file) {
        used.insert(name + q8_0_scale_suffix);
        b = read_q8_0<E>(f, name, shape);
      } else if constexpr (is_block_quantized<E>) {
        b = quantize_tensor<E>(f, name, shape);
      } else {
        b = read_storage<E>(f, name);
      }
    } catch (const format_error& err) {
      return other.push_back(err.what());
    } catch (const value_error& err) {
      return other.push_back(err.what());
    }
    // A weight that is not finite poisons every output it touches: refused at load, by name and index. (q8_0 is
    // checked as it is made: quantize_row_q8_0 and check_row_q8_0 refuse what is not finite.)
    if constexpr (!is_block_quantized<E>) {
      if (const index_t i = first_non_finite(b); i >= 0) {
        if (q8_file)
          other.push_back(name + "[" + std::to_string(i) + "] (a q8_0 weight) overflows the storage type " +
                          std::string(storage_name<E>()));
        else
          other.push_back(non_finite_weight<E>(f, name, i));
      }
    }
  });
  // The public modules' buffers: rope_inv_freq (used when present) and the causal masks.
  const index_t half = (cfg_layer(cfg).d_model / cfg_layer(cfg).n_heads) / 2;
  for (const tensor_entry& e : f.entries()) {
    if (used.count(e.name)) continue;
    const std::string& n = e.name;
    auto ends = [&](const std::string& s) { return n.size() >= s.size() && n.compare(n.size() - s.size(), s.size(), s) == 0; };
    mixer_weights<T>* mw = mixer_for(cfg, w, n);
    if (mw && ends("mixer.rope_inv_freq")) {
      if (e.shape != shape_t{half}) {
        misshaped.push_back(n + " is " + shape_string(e.shape) + ", expected " + shape_string(shape_t{half}));
        continue;
      }
      std::vector<float> file_freq;
      try {
        file_freq = f.template read_as<float>(n);
      } catch (const format_error& err) {
        other.push_back(err.what());
        continue;
      }
      const std::vector<float> own = rope::inv_freq(2 * half);
      for (index_t i = 0; i < half; ++i)
        if (!within_ulps(file_freq[static_cast<std::size_t>(i)], own[static_cast<std::size_t>(i)], 2)) {
          other.push_back(n + "[" + std::to_string(i) + "] = " + std::to_string(file_freq[static_cast<std::size_t>(i)]) +
                          " is not 10000^(-2i/d) = " + std::to_string(own[static_cast<std::size_t>(i)]));
          break;
        }
      if (cfg_layer(cfg).use_rope) mw->rope_inv_freq = buffer<float>(std::span<const float>(file_freq));
    } else if (mw && (ends("mixer.causal_mask_f_full") || ends("mixer.causal_mask_fb_full"))) {
      if (e.type != dtype::BOOL || e.shape.size() != 2 || e.shape[0] != e.shape[1])
        misshaped.push_back(n + " must be a square BOOL matrix, got " + std::string(dtype_name(e.type)) + " " +
                            shape_string(e.shape));
    } else {
      unexpected.push_back(n);
    }
  }
  if (missing.empty() && misshaped.empty() && unexpected.empty() && other.empty()) return;
  std::string msg = f.source() + ": tensors do not match " + describe;
  auto list = [&](const char* what, const std::vector<std::string>& v) {
    if (v.empty()) return;
    msg += std::string("; ") + what + ": ";
    for (std::size_t i = 0; i < v.size(); ++i) msg += (i ? ", " : "") + v[i];
  };
  list("missing", missing);
  list("unexpected", unexpected);
  list("mis-shaped", misshaped);
  list("invalid", other);
  throw format_error(msg);
}

inline std::string describe(const layer_config& c) {
  return "a layer with d_model=" + std::to_string(c.d_model) + ", n_heads=" + std::to_string(c.n_heads) +
         ", n_kv_heads=" + std::to_string(c.n_kv_heads);
}
inline std::string describe(const decoder_config& c) {
  return "a decoder with vocab_size=" + std::to_string(c.vocab_size) + ", n_layers=" + std::to_string(c.n_layers) +
         ", d_model=" + std::to_string(c.layer.d_model) + ", n_heads=" + std::to_string(c.layer.n_heads) +
         ", n_kv_heads=" + std::to_string(c.layer.n_kv_heads) +
         ", tie_embeddings=" + (c.tie_embeddings ? "true" : "false");
}

}  // namespace detail

namespace detail {
/// What reading the weights of `c` in storage type T allocates: the parameters, and the largest tensor once more
/// as read from the file (as double, the widest conversion).
template <weight_storage_type T, class Config>
memory_plan weights_plan(const Config& c) {
  const auto D = static_cast<std::uint64_t>(cfg_layer(c).d_model);
  std::uint64_t largest = 2 * D * D;  // W_in, proj_fb
  if constexpr (std::is_same_v<Config, decoder_config>) largest = std::max(largest, static_cast<std::uint64_t>(c.vocab_size) * D);
  memory_plan p("the weights of " + describe(c));
  p.add("parameters", parameter_bytes<T>(c), 1);
  p.add("the largest tensor as read", largest, sizeof(double));
  return p;
}
}  // namespace detail

/// Layer weights from an opened file, checked against `c`, in storage type T (float, double, bfloat16, float16).
/// `c` is validated first.
template <weight_storage_type T>
layer_weights<T> read_layer_weights(const safetensors_file& f, const layer_config& c) {
  c.check();
  detail::weights_plan<T>(c).check();
  layer_weights<T> w;
  detail::fill_weights<T>(f, c, w, detail::describe(c));
  if (c.use_rope && w.mixer.rope_inv_freq.empty()) w.mixer.rope_inv_freq = rope::inv_freq_table(c.head_dim());
  return w;
}

/// Decoder weights from an opened file, checked against `c`, in storage type T. `c` is validated first.
template <weight_storage_type T>
decoder_weights<T> read_decoder_weights(const safetensors_file& f, const decoder_config& c) {
  c.check();
  // The layers the file holds, counted from its tensor names before anything is sized by the configuration: a
  // few bytes of metadata must not be able to allocate thousands of layers.
  index_t present = 0;
  for (const tensor_entry& e : f.entries()) {
    if (e.name.rfind("layers.", 0) != 0) continue;
    index_t i = 0;
    const char* b = e.name.data() + 7;
    const auto [p, ec] = std::from_chars(b, e.name.data() + e.name.size(), i);
    if (ec == std::errc{} && p != b && *p == '.' && i >= 0 && i < c.n_layers) present = std::max(present, i + 1);
  }
  if (present < c.n_layers)
    throw format_error(f.source() + ": the configuration has n_layers = " + std::to_string(c.n_layers) +
                       " but the file holds tensors of " + std::to_string(present) + " layer" +
                       (present == 1 ? "" : "s") + " (layers.0 .. layers." + std::to_string(c.n_layers - 1) +
                       " are needed)");
  detail::weights_plan<T>(c).check();
  decoder_weights<T> w;
  w.layers.resize(static_cast<std::size_t>(c.n_layers));
  detail::fill_weights<T>(f, c, w, detail::describe(c));
  if (c.layer.use_rope)
    for (auto& l : w.layers)
      if (l.mixer.rope_inv_freq.empty()) l.mixer.rope_inv_freq = rope::inv_freq_table(c.layer.head_dim());
  return w;
}

namespace detail {
template <attention_variant A>
A variant_from(const model_info& info, const std::string& src, const A& given) {
  if constexpr (std::is_same_v<A, attention::causal>) {
    if (info.attention != "causal")
      throw format_error(src + ": the file declares attention '" + info.attention +
                         "' but the model type uses 'causal'");
    return given;
  } else if constexpr (std::is_same_v<A, attention::sliding_window>) {
    if (info.attention == "sliding_window") return A{info.window};
    if (given.window >= 1) return given;
    throw format_error(src + ": the model type uses 'sliding_window' but the file declares attention '" +
                       info.attention + "' and no window was given");
  } else {
    return given;
  }
}

inline void check_same_config(const layer_config& a, const layer_config& b, const std::string& src) {
  if (a.d_model != b.d_model || a.n_heads != b.n_heads || a.n_kv_heads != b.n_kv_heads || a.use_rope != b.use_rope ||
      a.gamma_max != b.gamma_max || a.ln_eps != b.ln_eps)
    throw config_error(src + ": the given configuration (" + describe(b) + ") differs from the file's metadata (" +
                       describe(a) + ")");
}
}  // namespace detail

/// Loads a layer. Without `config` the file's metadata must carry it; with it, the file's metadata (if any)
/// must agree. T is the numeric policy (float, double, precision<float, bfloat16>, ...); weights are read
/// into its storage type on the host and, for a device backend, copied to the device.
template <numeric T, backend_tag B = backend::default_cpu, attention_variant A = attention::causal>
layer<T, B, A> load_layer(const safetensors_file& f, std::optional<layer_config> config = std::nullopt, A variant = {}) {
  layer_config c;
  A v = variant;
  if (has_config_metadata(f)) {
    const model_info info = read_model_info(f);
    if (info.arch != model_arch::layer)
      throw format_error(f.source() + ": the file holds a decoder (sessa.arch = 'decoder'), not a layer");
    c = info.config.layer;
    if (config) detail::check_same_config(c, *config, f.source());
    v = detail::variant_from(info, f.source(), variant);
  } else if (config) {
    c = *config;
  } else {
    read_model_info(f);  // throws the "no configuration" error
  }
  return layer<T, B, A>(c, read_layer_weights<weight_t<T>>(f, c), v);
}

template <numeric T, backend_tag B = backend::default_cpu, attention_variant A = attention::causal>
layer<T, B, A> load_layer(const std::filesystem::path& path, std::optional<layer_config> config = std::nullopt,
                          A variant = {}) {
  return load_layer<T, B, A>(safetensors_file::load(path), config, variant);
}

/// Loads a decoder; same rules as load_layer.
template <numeric T, backend_tag B = backend::default_cpu, attention_variant A = attention::causal>
decoder<T, B, A> load_decoder(const safetensors_file& f, std::optional<decoder_config> config = std::nullopt,
                              A variant = {}) {
  decoder_config c;
  A v = variant;
  if (has_config_metadata(f)) {
    const model_info info = read_model_info(f);
    if (info.arch != model_arch::decoder)
      throw format_error(f.source() + ": the file holds a layer (sessa.arch = 'layer'), not a decoder");
    c = info.config;
    if (config) {
      detail::check_same_config(c.layer, config->layer, f.source());
      if (c.vocab_size != config->vocab_size || c.n_layers != config->n_layers ||
          c.tie_embeddings != config->tie_embeddings)
        throw config_error(f.source() + ": the given configuration (" + detail::describe(*config) +
                           ") differs from the file's metadata (" + detail::describe(c) + ")");
    }
    v = detail::variant_from(info, f.source(), variant);
  } else if (config) {
    c = *config;
  } else {
    read_model_info(f);
  }
  return decoder<T, B, A>(c, read_decoder_weights<weight_t<T>>(f, c), v);
}

template <numeric T, backend_tag B = backend::default_cpu, attention_variant A = attention::causal>
decoder<T, B, A> load_decoder(const std::filesystem::path& path, std::optional<decoder_config> config = std::nullopt,
                              A variant = {}) {
  return load_decoder<T, B, A>(safetensors_file::load(path), config, variant);
}

/// Adds a layer's (or a decoder's) parameters to `out`: q8_0 matrices as their I8 values and F16 scales (tensors
/// `name` and `name.scale`, see q8_0_scale_suffix), everything else converted to `type` (F32, F64, F16 or BF16;
/// rounded once, and refused by name when a value overflows it). Returns the bytes of tensor data added.
template <class Config, class Weights>
std::size_t add_parameters(safetensors_writer& out, const Config& c, const Weights& w, dtype type = dtype::F32) {
  std::size_t bytes = 0;
  for_each_parameter(c, w, [&](const std::string& name, const shape_t& s, const auto& b) {
    using E = typename std::remove_cvref_t<decltype(b)>::value_type;
    if constexpr (is_block_quantized<E>) {
      const index_t rows = s[0], cols = s[1], nb = storage_cols<E>(cols);
      std::vector<std::byte> q(static_cast<std::size_t>(rows * cols)), d(static_cast<std::size_t>(rows * nb) * 2);
      for (index_t r = 0; r < rows; ++r)
        for (index_t blk = 0; blk < nb; ++blk) {
          const q8_0& x = b.data()[r * nb + blk];
          const std::size_t at = static_cast<std::size_t>(r * nb + blk) * 2;
          d[at] = static_cast<std::byte>(x.d.bits & 0xFFu);
          d[at + 1] = static_cast<std::byte>(x.d.bits >> 8);
          for (index_t i = 0; i < q8_0::block && blk * q8_0::block + i < cols; ++i)
            q[static_cast<std::size_t>(r * cols + blk * q8_0::block + i)] = static_cast<std::byte>(static_cast<std::uint8_t>(x.q[i]));
        }
      out.add(name, dtype::I8, s, q);
      out.add(name + q8_0_scale_suffix, dtype::F16, shape_t{rows, nb}, d);
      bytes += q.size() + d.size();
    } else {
      std::vector<double> v(static_cast<std::size_t>(b.size()));
      for (index_t i = 0; i < b.size(); ++i) v[static_cast<std::size_t>(i)] = static_cast<double>(b.data()[i]);
      out.add_converted(name, type, s, v);
      bytes += v.size() * dtype_size(type);
    }
  });
  return bytes;
}

/// Writes a layer's (or a decoder's) parameters as F32 (or `type`: F64, F16, BF16; q8_0 matrices as I8 values with
/// F16 scales, add_parameters) with its configuration in __metadata__ (and sessa.weights = q8_0 for q8_0 weights).
/// `Config` is layer_config with layer_weights<T>, or decoder_config with decoder_weights<T>.
template <class Config, class Weights>
void save_model(const std::filesystem::path& path, const Config& c, const Weights& w, dtype type = dtype::F32) {
  safetensors_writer out;
  for (auto& [k, v] : config_metadata(c)) out.set_metadata(k, v);
  if constexpr (is_block_quantized<typename Weights::value_type>) out.set_metadata("sessa.weights", "q8_0");
  add_parameters(out, c, w, type);
  out.write(path);
}

}  // namespace sessa::io
