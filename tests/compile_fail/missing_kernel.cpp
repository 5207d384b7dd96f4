// Must not compile: a backend whose kernel set lacks one kernel (here gelu, hidden by an unrelated
// overload) fails where the model is instantiated, with a message naming the kernel.
#include <sessa/sessa.hpp>
struct partial {
  static constexpr std::string_view name = "partial";
  using memory_space = sessa::memory::host;
};
namespace sessa::backend {
template <>
struct context<partial> : context<reference> {};
template <>
struct kernels<partial> : kernels<reference> {
  static void gelu(int) {}  // hides kernels<reference>::gelu: the set is incomplete
};
}  // namespace sessa::backend
int main() {
  const sessa::layer_config c{16, 2, 2};
  sessa::layer<float, partial> l(c, sessa::random_layer_weights<float>(c, 1));
  return static_cast<int>(l.forward(sessa::tensor<float>({1, 2, 16})).size());
}
