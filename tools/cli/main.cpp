// sessa: the command-line tool.
//
//   sessa info     [--model M.safetensors] [--config C.json]
//   sessa run      --model M.safetensors --input I.safetensors --output O.safetensors
//                  [--mode prefill|decode|chunked:N] [--precision f32|f64] [--backend NAME] [--threads N]
//                  (NAME: cpu, reference, and the device backends of this build: thrust_omp; cuda and
//                  thrust_cuda in the nvcc build, sessa-cuda)
//                  [--config C.json]
//   sessa eval     [--model M.safetensors] --text FILE [--window N] [--stride S] [--json]
//                  [--precision f32|f64] [--backend NAME] [--threads N]
//   sessa embed    --model M.safetensors --name NAME --out NAME_model.hpp [--dtype f32|bf16|f16|q8_0]
//   sessa quantize [--model M.safetensors] --to bf16|f16|q8_0|f32|f64 --out M2.safetensors
//   sessa profile  --construction uniform|retrieval | [--model M] --text FILE | --model M --input I
//                  [--measure feedback|end-to-end] [--sources ..] [--fit LO:HI] [--json] [--svg FILE]
//   sessa generate [--model M.safetensors] --prompt TEXT | --prompts FILE [--max-tokens N] [--temperature X] [--seed S]
//                  [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty X] [--repeat-last-n N] [--stop STR]...
//                  [--save-state F] [--load-state F] [--precision f32|f64] [--backend NAME] [--threads N]
//
// generate, eval, info and profile run the shipped model (linked into the program) when --model is not given.
// Errors print one line on stderr and exit 1 (2 for usage errors); an output file is only ever written
// whole (the writer renames a finished temporary file into place).
#include "../common/backends.hpp"  // sessa.hpp and the Thrust backends this build has

#include <sessa/io/model_file.hpp>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cctype>
#include <cstring>
#include <fstream>
#include <sstream>
#include <limits>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../common/options.hpp"

#if defined(SESSA_WITH_THRUST_OMP) && defined(SESSA_WITH_THRUST_CUDA)
#define SESSA_CLI_EXTRA_BACKENDS "thrust_omp, thrust_cuda, cuda"
#elif defined(SESSA_WITH_THRUST_OMP)
#define SESSA_CLI_EXTRA_BACKENDS "thrust_omp (cuda, thrust_cuda: in sessa-cuda)"
#elif defined(SESSA_WITH_THRUST_CUDA)
#define SESSA_CLI_EXTRA_BACKENDS "cuda, thrust_cuda"
#else
#define SESSA_CLI_EXTRA_BACKENDS "none (thrust_omp, cuda and thrust_cuda were not built)"
#endif

namespace sessa_cli {
std::span<const std::byte> default_model();  // default_model.cpp
}  // namespace sessa_cli

