// A downstream program with a decoder compiled in: tiny_model.hpp is written at build time by
// sessa_embed_model() (from find_package(sessa), through the installed `sessa` CLI). It checks that the
// embedded model's logits equal those of the same file loaded at run time, bit for bit.
// Exit status: 0 when identical, 1 otherwise, 2 on a usage error.
//
//   consumer_embed tiny_decoder.safetensors
#include "tiny_model.hpp"

#include <sessa/io/model_file.hpp>

#include <algorithm>
#include <cstdio>

namespace {
sessa::embedded::static_state<float, tiny::spec, /*Capacity=*/64> state;
constexpr tiny::model model(tiny::params);
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DECODER.safetensors\n", argv[0]);
    return 2;
  }
  try {
    // The file's attention variant (the shipped model's forward branch reads a sliding window) is the header's.
    using variant = std::remove_const_t<tiny::layer::variant_type>;
    const auto runtime = sessa::io::load_decoder<float, sessa::backend::reference, variant>(argv[1]);
    auto cache = runtime.init_cache(1, 64);
    constexpr sessa::index_t V = tiny::spec::vocab_size;
    float logits[V];
    bool same = true;
    for (std::int64_t t = 0; t < 20; ++t) {
      const std::int64_t tok = (5 * t + 1) % V;
      model.decode_step(std::span<const std::int64_t>(&tok, 1), state, sessa::matrix<float>(logits, 1, V));
      const sessa::tensor<float> want = runtime.decode_step(std::span<const std::int64_t>(&tok, 1), cache);
      same = same && std::equal(logits, logits + V, want.data());
    }
    std::printf("embedded model %s the runtime-loaded model\n", same ? "matches" : "DIFFERS FROM");
    return same ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "consumer_embed: %s\n", e.what());
    return 1;
  }
}
