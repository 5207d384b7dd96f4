// Generate text with a small character-level Sessa decoder: prefill the prompt, then decode greedily
// one token at a time through the cache, reading only the last row of logits.
//
//   example_generate_text examples/models/tiny_decoder.safetensors "And God said" 200
//
// A decoder's type names its forward-branch attention variant; the file declares which one it was trained with
// (the shipped model: a sliding window of 64 tokens), so the program reads that first and picks the type.
#include <sessa/sessa.hpp>
#include <sessa/io/model_file.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

template <class Variant>
std::string generate(const sessa::io::safetensors_file& file, const std::string& prompt, long n_new) {
  const auto model = sessa::io::load_decoder<float, sessa::backend::default_cpu, Variant>(file);
  const std::string& vocab = file.metadata().at("sessa.vocab");  // token i is the character vocab[i]
  std::vector<std::int64_t> tokens;
  for (char c : prompt) {
    const auto id = vocab.find(c);
    if (id == std::string::npos) throw sessa::value_error(std::string("character '") + c + "' is not in the vocabulary");
    tokens.push_back(static_cast<std::int64_t>(id));
  }
  const auto P = static_cast<sessa::index_t>(tokens.size());
  auto cache = model.init_cache(/*batch=*/1, /*capacity=*/P + n_new);
  sessa::tensor<float> logits = model.forward(sessa::tensor<std::int64_t>({1, P}, std::span<const std::int64_t>(tokens)),
                                              cache, sessa::logits_for::last);  // (1, V)
  std::string text = prompt;
  for (long i = 0; i < n_new; ++i) {
    std::int64_t next = 0;  // greedy
    for (sessa::index_t v = 1; v < logits.dim(1); ++v)
      if (logits[v] > logits[next]) next = v;
    text += vocab[static_cast<std::size_t>(next)];
    logits = model.decode_step(std::span<const std::int64_t>(&next, 1), cache);  // (1, V)
  }
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL.safetensors PROMPT [N_TOKENS]\n", argv[0]);
    return 2;
  }
  try {
    const auto file = sessa::io::safetensors_file::load(argv[1]);
    const std::string prompt = argv[2];
    const long n_new = argc > 3 ? std::atol(argv[3]) : 200;
    const std::string text = sessa::io::read_model_info(file).attention == "sliding_window"
                                 ? generate<sessa::attention::sliding_window>(file, prompt, n_new)
                                 : generate<sessa::attention::causal>(file, prompt, n_new);
    std::printf("%s\n", text.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
