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
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <filesystem>
#include <functional>
#include <optional>
#include <cstdio>
#include <cinttypes>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../core/tensor.hpp"
#include "../error.hpp"
#include "../io/model_file.hpp"
#include "../io/safetensors.hpp"
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
class session;

namespace detail {
template <class Model>
class generation_run;
}  // namespace detail

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
  /// given). Needs at least one token in the session (feed a prompt first). generate_batch
  /// (generate/batch.hpp) runs several sessions this same way together.
  generation_result generate(const stop_criteria& stop, const tokenizer* tok = nullptr,
                             const token_callback& on_token = {}) {
    detail::generation_run<Model> g(*this, stop, tok, on_token);
    for (;;) {
      std::optional<std::int64_t> feed;
      if (!g.begin(feed)) break;
      if (feed) {
        run(std::span<const std::int64_t>(&*feed, 1));
        pending_.reset();
      }
      if (!g.sample()) break;
    }
    return g.finish();
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

  /// Saves the session (cache, tokens, pending token, logits, the sampler's history and generator) to a
  /// safetensors file (the format is described at the end of this header).
  void save(const std::filesystem::path& path) const;
  /// A session restored from `save`'s file on `model` (the same configuration and attention variant, else a
  /// config_error naming both) with `capacity` tokens of room and the steps of `s` (its history and generator
  /// come from the file). Generation then continues bit for bit as if never saved.
  static session load(const std::filesystem::path& path, const Model& model, index_t capacity, sampler s = sampler{}) {
    return load(io::safetensors_file::load(path), model, capacity, std::move(s));
  }
  /// The same from a file already read (to look at it first: its 'tokens' say how much room it needs).
  static session load(const io::safetensors_file& f, const Model& model, index_t capacity, sampler s = sampler{});

 private:
  friend class detail::generation_run<Model>;

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

namespace detail {

/// One generate() call on one session, as a state machine, so that a session generating alone and sessions
/// generating together (generate_batch) take the same steps: per token, begin() says whether the run goes on and
/// which token must first enter the cache; once it has (alone, or in a ragged step with other sessions) and
/// the logits are in place, sample() samples, streams and checks the stop conditions; finish() ends the call.
template <class Model>
class generation_run {
 public:
  using scalar_type = typename Model::scalar_type;

  generation_run(session<Model>& s, const stop_criteria& stop, const tokenizer* tok, token_callback on_token)
      : s_(&s), stop_((stop.check(), stop)), tok_(tok), on_token_(std::move(on_token)), text_(stop.stop_strings),
        t0_(std::chrono::steady_clock::now()) {
    if (s.tokens_.empty()) throw value_error("generate: the session holds no tokens; feed a prompt first");
    if (tok && tok->size() != s.model_->config().vocab_size)
      throw value_error("generate: the tokenizer has " + std::to_string(tok->size()) + " tokens, the model " +
                        std::to_string(s.model_->config().vocab_size));
  }

  /// Before the next token: false when the run ends here (max tokens reached, or no room for the pending
  /// token). Otherwise `feed` is the pending token that must enter the cache before sampling, if there is one.
  bool begin(std::optional<std::int64_t>& feed) {
    feed.reset();
    if (static_cast<index_t>(r_.tokens.size()) == stop_.max_tokens) {
      r_.reason = stop_reason::max_tokens;
      return false;
    }
    if (s_->pending_) {
      if (s_->cache_.remaining() == 0) {
        r_.reason = stop_reason::cache_full;
        return false;
      }
      feed = s_->pending_;
    }
    return true;
  }
  /// The pending token entered the cache in a step with other sessions; `logits` (V) are those after it.
  void stepped(std::span<const scalar_type> logits) {
    s_->logits_.assign(logits.begin(), logits.end());
    s_->pending_.reset();
  }
  /// Samples the next token from the session's logits, streams it, checks the stop conditions. False when the
  /// run ended with it (a stop token or string, or the callback cancelled).
  bool sample() {
    const index_t i = static_cast<index_t>(r_.tokens.size());
    const std::int64_t id = s_->sampler_.sample(std::span<const scalar_type>(s_->logits_));
    s_->sampler_.accept(id);
    s_->tokens_.push_back(id);
    s_->pending_ = id;
    r_.tokens.push_back(id);
    if (std::find(stop_.stop_tokens.begin(), stop_.stop_tokens.end(), id) != stop_.stop_tokens.end()) {
      r_.reason = stop_reason::stop_token;
      return false;
    }
    const bool go = emit(id, text_.push(tok_ ? std::string_view(tok_->piece(id)) : std::string_view()), i);
    if (text_.matched()) {
      r_.reason = stop_reason::stop_string;
      r_.stop_string = std::string(text_.matched_string());
      matched_ = true;
      return false;
    }
    if (!go) {
      r_.reason = stop_reason::cancelled;
      return false;
    }
    return true;
  }
  /// Releases text still held back (unless a stop string ended the run) and returns the call's result.
  generation_result finish() {
    if (!matched_) {
      const std::string rest = text_.flush();
      if (!rest.empty()) emit(-1, rest, static_cast<index_t>(r_.tokens.size()));
    }
    r_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    return std::move(r_);
  }

 private:
  bool emit(std::int64_t id, const std::string& piece, index_t index) {
    r_.text += piece;
    return !on_token_ || on_token_(token_event{id, piece, index});
  }

  session<Model>* s_;
  stop_criteria stop_;
  const tokenizer* tok_;
  token_callback on_token_;
  stop_text text_;
  std::chrono::steady_clock::time_point t0_;
  generation_result r_{};
  bool matched_ = false;
};

}  // namespace detail

// ---------------------------------------------------------------------------------------------- saved state
//
// A session's state file is a safetensors file:
//   __metadata__  the model's configuration (the keys of a weight file: sessa.arch, sessa.d_model, ...,
//                 sessa.attention and sessa.window), and
//                 sessa.state = "1"             the format version
//                 sessa.state.cache_dtype       F32, F64, BF16 or F16: the cache's storage type, kept exactly
//                 sessa.state.length            tokens in the cache
//                 sessa.state.pending           the sampled token not yet in the cache, or "none"
//                 sessa.state.rng               the generator's four 64-bit words, 16 hex digits each, comma-separated
//   tokens            I64 (n)                   every token of the sequence (n = length, + 1 when a token is pending)
//   logits            F32|F64 (V)               the next-token logits after the cache's last token
//   sampler.recent    I64 (r)                   the penalties' history, oldest first
//   layers.{i}.k, .v  cache dtype (1, Hkv, length, d)   keys after RoPE and values, per layer
//   layers.{i}.kb, .s cache dtype (1, length, D)        feedback keys and mixer outputs
// Values are stored bit for bit, so a restored session continues exactly as the saved one would have.

namespace detail {

template <class C>
constexpr io::dtype state_dtype() {
  if constexpr (std::is_same_v<C, float>) return io::dtype::F32;
  else if constexpr (std::is_same_v<C, double>) return io::dtype::F64;
  else if constexpr (std::is_same_v<C, bfloat16>) return io::dtype::BF16;
  else return io::dtype::F16;
}

template <class Variant>
void variant_metadata(const Variant& v, std::map<std::string, std::string>& m) {
  if constexpr (std::is_same_v<Variant, attention::sliding_window>) {
    m["sessa.attention"] = "sliding_window";
    m["sessa.window"] = std::to_string(v.window);
  } else if constexpr (std::is_same_v<Variant, attention::causal>) {
    m["sessa.attention"] = "causal";
  } else {
    m["sessa.attention"] = std::string(Variant::name);
  }
}

template <class Model>
std::map<std::string, std::string> model_state_metadata(const Model& model) {
  std::map<std::string, std::string> m = io::config_metadata(model.config());
  if (!model.layers().empty()) variant_metadata(model.layers().front().get_mixer().variant(), m);
  return m;
}

}  // namespace detail

template <class Model>
void session<Model>::save(const std::filesystem::path& path) const {
  using C = cache_t<typename Model::precision_type>;
  if (tokens_.empty()) throw value_error("save: the session holds no tokens; there is nothing to save");
  io::safetensors_writer w;
  for (const auto& [k, v] : detail::model_state_metadata(*model_)) w.set_metadata(k, v);
  const index_t L = cache_.length();
  w.set_metadata("sessa.state", "1");
  w.set_metadata("sessa.state.cache_dtype", std::string(io::dtype_name(detail::state_dtype<C>())));
  w.set_metadata("sessa.state.length", std::to_string(L));
  w.set_metadata("sessa.state.pending", pending_ ? std::to_string(*pending_) : "none");
  std::string rng;
  for (std::uint64_t word : sampler_.rng().state()) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016" PRIx64, word);
    rng += (rng.empty() ? "" : ",") + std::string(buf);
  }
  w.set_metadata("sessa.state.rng", rng);
  w.add<std::int64_t>("tokens", {static_cast<index_t>(tokens_.size())}, std::span<const std::int64_t>(tokens_));
  w.add<scalar_type>("logits", {static_cast<index_t>(logits_.size())}, std::span<const scalar_type>(logits_));
  w.add<std::int64_t>("sampler.recent", {static_cast<index_t>(sampler_.recent().size())},
                      std::span<const std::int64_t>(sampler_.recent()));
  for (std::size_t i = 0; i < cache_.layers.size(); ++i) {
    const auto& lc = cache_.layers[i];
    const index_t H = lc.n_kv_heads(), d = lc.head_dim(), D = lc.d_model();
    std::vector<C> kv(static_cast<std::size_t>(H * L * d)), fb(static_cast<std::size_t>(L * D));
    const auto bytes = [](const std::vector<C>& v) {
      return std::span<const std::byte>(reinterpret_cast<const std::byte*>(v.data()), v.size() * sizeof(C));
    };
    const std::string pre = "layers." + std::to_string(i) + ".";
    for (const char* which : {"k", "v"}) {
      for (index_t h = 0; h < H; ++h) {
        const auto m = which[0] == 'k' ? lc.k(0, h) : lc.v(0, h);  // (capacity, d), rows contiguous
        memory::copy_n(m.data, L * d, kv.data() + h * L * d);
      }
      w.add(pre + which, detail::state_dtype<C>(), {1, H, L, d}, bytes(kv));
    }
    for (const char* which : {"kb", "s"}) {
      const auto m = which[0] == 'k' ? lc.kb(0) : lc.s(0);  // (capacity, D)
      memory::copy_n(m.data, L * D, fb.data());
      w.add(pre + which, detail::state_dtype<C>(), {1, L, D}, bytes(fb));
    }
  }
  w.write(path);
}