namespace {

using namespace sessa;

using sessa::tools::usage_error;

constexpr const char* usage_text =
    "usage: sessa <command> [options]\n"
    "\n"
    "commands:\n"
    "  info      [--model M.safetensors] [--config C.json]\n"
    "            print the configuration, parameter count and cache bytes per token\n"
    "  run       --model M.safetensors --input I.safetensors --output O.safetensors\n"
    "            [--mode prefill|decode|chunked:N] [--precision f32|f64] [--backend NAME]\n"
    "            [--threads N] [--config C.json]\n"
    "            run a layer on x (B,T,D) -> y, or a decoder on tokens (B,T) -> logits\n"
    "  eval      [--model M.safetensors] --text FILE [--window N] [--stride S] [--json]\n"
    "            [--precision f32|f64] [--backend NAME] [--threads N]\n"
    "            mean cross-entropy of a text (nats per token, bits per byte) in windows of N tokens\n"
    "            (default: the text, at most 512) every S tokens (default N), with tokens/s\n"
    "  quantize  [--model M.safetensors] --to bf16|f16|q8_0|f32|f64 --out M2.safetensors [--config C.json]\n"
    "            write the model with every weight stored as bf16 or f16 (rounded to nearest even from\n"
    "            the file's values), q8_0 (each matrix as int8 blocks of 32 along a row with a float16\n"
    "            scale each: tensors NAME (I8) and NAME.scale (F16); vectors stay F32) or f32 / f64; its\n"
    "            metadata carries the configuration, the tokenizer and sessa.weights; run, generate and\n"
    "            eval run such a file with narrow weights (--weights auto)\n"
    "  embed     --model M.safetensors --name NAME --out NAME_model.hpp [--dtype f32|bf16|f16|q8_0]\n"
    "            [--config C.json]\n"
    "            write a header with a decoder's shapes as template arguments and its weights as\n"
    "            constexpr arrays, for sessa::embedded::static_decoder (no file I/O, no heap)\n"
    "  generate  [--model M.safetensors] --prompt TEXT [--max-tokens N] [--temperature X] [--seed S]\n"
    "            [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty X] [--repeat-last-n N]\n"
    "            [--stop STR]... [--save-state F] [--load-state F] [--precision f32|f64]\n"
    "            [--backend NAME] [--threads N]\n"
    "            generate text with a decoder whose file carries a tokenizer (sessa.vocab characters or\n"
    "            sessa.tokenizer = bytes), streaming it; --temperature 0 (the default) is greedy,\n"
    "            --tokens is --max-tokens' older name; --stop may be given several times;\n"
    "            --save-state writes the conversation (cache, tokens, sampler) after generating,\n"
    "            --load-state continues one (then --prompt is optional and --seed is not allowed)\n"
    "            --prompts FILE instead of --prompt: one prompt per line, generated together as a batch\n"
    "            (row i samples with seed S+i; rows are printed as '[i] prompt completion')\n"
    "  profile   --construction uniform [--gamma G] [--tokens T] | --construction retrieval [--tokens T]\n"
    "            [--marker J] [--gain G] | [--model M] --text FILE [--layer L] | --model M --input I [--row R]\n"
    "            [--measure feedback|end-to-end] [--sources J,J,..] [--source-count K] [--probes K]\n"
    "            [--fit LO:HI] [--json] [--svg FILE] [--title T] [--backend NAME] [--threads N]\n"
    "            how far a token's influence reaches: the influence of source tokens on every later\n"
    "            output against the lag (median and 10-90% band over sources), its fitted power-law\n"
    "            exponent, a diffuse attention read (1/l) and an exponential of the same half-life;\n"
    "            feedback: the exact feedback solve of one layer (routing fixed); end-to-end: the whole\n"
    "            layer or decoder by float64 finite differences (--probes 0: exact norm); CSV by default\n"
    "\n"
    "  without --model, generate, eval, info and profile use the shipped model built into this program\n"
    "  (examples/models/tiny_decoder.safetensors)\n"
    "\n"
    "  --backend NAME: cpu (default), reference, and in this build also: " SESSA_CLI_EXTRA_BACKENDS "\n"
    "  --weights auto|bf16|f16|q8_0|f32|f64 (run, generate, eval): the weights' storage in memory; auto\n"
    "  (the default) keeps a file's bf16, f16 or q8_0 weights so (float32 arithmetic and cache, cpu and\n"
    "  reference backends) and otherwise widens them to --precision; q8_0 quantizes a float file as it loads\n"
    "\n"
    "  --config C.json gives the configuration of a file without sessa.* metadata (a bare state dict):\n"
    "  {\"arch\": \"layer\"|\"decoder\", \"d_model\": .., \"n_heads\": .., \"n_kv_heads\": .., \"use_rope\": true,\n"
    "   \"gamma_max\": 0.999, \"ln_eps\": 1e-5, \"vocab_size\": .., \"n_layers\": .., \"tie_embeddings\": true}\n";

using sessa::tools::options;

/// The model file plus what it declares (from metadata or --config).
struct model_source {
  io::safetensors_file file;
  io::model_info info;
};

/// --model's file, or (where `builtin_ok`) the shipped model linked into this program when --model is absent.
model_source open_model(const options& o, bool builtin_ok = false) {
  model_source m;
  if (const auto path = o.get("model"); path || !builtin_ok) {
    m.file = io::safetensors_file::load(o.need("model"));
  } else {
    const std::span<const std::byte> b = sessa_cli::default_model();
    m.file = io::safetensors_file::parse(std::vector<std::byte>(b.begin(), b.end()),
                                         "the built-in model (examples/models/tiny_decoder.safetensors)");
  }
  if (auto cfg = o.get("config")) {
    m.info = io::read_config_json(*cfg);
    if (io::has_config_metadata(m.file)) {
      const io::model_info file_info = io::read_model_info(m.file);
      if (io::describe(file_info) != io::describe(m.info))
        throw config_error(*cfg + ": the configuration (" + io::describe(m.info) + ") differs from the metadata of " +
                           m.file.source() + " (" + io::describe(file_info) + ")");
    }
  } else {
    m.info = io::read_model_info(m.file);
  }
  return m;
}

void set_threads(const options& o) { sessa::tools::apply_threads(o.integer("threads", 0, 0, 1024), "sessa"); }

/// The weights' storage a model runs with: --weights f32|f64|bf16|f16|q8_0, or `auto` (the default): q8_0 when the
/// file holds I8 tensors, bf16 or f16 when every floating-point tensor of the file is stored so (files `sessa
/// quantize` wrote), and the run can keep them
/// narrow (--precision f32 on the cpu or reference backend), else the compute type. Returns "same" for the compute
/// type.
std::string weight_storage(const options& o, const io::safetensors_file& f, const std::string& precision) {
  std::string w = o.get("weights").value_or("auto");
  const std::string backend_name = o.get("backend").value_or("cpu");
  if (w == "auto" && (precision != "f32" || (backend_name != "cpu" && backend_name != "reference"))) {
    w = "same";
  } else if (w == "auto") {
    std::optional<io::dtype> common;
    bool mixed = false, q8 = false;
    for (const auto& e : f.entries()) {
      q8 = q8 || e.type == io::dtype::I8;  // q8_0 matrices (sessa quantize --to q8_0)
      if (e.type != io::dtype::F32 && e.type != io::dtype::F64 && e.type != io::dtype::BF16 && e.type != io::dtype::F16)
        continue;
      if (common && *common != e.type) mixed = true;
      common = e.type;
    }
    w = q8 ? "q8_0" : !mixed && common == io::dtype::BF16 ? "bf16" : !mixed && common == io::dtype::F16 ? "f16" : "same";
  }
  if (w == "q8") w = "q8_0";
  if (w == "same" || w == precision) return "same";
  if (w == "bf16" || w == "f16" || w == "q8_0") {
    if (precision != "f32")
      throw usage_error("--weights " + w + " runs with --precision f32 (float32 arithmetic on the narrow weights)");
    return w;
  }
  throw usage_error("unknown --weights '" + w + "' (choose auto, bf16, f16, q8_0 or the compute type " + precision + ")");
}

/// Calls f.template operator()<P, Backend, Variant>() for the runtime choice of precision, weight storage (see
/// weight_storage), backend and variant: P is float, double, or precision<float, bfloat16 / float16, float> (narrow
/// weights, float32 cache and arithmetic; built for the cpu and reference backends, unless Narrow is false).
template <bool Narrow = true, class F>
void dispatch(const std::string& precision, const std::string& weights, const std::string& backend_name,
              const std::string& attention_name, F&& f) {
  auto with_variant = [&]<class P, class B>() {
    if (attention_name == "sliding_window") f.template operator()<P, B, attention::sliding_window>();
    else f.template operator()<P, B, attention::causal>();
  };
  auto with_backend = [&]<class P>() {
    sessa::tools::with_backend(backend_name, [&]<class B>() {
      if constexpr (std::is_same_v<weight_t<P>, compute_t<P>> || std::is_same_v<B, backend::cpu> ||
                    std::is_same_v<B, backend::reference>)
        with_variant.template operator()<P, B>();
      else
        throw usage_error("--weights " + weights + " runs on the cpu and reference backends in this program (not " +
                          backend_name + ")");
    });
  };
  if (precision == "f32") {
    if constexpr (Narrow) {
      if (weights == "bf16") return with_backend.template operator()<sessa::precision<float, bfloat16, float>>();
      if (weights == "f16") return with_backend.template operator()<sessa::precision<float, float16, float>>();
      if (weights == "q8_0") return with_backend.template operator()<sessa::precision<float, q8_0, float>>();
    }
    if (weights != "same") throw usage_error("--weights " + weights + " is not available in this command");
    with_backend.template operator()<float>();
  } else if (precision == "f64") {
    with_backend.template operator()<double>();
  } else {
    throw usage_error("unknown --precision '" + precision + "' (choose f32 or f64)");
  }
}

/// Parses --mode: 0 = prefill, 1 = decode (chunks of one), N = chunks of N.
index_t parse_mode(const options& o) {
  const std::string mode = o.get("mode").value_or("prefill");
  if (mode == "prefill") return 0;
  if (mode == "decode") return 1;
  if (mode.rfind("chunked:", 0) == 0) {
    index_t n = 0;
    const std::string num = mode.substr(8);
    auto [p, ec] = std::from_chars(num.data(), num.data() + num.size(), n);
    if (ec == std::errc{} && p == num.data() + num.size() && n >= 1) return n;
  }
  throw usage_error("--mode must be prefill, decode or chunked:N with N >= 1; got '" + mode + "'");
}

/// Runs `step(t0, n)` over [0, T) in chunks: the whole range at once (chunk 0), or chunks of `chunk`.
template <class Step>
void for_each_chunk(index_t T, index_t chunk, Step&& step) {
  const index_t c = chunk == 0 ? T : chunk;
  for (index_t t0 = 0; t0 < T; t0 += c) step(t0, std::min(c, T - t0));
}

int cmd_info(const options& o) {
  const model_source m = open_model(o, true);
  const auto& L = m.info.config.layer;
  const bool dec = m.info.arch == io::model_arch::decoder;
  std::printf("file            %s\n", m.file.source().c_str());
  std::printf("arch            %s\n", dec ? "decoder" : "layer");
  std::printf("d_model         %lld\n", static_cast<long long>(L.d_model));
  std::printf("n_heads         %lld (head width %lld)\n", static_cast<long long>(L.n_heads),
              static_cast<long long>(L.head_dim()));
  std::printf("n_kv_heads      %lld\n", static_cast<long long>(L.n_kv_heads));
  std::printf("use_rope        %s\n", L.use_rope ? "true" : "false");
  std::printf("gamma_max       %s\n", io::shortest(L.gamma_max).c_str());
  std::printf("ln_eps          %s\n", io::shortest(L.ln_eps).c_str());
  std::printf("attention       %s", m.info.attention.c_str());
  if (m.info.attention == "sliding_window") std::printf(" (window %lld)", static_cast<long long>(m.info.window));
  std::printf("\n");
  index_t params = 0, layers = 1;
  if (dec) {
    std::printf("vocab_size      %lld\n", static_cast<long long>(m.info.config.vocab_size));
    std::printf("n_layers        %lld\n", static_cast<long long>(m.info.config.n_layers));
    std::printf("tie_embeddings  %s\n", m.info.config.tie_embeddings ? "true" : "false");
    params = parameter_count(m.info.config);
    layers = m.info.config.n_layers;
  } else {
    params = parameter_count(L);
  }
  const index_t per_token = layers * L.cache_values_per_token();
  std::printf("parameters      %lld\n", static_cast<long long>(params));
  std::printf("cache per token %lld values = %lld bytes (f32), %lld bytes (f64), per batch row\n",
              static_cast<long long>(per_token), static_cast<long long>(per_token * 4),
              static_cast<long long>(per_token * 8));
  // Loading validates every tensor against the configuration.
  if (dec) io::read_decoder_weights<float>(m.file, m.info.config);
  else io::read_layer_weights<float>(m.file, L);
  std::printf("tensors         %zu, all match the configuration\n", m.file.entries().size());
  return 0;
}

int cmd_run(const options& o) {
  const model_source m = open_model(o);
  const io::safetensors_file in = io::safetensors_file::load(o.need("input"));
  const std::string out_path = o.need("output");
  const index_t chunk = parse_mode(o);
  const std::string precision = o.get("precision").value_or("f32");
  set_threads(o);
  const bool dec = m.info.arch == io::model_arch::decoder;
  const auto& cfg = m.info.config;
  io::safetensors_writer out;

  dispatch(precision, weight_storage(o, m.file, precision), o.get("backend").value_or("cpu"), m.info.attention,
           [&]<class P, class B, class A>() {
    using T = compute_t<P>;
    const A variant = io::detail::variant_from(m.info, m.file.source(), A{});
    const io::dtype out_type = std::is_same_v<T, float> ? io::dtype::F32 : io::dtype::F64;
    if (dec) {
      const decoder<P, B, A> model(cfg, io::read_decoder_weights<weight_t<P>>(m.file, cfg), variant);
      const io::tensor_entry* e = in.find("tokens");
      if (!e) throw format_error(in.source() + ": no tensor 'tokens'; a decoder needs tokens, I32 or I64 (B, T)");
      if (e->shape.size() != 2 || e->shape[0] < 1 || e->shape[1] < 1)
        throw shape_error(in.source() + ": 'tokens' must have shape (B, T) with B, T >= 1; got " +
                          shape_string(e->shape));
      const index_t Bn = e->shape[0], Tn = e->shape[1], V = cfg.vocab_size;
      const std::vector<std::int64_t> tok = in.read_as<std::int64_t>("tokens");  // (B, T)
      tensor<T> logits({Bn, Tn, V});
      auto cache = model.init_cache(Bn, Tn);
      std::vector<std::int64_t> part;
      tensor<T> step_out;
      for_each_chunk(Tn, chunk, [&](index_t t0, index_t n) {
        part.resize(static_cast<std::size_t>(Bn * n));
        for (index_t b = 0; b < Bn; ++b)
          for (index_t i = 0; i < n; ++i) part[static_cast<std::size_t>(b * n + i)] = tok[static_cast<std::size_t>(b * Tn + t0 + i)];
        tensor<std::int64_t> chunk_tokens({Bn, n}, std::span<const std::int64_t>(part));
        step_out = to_host(model.forward(chunk_tokens, cache));
        for (index_t b = 0; b < Bn; ++b)
          std::memcpy(logits.data() + (b * Tn + t0) * V, step_out.data() + b * n * V, sizeof(T) * n * V);
      });
      out.add_converted("logits", out_type, logits.shape(), std::vector<double>(logits.data(), logits.data() + logits.size()));
    } else {
      const layer<P, B, A> model(cfg.layer, io::read_layer_weights<weight_t<P>>(m.file, cfg.layer), variant);
      const io::tensor_entry* e = in.find("x");
      if (!e) throw format_error(in.source() + ": no tensor 'x'; a layer needs x (B, T, D)");
      detail::check_activation_shape(e->shape, cfg.layer.d_model, (in.source() + ": 'x'").c_str());
      const index_t Bn = e->shape[0], Tn = e->shape[1], D = cfg.layer.d_model;
      const std::vector<T> x = in.read_as<T>("x");  // (B, T, D)
      tensor<T> y({Bn, Tn, D});
      auto cache = model.init_cache(Bn, Tn);
      for_each_chunk(Tn, chunk, [&](index_t t0, index_t n) {
        tensor<T> xc({Bn, n, D});
        for (index_t b = 0; b < Bn; ++b)
          std::memcpy(xc.data() + b * n * D, x.data() + (b * Tn + t0) * D, sizeof(T) * n * D);
        const tensor<T> yc = to_host(model.forward(to_space<space_of<B>>(xc), cache));
        for (index_t b = 0; b < Bn; ++b)
          std::memcpy(y.data() + (b * Tn + t0) * D, yc.data() + b * n * D, sizeof(T) * n * D);
      });
      out.add_converted("y", out_type, y.shape(), std::vector<double>(y.data(), y.data() + y.size()));
    }
  });
  out.write(out_path);
  return 0;
}


/// The sampling settings of the generate command (each checked by the sampler's steps).
sampling_params sampling_options(const options& o) {
  sampling_params p;
  p.seed = static_cast<std::uint64_t>(o.integer("seed", 1, 0, std::numeric_limits<long long>::max()));
  p.temperature = o.real("temperature", 0.0);
  if (p.temperature < 0) throw usage_error("--temperature must be >= 0 (0: greedy)");
  p.top_k = o.integer("top-k", 0, 0, 1 << 24);
  p.top_p = o.real("top-p", 1.0);
  if (!(p.top_p > 0 && p.top_p <= 1)) throw usage_error("--top-p must be in (0, 1]");
  p.min_p = o.real("min-p", 0.0);
  if (!(p.min_p >= 0 && p.min_p <= 1)) throw usage_error("--min-p must be in [0, 1]");
  p.repeat_penalty = o.real("repeat-penalty", 1.0);
  if (!(p.repeat_penalty > 0)) throw usage_error("--repeat-penalty must be > 0 (1: none)");
  p.penalty_last_n = o.integer("repeat-last-n", 64, 0, 1 << 20);
  return p;
}

std::string read_text_file(const std::string& path);

/// The prompts of --prompts FILE: one per line (a trailing '\r' dropped), blank lines skipped.
std::vector<std::string> read_prompts(const std::string& path) {
  std::vector<std::string> out;
  std::istringstream in(read_text_file(path));
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") != std::string::npos) out.push_back(line);
  }
  if (out.empty()) throw value_error(path + ": no prompts (one per line; blank lines are skipped)");
  return out;
}

