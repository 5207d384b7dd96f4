// cache_drift: how far a bfloat16 / float16 cache moves a decoder over a long context, against the float32 cache of
// the same model, in one run on the cpu backend (float32 arithmetic and weights).
//
// The feedback values s are recurrent: each s_t mixes the stored s_j of its past, so a rounding of the stored values
// could compound with the context. Prefill with a cache reads and writes exactly what decode steps do (each row
// reads the s of earlier rows as the cache stores them), so one prefill over the whole text gives, at every
// position, the state a decode run would have there. Per range of positions this prints one JSON line per cache
// type with: the largest logit difference against float32, the mean of it, the largest relative difference of the
// last layer's stored s rows (against the largest |s| of the range), and the bits per byte of the range.
//
//   cache_drift [MODEL.safetensors] [TEXT] [--tokens N]
//
// The defaults are the shipped model and its held-out text (tests/data/kjv_heldout.txt, 31,769 characters in one
// context: about 250 times the model's 128-token training windows).
#include <sessa/io/model_file.hpp>
#include <sessa/sessa.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using namespace sessa;

/// What one run over the text leaves: the logits (n, V) and the last layer's stored s rows (n, D), widened.
struct run_result {
  std::vector<float> logits;
  std::vector<double> s;
};

template <class C, class A>
run_result run(const io::safetensors_file& f, const std::vector<std::int64_t>& ids) {
  using P = std::conditional_t<std::is_same_v<C, float>, float, precision<float, float, C>>;
  const decoder<P, backend::cpu, A> model = io::load_decoder<P, backend::cpu, A>(f);
  const index_t n = static_cast<index_t>(ids.size()), D = model.config().layer.d_model;
  auto cache = model.init_cache(1, n);
  const tensor<std::int64_t> tokens({1, n}, std::span<const std::int64_t>(ids));
  const tensor<float> logits = model.forward(tokens, cache);
  run_result r;
  r.logits.assign(logits.data(), logits.data() + logits.size());
  const auto& last = cache.layers.back();
  r.s.resize(static_cast<std::size_t>(n * D));
  for (index_t t = 0; t < n; ++t)
    for (index_t k = 0; k < D; ++k) r.s[static_cast<std::size_t>(t * D + k)] = widen<double>(last.s(0)(t, k));
  return r;
}

/// -log2 p(next) of row t's logits.
double bits(const float* row, index_t V, std::int64_t next) {
  double m = -INFINITY;
  for (index_t v = 0; v < V; ++v) m = std::max(m, static_cast<double>(row[v]));
  double z = 0;
  for (index_t v = 0; v < V; ++v) z += std::exp(static_cast<double>(row[v]) - m);
  return (m + std::log(z) - static_cast<double>(row[next])) / std::log(2.0);
}

template <class A>
int drift(const io::safetensors_file& f, const std::vector<std::int64_t>& ids, const tokenizer& tok) {
  const index_t n = static_cast<index_t>(ids.size());
  const run_result base = run<float, A>(f, ids);
  const index_t V = static_cast<index_t>(base.logits.size()) / n, D = static_cast<index_t>(base.s.size()) / n;
  std::vector<index_t> edges = {1, 128, 512, 2048, 8192, 32768, n};
  edges.erase(std::remove_if(edges.begin(), edges.end(), [&](index_t e) { return e > n; }), edges.end());
  if (edges.back() != n) edges.push_back(n);
  auto report = [&](const char* name, const run_result& r) {
    for (std::size_t i = 0; i + 1 < edges.size(); ++i) {
      const index_t a = edges[i], b = edges[i + 1];
      if (a >= b) continue;
      double max_dl = 0, sum_dl = 0, max_ds = 0, max_s = 0, nbits = 0, base_bits = 0;
      index_t bytes = 0;
      for (index_t t = a; t < b; ++t) {
        // logits of row t - 1 predict token t
        const float* lr = r.logits.data() + (t - 1) * V;
        const float* lb = base.logits.data() + (t - 1) * V;
        for (index_t v = 0; v < V; ++v) {
          const double d = std::abs(static_cast<double>(lr[v]) - static_cast<double>(lb[v]));
          max_dl = std::max(max_dl, d);
          sum_dl += d;
        }
        for (index_t k = 0; k < D; ++k) {
          const std::size_t at = static_cast<std::size_t>(t * D + k);
          max_ds = std::max(max_ds, std::abs(r.s[at] - base.s[at]));
          max_s = std::max(max_s, std::abs(base.s[at]));
        }
        nbits += bits(lr, V, ids[static_cast<std::size_t>(t)]);
        base_bits += bits(lb, V, ids[static_cast<std::size_t>(t)]);
        bytes += static_cast<index_t>(tok.piece(ids[static_cast<std::size_t>(t)]).size());
      }
      std::printf("{\"work\":\"cache_drift\",\"cache\":\"%s\",\"positions\":[%lld,%lld],\"max_logit_diff\":%.3g,"
                  "\"mean_logit_diff\":%.3g,\"max_s_rel_diff\":%.3g,\"bits_per_byte\":%.6f,\"f32_bits_per_byte\":%.6f}\n",
                  name, static_cast<long long>(a), static_cast<long long>(b), max_dl,
                  sum_dl / static_cast<double>((b - a) * V), max_s > 0 ? max_ds / max_s : 0.0,
                  nbits / static_cast<double>(bytes), base_bits / static_cast<double>(bytes));
    }
  };
  report("f32", base);
  report("bf16", run<bfloat16, A>(f, ids));
  report("f16", run<float16, A>(f, ids));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path = "examples/models/tiny_decoder.safetensors", text_path = "tests/data/kjv_heldout.txt";
  long long max_tokens = 0;
  int positional = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--tokens" && i + 1 < argc) {
      max_tokens = std::atoll(argv[++i]);
      if (max_tokens < 2) {
        std::fprintf(stderr, "cache_drift: --tokens must be at least 2\n");
        return 2;
      }
    } else if (a.rfind("--", 0) == 0 || positional >= 2) {
      std::fprintf(stderr, "usage: cache_drift [MODEL.safetensors] [TEXT] [--tokens N]\n");
      return 2;
    } else {
      (positional++ == 0 ? model_path : text_path) = a;
    }
  }
  try {
    const io::safetensors_file f = io::safetensors_file::load(model_path);
    const io::model_info info = io::read_model_info(f);
    if (info.arch != io::model_arch::decoder) throw sessa::value_error(model_path + ": cache_drift needs a decoder");
    const tokenizer tok = tokenizer::from_metadata(f.metadata(), info.config.vocab_size, f.source());
    std::ifstream in(text_path, std::ios::binary);
    if (!in) throw sessa::io_error("cache_drift: cannot read " + text_path);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::int64_t> ids = tok.encode(text);
    if (max_tokens > 0 && static_cast<long long>(ids.size()) > max_tokens) ids.resize(static_cast<std::size_t>(max_tokens));
    if (ids.size() < 2) throw sessa::value_error("cache_drift: the text has fewer than 2 tokens");
    std::printf("{\"work\":\"cache_drift_setup\",\"model\":\"%s\",\"text\":\"%s\",\"tokens\":%zu,\"threads\":%d}\n",
                model_path.c_str(), text_path.c_str(), ids.size(), num_threads());
    if (info.attention == "sliding_window") return drift<attention::sliding_window>(f, ids, tok);
    return drift<attention::causal>(f, ids, tok);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cache_drift: %s\n", e.what());
    return 1;
  }
}
