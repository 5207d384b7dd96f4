// The generation API: the generator, every sampling step (distributions checked statistically on fixed
// logits), stop strings across token boundaries, tokenizers, and sessions against hand-written decode loops.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "support.hpp"

using namespace sessa;

namespace {

/// Frequencies of n draws of `s` on `logits`, by token id.
std::vector<double> frequencies(sampler& s, const std::vector<double>& logits, int n) {
  std::vector<double> f(logits.size(), 0.0);
  for (int i = 0; i < n; ++i) f[static_cast<std::size_t>(s.sample(std::span<const double>(logits)))] += 1.0 / n;
  return f;
}

std::vector<double> softmax(const std::vector<double>& l, double t = 1.0) {
  double m = -std::numeric_limits<double>::infinity(), z = 0;
  for (double x : l) m = std::max(m, x / t);
  std::vector<double> p;
  for (double x : l) p.push_back(std::exp(x / t - m)), z += p.back();
  for (double& x : p) x /= z;
  return p;
}

/// Pearson's chi-square statistic of n draws with frequencies f against probabilities p (cells with p = 0 must
/// have f = 0, checked separately).
double chi_square(const std::vector<double>& f, const std::vector<double>& p, int n) {
  double c = 0;
  for (std::size_t i = 0; i < p.size(); ++i)
    if (p[i] > 0) c += n * (f[i] - p[i]) * (f[i] - p[i]) / p[i];
  return c;
}

/// The candidates a chain leaves (ids and logits), through a final step that records them.
std::vector<token_candidate> after(sampler s, const std::vector<double>& logits) {
  std::vector<token_candidate> seen;
  s.add(custom_step([&](candidates& c, const sampling_context&) { seen = c.items(); }));
  s.sample(std::span<const double>(logits));
  return seen;
}

const std::vector<double> five = {1.0, 2.0, 0.5, -1.0, 3.0};

}  // namespace

TEST_CASE("sampling_rng is xoshiro256** seeded by splitmix64, and its state restores exactly", "[generate]") {
  sampling_rng r(42);
  // Reference values computed independently from the published algorithm.
  CHECK(r.next() == 0x15780b2e0c2ec716ull);
  CHECK(r.next() == 0x6104d9866d113a7eull);
  CHECK(r.next() == 0xae17533239e499a1ull);
  const auto saved = r.state();
  const double a = r.uniform(), b = r.uniform();
  CHECK((a >= 0 && a < 1 && b >= 0 && b < 1 && a != b));
  sampling_rng q(7);
  q.set_state(saved);
  CHECK(q.uniform() == a);
  CHECK(q.uniform() == b);
  CHECK(q == r);
}

TEST_CASE("plain sampling and temperature follow the softmax (chi-square on 200000 draws)", "[generate]") {
  const int n = 200000;
  // 4 degrees of freedom: P(chi2 > 30) < 5e-6. The seed is fixed, so the test is deterministic.
  for (const double t : {1.0, 0.7, 2.5}) {
    sampler s(11);
    s.add(temperature{t});
    const auto f = frequencies(s, five, n);
    INFO("temperature " << t);
    CHECK(chi_square(f, softmax(five, t), n) < 30.0);
  }
  // And the statistic does detect a wrong distribution: temperature 0.7's draws against temperature 1.
  sampler s(11);
  s.add(temperature{0.7});
  CHECK(chi_square(frequencies(s, five, n), softmax(five, 1.0), n) > 1000.0);
}

TEST_CASE("temperature 0 is greedy; ties go to the lowest id", "[generate]") {
  sampler s(3);
  s.add(temperature{0.0});
  for (int i = 0; i < 50; ++i) CHECK(s.sample(std::span<const double>(five)) == 4);
  const std::vector<float> tie = {0.5f, 2.0f, -1.0f, 2.0f};
  CHECK(s.sample(std::span<const float>(tie)) == 1);
  CHECK(argmax_token(std::span<const float>(tie)) == 1);
  CHECK(sampler::from({.temperature = 0.0}).sample(std::span<const double>(five)) == 4);
}

TEST_CASE("top-k, top-p and min-p keep the right tokens, and sampling among them is renormalized", "[generate]") {
  const int n = 100000;
  {  // top-k 2: tokens 4 and 1 only, in proportion e^3 : e^2
    sampler s(5);
    s.add(top_k{2});
    const auto f = frequencies(s, five, n);
    CHECK(f[0] == 0);
    CHECK(f[2] == 0);
    CHECK(f[3] == 0);
    const double p4 = std::exp(3.0) / (std::exp(3.0) + std::exp(2.0));
    CHECK(std::abs(f[4] - p4) < 0.01);
  }
  const std::vector<double> l = {std::log(0.15), std::log(0.5), std::log(0.05), std::log(0.3)};
  {  // top-p 0.75: 0.5 + 0.3 reaches it; tokens 1 and 3
    const auto kept = after([] { sampler s(1); s.add(top_p{0.75}); return s; }(), l);
    REQUIRE(kept.size() == 2);
    CHECK(kept[0].id == 1);
    CHECK(kept[1].id == 3);
    sampler s(9);
    s.add(top_p{0.75});
    const auto f = frequencies(s, l, n);
    CHECK(chi_square(f, {0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8}, n) < 20.0);
    CHECK(f[0] == 0);
    CHECK(f[2] == 0);
  }
  {  // top-p 0.9 needs 0.15 too; top-p 1 keeps everything
    CHECK(after([] { sampler s(1); s.add(top_p{0.9}); return s; }(), l).size() == 3);
    CHECK(after([] { sampler s(1); s.add(top_p{1.0}); return s; }(), l).size() == 4);
  }
  {  // min-p 0.25: p >= 0.125 keeps 0.5, 0.3, 0.15; min-p 0.5 keeps 0.5, 0.3
    CHECK(after([] { sampler s(1); s.add(min_p{0.25}); return s; }(), l).size() == 3);
    const auto kept = after([] { sampler s(1); s.add(min_p{0.5}); return s; }(), l);
    REQUIRE(kept.size() == 2);
    CHECK(kept[1].id == 3);
  }
  {  // top-k 0 is off
    CHECK(after([] { sampler s(1); s.add(top_k{0}); return s; }(), l).size() == 4);
  }
}