int cmd_generate(const options& o) {
  const model_source m = open_model(o, true);
  if (m.info.arch != io::model_arch::decoder)
    throw format_error(m.file.source() + ": generate needs a decoder, the file holds a layer");
  const tokenizer tok = tokenizer::from_metadata(m.file.metadata(), m.info.config.vocab_size, m.file.source());
  const std::optional<std::string> state_in = o.get("load-state"), state_out = o.get("save-state");
  const std::optional<std::string> prompts_file = o.get("prompts");
  if (prompts_file && (o.get("prompt") || state_in || state_out))
    throw usage_error("--prompts generates a batch: it does not combine with --prompt, --load-state or --save-state");
  if (state_in && o.get("seed"))
    throw usage_error("--seed with --load-state: the state carries its generator (leave --seed out)");
  std::vector<std::string> prompts;
  if (prompts_file) {
    prompts = read_prompts(*prompts_file);
  } else {
    prompts.push_back(state_in ? o.get("prompt").value_or("") : o.need("prompt"));
    if (prompts[0].empty() && !state_in) throw usage_error("--prompt must not be empty");
  }
  o.get_either("max-tokens", "tokens");
  const index_t n_new = o.integer(o.get("max-tokens") ? "max-tokens" : "tokens", 200, 0, 1 << 20);
  const sampling_params params = sampling_options(o);
  stop_criteria stop;
  stop.max_tokens = n_new;
  for (const std::string& s : o.all("stop")) {
    if (s.empty()) throw usage_error("--stop must not be empty");
    stop.stop_strings.push_back(s);
  }
  std::vector<std::vector<std::int64_t>> tokens;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    try {
      tokens.push_back(tok.encode(prompts[i]));
    } catch (const value_error& e) {
      if (!prompts_file) throw;
      throw value_error(*prompts_file + ": prompt " + std::to_string(i + 1) + ": " + e.what());
    }
  }
  std::optional<io::safetensors_file> state;
  index_t state_tokens = 0;
  if (state_in) {
    state = io::safetensors_file::load(*state_in);
    const io::tensor_entry& e = state->at("tokens");
    state_tokens = e.shape.size() == 1 ? e.shape[0] : 0;
  }
  set_threads(o);
  const std::string precision = o.get("precision").value_or("f32");
  dispatch(precision, weight_storage(o, m.file, precision), o.get("backend").value_or("cpu"), m.info.attention,
           [&]<class Policy, class B, class A>() {
    using model_type = decoder<Policy, B, A>;
    using clock = std::chrono::steady_clock;
    const A variant = io::detail::variant_from(m.info, m.file.source(), A{});
    const model_type model(m.info.config, io::read_decoder_weights<weight_t<Policy>>(m.file, m.info.config), variant);
    if (prompts_file) {
      // A batch (generate_batch): row i samples with seed S + i, so it generates what `--prompt` with `--seed S+i`
      // does alone. When all are done the rows are printed in the order they finished, as "[i] prompt completion"
      // (i counts from 1).
      std::vector<session<model_type>> rows;
      rows.reserve(prompts.size());
      index_t prompt_tokens = 0;
      const auto t0 = clock::now();
      for (std::size_t i = 0; i < prompts.size(); ++i) {
        sampling_params pi = params;
        pi.seed = params.seed + static_cast<std::uint64_t>(i);
        const index_t P = static_cast<index_t>(tokens[i].size());
        rows.emplace_back(model, P + std::max<index_t>(n_new, 1), sampler::from(pi));
        rows.back().feed(tokens[i]);
        prompt_tokens += P;
      }
      const double pre = std::chrono::duration<double>(clock::now() - t0).count();
      std::vector<session<model_type>*> ptrs;
      for (auto& r : rows) ptrs.push_back(&r);
      std::vector<std::string> text(rows.size());
      std::size_t generated = 0;
      const auto t1 = clock::now();
      const auto results = generate_batch<model_type>(ptrs, stop, &tok, [&](index_t row, const token_event& e) {
        text[static_cast<std::size_t>(row)] += e.text;
        return true;
      });
      const double gen = std::chrono::duration<double>(clock::now() - t1).count();
      // Rows in the order they finished (every step samples one token per running row: fewest tokens first),
      // then by index.
      std::vector<std::size_t> order(rows.size());
      for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
      std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        return results[a].tokens.size() < results[b].tokens.size();
      });
      for (std::size_t i : order) {
        std::printf("[%zu] %s%s\n", i + 1, prompts[i].c_str(), text[i].c_str());
        generated += results[i].tokens.size();
      }
      std::fflush(stdout);
      std::fprintf(stderr,
                   "[batch of %zu prompts: %lld prompt tokens in %.2f ms (%.0f tokens/s); %zu tokens generated in "
                   "%.2f ms (%.0f tokens/s over all rows)]\n",
                   rows.size(), static_cast<long long>(prompt_tokens), pre * 1e3,
                   pre > 0 ? static_cast<double>(prompt_tokens) / pre : 0.0, generated, gen * 1e3,
                   gen > 0 ? static_cast<double>(generated) / gen : 0.0);
      return;
    }
    const std::string& prompt = prompts[0];
    const index_t P = static_cast<index_t>(tokens[0].size());
    const index_t capacity = state_tokens + P + std::max<index_t>(n_new, 1);
    session<model_type> s = state ? session<model_type>::load(*state, model, capacity, sampler::from(params))
                                  : session<model_type>(model, capacity, sampler::from(params));
    const auto t0 = clock::now();
    s.feed(tokens[0]);
    const double pre = std::chrono::duration<double>(clock::now() - t0).count();
    std::fputs(prompt.c_str(), stdout);
    std::fflush(stdout);
    const generation_result r = s.generate(stop, &tok, [](const token_event& e) {
      std::fwrite(e.text.data(), 1, e.text.size(), stdout);
      std::fflush(stdout);
      return true;
    });
    std::fputc('\n', stdout);
    if (state_out) s.save(*state_out);
    std::fprintf(stderr, "[prompt %lld tokens in %.2f ms (%.0f tokens/s); %zu tokens generated at %.0f tokens/s; stop: %s]\n",
                 static_cast<long long>(P), pre * 1e3, pre > 0 ? static_cast<double>(P) / pre : 0.0, r.tokens.size(),
                 r.tokens_per_second(), to_string(r.reason));
  });
  return 0;
}

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw io_error(path + ": cannot open the text file");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw io_error(path + ": cannot read the text file");
  return ss.str();
}

