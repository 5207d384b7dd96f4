// sessa/generate/sampler.hpp: choosing the next token from a row of logits.
//
// A sampler is a chain of small steps over a list of candidates (token id, logit, probability), then a draw.
// Each step is a policy with `void apply(candidates&, const sampling_context&) const`: the library's
// (logit_bias, penalties, top_k, top_p, min_p, temperature) and any of the caller's. Steps compose two ways:
//   - at compile time, `sampling_chain<Steps...>` (itself a step);
//   - at run time, `sampler::add(step)`, where a step is one of the library's or a `custom_step` function.
// `sampler::from(sampling_params)` builds the usual chain in the usual order: penalties, logit bias, top-k,
// top-p, min-p (these see probabilities at temperature 1), then temperature, then the draw.
//
// Reproducibility: the draw uses `sampling_rng` (xoshiro256**) and walks the candidates in an order fixed by
// the logits and the steps alone (token order, or logit descending with ids ascending on ties once a step has
// sorted them), so the same logits, seed and steps give the same token on every platform. Logits from different backends or thread counts agree within rounding, so only near-ties can differ.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include "../core/hparams.hpp"
#include "../error.hpp"
#include "rng.hpp"

namespace sessa {

/// One token still in the running: its id, its (adjusted) logit and, after softmax(), its probability.
struct token_candidate {
  std::int64_t id;
  double logit;
  double p;
};

/// The candidates of one draw. Steps remove entries and change logits; `sorted()` says whether the entries are
/// in the canonical order (logit descending, id ascending on ties).
class candidates {
 public:
  candidates() = default;

  /// Every token of a row of logits. Throws value_error on a NaN or +inf logit (naming the token); -inf is a
  /// banned token.
  template <class T>
  void assign(std::span<const T> logits) {
    items_.resize(logits.size());
    for (std::size_t i = 0; i < logits.size(); ++i) {
      const double l = static_cast<double>(logits[i]);
      if (std::isnan(l) || l == std::numeric_limits<double>::infinity())
        throw value_error("sampling: the logit of token " + std::to_string(i) + " is " + (std::isnan(l) ? "NaN" : "+inf") +
                          " (the model's output is not finite)");
      items_[i] = {static_cast<std::int64_t>(i), l, 0.0};
    }
    sorted_ = false;
  }

  std::vector<token_candidate>& items() noexcept { return items_; }
  const std::vector<token_candidate>& items() const noexcept { return items_; }
  std::size_t size() const noexcept { return items_.size(); }
  bool empty() const noexcept { return items_.empty(); }
  bool sorted() const noexcept { return sorted_; }
  /// Steps that change logits or remove entries without keeping the order call this.
  void mark_unsorted() noexcept { sorted_ = false; }

  /// The canonical order: logit descending, id ascending on ties.
  static bool before(const token_candidate& a, const token_candidate& b) noexcept {
    return a.logit != b.logit ? a.logit > b.logit : a.id < b.id;
  }

  void sort() {
    if (sorted_) return;
    std::sort(items_.begin(), items_.end(), before);
    sorted_ = true;
  }

  /// Keeps the first n entries of the canonical order, sorted (a partial sort: O(size log n)).
  void keep_best(std::size_t n) {
    if (n >= items_.size()) {
      sort();
      return;
    }
    if (!sorted_) std::partial_sort(items_.begin(), items_.begin() + static_cast<std::ptrdiff_t>(n), items_.end(), before);
    items_.resize(n);
    sorted_ = true;
  }

  /// Sets p = softmax(logit) over the entries, in their current order (banned, -inf, entries get 0).
  void softmax() {
    if (items_.empty()) return;
    double top = -std::numeric_limits<double>::infinity();
    for (const auto& c : items_) top = std::max(top, c.logit);
    double sum = 0;
    for (auto& c : items_) sum += c.p = top == -std::numeric_limits<double>::infinity() ? 0.0 : std::exp(c.logit - top);
    if (sum > 0)
      for (auto& c : items_) c.p /= sum;
  }