TEST_CASE("repetition, frequency and presence penalties change the logits of recent tokens only", "[generate]") {
  const std::vector<double> l = {2.0, -1.0, 0.5, 1.0};
  sampler s(1, 3);  // history of 3 tokens
  s.add(penalties{3, 2.0, 0.5, 0.25});
  for (std::int64_t t : {3, 0, 1, 1}) s.accept(t);  // token 3 falls out of the history
  REQUIRE(s.recent() == std::vector<std::int64_t>{0, 1, 1});
  std::map<std::int64_t, double> got;
  for (const auto& c : after(s, l)) got[c.id] = c.logit;
  CHECK(got[0] == Approx(2.0 / 2.0 - 0.5 * 1 - 0.25));
  CHECK(got[1] == Approx(-1.0 * 2.0 - 0.5 * 2 - 0.25));
  CHECK(got[2] == 0.5);
  CHECK(got[3] == 1.0);
  // last_n narrower than the history: only the last token counts.
  sampler t(1, 3);
  t.add(penalties{1, 2.0, 0.0, 0.0});
  for (std::int64_t x : {0, 1}) t.accept(x);
  std::map<std::int64_t, double> g2;
  for (const auto& c : after(t, l)) g2[c.id] = c.logit;
  CHECK(g2[0] == 2.0);
  CHECK(g2[1] == -2.0);
}

TEST_CASE("logit bias shifts and bans tokens", "[generate]") {
  sampler s(1);
  s.add(logit_bias{{{4, -std::numeric_limits<double>::infinity()}, {0, 0.75}}});
  s.add(temperature{0.0});
  CHECK(s.sample(std::span<const double>(five)) == 1);  // 4 banned; 2.0 > 1.75
  sampler u(1);
  u.add(logit_bias{{{4, -std::numeric_limits<double>::infinity()}, {0, 1.5}}});
  u.add(temperature{0.0});
  CHECK(u.sample(std::span<const double>(five)) == 0);  // 2.5 > 2.0
  // Banned tokens are never drawn, at any temperature.
  sampler w(2);
  w.add(logit_bias{{{4, -std::numeric_limits<double>::infinity()}}});
  CHECK(frequencies(w, five, 20000)[4] == 0);
}

TEST_CASE("a compile-time chain equals the same steps added at run time", "[generate]") {
  const sampling_chain<top_k, temperature> chain{{top_k{3}, temperature{0.5}}};
  sampler a(21), b(21);
  a.add(custom_step([&](candidates& c, const sampling_context& ctx) { chain.apply(c, ctx); }));
  b.add(top_k{3}).add(temperature{0.5});
  for (int i = 0; i < 1000; ++i) CHECK(a.sample(std::span<const double>(five)) == b.sample(std::span<const double>(five)));
  static_assert(sampling_step<sampling_chain<top_k, temperature>>);
  static_assert(sampling_step<penalties>);
}

TEST_CASE("the same seed gives the same draws; sampler::from builds the usual chain", "[generate]") {
  sampling_params p;
  p.seed = 1234;
  p.temperature = 0.9;
  p.top_k = 4;
  p.top_p = 0.95;
  p.min_p = 0.02;
  p.repeat_penalty = 1.1;
  sampler a = sampler::from(p), b = sampler::from(p);
  CHECK(a.steps().size() == 6);
  std::vector<std::int64_t> da, db;
  for (int i = 0; i < 500; ++i) {
    da.push_back(a.sample(std::span<const double>(five)));
    a.accept(da.back());
    db.push_back(b.sample(std::span<const double>(five)));
    b.accept(db.back());
  }
  CHECK(da == db);
  p.seed = 1235;
  sampler c = sampler::from(p);
  std::vector<std::int64_t> dc;
  for (int i = 0; i < 500; ++i) {
    dc.push_back(c.sample(std::span<const double>(five)));
    c.accept(dc.back());
  }
  CHECK(dc != da);
}

TEST_CASE("sampling errors name the problem", "[generate][errors]") {
  sampler s(1);
  const std::vector<double> nan = {0.0, std::nan(""), 1.0};
  CHECK_THROWS_WITH(s.sample(std::span<const double>(nan)), Catch::Contains("logit of token 1 is NaN"));
  const std::vector<double> inf = {0.0, std::numeric_limits<double>::infinity()};
  CHECK_THROWS_WITH(s.sample(std::span<const double>(inf)), Catch::Contains("logit of token 1 is +inf"));
  const std::vector<double> banned(3, -std::numeric_limits<double>::infinity());
  CHECK_THROWS_WITH(s.sample(std::span<const double>(banned)), Catch::Contains("no token left"));
  CHECK_THROWS_WITH(s.sample(std::span<const double>()), Catch::Contains("no token left"));
  CHECK_THROWS_WITH(sampler(1).add(top_p{0.0}), Catch::Contains("top_p: p must be in (0, 1]"));
  CHECK_THROWS_WITH(sampler(1).add(top_p{1.5}), Catch::Contains("top_p"));
  CHECK_THROWS_WITH(sampler(1).add(min_p{-0.1}), Catch::Contains("min_p"));
  CHECK_THROWS_WITH(sampler(1).add(top_k{-1}), Catch::Contains("top_k: k must be >= 0"));
  CHECK_THROWS_WITH(sampler(1).add(temperature{-1}), Catch::Contains("temperature"));
  CHECK_THROWS_WITH(sampler(1).add(temperature{std::nan("")}), Catch::Contains("temperature"));
  CHECK_THROWS_WITH(sampler(1).add(penalties{64, 0.0}), Catch::Contains("repeat must be a positive number"));
  CHECK_THROWS_WITH(sampler(1).add(penalties{-2}), Catch::Contains("last_n"));
  CHECK_THROWS_WITH(sampler(1).add(custom_step{}), Catch::Contains("empty custom step"));
  CHECK_THROWS_WITH(sampler(1).add(logit_bias{{{-1, 1.0}}}), Catch::Contains("token id -1 is negative"));
  CHECK_THROWS_WITH(sampler(1).add(logit_bias{{{0, std::nan("")}}}), Catch::Contains("finite or -inf"));
  sampler b(1);
  b.add(logit_bias{{{7, 1.0}}});
  CHECK_THROWS_WITH(b.sample(std::span<const double>(five)), Catch::Contains("token id 7 is outside the vocabulary (5 tokens)"));
  CHECK_THROWS_WITH(sampler(1, -1), Catch::Contains("history"));
  CHECK_THROWS_WITH(argmax_token(std::span<const double>()), Catch::Contains("empty row"));
}

