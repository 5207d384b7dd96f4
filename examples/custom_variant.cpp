// A user-defined attention variant, composed at compile time into a decoder next to the built-in one.
//
// The variant is chunked local attention: the query at position t reads only the keys of its own chunk,
// [t - t % chunk, t]. The program
//   1. checks the variant against sessa::attention_variant where it is written;
//   2. composes a two-layer decoder whose shapes and variants are template arguments (a causal GQA layer,
//      then a chunked MQA layer) and runs it on a static_state: prefill, then decode steps;
//   3. checks it against the same composition built from runtime-shaped layers, and decode against prefill;
//   4. shows what the Sessa feedback adds to local attention: a token's influence on the chunked mixer's
//      output reaches past its chunk, carried only by the recurrence over past outputs.
//
//   example_custom_variant        prints the table; exit status 1 when a check fails
#include <sessa/sessa.hpp>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace demo {

/// Chunked local attention. A structural type (public members, no user-declared constructors), so a value of
/// it can be a template argument of sessa::embedded::layer_spec.
struct chunked {
  static constexpr std::string_view name = "chunked";
  sessa::index_t chunk = 0;  // positions per chunk
  constexpr sessa::index_t first_key(sessa::index_t t) const noexcept { return t - t % chunk; }
  void check() const {
    if (chunk < 1)
      throw sessa::config_error("invalid attention variant: chunked.chunk must be >= 1, got " + std::to_string(chunk));
  }
  friend constexpr bool operator==(const chunked&, const chunked&) = default;
};

}  // namespace demo

static_assert(sessa::attention_variant<demo::chunked>);

namespace {

constexpr sessa::index_t D = 64, V = 50, T = 48, Chunk = 8;

// The composition: shapes, RoPE, gain bound, LayerNorm eps and variant of each layer are template arguments;
// every SPEC.md check on them is a static_assert.
using global_layer = sessa::embedded::layer_spec<D, 4, 2>;                                      // causal, GQA
using local_layer = sessa::embedded::layer_spec<D, 4, 1, true, 0.99, 1e-5, demo::chunked{Chunk}>;  // chunked, MQA
using spec = sessa::embedded::decoder_spec<V, /*Tied=*/true, global_layer, local_layer>;

// Caches for T tokens of one sequence and the scratch of a 16-token chunk, stored inline: no heap at run time.
sessa::embedded::static_state<float, spec, /*Capacity=*/T, /*Batch=*/1, /*MaxChunk=*/16> state;

double max_abs(const float* p, sessa::index_t n) {
  double m = 0;
  for (sessa::index_t i = 0; i < n; ++i) m = std::fmax(m, std::fabs(static_cast<double>(p[i])));
  return m;
}

double max_abs_diff(const float* a, const float* b, sessa::index_t n) {
  double m = 0;
  for (sessa::index_t i = 0; i < n; ++i) m = std::fmax(m, std::fabs(static_cast<double>(a[i]) - b[i]));
  return m;
}

}  // namespace

