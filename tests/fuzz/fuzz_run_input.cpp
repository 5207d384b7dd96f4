// Fuzz target: the input file of `sessa run` (--input I.safetensors). The CLI reads it in cmd_run
// (tools/cli/main.cpp), not through a library function of its own, so this target makes the same library calls
// in the same order on a fixed layer and a fixed decoder: safetensors_file::parse, find("tokens") with the
// (B, T) shape check and read_as<std::int64_t> for a decoder, find("x") with detail::check_activation_shape and
// read_as<float> for a layer, then the model over the sequence in the CLI's modes: prefill (one call) and decode
// (chunks of one token, each extending the cache). The model file itself is fuzz_model_file's surface and the
// --config text fuzz_config_json's; `generate`'s prompt becomes token ids through the file's vocabulary string
// in main.cpp, and the ids then take this target's decoder path.
//
// Properties checked: an input whose shape and dtype the reads accept runs in both modes or is rejected in
// both (a token outside the vocabulary is a value_error); and both modes give the same numbers to rounding, the
// library's central promise, for any token sequence and for any finite x of moderate size.
// Not sessa/sessa.hpp: it includes model/embedded.hpp, whose double template parameters clang 14 (Debian 12's,
// the libFuzzer toolchain) does not support. These are the parts this target uses.
#include <sessa/backend/cpu/reference.hpp>
#include <sessa/backend/cpu/parallel.hpp>
#include <sessa/backend/cpu/simd.hpp>
#include <sessa/io/safetensors.hpp>
#include <sessa/model/decoder.hpp>
#include <sessa/model/init.hpp>
#include <sessa/model/layer.hpp>

#include <algorithm>
#include <cmath>
#include <optional>
#include <span>
#include <vector>

#include "fuzz_support.hpp"

