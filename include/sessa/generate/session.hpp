// sessa/generate/session.hpp: one sequence being generated: a decoder's cache, the sampler, the tokens so far.
//
//   sessa::session s(model, 4096, sessa::sampler::from(params));   // capacity: prompt + generation
//   s.feed(tok.encode("THE SEA "));                                 // prefill, in chunks
//   auto r = s.generate({.max_tokens = 200, .stop_strings = {"\n\n"}}, &tok,
//                       [](const sessa::token_event& e) { std::fputs(std::string(e.text).c_str(), stdout); return true; });
//
// The prompt goes through the prefill path (chunks of `feed_options::chunk` tokens, a progress callback after
// each); each sampled token goes through the decode path. A sampled token enters the cache when the next one
// is needed (the next generate or feed call), so a call that stops does no wasted step; `tokens()` always
// lists every token of the sequence, the last possibly still pending.
//
// Works with any backend: logits come back to the host for sampling, one row per step.
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../core/tensor.hpp"
#include "../error.hpp"
#include "../model/decoder.hpp"
#include "sampler.hpp"
#include "stop.hpp"
#include "tokenizer.hpp"

namespace sessa {

/// One streamed step: the token sampled (its index in this call) and the text it releases (possibly empty:
/// held back for a stop string or an incomplete UTF-8 character). After the last token, text still held back
/// comes in one more event with id = -1.
struct token_event {
  std::int64_t id;
  std::string_view text;
  index_t index;
};

/// Return false to stop generating (stop_reason::cancelled).
using token_callback = std::function<bool(const token_event&)>;
/// (tokens fed so far, tokens of this feed call); return false to stop feeding (the tokens fed so far stay).
using progress_callback = std::function<bool(index_t, index_t)>;

struct feed_options {
  index_t chunk = 512;  // tokens per prefill pass
  progress_callback progress{};
};

struct generation_result {
  std::vector<std::int64_t> tokens{};  // sampled by this call, a stop token included
  std::string text{};                // streamed text (without stop strings or stop tokens)
  stop_reason reason = stop_reason::max_tokens;
  std::string stop_string{};  // which one, for stop_reason::stop_string
  double seconds = 0;       // wall time of the call
  double tokens_per_second() const noexcept { return seconds > 0 ? static_cast<double>(tokens.size()) / seconds : 0.0; }
};

template <class Model>
class session {
 public:
  using model_type = Model;
  using scalar_type = typename Model::scalar_type;
  using cache_type = typename Model::cache_type;

  /// A session of at most `capacity` tokens (prompt and generation) on `model`, which must outlive it.
  session(const Model& model, index_t capacity, sampler s = sampler{})
      : model_(&model), cache_(model.init_cache(1, capacity)), sampler_(std::move(s)) {}

  /// Feeds tokens through the prefill path (a pending sampled token first). Checks every id and the room
  /// before anything changes; a progress callback returning false stops after the current chunk.
  /// Returns the number of tokens fed.
  index_t feed(std::span<const std::int64_t> tokens, const feed_options& opt = {}) {
    if (opt.chunk < 1) throw value_error("feed: chunk must be >= 1 token");
    const index_t V = model_->config().vocab_size;
    for (std::size_t i = 0; i < tokens.size(); ++i)
      if (tokens[i] < 0 || tokens[i] >= V)
        throw value_error("feed: token id " + std::to_string(tokens[i]) + " at position " + std::to_string(i) +
                          " is outside the vocabulary [0, " + std::to_string(V) + ")");
    const index_t need = static_cast<index_t>(tokens.size()) + (pending_ ? 1 : 0);
    if (need > cache_.remaining())
      throw cache_error("feed: " + std::to_string(tokens.size()) + " tokens do not fit: the cache holds " +
                        std::to_string(cache_.length()) + " of its " + std::to_string(capacity()) + " tokens" +
                        (pending_ ? " and the last sampled token waits to enter it" : ""));
    if (tokens.empty()) return 0;
    std::vector<std::int64_t> all;
    all.reserve(static_cast<std::size_t>(need));
    if (pending_) all.push_back(*pending_);
    all.insert(all.end(), tokens.begin(), tokens.end());
    const index_t n = static_cast<index_t>(all.size()), first = pending_ ? 1 : 0;
    index_t done = 0;
    while (done < n) {
      const index_t c = std::min(opt.chunk, n - done);
      run(std::span<const std::int64_t>(all.data() + done, static_cast<std::size_t>(c)));
      if (done == 0 && pending_) pending_.reset();
      for (index_t i = std::max(done, first); i < done + c; ++i) {
        sampler_.accept(all[static_cast<std::size_t>(i)]);
        tokens_.push_back(all[static_cast<std::size_t>(i)]);
      }
      done += c;
      if (opt.progress && !opt.progress(done - first, n - first)) break;
    }
    return done - first;
  }