TEST_CASE("stop strings match across token boundaries; held-back text is released when it cannot match", "[generate]") {
  {
    stop_text s({"o w"});
    CHECK(s.push("he") == "he");
    CHECK(s.push("llo") == "ll");  // "o" may start "o w"
    CHECK(s.push(" wo") == "");
    CHECK(s.matched());
    CHECK(s.matched_string() == "o w");
    CHECK(s.push("rld") == "");  // ignored after the match
  }
  {
    stop_text s({"END", "ENOUGH"});
    CHECK(s.push("xE") == "x");
    CHECK(s.push("N") == "");
    CHECK(s.push("O") == "");  // "ENO" may still be "ENOUGH"
    CHECK(s.push("x") == "ENOx");  // no longer
    CHECK_FALSE(s.matched());
    CHECK(s.push("E") == "");
    CHECK(s.flush() == "E");
  }
  {  // the earliest stop string wins; text before it is released in the same push
    stop_text s({"cd", "bc"});
    CHECK(s.push("abcd") == "a");
    CHECK(s.matched_string() == "bc");
  }
  {  // half a UTF-8 character is held back until complete
    stop_text s;
    const std::string e = "\xC3\xA9";  // é
    CHECK(s.push(std::string("a") + e[0]) == "a");
    CHECK(s.push(std::string(1, e[1])) == e);
    const std::string euro = "\xE2\x82\xAC";  // €
    CHECK(s.push(euro.substr(0, 1)) == "");
    CHECK(s.push(euro.substr(1, 1)) == "");
    CHECK(s.push(euro.substr(2, 1)) == euro);
    CHECK(s.push("\xE2") == "");
    CHECK(s.flush() == "\xE2");  // an incomplete character at the end comes out as it is
  }
  CHECK_THROWS_WITH(stop_text({""}), Catch::Contains("empty stop string"));
  CHECK_THROWS_WITH((stop_criteria{.max_tokens = -1}.check()), Catch::Contains("max_tokens"));
  CHECK_THROWS_WITH((stop_criteria{.stop_strings = {""}}.check()), Catch::Contains("empty stop string"));
  CHECK(std::string(to_string(stop_reason::stop_string)) == "stop_string");
}

TEST_CASE("tokenizers: characters (UTF-8) and bytes, with errors that name the offset or id", "[generate]") {
  const tokenizer c = tokenizer::characters("ab \xC3\xA9\xE2\x82\xAC");  // a b space é €
  CHECK(c.size() == 5);
  CHECK(c.type() == tokenizer::kind::characters);
  const auto ids = c.encode("b\xE2\x82\xAC a\xC3\xA9");
  CHECK(ids == std::vector<std::int64_t>{1, 4, 2, 0, 3});
  CHECK(c.decode(ids) == "b\xE2\x82\xAC a\xC3\xA9");
  CHECK(c.vocabulary() == "ab \xC3\xA9\xE2\x82\xAC");
  CHECK_THROWS_WITH(c.encode("abz"), Catch::Contains("the character 'z' at byte 2 is not in the model's vocabulary"));
  CHECK_THROWS_WITH(c.encode("a\xC3"), Catch::Contains("not valid UTF-8 at byte 1"));
  CHECK_THROWS_WITH(c.encode("\xC0\x80"), Catch::Contains("not valid UTF-8 at byte 0"));  // overlong
  CHECK_THROWS_WITH(c.encode("\xED\xA0\x80"), Catch::Contains("not valid UTF-8"));       // a surrogate
  CHECK_THROWS_WITH(c.piece(5), Catch::Contains("token id 5 is outside the vocabulary (5 tokens)"));
  CHECK_THROWS_WITH(c.piece(-1), Catch::Contains("token id -1"));
  CHECK_THROWS_WITH(tokenizer::characters("abca"), Catch::Contains("lists 'a' twice"));
  CHECK_THROWS_WITH(tokenizer::characters(""), Catch::Contains("empty"));
  CHECK_THROWS_WITH(tokenizer::characters("a\xFF"), Catch::Contains("not valid UTF-8 at byte 1"));

  const tokenizer b = tokenizer::bytes();
  CHECK(b.size() == 256);
  std::string all;
  for (int i = 0; i < 256; ++i) all += static_cast<char>(i);
  const auto bid = b.encode(all);
  REQUIRE(bid.size() == 256);
  CHECK(bid[200] == 200);
  CHECK(b.decode(bid) == all);
  CHECK_THROWS_WITH(b.piece(256), Catch::Contains("token id 256 is outside the vocabulary (256 tokens)"));

  const std::map<std::string, std::string> chars = {{"sessa.vocab", "xyz"}}, bytes = {{"sessa.tokenizer", "bytes"}};
  CHECK(tokenizer::from_metadata(chars, 3, "m.safetensors").encode("zx") == std::vector<std::int64_t>{2, 0});
  CHECK(tokenizer::from_metadata(bytes, 256, "m.safetensors").type() == tokenizer::kind::bytes);
  CHECK_THROWS_WITH(tokenizer::from_metadata(chars, 4, "m.safetensors"),
                    Catch::Contains("m.safetensors: the tokenizer has 3 tokens but vocab_size is 4"));
  CHECK_THROWS_WITH(tokenizer::from_metadata({}, 4, "m.safetensors"), Catch::Contains("m.safetensors: no tokenizer"));
  CHECK_THROWS_WITH(tokenizer::from_metadata({{"sessa.tokenizer", "bpe"}}, 4, "m.safetensors"),
                    Catch::Contains("'sessa.tokenizer' is 'bpe'"));
  CHECK_THROWS_WITH(tokenizer::from_metadata({{"sessa.vocab", "aa"}}, 2, "m.safetensors"),
                    Catch::Contains("m.safetensors: metadata 'sessa.vocab'") && Catch::Contains("twice"));
}

