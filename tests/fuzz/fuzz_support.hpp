// tests/fuzz/fuzz_support.hpp: what the fuzz targets share.
//
// A fuzz target feeds one input to the library and returns. The library's contract is that every bad input is
// rejected by a sessa::error subclass whose message names the problem, so a target catches exactly those; any
// other exception (std::bad_alloc, std::out_of_range, ...) escapes, std::terminate aborts, and libFuzzer (or the
// replay driver, replay_main.cpp) reports the input as a crash. Properties the library promises beyond "does not
// crash" (a parsed file tiles its data section, a serialized value parses back to itself) are checked with
// SESSA_FUZZ_CHECK, which aborts the same way and says which property failed. heap_meter measures how much
// heap a call takes, so a target can check that memory stays proportional to its input: a fuzz input is small
// (-max_len), and an allocation limit alone would only catch amplification large enough to reach it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

/// Aborts with the failed condition and its place: a property the library promises does not hold for this input.
/// Variadic, so a condition may contain template argument lists with commas.
#define SESSA_FUZZ_CHECK(...)                                                                       \
  do {                                                                                              \
    if (!(__VA_ARGS__)) ::sessa::fuzz::violated(#__VA_ARGS__, __FILE__, __LINE__);                  \
  } while (false)

#if defined(__SANITIZE_ADDRESS__)
#define SESSA_FUZZ_HEAP_METER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SESSA_FUZZ_HEAP_METER 1
#endif
#endif

#if SESSA_FUZZ_HEAP_METER
// AddressSanitizer's allocator interface (sanitizer/allocator_interface.h, which GCC does not install).
extern "C" {
std::size_t __sanitizer_get_current_allocated_bytes();
int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void*, std::size_t),
                                              void (*free_hook)(const volatile void*));
}
#endif

namespace sessa::fuzz {

[[noreturn]] inline void violated(const char* what, const char* file, int line) {
  std::fprintf(stderr, "%s:%d: fuzz property violated: %s\n", file, line, what);
  std::abort();
}

/// The input as the byte vector safetensors_file::parse takes.
inline std::vector<std::byte> bytes_of(const std::uint8_t* data, std::size_t size) {
  std::vector<std::byte> out(size);
  if (size) std::memcpy(out.data(), data, size);
  return out;
}

/// The input as text (any bytes: the parsers must reject invalid UTF-8 themselves).
inline std::string_view text_of(const std::uint8_t* data, std::size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

inline bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

/// The highest point the heap reaches while a meter runs, above where it stood when the meter was made. Heap
/// bytes are AddressSanitizer's count of live allocations, sampled after every allocation; in a build without
/// AddressSanitizer nothing is measured and peak_growth() is 0. One meter at a time, on one thread.
class heap_meter {
 public:
#if SESSA_FUZZ_HEAP_METER
  heap_meter() {
    static const bool hooked = __sanitizer_install_malloc_and_free_hooks(&on_malloc, &on_free) != 0;
    (void)hooked;
    start_ = __sanitizer_get_current_allocated_bytes();
    peak() = start_;
  }
  std::size_t peak_growth() const { return peak() - start_; }

 private:
  static std::size_t& peak() {
    static std::size_t p = 0;
    return p;
  }
  static void on_malloc(const volatile void*, std::size_t) {
    const std::size_t now = __sanitizer_get_current_allocated_bytes();
    if (now > peak()) peak() = now;
  }
  static void on_free(const volatile void*) {}
  std::size_t start_ = 0;
#else
  std::size_t peak_growth() const { return 0; }
#endif
};

}  // namespace sessa::fuzz