int cmd_eval(const options& o) {
  const model_source m = open_model(o, true);
  if (m.info.arch != io::model_arch::decoder)
    throw format_error(m.file.source() + ": eval needs a decoder, the file holds a layer");
  const tokenizer tok = tokenizer::from_metadata(m.file.metadata(), m.info.config.vocab_size, m.file.source());
  const std::string path = o.need("text");
  std::vector<std::int64_t> tokens;
  try {
    tokens = tok.encode(read_text_file(path));
  } catch (const value_error& e) {
    throw value_error(path + ": " + e.what());
  }
  const index_t n = static_cast<index_t>(tokens.size());
  const index_t window = o.integer("window", std::min<index_t>(std::max<index_t>(n, 2), 512), 2, prefill_block);
  const index_t stride = o.integer("stride", window, 1, prefill_block);
  set_threads(o);
  evaluation r;
  const std::string precision = o.get("precision").value_or("f32");
  dispatch(precision, weight_storage(o, m.file, precision), o.get("backend").value_or("cpu"), m.info.attention,
           [&]<class P, class B, class A>() {
    const A variant = io::detail::variant_from(m.info, m.file.source(), A{});
    const decoder<P, B, A> model(m.info.config, io::read_decoder_weights<weight_t<P>>(m.file, m.info.config), variant);
    try {
      r = evaluate(model, tokens, window, stride, &tok);
    } catch (const value_error& e) {
      throw value_error(path + ": " + e.what());
    }
  });
  if (o.flag("json")) {
    std::printf("{\"nats_per_token\": %.17g, \"bits_per_byte\": %.17g, \"tokens\": %lld, \"bytes\": %lld, "
                "\"windows\": %lld, \"window\": %lld, \"stride\": %lld, \"tokens_per_s\": %.6g, \"seconds\": %.6g}\n",
                r.nats_per_token(), r.bits_per_byte(), static_cast<long long>(r.tokens), static_cast<long long>(r.bytes),
                static_cast<long long>(r.windows), static_cast<long long>(window), static_cast<long long>(stride),
                r.tokens_per_second(), r.seconds);
  } else {
    std::printf("nats per token  %.6f\nbits per byte   %.6f\ntokens scored   %lld in %lld windows of %lld, stride %lld\n"
                "throughput      %.0f tokens/s\n",
                r.nats_per_token(), r.bits_per_byte(), static_cast<long long>(r.tokens), static_cast<long long>(r.windows),
                static_cast<long long>(window), static_cast<long long>(stride), r.tokens_per_second());
  }
  return 0;
}

/// Writes `content` to a temporary name, then renames it into place: `path` is either the whole file or untouched.
void write_file_whole(const std::string& path, const std::string& content) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    if (!f) throw io_error(path + ": cannot open for writing");
    f << content;
    f.close();
    if (!f) {
      std::remove(tmp.c_str());
      throw io_error(path + ": write failed");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw io_error(path + ": cannot rename the finished file into place");
  }
}

/// A C++ identifier from a parameter name ("layers.0.W_in.weight" -> "layers_0_W_in_weight").
std::string identifier(const std::string& name) {
  std::string id = name;
  for (char& c : id)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return id;
}

/// An exact float literal: hexadecimal, so the array holds the file's bits.
std::string hex_float(float v, const std::string& name) {
  if (!std::isfinite(v)) throw value_error("parameter '" + name + "' holds a non-finite value; cannot embed it");
  char buf[48];
  const bool neg = std::signbit(v);
  auto r = std::to_chars(buf, buf + sizeof buf, std::fabs(v), std::chars_format::hex);
  return std::string(neg ? "-0x" : "0x") + std::string(buf, r.ptr) + "f";
}

/// v, unless it is not finite (a weight that cannot be embedded).
float finite_weight(float v, const std::string& name) {
  if (!std::isfinite(v)) throw value_error("parameter '" + name + "' holds a non-finite value; cannot embed it");
  return v;
}

std::string c_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += static_cast<char>(c);
    else if (c >= 32 && c < 127) out += static_cast<char>(c);
    else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\%03o", c);
      out += buf;
    }
  }
  return out + "\"";
}