namespace {
const decoder_config small{{32, 4, 2, true, 0.99, 1e-5}, 40, 2, true};
}

TEST_CASE("a greedy session equals a hand-written prefill + decode loop", "[generate]") {
  const decoder<float, backend::cpu> model(small, random_decoder_weights<float>(small, 17));
  const auto prompt = test::random_tokens(1, 9, small.vocab_size, 5);
  const std::vector<std::int64_t> p(prompt.data(), prompt.data() + prompt.size());
  // By hand.
  auto cache = model.init_cache(1, 40);
  tensor<float> logits = model.forward(prompt, cache, logits_for::last);
  std::vector<std::int64_t> want;
  for (int i = 0; i < 25; ++i) {
    want.push_back(argmax_token(std::span<const float>(logits.data(), logits.size())));
    if (i + 1 < 25) logits = model.decode_step(std::span<const std::int64_t>(&want.back(), 1), cache);
  }
  // A prefill in chunks of 4, with progress: the same logits within rounding.
  session<decoder<float, backend::cpu>> chunked(model, 40);
  std::vector<std::pair<index_t, index_t>> progress;
  CHECK(chunked.feed(p, {.chunk = 4, .progress = [&](index_t done, index_t total) {
                           progress.emplace_back(done, total);
                           return true;
                         }}) == 9);
  CHECK(progress == std::vector<std::pair<index_t, index_t>>{{4, 9}, {8, 9}, {9, 9}});
  CHECK(chunked.cache().length() == 9);
  // The session, in one prefill pass like the loop above: the same tokens.
  session<decoder<float, backend::cpu>> s(model, 40, sampler::from({.temperature = 0.0}));
  CHECK(s.feed(p) == 9);
  CHECK(test::max_rel_diff(std::vector<float>(chunked.logits().begin(), chunked.logits().end()),
                           std::vector<float>(s.logits().begin(), s.logits().end())) < 1e-5);
  std::vector<std::int64_t> streamed;
  const auto r = s.generate({.max_tokens = 25}, nullptr, [&](const token_event& e) {
    CHECK(e.index == static_cast<index_t>(streamed.size()));
    streamed.push_back(e.id);
    return true;
  });
  CHECK(r.tokens == want);
  CHECK(streamed == want);
  CHECK(r.reason == stop_reason::max_tokens);
  CHECK(s.position() == 9 + 25);
  CHECK(s.cache().length() == 9 + 24);  // the last token is pending
  CHECK(s.pending() == want.back());
}

TEST_CASE("a session generates the same tokens in one call or several, and after a rollback", "[generate]") {
  const decoder<double, backend::cpu> model(small, random_decoder_weights<double>(small, 23));
  const std::vector<std::int64_t> p = {1, 5, 9, 2, 7};
  sampling_params sp;
  sp.seed = 99;
  sp.temperature = 1.3;
  sp.top_k = 20;
  sp.repeat_penalty = 1.2;
  session<decoder<double, backend::cpu>> one(model, 64, sampler::from(sp)), two(model, 64, sampler::from(sp));
  one.feed(p);
  two.feed(p);
  const auto all = one.generate({.max_tokens = 30}).tokens;
  auto part = two.generate({.max_tokens = 12}).tokens;
  const auto rest = two.generate({.max_tokens = 18}).tokens;
  part.insert(part.end(), rest.begin(), rest.end());
  CHECK(part == all);
  CHECK(one.tokens() == two.tokens());
  // The drawn text is really random: not all one token.
  CHECK(std::count(all.begin(), all.end(), all.front()) < 30);

  // Greedy: a rollback to the prompt plus 6 tokens generates the same continuation again.
  session<decoder<double, backend::cpu>> g(model, 64, sampler::from({.temperature = 0.0}));
  g.feed(p);
  const auto first = g.generate({.max_tokens = 20}).tokens;
  g.rollback(5 + 6);
  CHECK(g.position() == 11);
  CHECK(g.cache().length() == 11);
  const auto again = g.generate({.max_tokens = 14}).tokens;
  CHECK(std::vector<std::int64_t>(first.begin() + 6, first.end()) == again);
  CHECK_THROWS_WITH(g.rollback(0), Catch::Contains("cannot go back to 0"));
  CHECK_THROWS_WITH(g.rollback(100), Catch::Contains("holds 25 tokens"));
}

