// sessa/attention/variants.hpp: attention variants of the forward branch.
//
// A variant decides which keys a query reads: the query at absolute position t reads keys
// [first_key(t), t]. `causal` is the paper's full causal softmax; `sliding_window` reads only the last
// `window` positions. The feedback branch always reads the whole strict past (it is the recurrence).
// A new variant is a small struct meeting sessa::attention_variant (concepts.hpp); to run on a CUDA backend its
// first_key must also be callable on the device (SESSA_HOST_DEVICE).
#pragma once

#include <algorithm>
#include <string>
#include <string_view>

#include "../config.hpp"
#include "../error.hpp"

namespace sessa::attention {

/// Full causal softmax attention, diagonal included.
struct causal {
  static constexpr std::string_view name = "causal";
  SESSA_HOST_DEVICE constexpr index_t first_key(index_t /*t*/) const noexcept { return 0; }
  constexpr void check() const noexcept {}
  friend constexpr bool operator==(const causal&, const causal&) = default;
};

/// Causal attention over the last `window` positions (t - window + 1 .. t).
struct sliding_window {
  static constexpr std::string_view name = "sliding_window";
  index_t window = 0;
  SESSA_HOST_DEVICE constexpr index_t first_key(index_t t) const noexcept { return t >= window ? t - window + 1 : 0; }
  void check() const {
    if (window < 1)
      throw config_error("invalid attention variant: sliding_window.window must be >= 1, got " +
                         std::to_string(window));
  }
  friend constexpr bool operator==(const sliding_window&, const sliding_window&) = default;
};

}  // namespace sessa::attention