  /// Samples up to stop.max_tokens tokens, streaming each through `on_token` (and `tok` for the text, when
  /// given). Needs at least one token in the session (feed a prompt first).
  generation_result generate(const stop_criteria& stop, const tokenizer* tok = nullptr,
                             const token_callback& on_token = {}) {
    stop.check();
    if (tokens_.empty()) throw value_error("generate: the session holds no tokens; feed a prompt first");
    if (tok && tok->size() != model_->config().vocab_size)
      throw value_error("generate: the tokenizer has " + std::to_string(tok->size()) + " tokens, the model " +
                        std::to_string(model_->config().vocab_size));
    using clock = std::chrono::steady_clock;
    const auto t0 = clock::now();
    generation_result r;
    stop_text text(stop.stop_strings);
    auto emit = [&](std::int64_t id, const std::string& piece, index_t index) {
      r.text += piece;
      return !on_token || on_token(token_event{id, piece, index});
    };
    bool ended = false;
    for (index_t i = 0;; ++i) {
      if (i == stop.max_tokens) {
        r.reason = stop_reason::max_tokens;
        break;
      }
      if (pending_) {
        if (cache_.remaining() == 0) {
          r.reason = stop_reason::cache_full;
          break;
        }
        const std::int64_t p = *pending_;
        run(std::span<const std::int64_t>(&p, 1));
        pending_.reset();
      }
      const std::int64_t id = sampler_.sample(std::span<const scalar_type>(logits_));
      sampler_.accept(id);
      tokens_.push_back(id);
      pending_ = id;
      r.tokens.push_back(id);
      if (std::find(stop.stop_tokens.begin(), stop.stop_tokens.end(), id) != stop.stop_tokens.end()) {
        r.reason = stop_reason::stop_token;
        break;
      }
      const bool go = emit(id, text.push(tok ? std::string_view(tok->piece(id)) : std::string_view()), i);
      if (text.matched()) {
        r.reason = stop_reason::stop_string;
        r.stop_string = std::string(text.matched_string());
        ended = true;
        break;
      }
      if (!go) {
        r.reason = stop_reason::cancelled;
        break;
      }
    }
    if (!ended) {
      const std::string rest = text.flush();
      if (!rest.empty()) emit(-1, rest, static_cast<index_t>(r.tokens.size()));
    }
    r.seconds = std::chrono::duration<double>(clock::now() - t0).count();
    return r;
  }

  /// Goes back to the first n tokens of the sequence (n >= 1): the cache is truncated exactly and the logits
  /// of position n - 1 recomputed (through the decode path: within rounding of what prefill gave).
  void rollback(index_t n) {
    if (n < 1 || n > position())
      throw value_error("rollback: the session holds " + std::to_string(position()) + " tokens; cannot go back to " +
                        std::to_string(n) + " (at least 1)");
    if (n == position()) return;
    pending_.reset();
    cache_.truncate(n - 1);
    const std::int64_t last = tokens_[static_cast<std::size_t>(n - 1)];
    tokens_.resize(static_cast<std::size_t>(n));
    run(std::span<const std::int64_t>(&last, 1));
    // The penalties' history is the tail of the sequence.
    sampler_.set_recent(std::span<const std::int64_t>(tokens_));
  }

  /// Tokens in the sequence (fed, sampled; the last sampled one possibly still pending).
  index_t position() const noexcept { return static_cast<index_t>(tokens_.size()); }
  index_t capacity() const noexcept { return cache_.capacity(); }
  const std::vector<std::int64_t>& tokens() const noexcept { return tokens_; }
  /// The next-token logits after the last token in the cache (empty before the first feed).
  std::span<const scalar_type> logits() const noexcept { return logits_; }
  std::optional<std::int64_t> pending() const noexcept { return pending_; }
  sampler& get_sampler() noexcept { return sampler_; }
  const sampler& get_sampler() const noexcept { return sampler_; }
  cache_type& cache() noexcept { return cache_; }
  const cache_type& cache() const noexcept { return cache_; }
  const Model& model() const noexcept { return *model_; }

 private:
  void run(std::span<const std::int64_t> ids) {
    const tensor<std::int64_t> t({1, static_cast<index_t>(ids.size())}, ids);
    const tensor<scalar_type> l = to_host(model_->forward(t, cache_, logits_for::last));  // (1, V)
    logits_.assign(l.data(), l.data() + l.size());
  }

  const Model* model_;
  cache_type cache_;
  sampler sampler_;
  std::vector<std::int64_t> tokens_;
  std::optional<std::int64_t> pending_;
  std::vector<scalar_type> logits_;
};

}  // namespace sessa