TEST_CASE("stop tokens, stop strings, cancellation and a full cache end a generate call", "[generate]") {
  const decoder<float, backend::cpu> model(small, random_decoder_weights<float>(small, 31));
  const std::string vocab = "abcdefghijklmnopqrstuvwxyz0123456789 .,!";
  const tokenizer tok = tokenizer::characters(vocab);
  const auto greedy = [&](index_t cap) { return session<decoder<float, backend::cpu>>(model, cap, sampler::from({.temperature = 0.0})); };
  auto s0 = greedy(64);
  s0.feed(tok.encode("hello"));
  const auto free_run = s0.generate({.max_tokens = 20}, &tok);
  REQUIRE(free_run.text.size() == 20);
  CHECK(free_run.text == tok.decode(free_run.tokens));

  {  // a stop token: the call ends on it and its text is not streamed
    auto s = greedy(64);
    s.feed(tok.encode("hello"));
    const std::int64_t stop_id = free_run.tokens[7];
    const auto first_at = std::find(free_run.tokens.begin(), free_run.tokens.end(), stop_id) - free_run.tokens.begin();
    const auto r = s.generate({.max_tokens = 20, .stop_tokens = {stop_id}}, &tok);
    CHECK(r.reason == stop_reason::stop_token);
    CHECK(static_cast<long>(r.tokens.size()) == first_at + 1);
    CHECK(r.text == free_run.text.substr(0, static_cast<std::size_t>(first_at)));
  }
  {  // a stop string made of the text of tokens 5..7: the text before it, nothing after
    auto s = greedy(64);
    s.feed(tok.encode("hello"));
    const std::string stop = free_run.text.substr(5, 3);
    const auto at = free_run.text.find(stop);
    std::string streamed;
    const auto r = s.generate({.max_tokens = 20, .stop_strings = {stop}}, &tok, [&](const token_event& e) {
      streamed += e.text;
      return true;
    });
    CHECK(r.reason == stop_reason::stop_string);
    CHECK(r.stop_string == stop);
    CHECK(r.text == free_run.text.substr(0, at));
    CHECK(streamed == r.text);
    CHECK(r.tokens.size() == at + 3);
  }
  {  // a stop string that never completes: everything is streamed, the held-back end included
    auto s = greedy(64);
    s.feed(tok.encode("hello"));
    const std::string never = free_run.text.substr(18, 2) + "!!!";
    std::string streamed;
    const auto r = s.generate({.max_tokens = 20, .stop_strings = {never}}, &tok, [&](const token_event& e) {
      streamed += e.text;
      return true;
    });
    CHECK(r.reason == stop_reason::max_tokens);
    CHECK(streamed == free_run.text);
  }
  {  // cancellation after 4 tokens
    auto s = greedy(64);
    s.feed(tok.encode("hello"));
    int calls = 0;
    const auto r = s.generate({.max_tokens = 20}, &tok, [&](const token_event&) { return ++calls < 4; });
    CHECK(r.reason == stop_reason::cancelled);
    CHECK(r.tokens.size() == 4);
  }
  {  // a cache of 12 tokens: 5 of prompt, then 7 generated and the 8th cannot be fed
    auto s = greedy(12);
    s.feed(tok.encode("hello"));
    const auto r = s.generate({.max_tokens = 20}, &tok);
    CHECK(r.reason == stop_reason::cache_full);
    CHECK(r.tokens.size() == 8);
    CHECK(r.text == free_run.text.substr(0, 8));
    CHECK_THROWS_WITH(s.feed(tok.encode("a")), Catch::Contains("1 tokens do not fit: the cache holds 12 of its 12 tokens "
                                                                "and the last sampled token waits to enter it"));
  }
}

TEST_CASE("session errors name the problem and change nothing", "[generate][errors]") {
  const decoder<float, backend::cpu> model(small, random_decoder_weights<float>(small, 3));
  session<decoder<float, backend::cpu>> s(model, 8);
  CHECK_THROWS_WITH(s.generate({.max_tokens = 3}), Catch::Contains("feed a prompt first"));
  const std::vector<std::int64_t> bad = {1, 2, 40};
  CHECK_THROWS_WITH(s.feed(bad), Catch::Contains("token id 40 at position 2 is outside the vocabulary [0, 40)"));
  CHECK(s.position() == 0);
  const std::vector<std::int64_t> long_prompt(9, 1);
  CHECK_THROWS_WITH(s.feed(long_prompt), Catch::Contains("9 tokens do not fit: the cache holds 0 of its 8 tokens"));
  CHECK(s.cache().length() == 0);
  CHECK_THROWS_WITH(s.feed(bad, {.chunk = 0}), Catch::Contains("chunk must be >= 1"));
  const tokenizer wrong = tokenizer::bytes();
  s.feed(std::vector<std::int64_t>{1, 2});
  CHECK_THROWS_WITH(s.generate({.max_tokens = 1}, &wrong), Catch::Contains("the tokenizer has 256 tokens, the model 40"));
  // A progress callback that stops: the chunks fed so far stay.
  session<decoder<float, backend::cpu>> t(model, 8);
  CHECK(t.feed(std::vector<std::int64_t>{1, 2, 3, 4, 5}, {.chunk = 2, .progress = [](index_t, index_t) { return false; }}) == 2);
  CHECK(t.position() == 2);
  CHECK(t.cache().length() == 2);
}

namespace {
/// Logits of a decode step of token `t` on `cache` alone (batch 1), on the host.
template <class Model>
std::vector<typename Model::scalar_type> solo_step(const Model& m, typename Model::cache_type& cache, std::int64_t t) {
  const auto l = to_host(m.decode_step(std::span<const std::int64_t>(&t, 1), cache));
  return {l.data(), l.data() + l.size()};
}

template <class Model>
void check_ragged_step(const Model& model, double tol) {
  using T = typename Model::scalar_type;
  using C = typename Model::cache_type;
  const index_t V = small.vocab_size;
  // Three sequences of different lengths, twice: one set steps together, the other alone.
  const std::vector<index_t> lengths = {3, 11, 7};
  std::vector<C> together, alone;
  for (std::size_t i = 0; i < lengths.size(); ++i) {
    const auto prompt = test::random_tokens(1, lengths[i], V, 40 + i);
    together.push_back(model.init_cache(1, 32));
    alone.push_back(model.init_cache(1, 32));
    model.forward(prompt, together.back(), logits_for::last);
    model.forward(prompt, alone.back(), logits_for::last);
  }
  step_scratch<typename Model::precision_type, typename Model::backend_type> scratch;
  for (int step = 0; step < 4; ++step) {
    // Row order differs from cache order, and the last step leaves row 1 out (a finished row).
    std::vector<C*> rows = {&together[2], &together[0], &together[1]};
    std::vector<std::int64_t> ids = {(5 + step) % V, (11 * step + 1) % V, (3 * step + 2) % V};
    std::vector<std::size_t> which = {2, 0, 1};
    if (step == 3) rows.pop_back(), ids.pop_back(), which.pop_back();
    const auto got = to_host(model.step_rows(ids, std::span<C* const>(rows), scratch));
    REQUIRE(got.dim(0) == static_cast<index_t>(rows.size()));
    for (std::size_t r = 0; r < rows.size(); ++r) {
      const auto want = solo_step(model, alone[which[r]], ids[r]);
      const std::vector<T> row(got.data() + static_cast<index_t>(r) * V, got.data() + static_cast<index_t>(r + 1) * V);
      INFO("step " << step << ", row " << r);
      CHECK(test::max_rel_diff(row, want) < tol);
      CHECK(together[which[r]].length() == alone[which[r]].length());
    }
  }
  CHECK(together[0].length() == 3 + 4);
  CHECK(together[1].length() == 11 + 3);
  CHECK(together[2].length() == 7 + 4);
}
}  // namespace

