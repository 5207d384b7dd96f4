// Decode speed of the compile-time-shaped tiny decoder (weights in read-only data, state inline, no
// heap) against the runtime-shaped decoder loaded from the same file, on the same backend, in one run.
// Prints one JSON object per line.
//
//   embedded_bench [MODEL.safetensors] [STEPS]
#include <sessa/io/model_file.hpp>
#include <sessa/sessa.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "tiny_model.hpp"

namespace {

sessa::embedded::static_state<float, tiny::spec, 1024> state;  // for backend::reference
sessa::embedded::static_state<float, tiny::spec, 1024, 1, 64, sessa::backend::cpu> state_cpu;
constexpr tiny::model embedded_model(tiny::params);
constexpr sessa::embedded::static_decoder<float, tiny::spec, sessa::backend::cpu> embedded_cpu(tiny::params);

/// Best of `repeat` timed runs after one untimed run (first touch of the state's pages, clock ramp-up).
template <class F>
double best_seconds(int repeat, F&& f) {
  f();
  double best = 1e300;
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

void report(const char* path, const char* backend, int steps, double s, double baseline) {
  std::printf("{\"work\":\"decode\",\"model\":\"tiny\",\"path\":\"%s\",\"backend\":\"%s\",\"steps\":%d,"
              "\"seconds\":%.6f,\"tokens_per_s\":%.1f,\"relative_to_embedded\":%.3f}\n",
              path, backend, steps, s, steps / s, s / baseline);
}

}  // namespace

int main(int argc, char** argv) {
  const char* model_path = argc > 1 ? argv[1] : "examples/models/tiny_decoder.safetensors";
  const int steps = argc > 2 ? std::atoi(argv[2]) : 1000;
  if (steps < 1 || steps > 1000) {
    std::fprintf(stderr, "embedded_bench: STEPS must be in [1, 1000]\n");
    return 2;
  }
  try {
    sessa::set_num_threads(1);
    float logits_store[tiny::spec::vocab_size];
    const sessa::matrix<float> logits(logits_store, 1, tiny::spec::vocab_size);
    auto time_embedded = [&](const auto& model, auto& state) {  // steps decode steps from an empty state
      return best_seconds(3, [&] {
        state.reset();
        for (std::int64_t t = 0; t < steps; ++t) {
          const std::int64_t tok = t % tiny::spec::vocab_size;
          model.decode_step(std::span<const std::int64_t>(&tok, 1), state, logits);
        }
      });
    };
    const double t_embedded = time_embedded(embedded_model, state);
    report("embedded (static_decoder)", "reference", steps, t_embedded, t_embedded);
    const double t_embedded_cpu = time_embedded(embedded_cpu, state_cpu);
    report("embedded (static_decoder)", "cpu", steps, t_embedded_cpu, t_embedded);

    auto run_runtime = [&](const auto& model, const char* backend) {
      auto cache = model.init_cache(1, steps);
      const double s = best_seconds(3, [&] {
        cache.reset();
        for (std::int64_t t = 0; t < steps; ++t) {
          const std::int64_t tok = t % tiny::spec::vocab_size;
          (void)model.decode_step(std::span<const std::int64_t>(&tok, 1), cache);
        }
      });
      report("runtime (decoder)", backend, steps, s, t_embedded);
    };
    using variant = std::remove_const_t<tiny::layer::variant_type>;  // the file's attention variant (as the header's)
    run_runtime(sessa::io::load_decoder<float, sessa::backend::reference, variant>(model_path), "reference");
    run_runtime(sessa::io::load_decoder<float, sessa::backend::cpu, variant>(model_path), "cpu");
    std::printf("{\"model\":\"tiny\",\"parameters\":%lld,\"weight_bytes\":%lld,\"static_state_bytes\":%lld,"
                "\"state_capacity\":%lld}\n",
                static_cast<long long>(sessa::parameter_count(sessa::decoder_config{
                    tiny::layer::config, tiny::spec::vocab_size, tiny::spec::n_layers, tiny::spec::tie_embeddings})),
                static_cast<long long>(4 * sessa::parameter_count(sessa::decoder_config{
                    tiny::layer::config, tiny::spec::vocab_size, tiny::spec::n_layers, tiny::spec::tie_embeddings})),
                static_cast<long long>(decltype(state)::storage_bytes), static_cast<long long>(state.capacity));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "embedded_bench: %s\n", e.what());
    return 1;
  }
}