  /// Keeps the first n entries (of the current order).
  void keep_first(std::size_t n) {
    if (n < items_.size()) items_.resize(n);
  }

  /// Removes the entries with a -inf logit.
  void drop_banned() {
    std::erase_if(items_, [](const token_candidate& c) { return c.logit == -std::numeric_limits<double>::infinity(); });
  }

 private:
  std::vector<token_candidate> items_;
  bool sorted_ = false;
};

/// What a step may read besides the candidates: the recent tokens (oldest first) and the generator.
struct sampling_context {
  std::span<const std::int64_t> recent;
  sampling_rng* rng = nullptr;
  std::int64_t vocab = 0;  // the size of the row of logits
};

template <class S>
concept sampling_step = requires(const S& s, candidates& c, const sampling_context& ctx) { s.apply(c, ctx); };

// ---------------------------------------------------------------- steps

/// Adds a bias to chosen tokens' logits; -inf bans a token. Ids outside the vocabulary are an error at apply.
struct logit_bias {
  std::vector<std::pair<std::int64_t, double>> bias{};

  void check() const {
    for (const auto& [id, b] : bias) {
      if (id < 0) throw value_error("logit_bias: token id " + std::to_string(id) + " is negative");
      if (std::isnan(b) || b == std::numeric_limits<double>::infinity())
        throw value_error("logit_bias: the bias of token " + std::to_string(id) + " must be finite or -inf");
    }
  }
  void apply(candidates& c, const sampling_context& ctx) const {
    if (bias.empty()) return;
    for (const auto& [id, b] : bias) {
      if (id >= ctx.vocab)
        throw value_error("logit_bias: token id " + std::to_string(id) + " is outside the vocabulary (" +
                          std::to_string(ctx.vocab) + " tokens)");
      auto it = std::find_if(c.items().begin(), c.items().end(), [id = id](const token_candidate& t) { return t.id == id; });
      if (it == c.items().end()) continue;  // removed by an earlier step
      it->logit += b;
    }
    c.mark_unsorted();
  }
};

/// Repetition penalties over the last `last_n` tokens (0: none; at most the history the sampler keeps): a
/// repeated token's logit is divided by `repeat` when positive and multiplied by it when negative (the CTRL
/// rule), then lowered by `frequency` times its count and by `presence` once.
struct penalties {
  index_t last_n = 64;
  double repeat = 1.0;
  double frequency = 0.0;
  double presence = 0.0;

  void check() const {
    if (!(repeat > 0) || !std::isfinite(repeat)) throw value_error("penalties: repeat must be a positive number");
    if (!std::isfinite(frequency) || !std::isfinite(presence))
      throw value_error("penalties: frequency and presence must be finite");
    if (last_n < 0) throw value_error("penalties: last_n must be >= 0");
  }
  bool active() const noexcept { return last_n != 0 && (repeat != 1.0 || frequency != 0.0 || presence != 0.0); }