/// sessa quantize: the model with its weights stored as --to (every parameter through the parameter table, so a
/// file that does not match its configuration is refused before anything is written).
int cmd_quantize(const options& o) {
  const model_source m = open_model(o, true);
  const std::string to = o.need("to");
  io::dtype type = io::dtype::F32;
  const bool q8 = to == "q8_0" || to == "q8";
  if (to == "bf16") type = io::dtype::BF16;
  else if (to == "f16") type = io::dtype::F16;
  else if (to == "f32" || q8) type = io::dtype::F32;  // q8_0: the matrices quantized, the vectors F32
  else if (to == "f64") type = io::dtype::F64;
  else throw usage_error("unknown --to '" + to + "' (choose bf16, f16, q8_0, f32 or f64)");
  const std::string out_path = o.need("out");
  const bool dec = m.info.arch == io::model_arch::decoder;
  io::safetensors_writer out;
  // The configuration (also for a bare state dict read with --config), then everything else the file says
  // (tokenizer, attention variant, provenance), then what this command did.
  for (auto& [k, v] : dec ? io::config_metadata(m.info.config) : io::config_metadata(m.info.config.layer))
    out.set_metadata(k, v);
  if (m.info.attention == "sliding_window") {
    out.set_metadata("sessa.attention", "sliding_window");
    out.set_metadata("sessa.window", std::to_string(m.info.window));
  }
  for (const auto& [k, v] : m.file.metadata()) out.set_metadata(k, v);
  out.set_metadata("sessa.weights", q8 ? "q8_0" : to);
  std::size_t bytes_in = 0, bytes_out = 0;
  for (const auto& e : m.file.entries()) bytes_in += e.nbytes;
  // Every weight read as double (a q8_0 file's values dequantized exactly), then rounded once to --to (the writer
  // refuses what overflows it, by name), or quantized per row (value_error naming the row for what q8_0 cannot hold).
  if (dec) {
    const auto w = io::read_decoder_weights<double>(m.file, m.info.config);
    bytes_out = q8 ? io::add_parameters(out, m.info.config, convert_weights<q8_0>(m.info.config, w), type)
                   : io::add_parameters(out, m.info.config, w, type);
  } else {
    const auto w = io::read_layer_weights<double>(m.file, m.info.config.layer);
    bytes_out = q8 ? io::add_parameters(out, m.info.config.layer, convert_weights<q8_0>(m.info.config.layer, w), type)
                   : io::add_parameters(out, m.info.config.layer, w, type);
  }
  out.write(out_path);
  std::printf("%s: %zu tensors as %s, %zu bytes of weights (was %zu)\n", out_path.c_str(), out.size(),
              q8 ? "q8_0" : to.c_str(), bytes_out, bytes_in);
  return 0;
}

int cmd_embed(const options& o) {
  const model_source m = open_model(o);
  if (m.info.arch != io::model_arch::decoder)
    throw format_error(m.file.source() + ": embed needs a decoder, the file holds a layer");
  const std::string name = o.need("name");
  if (name.empty() || !(std::isalpha(static_cast<unsigned char>(name[0])) || name[0] == '_') ||
      identifier(name) != name)
    throw usage_error("--name must be a C++ identifier, got '" + name + "'");
  const std::string out_path = o.need("out");
  std::string dtype = o.get("dtype").value_or("f32");
  if (dtype == "q8") dtype = "q8_0";
  if (dtype != "f32" && dtype != "bf16" && dtype != "f16" && dtype != "q8_0")
    throw usage_error("unknown --dtype '" + dtype + "' (choose f32, bf16, f16 or q8_0)");
  const bool q8 = dtype == "q8_0";
  const bool narrow = dtype == "bf16" || dtype == "f16";
  const std::string wtype = dtype == "bf16" ? "sessa::bfloat16" : dtype == "f16" ? "sessa::float16" : q8 ? "sessa::q8_0" : "float";
  const decoder_config& cfg = m.info.config;
  const layer_config& L = cfg.layer;

  std::ostringstream h;
  h << "// " << name << " model: generated by `sessa embed` from " << m.file.source() << ". Do not edit.\n"
    << "//\n// " << io::describe(m.info) << ", " << parameter_count(cfg) << " parameters ("
    << (dtype == "bf16" ? "bfloat16" : dtype == "f16" ? "float16" : q8 ? "q8_0 matrices, float32 vectors" : "float32")
    << ").\n"
    << (narrow ? "// The weights are the file's float32 values rounded to nearest even (bit patterns) and live in\n"
                 "// read-only data; arithmetic and cache are float32;\n"
        : q8   ? "// The matrices are int8 blocks of 32 with a float16 scale each (the file's q8_0 blocks, or its values\n"
                 "// quantized per row), the vectors exact float32, all in read-only data; arithmetic and cache are float32;\n"
               : "// The weights are exact (hexadecimal float literals of the file's values) and live in read-only "
                 "data;\n")
    << "// " << name << "::model runs them with no file I/O and no heap (sessa/model/embedded.hpp).\n"
    << "#pragma once\n\n#include <cstdint>\n\n#include <sessa/model/embedded.hpp>\n\nnamespace " << name << " {\n\n";
  std::string variant = "sessa::attention::causal{}";
  if (m.info.attention == "sliding_window") variant = "sessa::attention::sliding_window{" + std::to_string(m.info.window) + "}";
  h << "using layer = sessa::embedded::layer_spec<" << L.d_model << ", " << L.n_heads << ", " << L.n_kv_heads << ", "
    << (L.use_rope ? "true" : "false") << ", " << io::shortest(L.gamma_max) << ", " << io::shortest(L.ln_eps) << ", "
    << variant << ">;\n";
  h << "using spec = sessa::embedded::decoder_spec<" << cfg.vocab_size << ", " << (cfg.tie_embeddings ? "true" : "false");
  for (index_t i = 0; i < cfg.n_layers; ++i) h << ", layer";
  h << ">;\n";
  h << "/// The numeric policy: the weights' storage type, float32 arithmetic and cache.\n";
  h << "using policy = " << (narrow || q8 ? "sessa::precision<float, " + wtype + ", float>" : std::string("float")) << ";\n";
  h << "using weight_type = " << wtype << ";\n";
  h << "using model = sessa::embedded::static_decoder<policy, spec>;\n\n";
  if (narrow)
    h << "/// A weight from its bit pattern.\nconstexpr weight_type w(std::uint16_t bits) { return weight_type::from_bits(bits); }\n\n";
  if (q8)
    h << "/// A block's float16 scale from its bit pattern.\nconstexpr sessa::float16 d(std::uint16_t bits) { return sessa::float16::from_bits(bits); }\n\n";
  if (auto v = m.file.metadata().find("sessa.vocab"); v != m.file.metadata().end())
    h << "/// Token i is the character vocab[i].\ninline constexpr char vocab[] = " << c_string(v->second) << ";\n\n";

  // Every parameter as an aligned constexpr array, named after its parameter, through the parameter table.
  std::map<const void*, std::string> ids;
  // A float parameter as weight_type (bit patterns when narrow) or as float (as_weight false: q8_0 vectors, RoPE).
  auto emit = [&](const std::string& pname, const float* data, index_t count, const std::string& shape, bool as_weight) {
    const std::string id = identifier(pname);
    ids[data] = id;
    const bool bits = as_weight && narrow;
    h << "alignas(64) inline constexpr " << (as_weight ? wtype : std::string("float")) << " " << id << "[" << count
      << "] = {  // " << pname << " " << shape << "\n";
    const int per_line = bits ? 10 : 6;
    for (index_t i = 0; i < count; ++i) {
      h << (i % per_line == 0 ? "    " : " ");
      if (bits) {
        char b[16];
        const unsigned v = dtype == "bf16" ? bfloat16(finite_weight(data[i], pname)).bits
                                           : float16(finite_weight(data[i], pname)).bits;
        if (dtype == "f16" && (v & 0x7C00u) == 0x7C00u)
          throw value_error(m.file.source() + ": parameter '" + pname + "' holds " + io::shortest(data[i]) +
                            ", beyond float16's range (65504): use --dtype bf16 or f32");
        std::snprintf(b, sizeof b, "w(0x%04x)", v);
        h << b;
      } else {
        h << hex_float(data[i], pname);
      }
      h << (i + 1 < count ? "," : "") << (i % per_line == per_line - 1 || i + 1 == count ? "\n" : "");
    }
    h << "};\n";
  };
  // A q8_0 matrix: one line per block, {d(scale bits), {32 int8 values}}.
  auto emit_blocks = [&](const std::string& pname, const q8_0* data, index_t count, const std::string& shape) {
    const std::string id = identifier(pname);
    ids[data] = id;
    h << "alignas(64) inline constexpr sessa::q8_0 " << id << "[" << count << "] = {  // " << pname << " " << shape
      << ", " << count << " blocks\n";
    for (index_t i = 0; i < count; ++i) {
      char b[32];
      std::snprintf(b, sizeof b, "    {d(0x%04x), {", static_cast<unsigned>(data[i].d.bits));
      h << b;
      for (index_t k = 0; k < q8_0::block; ++k) h << (k ? "," : "") << static_cast<int>(data[i].q[k]);
      h << "}}" << (i + 1 < count ? ",\n" : "\n");
    }
    h << "};\n";
  };
  auto write_all = [&](const auto& w) {
    for_each_parameter(cfg, w, [&](const std::string& pname, const shape_t& shape, const auto& b) {
      using E = typename std::remove_cvref_t<decltype(b)>::value_type;
      if constexpr (is_block_quantized<E>) emit_blocks(pname, b.data(), b.size(), shape_string(shape));
      else emit(pname, b.data(), b.size(), shape_string(shape), !q8);
    });
    if (L.use_rope)
      for (index_t i = 0; i < cfg.n_layers; ++i) {
        const auto& f = w.layers[static_cast<std::size_t>(i)].mixer.rope_inv_freq;
        emit("layers." + std::to_string(i) + ".mixer.rope_inv_freq", f.data(), static_cast<index_t>(f.size()),
             shape_string({static_cast<index_t>(f.size())}), false);
      }
    auto ref = [&](const void* p) { return p ? ids.at(p) : std::string("nullptr"); };

    h << "\n/// Pointers to the arrays above, in the layout static_decoder reads.\n"
      << "inline constexpr sessa::embedded::decoder_params<weight_type, spec> params{\n"
      << "    .embedding = " << ref(w.embedding.data()) << ",\n    .layers = {{\n";
    for (index_t i = 0; i < cfg.n_layers; ++i) {
      const auto& lw = w.layers[static_cast<std::size_t>(i)];
      const auto p = params(lw, lw.mixer);
      const auto& mp = p.mixer;
      h << "        {.ln_w = " << ref(p.ln_w) << ", .ln_b = " << ref(p.ln_b) << ", .in_w = " << ref(p.in_w)
        << ", .in_b = " << ref(p.in_b) << ",\n         .mixer = {.q_w = " << ref(mp.q_w) << ", .q_b = " << ref(mp.q_b)
        << ", .k_w = " << ref(mp.k_w) << ", .k_b = " << ref(mp.k_b) << ", .v_w = " << ref(mp.v_w)
        << ", .v_b = " << ref(mp.v_b) << ",\n                   .out_w = " << ref(mp.out_w) << ", .fb_w = " << ref(mp.fb_w)
        << ", .fb_b = " << ref(mp.fb_b) << ", .gamma_bias = " << ref(mp.gamma_bias)
        << ",\n                   .gamma_ctx = " << ref(mp.gamma_ctx) << ", .rope_inv_freq = " << ref(mp.rope_inv_freq)
        << "},\n         .out_w = " << ref(p.out_w) << ", .out_b = " << ref(p.out_b) << "}"
        << (i + 1 < cfg.n_layers ? "," : "") << "\n";
    }
    h << "    }},\n    .norm_w = " << ref(w.norm_w.data()) << ",\n    .norm_b = " << ref(w.norm_b.data())
      << ",\n    .head = " << ref(w.head_matrix().data()) << "};\n\n}  // namespace " << name << "\n";
  };
  if (q8) write_all(io::read_decoder_weights<q8_0>(m.file, cfg));  // a q8_0 file's own blocks, or quantized here
  else write_all(io::read_decoder_weights<float>(m.file, cfg));

  write_file_whole(out_path, h.str());
  return 0;
}