template <class Model>
session<Model> session<Model>::load(const io::safetensors_file& f, const Model& model, index_t capacity, sampler s) {
  using C = cache_t<typename Model::precision_type>;
  const std::string src = f.source();
  const auto& meta = f.metadata();
  const auto need = [&](const std::string& key) -> const std::string& {
    const auto it = meta.find(key);
    if (it == meta.end()) throw format_error(src + ": no metadata '" + key + "' (not a complete sessa state file)");
    return it->second;
  };
  if (!meta.count("sessa.state")) throw format_error(src + ": not a sessa state file (no metadata 'sessa.state')");
  if (need("sessa.state") != "1")
    throw format_error(src + ": state format '" + need("sessa.state") + "' (this library reads format 1)");
  {  // the same configuration and attention variant, key by key
    std::string diff;
    for (const auto& [k, v] : detail::model_state_metadata(model)) {
      const auto it = meta.find(k);
      const std::string there = it == meta.end() ? "(absent)" : it->second;
      if (there != v) diff += (diff.empty() ? "" : ", ") + k + " = " + there + " in the state, " + v + " in this model";
    }
    if (!diff.empty()) throw config_error(src + ": the state was saved from a model of another configuration: " + diff);
  }
  const std::string want_dtype(io::dtype_name(detail::state_dtype<C>()));
  if (need("sessa.state.cache_dtype") != want_dtype)
    throw config_error(src + ": the state's cache holds " + need("sessa.state.cache_dtype") + " values; this model's cache " +
                       want_dtype + " (restore it with the same numeric policy)");
  const index_t L = io::detail::meta_int(need("sessa.state.length"), "sessa.state.length", src);
  const std::string& pend = need("sessa.state.pending");
  std::optional<std::int64_t> pending;
  if (pend != "none") pending = io::detail::meta_int(pend, "sessa.state.pending", src);
  const index_t V = model.config().vocab_size;
  const std::vector<std::int64_t> tokens = f.read_as<std::int64_t>("tokens");
  const index_t n = static_cast<index_t>(tokens.size());
  if (f.at("tokens").shape.size() != 1 || n != L + (pending ? 1 : 0) || L < 1)
    throw format_error(src + ": 'tokens' holds " + std::to_string(n) + " tokens for a cache of " + std::to_string(L) +
                       (pending ? " and a pending token" : "") + " (inconsistent state)");
  for (index_t i = 0; i < n; ++i)
    if (tokens[static_cast<std::size_t>(i)] < 0 || tokens[static_cast<std::size_t>(i)] >= V)
      throw format_error(src + ": token id " + std::to_string(tokens[static_cast<std::size_t>(i)]) + " at position " +
                         std::to_string(i) + " is outside the vocabulary [0, " + std::to_string(V) + ")");
  if (pending && *pending != tokens.back())
    throw format_error(src + ": the pending token is not the last of 'tokens' (inconsistent state)");
  if (capacity < n)
    throw cache_error(src + ": the state holds " + std::to_string(n) + " tokens; a session of capacity " +
                      std::to_string(capacity) + " cannot take it");
  const io::tensor_entry& le = f.at("logits");
  if (le.type != detail::state_dtype<scalar_type>() || le.shape != shape_t{V})
    throw format_error(src + ": 'logits' is " + std::string(io::dtype_name(le.type)) + " " + sessa::shape_string(le.shape) +
                       "; this model needs " + std::string(io::dtype_name(detail::state_dtype<scalar_type>())) + " " +
                       sessa::shape_string(shape_t{V}));
  std::vector<scalar_type> logits(static_cast<std::size_t>(V));
  std::memcpy(logits.data(), f.raw(le).data(), logits.size() * sizeof(scalar_type));
  for (index_t v = 0; v < V; ++v)
    if (!std::isfinite(static_cast<double>(logits[static_cast<std::size_t>(v)])))
      throw format_error(src + ": 'logits' holds a non-finite value at " + std::to_string(v));
  sampling_rng::state_type st{};
  {
    const std::string& r = need("sessa.state.rng");
    std::size_t at = 0;
    for (std::size_t k = 0; k < 4; ++k) {
      const std::size_t end = k < 3 ? r.find(',', at) : r.size();
      const std::string word = end == std::string::npos ? std::string() : r.substr(at, end - at);
      std::uint64_t x = 0;
      auto [p, ec] = std::from_chars(word.data(), word.data() + word.size(), x, 16);
      if (word.size() != 16 || ec != std::errc{} || p != word.data() + word.size())
        throw format_error(src + ": metadata 'sessa.state.rng' must be four words of 16 hex digits, comma-separated");
      st[k] = x;
      at = end + 1;
    }
    if (st == sampling_rng::state_type{}) throw format_error(src + ": metadata 'sessa.state.rng' is all zero (invalid)");
  }
  const std::vector<std::int64_t> recent = f.read_as<std::int64_t>("sampler.recent");
  for (auto id : recent)
    if (id < 0 || id >= V) throw format_error(src + ": 'sampler.recent' holds token id " + std::to_string(id) + ", outside the vocabulary");

  session out(model, capacity, std::move(s));
  for (std::size_t i = 0; i < out.cache_.layers.size(); ++i) {
    auto& lc = out.cache_.layers[i];
    const index_t H = lc.n_kv_heads(), d = lc.head_dim(), D = lc.d_model();
    const std::string pre = "layers." + std::to_string(i) + ".";
    const auto read = [&](const std::string& name, const shape_t& shape) {
      const io::tensor_entry& e = f.at(name);
      if (e.type != detail::state_dtype<C>() || e.shape != shape)
        throw format_error(src + ": '" + name + "' is " + std::string(io::dtype_name(e.type)) + " " + sessa::shape_string(e.shape) +
                           ", expected " + want_dtype + " " + sessa::shape_string(shape));
      std::vector<C> v(e.nbytes / sizeof(C));
      std::memcpy(v.data(), f.raw(e).data(), e.nbytes);
      if constexpr (std::is_floating_point_v<C>)
        for (const C x : v)
          if (!std::isfinite(x)) throw format_error(src + ": '" + name + "' holds a non-finite value");
      return v;
    };
    for (const char* which : {"k", "v"}) {
      const std::vector<C> v = read(pre + which, {1, H, L, d});
      for (index_t h = 0; h < H; ++h) {
        const auto m = which[0] == 'k' ? lc.k(0, h) : lc.v(0, h);
        memory::copy_n(v.data() + h * L * d, L * d, m.data);
      }
    }
    for (const char* which : {"kb", "s"}) {
      const std::vector<C> v = read(pre + which, {1, L, D});
      const auto m = which[0] == 'k' ? lc.kb(0) : lc.s(0);
      memory::copy_n(v.data(), L * D, m.data);
    }
    lc.advance(L);
  }
  out.tokens_ = tokens;
  out.pending_ = pending;
  out.logits_ = std::move(logits);
  out.sampler_.set_recent(recent);
  out.sampler_.rng().set_state(st);
  return out;
}

}  // namespace sessa