TEST_CASE("step_rows: sequences of different lengths step together, each row equal to its solo decode step",
          "[generate][batch]") {
  SECTION("cpu, double") {
    check_ragged_step(decoder<double, backend::cpu>(small, random_decoder_weights<double>(small, 61)), 1e-12);
  }
  SECTION("cpu, float") {
    check_ragged_step(decoder<float, backend::cpu>(small, random_decoder_weights<float>(small, 62)), 2e-5);
  }
  SECTION("reference, double, sliding window") {
    check_ragged_step(decoder<double, backend::reference, attention::sliding_window>(
                          small, random_decoder_weights<double>(small, 63), attention::sliding_window{5}),
                      1e-12);
  }
  SECTION("reference, float compute with bfloat16 weights and cache") {
    check_ragged_step(
        decoder<precision<float, bfloat16>, backend::reference>(small, random_decoder_weights<bfloat16>(small, 64)),
        2e-5);
  }
}

TEST_CASE("step_rows errors name the row and change no cache", "[generate][batch][errors]") {
  using M = decoder<float, backend::cpu>;
  const M model(small, random_decoder_weights<float>(small, 5));
  auto a = model.init_cache(1, 8), b = model.init_cache(1, 2), wide = model.init_cache(2, 8);
  M::cache_type empty;
  const std::vector<std::int64_t> p = {1, 2};
  model.forward(tensor<std::int64_t>({1, 2}, p), a, logits_for::last);
  model.forward(tensor<std::int64_t>({1, 2}, p), b, logits_for::last);  // b is now full
  step_scratch<float, backend::cpu> sc;
  const auto call = [&](std::vector<std::int64_t> ids, std::vector<M::cache_type*> cs) {
    return model.step_rows(ids, std::span<M::cache_type* const>(cs), sc);
  };
  CHECK_THROWS_WITH(call({1}, {&a, &a}), Catch::Contains("1 tokens for 2 caches"));
  CHECK_THROWS_WITH(call({}, {}), Catch::Contains("at least one"));
  CHECK_THROWS_WITH(call({1, 2}, {&a, &a}), Catch::Contains("caches 0 and 1 are the same cache"));
  CHECK_THROWS_WITH(call({1, 2}, {&a, &b}), Catch::Contains("cache 1 is full (capacity 2 tokens"));
  CHECK_THROWS_WITH(call({1, 2}, {&a, &wide}), Catch::Contains("cache 1 was made for batch 2"));
  CHECK_THROWS_WITH(call({1, 2}, {&a, &empty}), Catch::Contains("cache 1 holds 0 layers"));
  CHECK_THROWS_WITH(call({1, 2}, {&a, nullptr}), Catch::Contains("cache 1 is null"));
  CHECK_THROWS_WITH(call({1, 40}, {&a, &wide}), Catch::Contains("token id 40 at batch row 1"));
  CHECK(a.length() == 2);
  CHECK(b.length() == 2);
  CHECK(wide.length() == 0);
  tensor<float> small_logits({1, small.vocab_size});
  std::vector<M::cache_type*> one = {&a};
  const std::vector<std::int64_t> id = {3};
  CHECK_THROWS_WITH(model.step_rows(id, std::span<M::cache_type* const>(one), sc,
                                    matrix<float>(small_logits.data(), 1, small.vocab_size - 1)),
                    Catch::Contains("logits view is (1, 39), expected (1, 40)"));
  CHECK(a.length() == 2);
}

TEST_CASE("generate_batch: prompts of different lengths, each row equal to its solo run; rows leave independently",
          "[generate][batch]") {
  using M = decoder<double, backend::cpu>;
  const M model(small, random_decoder_weights<double>(small, 71));
  const std::string vocab = "abcdefghijklmnopqrstuvwxyz0123456789 .,!";
  const tokenizer tok = tokenizer::characters(vocab);
  const std::vector<std::string> prompts = {"hi", "the sea at dawn", "a", "seven words of text here"};
  const auto params = [](std::size_t i) {
    sampling_params sp;
    sp.seed = 100 + i;
    sp.temperature = i % 2 ? 0.0 : 0.9;  // greedy and sampled rows side by side
    sp.top_k = 12;
    sp.repeat_penalty = 1.1;
    return sp;
  };
  // Per-row stop criteria: different lengths, a stop token, a stop string; and a small cache for row 2.
  std::vector<stop_criteria> stops(4);
  stops[0].max_tokens = 30;
  stops[1].max_tokens = 12;
  stops[2].max_tokens = 50;
  stops[3].max_tokens = 25;
  const auto solo_run = [&](std::size_t i) {
    session<M> s(model, i == 2 ? 20 : 64, sampler::from(params(i)));
    s.feed(tok.encode(prompts[i]));
    return s.generate(stops[i], &tok);
  };
  // Choose a stop token and a stop string that row 0 and row 3 really meet, from their solo runs.
  {
    const auto r0 = solo_run(0);
    REQUIRE(r0.tokens.size() == 30);
    stops[0].stop_tokens = {r0.tokens[9]};
    const auto r3 = solo_run(3);
    REQUIRE(r3.text.size() >= 12);
    stops[3].stop_strings = {r3.text.substr(6, 3)};
  }
  std::vector<generation_result> solo;
  for (std::size_t i = 0; i < 4; ++i) solo.push_back(solo_run(i));
  CHECK(solo[0].reason == stop_reason::stop_token);
  CHECK(solo[1].reason == stop_reason::max_tokens);
  CHECK(solo[2].reason == stop_reason::cache_full);
  CHECK(solo[3].reason == stop_reason::stop_string);

  std::vector<session<M>> rows;
  for (std::size_t i = 0; i < 4; ++i) {
    rows.emplace_back(model, i == 2 ? 20 : 64, sampler::from(params(i)));
    rows.back().feed(tok.encode(prompts[i]));
  }
  std::vector<session<M>*> ptrs;
  for (auto& r : rows) ptrs.push_back(&r);
  std::vector<std::string> streamed(4);
  const auto got = generate_batch<M>(ptrs, stops, &tok, [&](index_t row, const token_event& e) {
    streamed[static_cast<std::size_t>(row)] += e.text;
    return true;
  });
  REQUIRE(got.size() == 4);
  for (std::size_t i = 0; i < 4; ++i) {
    INFO("row " << i << " (prompt '" << prompts[i] << "')");
    CHECK(got[i].tokens == solo[i].tokens);
    CHECK(got[i].text == solo[i].text);
    CHECK(streamed[i] == solo[i].text);
    CHECK(got[i].reason == solo[i].reason);
    CHECK(got[i].stop_string == solo[i].stop_string);
    CHECK(rows[i].position() == static_cast<index_t>(tok.encode(prompts[i]).size() + solo[i].tokens.size()));
  }
  // The sessions go on alone afterwards exactly like solo sessions would.
  session<M> cont(model, 64, sampler::from(params(1)));
  cont.feed(tok.encode(prompts[1]));
  cont.generate(stops[1], &tok);
  CHECK(rows[1].generate({.max_tokens = 5}).tokens == cont.generate({.max_tokens = 5}).tokens);
}