// ---------------------------------------------------------------- profile

/// What a profile measured: the influence (k, n) of each source on every position, and its description.
struct influence_run {
  std::string what;                // the weights and input
  std::string title;               // a short form of `what`, the plot's title
  std::string measure;             // the quantity
  std::vector<index_t> sources;
  tensor<double> influence;        // (k, n)
  index_t tokens = 0;
};

/// The last component of a path (the built-in model's description stays whole).
std::string base_name(const std::string& path) {
  if (path.rfind("the built-in model", 0) == 0) return "the shipped model";
  const std::size_t k = path.find_last_of('/');
  return k == std::string::npos ? path : path.substr(k + 1);
}

/// The positions of --sources (comma-separated), or `dflt`.
std::vector<index_t> parse_sources(const options& o, std::vector<index_t> dflt) {
  const auto v = o.get("sources");
  if (!v) return dflt;
  std::vector<index_t> out;
  std::size_t i = 0;
  while (i <= v->size()) {
    const std::size_t j = std::min(v->find(',', i), v->size());
    index_t x = 0;
    const auto [p, ec] = std::from_chars(v->data() + i, v->data() + j, x);
    if (ec != std::errc{} || p != v->data() + j || x < 0)
      throw usage_error("--sources must be a comma-separated list of token positions >= 0, got '" + *v + "'");
    out.push_back(x);
    i = j + 1;
  }
  return out;
}

/// Columns (n, k) of a feedback_system as rows (k, n), in double.
template <class T>
tensor<double> by_source(const tensor<T>& cols) {
  const index_t n = cols.shape()[0], k = cols.shape()[1];
  tensor<double> r({k, n});
  for (index_t c = 0; c < k; ++c)
    for (index_t t = 0; t < n; ++t) r[c * n + t] = static_cast<double>(cols[t * k + c]);
  return r;
}

/// `count` sources spread evenly over the first half of n tokens.
std::vector<index_t> spread_sources(index_t n, index_t count) {
  std::vector<index_t> s;
  const index_t half = std::max<index_t>(1, n / 2);
  count = std::min(count, half);
  for (index_t i = 0; i < count; ++i) s.push_back(i * half / count);
  return s;
}

analysis::finite_difference_options fd_options(const options& o, index_t D) {
  analysis::finite_difference_options f;
  f.probes = o.integer("probes", D <= 16 ? 0 : 8, 0, 100000);
  f.epsilon = o.real("epsilon", 1e-5);
  if (!(f.epsilon > 0)) throw usage_error("--epsilon must be > 0");
  f.seed = static_cast<std::uint64_t>(o.integer("seed", 1, 0, std::numeric_limits<long long>::max()));
  return f;
}

std::string fd_description(const analysis::finite_difference_options& f, index_t D) {
  return "end-to-end ||d y_t / d x_j||_F, central differences in float64 (epsilon " + std::to_string(f.epsilon) +
         ", " + (f.probes == 0 ? "all " + std::to_string(D) + " directions: exact norm" :
                                 std::to_string(f.probes) + " random sign probes") + ")";
}

constexpr const char* feedback_measure = "feedback solve |d s_t / d f_j| = |[(I - Gamma A)^-1]_{t,j}|, routing fixed";

