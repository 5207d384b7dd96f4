// Must not compile: a backend tag without kernels.
#include <sessa/sessa.hpp>
struct my_backend {
  static constexpr std::string_view name = "mine";
  using memory_space = sessa::memory::host;
};
int main() {
  const sessa::layer_config c{16, 2, 2};
  sessa::layer<float, my_backend> l(c, sessa::random_layer_weights<float>(c, 1));
  return static_cast<int>(l.forward(sessa::tensor<float>({1, 2, 16})).size());
}
