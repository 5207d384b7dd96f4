// Chat-style streaming generation that remembers the conversation across runs.
//
//   example_chat MODEL.safetensors STATE.safetensors [TURN...]
//
// Each TURN is fed to the model as it is, followed by a space, and answered by up to 80 sampled characters,
// streamed as they come and stopped at the first period. The whole conversation (cache, tokens, sampler) is
// saved to STATE after every turn; when STATE exists at start, the conversation resumes from it, so a second run
// continues exactly where the first stopped. Every character of a turn must be in the model's vocabulary.
#include <sessa/sessa.hpp>
#include <sessa/io/model_file.hpp>

#include <cstdio>
#include <filesystem>
#include <string>

namespace {

// The conversation with a decoder whose forward branch uses attention variant Variant (the file says which).
template <class Variant>
void converse(const sessa::io::safetensors_file& file, const std::filesystem::path& state, int n_turns, char** turns) {
  using model_type = sessa::decoder<float, sessa::backend::default_cpu, Variant>;
  const model_type model = sessa::io::load_decoder<float, sessa::backend::default_cpu, Variant>(file);
  const auto tok = sessa::tokenizer::from_metadata(file.metadata(), model.config().vocab_size, file.source());

  sessa::sampling_params params;
  params.seed = 2026;
  params.temperature = 0.7;
  params.top_k = 20;
  params.repeat_penalty = 1.1;
  const sessa::index_t capacity = 4096;
  sessa::session<model_type> chat =
      std::filesystem::exists(state) ? sessa::session<model_type>::load(state, model, capacity, sessa::sampler::from(params))
                                     : sessa::session<model_type>(model, capacity, sessa::sampler::from(params));
  std::printf("[%s: %lld tokens of conversation so far]\n", std::filesystem::exists(state) ? "resumed" : "new",
              static_cast<long long>(chat.position()));

  sessa::stop_criteria stop;
  stop.max_tokens = 80;
  stop.stop_strings = {"."};
  for (int i = 0; i < n_turns; ++i) {
    const std::string turn = std::string(turns[i]) + " ";
    if (chat.position() + static_cast<sessa::index_t>(turn.size()) + stop.max_tokens + 1 > chat.capacity()) {
      std::printf("[the conversation is full]\n");
      break;
    }
    std::printf("> %s\n", turn.c_str());
    chat.feed(tok.encode(turn));
    const auto r = chat.generate(stop, &tok, [](const sessa::token_event& e) {
      std::fwrite(e.text.data(), 1, e.text.size(), stdout);
      std::fflush(stdout);
      return true;
    });
    std::printf("%s\n[%zu tokens, %s, %.0f tokens/s]\n", r.reason == sessa::stop_reason::stop_string ? "." : "",
                r.tokens.size(), sessa::to_string(r.reason), r.tokens_per_second());
    chat.save(state);  // after every turn: a crash loses at most the turn in progress
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL.safetensors STATE.safetensors [TURN...]\n", argv[0]);
    return 2;
  }
  try {
    const auto file = sessa::io::safetensors_file::load(argv[1]);
    if (sessa::io::read_model_info(file).attention == "sliding_window")  // the shipped model: a window of 64
      converse<sessa::attention::sliding_window>(file, argv[2], argc - 3, argv + 3);
    else
      converse<sessa::attention::causal>(file, argv[2], argc - 3, argv + 3);
    return 0;
  } catch (const sessa::error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
