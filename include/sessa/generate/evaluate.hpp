// sessa/generate/evaluate.hpp: how well a decoder predicts a text (mean cross-entropy).
//
// The tokens are cut into windows of `window` tokens starting every `stride` tokens: window k covers
// [k·stride, min(k·stride + window, n)), and the windows stop with the first one that reaches the end, so every
// token after the first is scored at least once. Each window is one stateless prefill, and scores every token
// after its first given the tokens before it in that window: -log softmax(logits_{t-1})[token_t], summed in
// double. With stride < window, tokens in the overlap are scored once per window that holds them (with different
// contexts), and `tokens` counts every score.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "../core/tensor.hpp"
#include "../error.hpp"
#include "tokenizer.hpp"

namespace sessa {

struct evaluation {
  double nats = 0;      // the sum of -log p over every scored token
  index_t tokens = 0;   // scores summed
  index_t bytes = 0;    // the text's bytes of the scored tokens (with a tokenizer)
  index_t windows = 0;
  double seconds = 0;

  double nats_per_token() const noexcept { return tokens > 0 ? nats / static_cast<double>(tokens) : 0.0; }
  /// Bits per byte of the scored text (0 without a tokenizer's byte counts).
  double bits_per_byte() const noexcept { return bytes > 0 ? nats / std::log(2.0) / static_cast<double>(bytes) : 0.0; }
  double tokens_per_second() const noexcept { return seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0; }
};

/// The windows [begin, end) of n tokens (see the header's comment).
inline std::vector<std::pair<index_t, index_t>> evaluation_windows(index_t n, index_t window, index_t stride) {
  if (window < 2) throw value_error("evaluate: the window must hold at least 2 tokens, got " + std::to_string(window));
  if (stride < 1) throw value_error("evaluate: the stride must be >= 1, got " + std::to_string(stride));
  if (stride > window)
    throw value_error("evaluate: a stride of " + std::to_string(stride) + " tokens skips tokens between windows of " +
                      std::to_string(window));
  if (n < 2) throw value_error("evaluate: the text has " + std::to_string(n) + " tokens; scoring needs at least 2");
  std::vector<std::pair<index_t, index_t>> out;
  for (index_t b = 0;; b += stride) {
    const index_t e = std::min(b + window, n);
    out.emplace_back(b, e);
    if (e == n) break;
  }
  return out;
}

/// Scores `tokens` under `model` (a decoder on any backend). `progress(windows done, windows)` after each.
template <class Model>
evaluation evaluate(const Model& model, std::span<const std::int64_t> tokens, index_t window, index_t stride,
                    const tokenizer* tok = nullptr, const std::function<void(index_t, index_t)>& progress = {}) {
  using T = typename Model::scalar_type;
  const index_t V = model.config().vocab_size;
  for (std::size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= V)
      throw value_error("evaluate: token id " + std::to_string(tokens[i]) + " at position " + std::to_string(i) +
                        " is outside the vocabulary [0, " + std::to_string(V) + ")");
  if (tok && tok->size() != V)
    throw value_error("evaluate: the tokenizer has " + std::to_string(tok->size()) + " tokens, the model " +
                      std::to_string(V));
  const auto wins = evaluation_windows(static_cast<index_t>(tokens.size()), window, stride);
  const auto t0 = std::chrono::steady_clock::now();
  evaluation r;
  for (const auto& [b, e] : wins) {
    const index_t n = e - b;
    const tensor<std::int64_t> ids({1, n}, tokens.subspan(static_cast<std::size_t>(b), static_cast<std::size_t>(n)));
    const tensor<T> logits = to_host(model.forward(ids));  // (1, n, V)
    for (index_t t = 1; t < n; ++t) {
      const T* row = logits.data() + (t - 1) * V;
      double m = -std::numeric_limits<double>::infinity();
      for (index_t v = 0; v < V; ++v) m = std::max(m, static_cast<double>(row[v]));
      double z = 0;
      for (index_t v = 0; v < V; ++v) z += std::exp(static_cast<double>(row[v]) - m);
      const std::int64_t next = tokens[static_cast<std::size_t>(b + t)];
      const double nll = m + std::log(z) - static_cast<double>(row[next]);
      if (!std::isfinite(nll))
        throw value_error("evaluate: the score of token " + std::to_string(b + t) + " is not finite (the logits are not)");
      r.nats += nll;
      ++r.tokens;
      if (tok) r.bytes += static_cast<index_t>(tok->piece(next).size());
    }
    ++r.windows;
    if (progress) progress(r.windows, static_cast<index_t>(wins.size()));
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace sessa