  void apply(candidates& c, const sampling_context& ctx) const {
    if (!active() || ctx.recent.empty()) return;
    const std::size_t n = std::min(ctx.recent.size(), static_cast<std::size_t>(last_n));
    std::vector<std::pair<std::int64_t, index_t>> counts;  // (id, count), ids sorted
    counts.reserve(n);
    for (std::size_t i = ctx.recent.size() - n; i < ctx.recent.size(); ++i) counts.emplace_back(ctx.recent[i], 1);
    std::sort(counts.begin(), counts.end());
    std::vector<std::pair<std::int64_t, index_t>> merged;
    for (const auto& e : counts) {
      if (!merged.empty() && merged.back().first == e.first) ++merged.back().second;
      else merged.push_back(e);
    }
    for (auto& t : c.items()) {
      auto it = std::lower_bound(merged.begin(), merged.end(), std::pair<std::int64_t, index_t>{t.id, 0});
      if (it == merged.end() || it->first != t.id) continue;
      if (t.logit == -std::numeric_limits<double>::infinity()) continue;
      t.logit = t.logit > 0 ? t.logit / repeat : t.logit * repeat;
      t.logit -= static_cast<double>(it->second) * frequency + presence;
    }
    c.mark_unsorted();
  }
};

/// Keeps the k most likely tokens (k = 0: all).
struct top_k {
  index_t k = 0;
  void check() const {
    if (k < 0) throw value_error("top_k: k must be >= 0");
  }
  void apply(candidates& c, const sampling_context&) const {
    if (k <= 0 || static_cast<std::size_t>(k) >= c.size()) return;
    c.keep_best(static_cast<std::size_t>(k));
  }
};

/// Nucleus sampling: keeps the smallest set of most likely tokens whose probabilities sum to at least p
/// (p = 1: all), and at least min_keep of them.
struct top_p {
  double p = 1.0;
  std::size_t min_keep = 1;
  void check() const {
    if (!(p > 0 && p <= 1)) throw value_error("top_p: p must be in (0, 1]");
  }
  void apply(candidates& c, const sampling_context&) const {
    if (p >= 1.0 || c.size() <= 1) return;
    c.sort();
    c.softmax();
    double cum = 0;
    std::size_t keep = c.size();
    for (std::size_t i = 0; i < c.size(); ++i) {
      cum += c.items()[i].p;
      if (cum >= p && i + 1 >= min_keep) {
        keep = i + 1;
        break;
      }
    }
    c.keep_first(keep);
  }
};

/// Keeps the tokens whose probability is at least p times the most likely token's (p = 0: all).
struct min_p {
  double p = 0.0;
  std::size_t min_keep = 1;
  void check() const {
    if (!(p >= 0 && p <= 1)) throw value_error("min_p: p must be in [0, 1]");
  }
  void apply(candidates& c, const sampling_context&) const {
    if (p <= 0.0 || c.size() <= 1) return;
    c.sort();
    c.softmax();
    const double floor = p * c.items().front().p;
    std::size_t keep = 0;
    while (keep < c.size() && (c.items()[keep].p >= floor || keep < min_keep)) ++keep;
    c.keep_first(keep);
  }
};

/// Divides the logits by t; t = 0 keeps only the most likely token (greedy).
struct temperature {
  double t = 1.0;
  void check() const {
    if (!(t >= 0) || !std::isfinite(t)) throw value_error("temperature: must be a finite number >= 0");
  }
  void apply(candidates& c, const sampling_context&) const {
    if (t == 1.0 || c.empty()) return;
    if (t <= 0.0) {
      c.keep_best(1);
      return;
    }
    for (auto& x : c.items()) x.logit /= t;  // order unchanged
  }
};

/// A step given as a function.
using custom_step = std::function<void(candidates&, const sampling_context&)>;

/// Steps composed at compile time; a chain is itself a step.
template <sampling_step... Steps>
struct sampling_chain {
  std::tuple<Steps...> steps;
  void apply(candidates& c, const sampling_context& ctx) const {
    std::apply([&](const auto&... s) { (s.apply(c, ctx), ...); }, steps);
  }
};

namespace detail {
/// The draw: the single candidate left, or one drawn from the softmax of those left, walking them in their
/// current order (a deterministic one: the vocabulary's, or the canonical order after a step sorted them), so
/// no sort is needed here.
inline std::int64_t draw(candidates& c, sampling_rng& rng) {
  c.drop_banned();
  if (c.empty()) throw value_error("sampling: no token left to choose (every token is banned or filtered out)");
  if (c.size() == 1) return c.items().front().id;
  c.softmax();
  const double u = rng.uniform();
  double cum = 0;
  for (const auto& t : c.items()) {
    cum += t.p;
    if (u < cum) return t.id;
  }
  return c.items().back().id;  // rounding: u is above the last partial sum
}
}  // namespace detail

/// The usual sampling settings (the CLI's options). temperature = 0 is greedy.
struct sampling_params {
  std::uint64_t seed = 1;
  double temperature = 0.8;
  index_t top_k = 0;
  double top_p = 1.0;
  double min_p = 0.0;
  double repeat_penalty = 1.0;
  double frequency_penalty = 0.0;
  double presence_penalty = 0.0;
  index_t penalty_last_n = 64;
  std::vector<std::pair<std::int64_t, double>> logit_bias{};
};

/// A run-time chain of steps, the token history the penalties read and the generator of the draw.
class sampler {
 public:
  using step = std::variant<logit_bias, penalties, top_k, top_p, min_p, temperature, custom_step>;

