// sessa/generate/stop.hpp: when generation stops, and the streamed text that stop strings cut.
//
// Stop strings are matched in the text, not in tokens, so a stop string split across several tokens stops
// generation all the same. `stop_text` streams text piece by piece: it releases only text that can no longer
// become part of a stop string (a suffix that is a prefix of one is held back) and never half a UTF-8
// character; when a stop string completes, the text before it is released and the rest dropped.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "../core/hparams.hpp"
#include "../error.hpp"
#include "tokenizer.hpp"

namespace sessa {

/// When a generate call stops (whichever comes first).
struct stop_criteria {
  index_t max_tokens = 256;                // tokens sampled by this call, stop tokens included
  std::vector<std::int64_t> stop_tokens{};  // sampled, they end the call; their text is not streamed
  std::vector<std::string> stop_strings{};  // matched in the text across token boundaries; not streamed

  void check() const {
    if (max_tokens < 0) throw value_error("stop_criteria: max_tokens must be >= 0");
    for (const auto& s : stop_strings)
      if (s.empty()) throw value_error("stop_criteria: an empty stop string");
  }
};

enum class stop_reason {
  max_tokens,   // max_tokens sampled
  stop_token,   // one of stop_tokens sampled
  stop_string,  // one of stop_strings completed in the text
  cancelled,    // the token callback returned false
  cache_full    // no room left in the cache for the next token
};

inline const char* to_string(stop_reason r) noexcept {
  switch (r) {
    case stop_reason::max_tokens: return "max_tokens";
    case stop_reason::stop_token: return "stop_token";
    case stop_reason::stop_string: return "stop_string";
    case stop_reason::cancelled: return "cancelled";
    case stop_reason::cache_full: return "cache_full";
  }
  return "unknown";
}

class stop_text {
 public:
  explicit stop_text(std::vector<std::string> stops = {}) : stops_(std::move(stops)) {
    for (const auto& s : stops_)
      if (s.empty()) throw value_error("stop_text: an empty stop string");
  }

  /// Appends `piece`; returns the text now safe to release. After a stop string completes, matched() is true,
  /// the text before it has been released and further pieces are ignored.
  std::string push(std::string_view piece) {
    if (matched_) return {};
    held_ += piece;
    std::size_t first = std::string::npos;
    for (std::size_t k = 0; k < stops_.size(); ++k) {
      const std::size_t at = held_.find(stops_[k]);
      if (at < first) first = at, which_ = k;
    }
    if (first != std::string::npos) {
      matched_ = true;
      std::string out = held_.substr(0, first);
      held_.clear();
      return out;
    }
    std::size_t hold = detail::utf8_incomplete_tail(held_);
    for (const auto& s : stops_)  // the longest suffix of held_ that begins some stop string
      for (std::size_t n = std::min(s.size() - 1, held_.size()); n > hold; --n)
        if (held_.compare(held_.size() - n, n, s, 0, n) == 0) {
          hold = n;
          break;
        }
    std::string out = held_.substr(0, held_.size() - hold);
    held_.erase(0, held_.size() - hold);
    return out;
  }

  /// Releases whatever is held back (the end of the text: no stop string can complete any more).
  std::string flush() {
    std::string out;
    out.swap(held_);
    return out;
  }

  bool matched() const noexcept { return matched_; }
  /// The stop string that completed (empty if none).
  std::string_view matched_string() const noexcept { return matched_ ? std::string_view(stops_[which_]) : std::string_view(); }
  const std::string& held() const noexcept { return held_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool matched_ = false;
  std::size_t which_ = 0;
};

}  // namespace sessa
