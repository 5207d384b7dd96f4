// Must not compile: a backend with its own (device) memory space cannot inherit host kernels. Its views are
// of its own space, which no host kernel accepts, so the kernel set check reports the first missing kernel
// instead of letting host loops run on device memory.
#include <sessa/sessa.hpp>
namespace mine {
struct space {  // bytes the host must not touch
  static constexpr std::string_view name = "mine";
  static constexpr bool host_accessible = false;
  static void* allocate(std::size_t n) { return sessa::memory::host::allocate(n); }
  static void deallocate(void* p, std::size_t n) noexcept { sessa::memory::host::deallocate(p, n); }
  static void zero(void* p, std::size_t n) { sessa::memory::host::zero(p, n); }
  static void copy(void* d, const void* s, std::size_t n) { sessa::memory::host::copy(d, s, n); }
  static void copy_from_host(void* d, const void* s, std::size_t n) { sessa::memory::host::copy(d, s, n); }
  static void copy_to_host(void* d, const void* s, std::size_t n) { sessa::memory::host::copy(d, s, n); }
};
struct device {
  static constexpr std::string_view name = "device";
  using memory_space = space;
};
}  // namespace mine
namespace sessa::backend {
template <>
struct context<mine::device> : context<reference> {};
template <>
struct kernels<mine::device> : kernels<reference> {};  // host kernels only: wrong space
}  // namespace sessa::backend
int main() {
  const sessa::layer_config c{16, 2, 2};
  sessa::layer<float, mine::device> l(c, sessa::random_layer_weights<float>(c, 1));
  return static_cast<int>(l.config().d_model);
}
