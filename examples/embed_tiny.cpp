// A Sessa decoder compiled into the executable: its shapes are template arguments and its weights are
// constexpr arrays in read-only data (tiny_model.hpp, written at build time by `sessa embed` through
// the sessa_embed_model() CMake helper; as float32, as bf16 with DTYPE bf16: example_embed_tiny_bf16, or as q8_0
// int8 blocks with DTYPE q8_0: example_embed_tiny_q8). No file
// is read and no heap is touched at run time: the caches and scratch live in one static object.
//
//   example_embed_tiny ["PROMPT" [N_TOKENS]]
#include "tiny_model.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {
// Caches for up to 512 tokens of one sequence, and the scratch of a 64-token chunk, all inline.
sessa::embedded::static_state<tiny::policy, tiny::spec, /*Capacity=*/512> state;
constexpr tiny::model model(tiny::params);
}  // namespace

int main(int argc, char** argv) {
  const char* prompt = argc > 1 ? argv[1] : "And God said";
  const long n_new = argc > 2 ? std::atol(argv[2]) : 200;
  const long P = static_cast<long>(std::strlen(prompt));
  if (P == 0 || P + n_new > state.capacity) {
    std::fprintf(stderr, "prompt + tokens must be between 1 and %ld characters\n", static_cast<long>(state.capacity));
    return 2;
  }
  std::int64_t tokens[512];
  for (long i = 0; i < P; ++i) {
    const char* at = std::strchr(tiny::vocab, prompt[i]);
    if (!at || prompt[i] == '\0') {
      std::fprintf(stderr, "character '%c' is not in the vocabulary\n", prompt[i]);
      return 2;
    }
    tokens[i] = at - tiny::vocab;
  }
  float logits_store[tiny::spec::vocab_size];
  const sessa::matrix<float> logits(logits_store, 1, tiny::spec::vocab_size);  // (1, V)

  const auto t0 = std::chrono::steady_clock::now();
  model.forward(std::span<const std::int64_t>(tokens, static_cast<std::size_t>(P)), state, logits,
                sessa::logits_for::last);
  char text[600];
  std::memcpy(text, prompt, static_cast<std::size_t>(P));
  long len = P;
  for (long i = 0; i < n_new; ++i) {
    std::int64_t next = 0;  // greedy
    for (std::int64_t v = 1; v < tiny::spec::vocab_size; ++v)
      if (logits_store[v] > logits_store[next]) next = v;
    text[len++] = tiny::vocab[next];
    if (i + 1 < n_new) model.decode_step(std::span<const std::int64_t>(&next, 1), state, logits);
  }
  text[len] = '\0';
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("text: %s\n", text);
  const sessa::decoder_config config{tiny::layer::config, tiny::spec::vocab_size, tiny::spec::n_layers,
                                     tiny::spec::tie_embeddings};
  std::printf("model: %lld parameters in read-only data (%llu bytes as %s); state: %lld bytes inline; %ld tokens in "
              "%.2f ms\n",
              static_cast<long long>(sessa::parameter_count(config)),
              static_cast<unsigned long long>(sessa::parameter_bytes<tiny::weight_type>(config)),
              std::string(sessa::storage_name<tiny::weight_type>()).c_str(),
              static_cast<long long>(decltype(state)::storage_bytes), P + n_new, s * 1e3);
  return 0;
}
