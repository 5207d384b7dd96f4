// Fuzz target: the model loader (io/model_file.hpp) on a parsed file, as `sessa info`, `run`, `generate` and
// `embed` use it: read_model_info, describe and the sizes `info` prints, then load_layer / load_decoder in float
// on the cpu backend with the attention variant the file declares (what the CLI does), and in
// precision<float, bfloat16> on the reference backend (the narrowing read path), then a few tokens through each
// model that loaded. A file without sessa.* metadata (a bare state dict) is loaded with the configurations of
// the bare files in the seed corpus (tools/fuzz_seeds.py), as `--config` would give them.
//
// Properties checked: a model that loaded runs (no error from a forward pass on its own shapes); a file the
// bfloat16 policy loads also loads in float (they read the same tensors, and float holds every value bfloat16
// does; the reverse need not hold: a weight beyond bfloat16's range is refused there); a file holding one
// architecture never loads as the other; metadata that read_model_info rejects never loads. Allocations stay
// bounded by the input: the loader must refuse a configuration whose tensors the file does not hold before sizing
// anything by it (tools/fuzz.sh runs this target with -malloc_limit_mb, so one large allocation is a finding).

// Not sessa/sessa.hpp: it includes model/embedded.hpp, whose double template parameters clang 14 (Debian 12's,
// the libFuzzer toolchain) does not support. These are the parts this target uses.
#include <sessa/backend/cpu/reference.hpp>
#include <sessa/backend/cpu/parallel.hpp>
#include <sessa/backend/cpu/simd.hpp>
#include <sessa/io/model_file.hpp>

#include <limits>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "fuzz_support.hpp"

namespace {

namespace io = sessa::io;
using sessa::index_t;
using bf16 = sessa::precision<float, sessa::bfloat16>;

/// The bare files' configurations: tests/data/layer_d32_h4_kv2_bare and tools/fuzz_seeds.py's bare files.
const sessa::layer_config bare_layers[] = {{32, 4, 2, true, 0.999, 1e-5}, {4, 2, 1, true, 0.999, 1e-5}};
const sessa::decoder_config bare_decoders[] = {{{4, 2, 1, true, 0.999, 1e-5}, 6, 2, false}};

/// Three tokens through a layer: a prefill of two into a cache, then one decode step.
template <class Layer>
void run(const Layer& m) {
  const index_t D = m.config().d_model;
  sessa::tensor<float> x({1, 2, D});
  for (index_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 7 - 3) * 0.25f;
  auto cache = m.init_cache(1, 3);
  const sessa::tensor<float> y = m.forward(x, cache);
  sessa::tensor<float> x_t({1, D}, 0.5f);
  const sessa::tensor<float> y_t = m.decode_step(x_t, cache);
  SESSA_FUZZ_CHECK(y.size() == 2 * D && y_t.size() == D && cache.length() == 3);
}

/// Three tokens through a decoder: the first and last ids of the vocabulary, then a decode step.
template <class T, class B, class A>
void run(const sessa::decoder<T, B, A>& m) {
  const index_t V = m.config().vocab_size;
  auto cache = m.init_cache(1, 3);
  const sessa::tensor<std::int64_t> prompt({1, 2}, std::vector<std::int64_t>{0, V - 1});
  const auto last = m.forward(prompt, cache, sessa::logits_for::last);
  const std::int64_t next = V / 2;
  const auto step = m.decode_step(std::span<const std::int64_t>(&next, 1), cache);
  SESSA_FUZZ_CHECK(last.size() == V && step.size() == V && cache.length() == 3);
}

/// load_layer or load_decoder (Decoder) with numeric policy P on backend B and variant A; runs what loaded.
/// False when the loader rejects the file. A model that loaded must run: errors from run() are not caught.
template <bool Decoder, class P, class B, class A, class Config>
bool loads(const io::safetensors_file& f, std::optional<Config> config) {
  if constexpr (Decoder) {
    std::optional<sessa::decoder<P, B, A>> m;
    try {
      m.emplace(io::load_decoder<P, B, A>(f, config));
    } catch (const sessa::error&) {
      return false;
    }
    run(*m);
  } else {
    std::optional<sessa::layer<P, B, A>> m;
    try {
      m.emplace(io::load_layer<P, B, A>(f, config));
    } catch (const sessa::error&) {
      return false;
    }
    run(*m);
  }
  return true;
}

/// Loads the file in float on the cpu backend and in precision<float, bfloat16> on the reference backend.
template <bool Decoder, class A, class Config>
void loads_both(const io::safetensors_file& f, std::optional<Config> config) {
  const bool as_float = loads<Decoder, float, sessa::backend::cpu, A>(f, config);
  const bool as_bf16 = loads<Decoder, bf16, sessa::backend::reference, A>(f, config);
  SESSA_FUZZ_CHECK(as_float || !as_bf16);
}

/// What `sessa info` prints besides the configuration: these must not overflow for any accepted configuration.
void info_sizes(const io::model_info& info) {
  const bool decoder = info.arch == io::model_arch::decoder;
  const index_t params = decoder ? sessa::parameter_count(info.config) : sessa::parameter_count(info.config.layer);
  const index_t per_token = (decoder ? info.config.n_layers : 1) * info.config.layer.cache_values_per_token();
  SESSA_FUZZ_CHECK(params > 0 && per_token > 0 && per_token <= std::numeric_limits<index_t>::max() / 8);
  SESSA_FUZZ_CHECK(!io::describe(info).empty());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  io::safetensors_file f;
  try {
    f = io::safetensors_file::parse(sessa::fuzz::bytes_of(data, size), "fuzz.safetensors");
  } catch (const sessa::format_error&) {
    return 0;
  }
  using causal = sessa::attention::causal;
  using window = sessa::attention::sliding_window;
  using no_layer = std::optional<sessa::layer_config>;
  using no_decoder = std::optional<sessa::decoder_config>;

  if (!io::has_config_metadata(f)) {
    for (const sessa::layer_config& c : bare_layers) loads_both<false, causal>(f, std::optional(c));
    for (const sessa::decoder_config& c : bare_decoders) loads_both<true, causal>(f, std::optional(c));
    return 0;
  }
  io::model_info info;
  try {
    info = io::read_model_info(f);
  } catch (const sessa::error&) {
    // The loaders read the same metadata, so they must reject the file too.
    SESSA_FUZZ_CHECK(!loads<false, float, sessa::backend::reference, causal>(f, no_layer{}));
    SESSA_FUZZ_CHECK(!loads<true, float, sessa::backend::reference, causal>(f, no_decoder{}));
    return 0;
  }
  info_sizes(info);
  const bool windowed = info.attention == "sliding_window";
  if (info.arch == io::model_arch::layer) {
    if (windowed) loads_both<false, window>(f, no_layer{});
    else loads_both<false, causal>(f, no_layer{});
    SESSA_FUZZ_CHECK(!loads<true, float, sessa::backend::reference, causal>(f, no_decoder{}));
  } else {
    if (windowed) loads_both<true, window>(f, no_decoder{});
    else loads_both<true, causal>(f, no_decoder{});
    SESSA_FUZZ_CHECK(!loads<false, float, sessa::backend::reference, causal>(f, no_layer{}));
  }
  return 0;
}