namespace {

namespace io = sessa::io;
using sessa::index_t;

/// The models `sessa run` would load; their shapes match the seed inputs (tools/fuzz_seeds.py) and the
/// tests/data inputs with d_model 16 and vocabulary 37.
struct models {
  sessa::layer_config layer_cfg{16, 2, 1, true, 0.999, 1e-5};
  sessa::decoder_config decoder_cfg{{16, 2, 1, true, 0.999, 1e-5}, 37, 2, false};
  sessa::layer<float> layer{layer_cfg, sessa::random_layer_weights<float>(layer_cfg, 1)};
  sessa::decoder<float> decoder{decoder_cfg, sessa::random_decoder_weights<float>(decoder_cfg, 2)};
};

const models& get_models() {
  static const models m;
  return m;
}

/// Runs step(t0, n) over [0, T) in chunks: the whole range at once (chunk 0) or chunks of `chunk` (cmd_run's loop).
template <class Step>
void for_each_chunk(index_t T, index_t chunk, Step&& step) {
  const index_t c = chunk == 0 ? T : chunk;
  for (index_t t0 = 0; t0 < T; t0 += c) step(t0, std::min(c, T - t0));
}

/// logits (B, T, V) of tokens (B, T), computed in chunks of `chunk` tokens per batch row.
std::vector<float> decoder_logits(const sessa::decoder<float>& m, const std::vector<std::int64_t>& tok, index_t B,
                                  index_t T, index_t chunk) {
  const index_t V = m.config().vocab_size;
  std::vector<float> logits(static_cast<std::size_t>(B * T * V));
  auto cache = m.init_cache(B, T);
  std::vector<std::int64_t> part;
  for_each_chunk(T, chunk, [&](index_t t0, index_t n) {
    part.resize(static_cast<std::size_t>(B * n));
    for (index_t b = 0; b < B; ++b) std::copy_n(tok.begin() + b * T + t0, n, part.begin() + b * n);
    const sessa::tensor<std::int64_t> chunk_tokens({B, n}, std::span<const std::int64_t>(part));
    const sessa::tensor<float> out = m.forward(chunk_tokens, cache);
    for (index_t b = 0; b < B; ++b)
      std::copy_n(out.data() + b * n * V, n * V, logits.begin() + (b * T + t0) * V);
  });
  return logits;
}

/// y (B, T, D) of x (B, T, D), computed in chunks of `chunk` tokens per batch row.
std::vector<float> layer_outputs(const sessa::layer<float>& m, const std::vector<float>& x, index_t B, index_t T,
                                 index_t chunk) {
  const index_t D = m.config().d_model;
  std::vector<float> y(x.size());
  auto cache = m.init_cache(B, T);
  for_each_chunk(T, chunk, [&](index_t t0, index_t n) {
    sessa::tensor<float> xc({B, n, D});
    for (index_t b = 0; b < B; ++b) std::copy_n(x.begin() + (b * T + t0) * D, n * D, xc.data() + b * n * D);
    const sessa::tensor<float> yc = m.forward(xc, cache);
    for (index_t b = 0; b < B; ++b) std::copy_n(yc.data() + b * n * D, n * D, y.begin() + (b * T + t0) * D);
  });
  return y;
}

/// Prefill and decode agree to rounding: within 1e-3 of the largest magnitude (float32 paths that sum in
/// different orders; the library's own tests hold them to 1e-4 on realistic inputs).
void check_close(const std::vector<float>& prefill, const std::vector<float>& decode) {
  SESSA_FUZZ_CHECK(prefill.size() == decode.size());
  float scale = 1.0f;
  for (float v : prefill) {
    SESSA_FUZZ_CHECK(std::isfinite(v));
    scale = std::max(scale, std::fabs(v));
  }
  for (std::size_t i = 0; i < prefill.size(); ++i)
    SESSA_FUZZ_CHECK(std::fabs(prefill[i] - decode[i]) <= 1e-3f * scale);
}

void run_tokens(const io::safetensors_file& in, const sessa::decoder<float>& m) {
  const io::tensor_entry* e = in.find("tokens");
  if (!e || e->shape.size() != 2 || e->shape[0] < 1 || e->shape[1] < 1) return;  // the CLI's format/shape errors
  std::vector<std::int64_t> tok;
  try {
    tok = in.read_as<std::int64_t>("tokens");
  } catch (const sessa::format_error&) {
    return;
  }
  const index_t B = e->shape[0], T = e->shape[1];
  std::optional<std::vector<float>> prefill, decode;
  try {
    prefill = decoder_logits(m, tok, B, T, 0);
  } catch (const sessa::value_error&) {
  }
  try {
    decode = decoder_logits(m, tok, B, T, 1);
  } catch (const sessa::value_error&) {
  }
  SESSA_FUZZ_CHECK(prefill.has_value() == decode.has_value());
  if (prefill) check_close(*prefill, *decode);
}

void run_x(const io::safetensors_file& in, const sessa::layer<float>& m) {
  const io::tensor_entry* e = in.find("x");
  if (!e) return;
  std::vector<float> x;
  try {
    sessa::detail::check_activation_shape(e->shape, m.config().d_model, "'x'");
    x = in.read_as<float>("x");
  } catch (const sessa::error&) {
    return;
  }
  // A well-shaped x must run in both modes, whatever its values (NaN and infinity included).
  const index_t B = e->shape[0], T = e->shape[1];
  const std::vector<float> prefill = layer_outputs(m, x, B, T, 0);
  const std::vector<float> decode = layer_outputs(m, x, B, T, 1);
  if (std::all_of(x.begin(), x.end(), [](float v) { return std::fabs(v) <= 1e3f; })) check_close(prefill, decode);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  io::safetensors_file in;
  try {
    in = io::safetensors_file::parse(sessa::fuzz::bytes_of(data, size), "fuzz.io.safetensors");
  } catch (const sessa::format_error&) {
    return 0;
  }
  const models& m = get_models();
  run_tokens(in, m.decoder);
  run_x(in, m.layer);
  return 0;
}