TEST_CASE("generate_batch: a cancelled row leaves, the others go on; errors change no session", "[generate][batch][errors]") {
  using M = decoder<float, backend::cpu>;
  const M model(small, random_decoder_weights<float>(small, 73));
  const auto make = [&](std::vector<std::int64_t> prompt) {
    session<M> s(model, 48, sampler::from({.temperature = 0.0}));
    s.feed(prompt);
    return s;
  };
  std::vector<session<M>> rows;
  rows.push_back(make({1, 2, 3}));
  rows.push_back(make({4, 5, 6, 7, 8, 9, 10}));
  rows.push_back(make({11}));
  std::vector<session<M>*> ptrs = {&rows[0], &rows[1], &rows[2]};
  auto solo = make({4, 5, 6, 7, 8, 9, 10});
  const auto want1 = solo.generate({.max_tokens = 20}).tokens;
  const auto got = generate_batch<M>(ptrs, stop_criteria{.max_tokens = 20}, nullptr,
                                     [](index_t row, const token_event& e) { return !(row == 0 && e.index == 2); });
  CHECK(got[0].reason == stop_reason::cancelled);
  CHECK(got[0].tokens.size() == 3);
  CHECK(got[1].tokens == want1);
  CHECK(got[2].tokens.size() == 20);

  // Errors: checked before any session changes.
  const M other(small, random_decoder_weights<float>(small, 73));
  session<M> foreign(other, 48), unfed(model, 48);
  foreign.feed(std::vector<std::int64_t>{1});
  const auto positions = [&] { return std::vector<index_t>{rows[0].position(), rows[1].position(), rows[2].position()}; };
  const auto before = positions();
  const stop_criteria five{.max_tokens = 5};
  const auto run = [&](std::vector<session<M>*> ps) { return generate_batch<M>(ps, five); };
  CHECK_THROWS_WITH(run({}), Catch::Contains("no sessions"));
  CHECK_THROWS_WITH(run({&rows[0], &rows[0]}), Catch::Contains("sessions 0 and 1 are the same session"));
  CHECK_THROWS_WITH(run({&rows[0], nullptr}), Catch::Contains("session 1 is null"));
  CHECK_THROWS_WITH(run({&rows[0], &foreign}), Catch::Contains("session 1 runs on another model object"));
  CHECK_THROWS_WITH(run({&rows[0], &unfed}), Catch::Contains("feed a prompt first"));
  const std::vector<stop_criteria> two(2);
  CHECK_THROWS_WITH(generate_batch<M>(ptrs, two), Catch::Contains("2 stop criteria for 3 sessions"));
  CHECK(positions() == before);
  // A callback that throws: every session stays consistent (its cache holds all but a pending token).
  CHECK_THROWS_WITH(generate_batch<M>(ptrs, five, nullptr,
                                      [](index_t row, const token_event& e) {
                                        if (row == 1 && e.index == 3) throw std::runtime_error("stop here");
                                        return true;
                                      }),
                    Catch::Contains("stop here"));
  for (auto& r : rows) CHECK(r.cache().length() + (r.pending() ? 1 : 0) == r.position());
}

TEST_CASE("evaluate: windows, scores against a direct computation, errors", "[generate]") {
  CHECK(evaluation_windows(10, 4, 3) == std::vector<std::pair<index_t, index_t>>{{0, 4}, {3, 7}, {6, 10}});
  CHECK(evaluation_windows(10, 4, 4) == std::vector<std::pair<index_t, index_t>>{{0, 4}, {4, 8}, {8, 10}});
  CHECK(evaluation_windows(3, 8, 8) == std::vector<std::pair<index_t, index_t>>{{0, 3}});
  CHECK_THROWS_WITH(evaluation_windows(10, 1, 1), Catch::Contains("at least 2 tokens"));
  CHECK_THROWS_WITH(evaluation_windows(10, 4, 0), Catch::Contains("stride must be >= 1"));
  CHECK_THROWS_WITH(evaluation_windows(10, 4, 5), Catch::Contains("skips tokens"));
  CHECK_THROWS_WITH(evaluation_windows(1, 4, 4), Catch::Contains("has 1 tokens"));

  const decoder<double, backend::cpu> model(small, random_decoder_weights<double>(small, 8));
  const auto t = test::random_tokens(1, 11, small.vocab_size, 4);
  const std::vector<std::int64_t> ids(t.data(), t.data() + t.size());
  // By hand: windows [0, 6) and [4, 10) and [8, 11), each a stateless prefill.
  double nats = 0;
  index_t scored = 0;
  for (const auto& [b, e] : evaluation_windows(11, 6, 4)) {
    const tensor<double> l = model.forward(test::slice_tokens(t, b, e - b));
    for (index_t k = 1; k < e - b; ++k) {
      double z = 0;
      for (index_t v = 0; v < small.vocab_size; ++v) z += std::exp(l[(k - 1) * small.vocab_size + v]);
      nats += std::log(z) - l[(k - 1) * small.vocab_size + ids[static_cast<std::size_t>(b + k)]];
      ++scored;
    }
  }
  const tokenizer tok = tokenizer::characters("abcdefghijklmnopqrstuvwxyz0123456789 .,\xC3\xA9");  // é: 2 bytes
  std::vector<index_t> seen;
  const evaluation r = evaluate(model, ids, 6, 4, &tok, [&](index_t done, index_t total) {
    CHECK(total == 3);
    seen.push_back(done);
  });
  CHECK(seen == std::vector<index_t>{1, 2, 3});
  CHECK(r.tokens == scored);
  CHECK(r.tokens == 5 + 5 + 2);
  CHECK(r.windows == 3);
  CHECK(r.nats_per_token() == Approx(nats / static_cast<double>(scored)).epsilon(1e-12));
  CHECK(r.bytes >= r.tokens);
  CHECK(r.bits_per_byte() == Approx(r.nats / std::log(2.0) / static_cast<double>(r.bytes)).epsilon(1e-12));
  CHECK_THROWS_WITH(evaluate(model, std::vector<std::int64_t>{1, 40}, 4, 4), Catch::Contains("token id 40 at position 1"));
  const tokenizer bytes = tokenizer::bytes();
  CHECK_THROWS_WITH(evaluate(model, ids, 4, 4, &bytes), Catch::Contains("the tokenizer has 256 tokens, the model 40"));
}

