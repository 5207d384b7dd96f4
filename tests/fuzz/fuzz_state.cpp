// Fuzz target: a saved generation state (`session::save`'s file, `sessa generate --load-state F`), restored by
// session::load onto a fixed decoder (the one fuzz_run_input uses: d_model 16, 2 heads, 1 key/value head,
// 2 layers, vocabulary 37) with room for 16 tokens, then a few tokens generated from it.
//
// Properties checked: a state either loads or is rejected with a sessa::error; a loaded session holds what the
// file said (tokens within the vocabulary and the capacity, the cache one token shorter than the sequence when a
// token is pending), and generating from it either works, stops on a full cache, or fails with a sessa::error
// (logits that overflow from extreme cache values are a value_error, never a crash or a hang).
// Not sessa/sessa.hpp: see fuzz_run_input.cpp (clang 14 and model/embedded.hpp).
#include <sessa/backend/cpu/reference.hpp>
#include <sessa/backend/cpu/parallel.hpp>
#include <sessa/backend/cpu/simd.hpp>
#include <sessa/generate/session.hpp>
#include <sessa/io/safetensors.hpp>
#include <sessa/model/decoder.hpp>
#include <sessa/model/init.hpp>

#include <optional>

#include "fuzz_support.hpp"

namespace {

using model_type = sessa::decoder<float>;

const model_type& get_model() {
  static const sessa::decoder_config cfg{{16, 2, 1, true, 0.999, 1e-5}, 37, 2, false};
  static const model_type m{cfg, sessa::random_decoder_weights<float>(cfg, 2)};
  return m;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace io = sessa::io;
  io::safetensors_file f;
  try {
    f = io::safetensors_file::parse(sessa::fuzz::bytes_of(data, size), "fuzz.state.safetensors");
  } catch (const sessa::format_error&) {
    return 0;
  }
  const model_type& m = get_model();
  sessa::sampling_params p;
  p.temperature = 0.9;
  p.top_k = 8;
  p.repeat_penalty = 1.2;
  std::optional<sessa::session<model_type>> s;
  try {
    s.emplace(sessa::session<model_type>::load(f, m, 16, sessa::sampler::from(p)));
  } catch (const sessa::error&) {
    return 0;
  }
  const auto& tokens = s->tokens();
  SESSA_FUZZ_CHECK(!tokens.empty() && s->position() <= 16);
  for (auto t : tokens) SESSA_FUZZ_CHECK(t >= 0 && t < 37);
  SESSA_FUZZ_CHECK(s->cache().length() + (s->pending() ? 1 : 0) == s->position());
  SESSA_FUZZ_CHECK(s->logits().size() == 37);
  try {
    const auto r = s->generate({.max_tokens = 3});
    SESSA_FUZZ_CHECK(r.tokens.size() <= 3);
    SESSA_FUZZ_CHECK(r.reason == sessa::stop_reason::max_tokens || r.reason == sessa::stop_reason::cache_full);
  } catch (const sessa::error&) {
  }
  return 0;
}
