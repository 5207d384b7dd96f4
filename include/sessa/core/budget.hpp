// sessa/core/budget.hpp: a limit on what one request may allocate, checked before anything is allocated.
//
// A request is one call that allocates in proportion to its arguments: loading a weight file (the file's bytes,
// then the weights), making a cache (batch x capacity tokens of every layer), one forward call (its outputs and
// the workspace for its rows). Each such call first writes down every allocation it will make (a memory_plan),
// and when the total exceeds the limit it throws memory_error naming each item, the total and the limit, so a
// server can refuse a request whose prompt or batch is too large instead of being killed for it.
//
// Not counted: the per-thread buffers of the cpu kernels (GEMM packing, attention and feedback tiles, RoPE
// tables: at most a few MiB per thread, whatever the request; grown once, then reused) and the backends'
// split-K partial states (a few tiles per thread). docs/API.md ("Memory limits") states the figures.
#pragma once

#include <atomic>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../config.hpp"
#include "../error.hpp"

namespace sessa {

namespace detail {
inline std::atomic<std::uint64_t>& memory_limit_bytes() {
  static std::atomic<std::uint64_t> limit{0};
  return limit;
}
}  // namespace detail

/// Sets the most bytes one request may allocate, for every thread of the process; 0 (the default) removes the
/// limit.
inline void set_memory_limit(std::uint64_t bytes) noexcept {
  detail::memory_limit_bytes().store(bytes, std::memory_order_relaxed);
}
/// The limit set_memory_limit() set; 0 when there is none.
inline std::uint64_t memory_limit() noexcept { return detail::memory_limit_bytes().load(std::memory_order_relaxed); }

/// "1536 bytes (1.5 KiB)": exact bytes, and a readable size from KiB up.
inline std::string format_bytes(std::uint64_t n) {
  std::string s = std::to_string(n) + (n == 1 ? " byte" : " bytes");
  if (n < 1024) return s;
  const char* units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(n);
  int u = -1;
  while (v >= 1024.0 && u < 5) {
    v /= 1024.0;
    ++u;
  }
  const long tenths = static_cast<long>(v * 10.0 + 0.5);
  return s + " (" + std::to_string(tenths / 10) + "." + std::to_string(tenths % 10) + " " + units[u] + ")";
}

/// The allocations one request will make, written down before any is made.
class memory_plan {
 public:
  explicit memory_plan(std::string request) : request_(std::move(request)) {}

  /// `count` elements of `element_bytes` bytes each, for `what`. Sizes saturate instead of overflowing: an
  /// impossible size is simply over any limit (and the allocation itself reports it when there is none).
  memory_plan& add(std::string_view what, std::uint64_t count, std::uint64_t element_bytes) {
    const std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
    const std::uint64_t bytes = element_bytes != 0 && count > max / element_bytes ? max : count * element_bytes;
    items_.emplace_back(std::string(what), bytes);
    total_ = bytes > max - total_ ? max : total_ + bytes;
    return *this;
  }
  std::uint64_t total() const noexcept { return total_; }
  const std::vector<std::pair<std::string, std::uint64_t>>& items() const noexcept { return items_; }

  /// memory_error when the total exceeds the limit (no limit: nothing to check).
  void check() const {
    const std::uint64_t limit = memory_limit();
    if (limit == 0 || total_ <= limit) return;
    std::string msg = request_ + " needs " + format_bytes(total_) + ", over the memory limit of " + format_bytes(limit) +
                      " (sessa::set_memory_limit):";
    for (std::size_t i = 0; i < items_.size(); ++i)
      msg += (i ? ", " : " ") + items_[i].first + " " + format_bytes(items_[i].second);
    throw memory_error(msg);
  }

 private:
  std::string request_;
  std::vector<std::pair<std::string, std::uint64_t>> items_;
  std::uint64_t total_ = 0;
};

}  // namespace sessa
