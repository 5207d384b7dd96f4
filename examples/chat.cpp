// Chat-style streaming generation that remembers the conversation across runs.
//
//   example_chat MODEL.safetensors STATE.safetensors [TURN...]
//
// Each TURN is fed to the model as it is (upper-cased: the shipped model knows capitals only) and answered by
// up to 80 sampled characters, streamed as they come and stopped at the first period. The whole conversation
// (cache, tokens, sampler) is saved to STATE after every turn; when STATE exists at start, the conversation
// resumes from it, so a second run continues exactly where the first stopped.
#include <sessa/sessa.hpp>
#include <sessa/io/model_file.hpp>

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <string>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL.safetensors STATE.safetensors [TURN...]\n", argv[0]);
    return 2;
  }
  try {
    using model_type = sessa::decoder<float>;
    const auto file = sessa::io::safetensors_file::load(argv[1]);
    const model_type model = sessa::io::load_decoder<float>(file);
    const auto tok = sessa::tokenizer::from_metadata(file.metadata(), model.config().vocab_size, file.source());
    const std::filesystem::path state = argv[2];

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
    for (int i = 3; i < argc; ++i) {
      std::string turn = argv[i];
      for (char& c : turn) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      turn += " ";
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
    return 0;
  } catch (const sessa::error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