int main() try {
  using namespace sessa;
  bool ok = true;

  // Weights: random here (a trained model would come from `sessa embed` or a loaded file).
  const auto w_global = random_layer_weights<float>(global_layer::config, 1);
  const auto w_local = random_layer_weights<float>(local_layer::config, 2);
  const auto outer = random_decoder_weights<float>(decoder_config{global_layer::config, V, 1, true}, 3);
  embedded::decoder_params<float, spec> p;
  p.embedding = outer.embedding.data();
  p.layers = {params(w_global, w_global.mixer), params(w_local, w_local.mixer)};
  p.norm_w = outer.norm_w.data();
  p.norm_b = outer.norm_b.data();
  p.head = outer.embedding.data();  // tied head
  const embedded::static_decoder<float, spec> model(p);

  // Prefill of T - 8 tokens (run in chunks of 16 by the state), then 8 decode steps.
  std::vector<std::int64_t> tokens(T);
  for (index_t t = 0; t < T; ++t) tokens[static_cast<std::size_t>(t)] = (7 * t + 3) % V;
  const index_t P = T - 8;
  std::vector<float> logits(static_cast<std::size_t>(T * V));
  model.forward(std::span<const std::int64_t>(tokens.data(), static_cast<std::size_t>(P)), state,
                matrix<float>(logits.data(), P, V));
  for (index_t t = P; t < T; ++t)
    model.decode_step(std::span<const std::int64_t>(&tokens[static_cast<std::size_t>(t)], 1), state,
                      matrix<float>(logits.data() + t * V, 1, V));

  // The same composition from runtime-shaped layers, as one prefill over all T tokens.
  const layer<float, backend::reference> global(global_layer::config, w_global);
  const layer<float, backend::reference, demo::chunked> local(local_layer::config, w_local, demo::chunked{Chunk});
  tensor<float> h({1, T, D});
  embed_tokens(outer.embedding.data(), std::span<const std::int64_t>(tokens), h.as_matrix());
  h = local.forward(global.forward(h));
  std::vector<float> want(static_cast<std::size_t>(T * V)), scratch(static_cast<std::size_t>(T * D));
  backend::context<backend::reference> ctx;
  decoder_head<backend::reference, float>(ctx, outer.norm_w.data(), outer.norm_b.data(), 1e-5f, outer.embedding.data(),
                                          cmatrix<float>(h.as_matrix()), 1, logits_for::all, scratch.data(),
                                          matrix<float>(want.data(), T, V));
  const double rel = max_abs_diff(logits.data(), want.data(), T * V) / max_abs(want.data(), T * V);
  std::printf("static decoder (causal GQA layer + chunked{%ld} MQA layer), %zu bytes of inline state\n",
              static_cast<long>(Chunk), sizeof(state));
  std::printf("  prefill %ld + decode %ld tokens vs the runtime-shaped composition: max|diff|/max|ref| = %.2e\n",
              static_cast<long>(P), static_cast<long>(T - P), rel);
  ok = ok && rel < 1e-5;

  // What the feedback adds to local attention. Perturb the mixer input at position 0 and measure how much the
  // mixer output s moves in each chunk. A query in chunk c >= 1 never reads position 0 through attention, so
  // everything past the first chunk arrives through the feedback s_t = f_t + γ_t·Σ_{j<t} α_tj·s_j.
  const mixer<double, backend::reference, demo::chunked> mix(
      local_layer::config, random_layer_weights<double>(local_layer::config, 2).mixer, demo::chunked{Chunk});
  const auto run_mixer = [&](const tensor<double>& a) {
    layer_cache<double, backend::reference> cache(local_layer::config, 1, T);
    workspace<double, backend::reference> ws;
    tensor<double> out({1, T, D});
    mix.extend(a.as_matrix(), 1, cache, ws, out.as_matrix());
    return out;
  };
  tensor<double> a({1, T, D});
  random_stream rng(5);
  for (double& v : a.span()) v = rng.normal();
  const tensor<double> s0 = run_mixer(a);
  for (index_t k = 0; k < D; ++k) a[k] += 1.0;
  const tensor<double> s1 = run_mixer(a);
  const auto change = [&](index_t c) {
    double m = 0;
    for (index_t i = c * Chunk * D; i < (c + 1) * Chunk * D; ++i) m = std::fmax(m, std::fabs(s1[i] - s0[i]));
    return m;
  };
  std::printf("\n  a change at position 0, seen in the chunked mixer's output (float64):\n");
  std::printf("  %-6s %-12s %-12s %s\n", "chunk", "positions", "max|Δs|", "relative to chunk 0");
  double last = 0;
  for (index_t c = 0; c < T / Chunk; ++c) {
    last = change(c);
    std::printf("  %-6ld %3ld .. %-5ld %.3e    %.3e%s\n", static_cast<long>(c), static_cast<long>(c * Chunk),
                static_cast<long>(c * Chunk + Chunk - 1), last, last / change(0),
                c == 0 ? "  attention and feedback" : "  feedback only");
  }
  std::printf("  (local attention alone would print exactly 0 past chunk 0)\n");
  ok = ok && last > 0;

  std::printf("\n%s\n", ok ? "all checks passed" : "CHECK FAILED");
  return ok ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "example_custom_variant: %s\n", e.what());
  return 1;
}