influence_run profile_construction(const options& o, const std::string& construction, const std::string& measure) {
  influence_run r;
  sessa::tools::with_backend(o.get("backend").value_or("cpu"), [&]<class B>() {
    if (construction == "uniform") {
      if (measure != "feedback")
        throw usage_error("the uniform construction is a feedback system, not a layer: --measure end-to-end needs a "
                          "layer (--construction retrieval, or --model)");
      const double gamma = o.real("gamma", 0.8);
      if (!(gamma > 0 && gamma < 1)) throw usage_error("--gamma must lie in (0, 1), got " + o.get("gamma").value_or(""));
      const index_t n = o.integer("tokens", 20000, 2, 1000000);
      r.sources = parse_sources(o, {0});
      const auto sys = analysis::uniform_routing<double, B>(n, gamma);
      r.influence = by_source(sys.columns(r.sources));
      char b[160];
      std::snprintf(b, sizeof b, "uniform routing (alpha_{t,s} = 1/t), gamma = %g, %lld tokens", gamma,
                    static_cast<long long>(n));
      r.what = b;
      r.measure = feedback_measure;
      r.tokens = n;
    } else {
      const index_t n = o.integer("tokens", 10011, 3, 1000000);
      const index_t marker = o.integer("marker", 10, 0, n - 2);
      const double gain = o.real("gain", 0.9);
      const analysis::retrieval_case rc = analysis::retrieval_construction(n, marker, gain);
      const layer<double, B> l(rc.config, rc.weights);
      r.sources = parse_sources(o, {marker});
      if (measure == "feedback") {
        r.influence = by_source(analysis::feedback_system<double, B>(l, rc.x).columns(r.sources));
        r.measure = feedback_measure;
      } else {
        const auto f = fd_options(o, rc.config.d_model);
        r.influence = analysis::end_to_end_influence(l, rc.x, r.sources, f);
        r.measure = fd_description(f, rc.config.d_model);
      }
      char b[200];
      std::snprintf(b, sizeof b, "retrieval construction: marker at %lld, gain %g, score gap %.1f, %lld tokens",
                    static_cast<long long>(marker), gain, rc.score_gap, static_cast<long long>(n));
      r.what = b;
      r.tokens = n;
    }
  });
  return r;
}

influence_run profile_model(const options& o, const std::string& measure) {
  const model_source m = open_model(o, true);
  influence_run r;
  const bool dec = m.info.arch == io::model_arch::decoder;
  if (dec && o.get("input")) throw usage_error("--input is for a layer; a decoder takes --text FILE");
  if (!dec && o.get("text")) throw usage_error("--text is for a decoder; a layer takes --input I.safetensors");
  if (dec && !o.get("text")) throw usage_error("a decoder is profiled on a text: give --text FILE");
  if (!dec && !o.get("input")) throw usage_error("a layer is profiled on an input: give --input I.safetensors (x: (B, T, D))");
  const index_t count = o.integer("source-count", 8, 1, 1000);
  dispatch<false>("f64", "same", o.get("backend").value_or("cpu"), m.info.attention, [&]<class T, class B, class A>() {
    const A variant = io::detail::variant_from(m.info, m.file.source(), A{});
    const auto& cfg = m.info.config;
    if (dec) {
      const decoder<T, B, A> model(cfg, io::read_decoder_weights<T>(m.file, cfg), variant);
      const tokenizer tok = tokenizer::from_metadata(m.file.metadata(), cfg.vocab_size, m.file.source());
      const std::string path = o.need("text");
      std::vector<std::int64_t> tokens;
      try {
        tokens = tok.encode(read_text_file(path));
      } catch (const value_error& e) {
        throw value_error(path + ": " + e.what());
      }
      const index_t cap = o.integer("tokens", 4096, 3, 1000000);
      if (static_cast<index_t>(tokens.size()) > cap) tokens.resize(static_cast<std::size_t>(cap));
      const index_t n = static_cast<index_t>(tokens.size());
      if (n < 3) throw value_error(path + ": the text has " + std::to_string(n) + " tokens; a profile needs at least 3");
      r.tokens = n;
      r.sources = parse_sources(o, spread_sources(n, count));
      const index_t L = cfg.n_layers;
      if (measure == "feedback") {
        const index_t l = o.integer("layer", 0, 0, L - 1);
        const auto h = analysis::hidden_states(model, tokens, l);
        r.influence = by_source(analysis::feedback_system<T, B>(model.layers()[static_cast<std::size_t>(l)], h)
                                    .columns(r.sources));
        r.measure = std::string(feedback_measure) + ", layer " + std::to_string(l);
      } else {
        if (o.get("layer")) throw usage_error("--layer picks the feedback solve of one layer; --measure end-to-end spans them all");
        const auto f = fd_options(o, cfg.layer.d_model);
        r.influence = analysis::end_to_end_influence(model, tokens, r.sources, f);
        r.measure = fd_description(f, cfg.layer.d_model) + " of the final hidden states against the embeddings";
      }
      r.what = m.file.source() + " on " + path + " (" + std::to_string(n) + " tokens)";
      r.title = base_name(m.file.source()) + " on " + base_name(path) + " (" + std::to_string(n) + " tokens), " +
                (measure == "feedback" ? "feedback solve of layer " + std::to_string(o.integer("layer", 0, 0, L - 1))
                                       : std::string("end to end"));
    } else {
      if (o.get("layer")) throw usage_error("--layer is for a decoder; the file holds one layer");
      const layer<T, B, A> model(cfg.layer, io::read_layer_weights<T>(m.file, cfg.layer), variant);
      const io::safetensors_file in = io::safetensors_file::load(o.need("input"));
      const io::tensor_entry* e = in.find("x");
      if (!e) throw format_error(in.source() + ": no tensor 'x'; a layer needs x (B, T, D)");
      detail::check_activation_shape(e->shape, cfg.layer.d_model, (in.source() + ": 'x'").c_str());
      const index_t Bn = e->shape[0], Tn = e->shape[1], D = cfg.layer.d_model;
      const index_t row = o.integer("row", 0, 0, Bn - 1);
      if (Tn < 3) throw value_error(in.source() + ": 'x' has " + std::to_string(Tn) + " tokens; a profile needs at least 3");
      const std::vector<T> all = in.read_as<T>("x");
      tensor<T> x({Tn, D}, std::span<const T>(all.data() + row * Tn * D, static_cast<std::size_t>(Tn * D)));
      r.tokens = Tn;
      r.sources = parse_sources(o, spread_sources(Tn, count));
      if (measure == "feedback") {
        r.influence = by_source(analysis::feedback_system<T, B>(model, x).columns(r.sources));
        r.measure = feedback_measure;
      } else {
        const auto f = fd_options(o, D);
        r.influence = analysis::end_to_end_influence(model, x, r.sources, f);
        r.measure = fd_description(f, D);
      }
      r.what = m.file.source() + " on " + in.source() + " row " + std::to_string(row) + " (" + std::to_string(Tn) + " tokens)";
      r.title = base_name(m.file.source()) + " on " + base_name(in.source()) + ", " +
                (measure == "feedback" ? "feedback solve" : "end to end");
    }
  });
  return r;
}

/// A finite number for JSON, or null.
std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char b[32];
  std::snprintf(b, sizeof b, "%.9g", v);
  return b;
}

std::string json_string(const std::string& s) {
  std::string o = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += c;
    else if (static_cast<unsigned char>(c) < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else o += c;
  }
  return o + "\"";
}