TEST_CASE("a saved session restores bit for bit: 50 + 50 tokens equal 100 in one run", "[generate]") {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("sessa_test_generate." + std::to_string(::getpid()));
  fs::create_directories(dir);
  const decoder<float, backend::cpu> model(small, random_decoder_weights<float>(small, 41));
  using S = session<decoder<float, backend::cpu>>;
  sampling_params sp;
  sp.seed = 77;
  sp.temperature = 1.1;
  sp.top_p = 0.9;
  sp.repeat_penalty = 1.3;
  sp.penalty_last_n = 16;
  const std::vector<std::int64_t> prompt = {3, 1, 4, 1, 5, 9, 2, 6};
  S one(model, 128, sampler::from(sp));
  one.feed(prompt);
  const auto all = one.generate({.max_tokens = 100}).tokens;

  S first(model, 128, sampler::from(sp));
  first.feed(prompt);
  auto got = first.generate({.max_tokens = 50}).tokens;
  first.save(dir / "state.safetensors");
  sp.seed = 12345;  // the generator comes from the file, not from the sampler given to load
  S second = S::load(dir / "state.safetensors", model, 128, sampler::from(sp));
  CHECK(second.tokens() == first.tokens());
  CHECK(second.pending() == first.pending());
  CHECK(second.cache().length() == first.cache().length());
  CHECK(second.get_sampler().rng() == first.get_sampler().rng());
  CHECK(second.get_sampler().recent() == first.get_sampler().recent());
  const auto more = second.generate({.max_tokens = 50}).tokens;
  got.insert(got.end(), more.begin(), more.end());
  CHECK(got == all);
  CHECK(second.tokens() == one.tokens());

  // A state after a feed (no pending token), with bf16 storage, and restored into a larger capacity.
  using narrow_model = decoder<precision<float, bfloat16>, backend::reference>;
  const narrow_model narrow(small, random_decoder_weights<bfloat16>(small, 41));
  session<narrow_model> a(narrow, 40, sampler::from({.temperature = 0.0}));
  a.feed(prompt);
  a.save(dir / "bf16.safetensors");
  auto b = session<narrow_model>::load(dir / "bf16.safetensors", narrow, 64, sampler::from({.temperature = 0.0}));
  CHECK(b.capacity() == 64);
  CHECK_FALSE(b.pending().has_value());
  CHECK(a.generate({.max_tokens = 20}).tokens == b.generate({.max_tokens = 20}).tokens);

  // Errors: another configuration, another numeric policy, too small a capacity, not a state, damaged.
  const decoder_config other{{32, 8, 2, true, 0.99, 1e-5}, 40, 2, true};
  const decoder<float, backend::cpu> wrong(other, random_decoder_weights<float>(other, 1));
  CHECK_THROWS_WITH(S::load(dir / "state.safetensors", wrong, 128),
                    Catch::Contains("state.safetensors: the state was saved from a model of another configuration: "
                                    "sessa.n_heads = 4 in the state, 8 in this model"));
  using windowed_model = decoder<float, backend::cpu, attention::sliding_window>;
  const windowed_model windowed(small, random_decoder_weights<float>(small, 41), attention::sliding_window{8});
  CHECK_THROWS_WITH(session<windowed_model>::load(dir / "state.safetensors", windowed, 128),
                    Catch::Contains("sessa.attention = causal in the state, sliding_window in this model"));
  using wide_model = decoder<double, backend::cpu>;
  const wide_model wide(small, random_decoder_weights<double>(small, 41));
  CHECK_THROWS_WITH(session<wide_model>::load(dir / "state.safetensors", wide, 128),
                    Catch::Contains("the state's cache holds F32 values; this model's cache F64"));
  CHECK_THROWS_WITH(S::load(dir / "state.safetensors", model, 20),
                    Catch::Contains("the state holds 58 tokens; a session of capacity 20 cannot take it"));
  io::safetensors_writer w;
  w.add<float>("x", {1}, std::vector<float>{1.0f});
  w.write(dir / "plain.safetensors");
  CHECK_THROWS_WITH(S::load(dir / "plain.safetensors", model, 128), Catch::Contains("not a sessa state file"));
  {
    std::ifstream in(dir / "state.safetensors", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(dir / "cut.safetensors", std::ios::binary) << bytes.substr(0, bytes.size() - 100);
  }
  CHECK_THROWS_AS(S::load(dir / "cut.safetensors", model, 128), format_error);
  session<decoder<float, backend::cpu>> empty(model, 8);
  CHECK_THROWS_WITH(empty.save(dir / "never.safetensors"), Catch::Contains("holds no tokens"));
  CHECK_FALSE(fs::exists(dir / "never.safetensors"));
  fs::remove_all(dir);
}
