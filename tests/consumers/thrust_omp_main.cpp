// A downstream program on backend::thrust_omp (find_package(sessa) -> sessa::thrust_omp): loads the tiny
// decoder into the Thrust backend's memory space, and checks that a prefill equals token-by-token decoding and
// the cpu backend. Exits non-zero on a mismatch.
#include <sessa/io/model_file.hpp>
#include <sessa/thrust_omp.hpp>

#include <cmath>
#include <cstdio>

namespace {
// Loads the decoder with the forward-branch attention variant Variant (the one its file declares).
template <class Variant>
int check(const sessa::io::safetensors_file& file) {
  const auto dev = sessa::io::load_decoder<float, sessa::backend::thrust_omp, Variant>(file);
  const auto cpu = sessa::io::load_decoder<float, sessa::backend::cpu, Variant>(file);
  const std::int64_t ids[] = {52, 40, 37, 0, 11, 5};
  const sessa::tensor<std::int64_t> tok({1, 6}, std::span<const std::int64_t>(ids));
  const sessa::tensor<float> all = sessa::to_host(dev.forward(tok));  // (1, 6, V)
  const sessa::tensor<float> ref = cpu.forward(tok);
  auto cache = dev.init_cache(1, 6);
  double worst = 0, scale = 0;
  for (int t = 0; t < 6; ++t) {
    const sessa::tensor<float> step = sessa::to_host(dev.decode_step(std::span<const std::int64_t>(ids + t, 1), cache));
    for (sessa::index_t v = 0; v < step.size(); ++v) {
      const float a = all[t * step.size() + v];
      worst = std::fmax(worst, std::fmax(std::fabs(step[v] - a), std::fabs(ref[t * step.size() + v] - a)));
      scale = std::fmax(scale, std::fabs(a));
    }
  }
  std::printf("thrust_omp consumer: max |diff| %.2g of max |logit| %.3g\n", worst, scale);
  return worst <= 1e-4 * scale ? 0 : 1;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  try {
    const auto file = sessa::io::safetensors_file::load(argv[1]);
    return sessa::io::read_model_info(file).attention == "sliding_window" ? check<sessa::attention::sliding_window>(file)
                                                                          : check<sessa::attention::causal>(file);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "thrust_omp consumer: %s\n", e.what());
    return 1;
  }
}