  /// An empty chain (plain sampling at temperature 1) keeping `history` recent tokens.
  explicit sampler(std::uint64_t seed = 1, index_t history = 64) : rng_(seed), history_(history) {
    if (history < 0) throw value_error("sampler: history must be >= 0");
  }

  /// The usual chain for `p`: penalties, logit bias, top-k, top-p, min-p, temperature, draw.
  static sampler from(const sampling_params& p) {
    sampler s(p.seed, std::max<index_t>(p.penalty_last_n, 0));
    s.add(penalties{p.penalty_last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty});
    s.add(logit_bias{p.logit_bias});
    s.add(top_k{p.top_k});
    s.add(top_p{p.top_p});
    s.add(min_p{p.min_p});
    s.add(temperature{p.temperature});
    return s;
  }

  /// Appends a step (checked now: a bad setting is a value_error naming it).
  sampler& add(step s) {
    std::visit([](const auto& x) {
      if constexpr (requires { x.check(); }) x.check();
      else if (!x) throw value_error("sampler: an empty custom step");
    }, s);
    steps_.push_back(std::move(s));
    return *this;
  }

  /// The next token for a row of logits (the vocabulary is its size). Does not record it: call accept().
  template <class T>
  std::int64_t sample(std::span<const T> logits) {
    cand_.assign(logits);
    const sampling_context ctx{std::span<const std::int64_t>(recent_), &rng_, static_cast<std::int64_t>(logits.size())};
    for (const auto& s : steps_) {
      std::visit([&](const auto& x) {
        if constexpr (requires { x.apply(cand_, ctx); }) x.apply(cand_, ctx);
        else x(cand_, ctx);
      }, s);
    }
    return detail::draw(cand_, rng_);
  }

  /// Records a token the sequence now holds (sampled or from the prompt) for the penalties.
  void accept(std::int64_t token) {
    if (history_ == 0) return;
    if (static_cast<index_t>(recent_.size()) == history_) recent_.erase(recent_.begin());
    recent_.push_back(token);
  }

  /// Forgets the history (the generator keeps its state).
  void reset_history() noexcept { recent_.clear(); }

  const std::vector<std::int64_t>& recent() const noexcept { return recent_; }
  /// Restores a saved history (oldest first; the last `history()` entries are kept).
  void set_recent(std::span<const std::int64_t> r) {
    const std::size_t keep = std::min(r.size(), static_cast<std::size_t>(history_));
    recent_.assign(r.end() - static_cast<std::ptrdiff_t>(keep), r.end());
  }
  index_t history() const noexcept { return history_; }
  sampling_rng& rng() noexcept { return rng_; }
  const sampling_rng& rng() const noexcept { return rng_; }
  const std::vector<step>& steps() const noexcept { return steps_; }
  /// The candidates of the last draw, after the steps (what a caller may show as alternatives).
  const candidates& last_candidates() const noexcept { return cand_; }

 private:
  std::vector<step> steps_;
  sampling_rng rng_;
  index_t history_;
  std::vector<std::int64_t> recent_;
  candidates cand_;
};

/// The most likely token (lowest id on ties): what temperature 0 gives.
template <class T>
std::int64_t argmax_token(std::span<const T> logits) {
  if (logits.empty()) throw value_error("sampling: an empty row of logits");
  std::size_t best = 0;
  for (std::size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[best]) best = i;
  return static_cast<std::int64_t>(best);
}

}  // namespace sessa