int cmd_profile(const options& o) {
  const std::string construction = o.get("construction").value_or("");
  const std::string measure = o.word("measure", "feedback", {"feedback", "end-to-end"});
  if (!construction.empty() && construction != "uniform" && construction != "retrieval")
    throw usage_error("--construction must be uniform or retrieval, got '" + construction + "'");
  if (!construction.empty() && (o.get("model") || o.get("input") || o.get("text")))
    throw usage_error("--construction sets its own weights and input: it does not combine with --model, --input or --text");
  if (construction.empty() && !o.get("model") && !o.get("text"))
    throw usage_error("profile needs --construction uniform|retrieval, or --model M with --input I (a layer) or "
                      "--text FILE (a decoder; without --model, the shipped model)");
  if (construction != "uniform" && o.get("gamma")) throw usage_error("--gamma is the uniform construction's gain");
  if (construction != "retrieval" && (o.get("marker") || o.get("gain")))
    throw usage_error("--marker and --gain belong to the retrieval construction");
  if (measure != "end-to-end" && (o.get("probes") || o.get("epsilon")))
    throw usage_error("--probes and --epsilon belong to --measure end-to-end");
  set_threads(o);

  const influence_run r = construction.empty() ? profile_model(o, measure) : profile_construction(o, construction, measure);
  const analysis::lag_profile p = analysis::profile_by_lag(r.influence, r.sources);
  std::pair<index_t, index_t> range = analysis::default_fit_range(p);
  if (const auto f = o.get("fit")) {
    const std::size_t c = f->find(':');
    index_t lo = 0, hi = 0;
    bool ok = c != std::string::npos;
    if (ok) {
      const auto a = std::from_chars(f->data(), f->data() + c, lo);
      const auto b = std::from_chars(f->data() + c + 1, f->data() + f->size(), hi);
      ok = a.ec == std::errc{} && a.ptr == f->data() + c && b.ec == std::errc{} && b.ptr == f->data() + f->size() &&
           lo >= 1 && hi > lo;
    }
    if (!ok) throw usage_error("--fit must be LO:HI with 1 <= LO < HI (lags), got '" + *f + "'");
    range = {lo, hi};
  }
  if (p.lags.size() < 3)
    throw value_error("the sources leave only " + std::to_string(p.full_lag) + " lags that every one of them reaches; "
                      "a profile needs at least 3 (use earlier sources or more tokens)");
  if (range.second > p.lags.back())
    throw value_error("the fit range [" + std::to_string(range.first) + ", " + std::to_string(range.second) +
                      "] reaches past the largest lag every source reaches (" + std::to_string(p.lags.back()) +
                      "); use more tokens or earlier sources");
  const analysis::power_fit fit = analysis::fit_power_law(p, range.first, range.second);
  const analysis::reference_curves ref = analysis::comparison_curves(p);

  if (const auto svg = o.get("svg")) {
    analysis::loglog_plot plot;
    plot.title = o.get("title").value_or(r.title.empty() ? r.what : r.title);
    plot.x_label = "lag l = t - j (tokens)";
    plot.y_label = r.measure.rfind("feedback", 0) == 0 ? "influence |d s_t / d f_j|" : "influence ||d y_t / d x_j||";
    std::vector<double> xs;
    for (const index_t l : p.lags) xs.push_back(static_cast<double>(l));
    if (r.sources.size() > 1)
      plot.bands.push_back({"10-90% over " + std::to_string(r.sources.size()) + " sources", xs, p.low, p.high, "#1f77b4", 0.18});
    plot.lines.push_back({r.sources.size() > 1 ? "median over sources" : "measured", xs, p.median, "#1f77b4", false, 2.5});
    std::vector<double> fx, fy;
    for (const index_t l : p.lags)
      if (l >= fit.lag_min && l <= fit.lag_max) fx.push_back(static_cast<double>(l)), fy.push_back(fit.at(static_cast<double>(l)));
    char b[160];
    std::snprintf(b, sizeof b, "power law, fitted exponent %.3f", fit.exponent);
    plot.lines.push_back({b, fx, fy, "#000000", true, 1.5});
    plot.lines.push_back({"diffuse attention read, 1/l", xs, ref.diffuse, "#ff7f0e", false, 1.5});
    if (ref.half_life > 0) {
      std::snprintf(b, sizeof b, "exponential, same half-life (%.1f)", ref.half_life);
      plot.lines.push_back({b, xs, ref.exponential, "#d62728", true, 1.5});
    }
    std::snprintf(b, sizeof b, "fit over lags [%lld, %lld], r^2 = %.4f", static_cast<long long>(fit.lag_min),
                  static_cast<long long>(fit.lag_max), fit.r2);
    plot.notes.push_back(b);
    write_file_whole(*svg, analysis::to_svg(plot));
  }

  if (o.flag("json")) {
    std::string s = "{\"what\": " + json_string(r.what) + ", \"measure\": " + json_string(r.measure) +
                    ", \"tokens\": " + std::to_string(r.tokens) + ", \"sources\": [";
    for (std::size_t i = 0; i < r.sources.size(); ++i) s += (i ? ", " : "") + std::to_string(r.sources[i]);
    s += "], \"exponent\": " + json_number(fit.exponent) + ", \"fit\": {\"lag_min\": " + std::to_string(fit.lag_min) +
         ", \"lag_max\": " + std::to_string(fit.lag_max) + ", \"points\": " + std::to_string(fit.points) +
         ", \"r2\": " + json_number(fit.r2) + "}, \"half_life\": " + json_number(ref.half_life) + ", \"curve\": [";
    for (std::size_t i = 0; i < p.lags.size(); ++i)
      s += std::string(i ? ", " : "") + "{\"lag\": " + std::to_string(p.lags[i]) + ", \"median\": " + json_number(p.median[i]) +
           ", \"p10\": " + json_number(p.low[i]) + ", \"p90\": " + json_number(p.high[i]) +
           ", \"sources\": " + std::to_string(p.sources[i]) + ", \"diffuse\": " + json_number(ref.diffuse[i]) +
           ", \"exponential\": " + json_number(ref.exponential[i]) + "}";
    s += "]}\n";
    std::fputs(s.c_str(), stdout);
  } else {
    std::printf("# sessa profile: %s\n# measure: %s\n# sources:", r.what.c_str(), r.measure.c_str());
    for (const index_t j : r.sources) std::printf(" %lld", static_cast<long long>(j));
    std::printf("\n# exponent %.6f over lags [%lld, %lld] (%lld points, r^2 %.6f); half-life %.3f lags\n", fit.exponent,
                static_cast<long long>(fit.lag_min), static_cast<long long>(fit.lag_max),
                static_cast<long long>(fit.points), fit.r2, ref.half_life);
    std::printf("lag,median,p10,p90,sources,diffuse,exponential\n");
    for (std::size_t i = 0; i < p.lags.size(); ++i)
      std::printf("%lld,%.9g,%.9g,%.9g,%lld,%.9g,%.9g\n", static_cast<long long>(p.lags[i]), p.median[i], p.low[i],
                  p.high[i], static_cast<long long>(p.sources[i]), ref.diffuse[i], ref.exponential[i]);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2) throw usage_error("no command given");
    const std::string cmd = argv[1];
    if (cmd == "--help" || cmd == "-h" || cmd == "help") {
      std::fputs(usage_text, stdout);
      return 0;
    }
    if (cmd == "--version") {
      std::printf("sessa %s\n", SESSA_VERSION_STRING);
      return 0;
    }
    if (cmd == "info") return cmd_info(options(argc, argv, 2, {"model", "config"}));
    if (cmd == "run")
      return cmd_run(options(argc, argv, 2,
                             {"model", "input", "output", "mode", "precision", "weights", "backend", "threads",
                              "config"}));
    if (cmd == "generate")
      return cmd_generate(options(argc, argv, 2,
                                  {"model", "prompt", "prompts", "tokens", "max-tokens", "temperature", "seed", "top-k",
                                   "top-p", "min-p", "repeat-penalty", "repeat-last-n", "precision", "weights", "backend",
                                   "threads", "config", "save-state", "load-state"},
                                  {"stop"}));
    if (cmd == "eval")
      return cmd_eval(options(argc, argv, 2,
                              {"model", "text", "window", "stride", "precision", "weights", "backend", "threads",
                               "config"},
                              {}, {"json"}));
    if (cmd == "profile")
      return cmd_profile(options(argc, argv, 2,
                                 {"construction", "gamma", "tokens", "marker", "gain", "model", "input", "text", "row",
                                  "layer", "measure", "sources", "source-count", "probes", "epsilon", "seed", "fit",
                                  "svg", "title", "backend", "threads", "config"},
                                 {}, {"json"}));
    if (cmd == "embed") return cmd_embed(options(argc, argv, 2, {"model", "name", "out", "config", "dtype"}));
    if (cmd == "quantize") return cmd_quantize(options(argc, argv, 2, {"model", "to", "out", "config"}));
    throw usage_error("unknown command '" + cmd + "'");
  } catch (const usage_error& e) {
    std::fprintf(stderr, "sessa: usage error: %s (see sessa --help)\n", e.what());
    return 2;
  } catch (const sessa::error& e) {
    std::fprintf(stderr, "sessa: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "sessa: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sessa: error: %s\n", e.what());
    return 1;
  }
}
