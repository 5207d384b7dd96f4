// Must not compile: host code reading an element of a buffer in a memory space the host may not touch.
#include <sessa/sessa.hpp>
struct space {
  static constexpr std::string_view name = "device";
  static constexpr bool host_accessible = false;
  static void* allocate(std::size_t n) { return sessa::memory::host::allocate(n); }
  static void deallocate(void* p, std::size_t n) noexcept { sessa::memory::host::deallocate(p, n); }
  static void zero(void* p, std::size_t n) { sessa::memory::host::zero(p, n); }
  static void copy(void* d, const void* s, std::size_t n) { sessa::memory::host::copy(d, s, n); }
  static void copy_from_host(void* d, const void* s, std::size_t n) { sessa::memory::host::copy(d, s, n); }
  static void copy_to_host(void* d, const void* s, std::size_t n) { sessa::memory::host::copy(d, s, n); }
};
int main() {
  sessa::buffer<float, space> b(4);
  float x = *b.data();  // no operator* on a device pointer
  return static_cast<int>(x);
}
