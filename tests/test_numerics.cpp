// Numerical edge cases, each with the behaviour docs/API.md ("Numerical behaviour") documents:
// NaN and infinity in inputs propagate forward in time inside their own sequence and nowhere else; attention
// logits of huge magnitude stay finite (the online softmax subtracts the running maximum); the feedback gain at
// its bounds (gamma near gamma_max close to 1, gamma near 0); RoPE at position 10^6 in float32 forms its angles as
// the reference does; one token; empty batches are shape errors.
#include <catch2/catch.hpp>

#include <cmath>

#include "support.hpp"

using namespace sessa;

namespace {

const layer_config cfg{16, 2, 1, true, 0.9, 1e-5};

template <class Span>
bool all_finite(const Span& v) {
  for (auto x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

/// Row t of sequence b of a (B, T, D) tensor.
template <class T>
std::span<const T> row(const tensor<T>& y, index_t b, index_t t) {
  const index_t Tn = y.dim(1), D = y.dim(2);
  return {y.data() + (b * Tn + t) * D, static_cast<std::size_t>(D)};
}

/// The three forms of a layer on one input: prefill, token by token, chunks of 5.
template <class L>
std::array<tensor<float>, 3> three_forms(const L& layer, const tensor<float>& x) {
  const index_t B = x.dim(0), T = x.dim(1), D = x.dim(2);
  std::array<tensor<float>, 3> out{layer.forward(x), tensor<float>(x.shape()), tensor<float>(x.shape())};
  auto dc = layer.init_cache(B, T);
  for (index_t t = 0; t < T; ++t) {
    tensor<float> xt({B, D});
    for (index_t b = 0; b < B; ++b) std::copy_n(x.data() + (b * T + t) * D, D, xt.data() + b * D);
    const tensor<float> yt = layer.decode_step(xt, dc);
    for (index_t b = 0; b < B; ++b) std::copy_n(yt.data() + b * D, D, out[1].data() + (b * T + t) * D);
  }
  auto cc = layer.init_cache(B, T);
  for (index_t t0 = 0; t0 < T; t0 += 5) {
    const index_t n = std::min<index_t>(5, T - t0);
    test::put_tokens(out[2], layer.forward(test::slice_tokens(x, t0, n), cc), t0);
  }
  return out;
}

}  // namespace

TEST_CASE("NaN and infinity in an input propagate forward in their own sequence only", "[numerics]") {
  const auto w = random_layer_weights<float>(cfg, 1);
  const layer<float, backend::cpu> C(cfg, w);
  const layer<float, backend::reference> R(cfg, w);
  // A short input (one tile), and a long one whose bad value sits mid-way (across feedback blocks and key tiles).
  const auto [T, pos] = GENERATE(table<index_t, index_t>({{12, 5}, {300, 150}}));
  const tensor<float> clean = test::random_tensor<float>({2, T, 16}, 2);
  const auto want = three_forms(R, clean);
  for (const float bad : {std::nanf(""), INFINITY, -INFINITY}) {
    CAPTURE(T, pos, bad);
    tensor<float> x = clean;
    x.data()[(1 * T + pos) * 16 + 3] = bad;  // sequence 1
    const auto check = [&](const std::array<tensor<float>, 3>& forms) {
      for (const tensor<float>& y : forms) {
        // Sequence 0, and sequence 1 before `pos`: as without the bad value (batch independence, causality).
        for (index_t t = 0; t < T; ++t) CHECK(test::max_rel_diff(row(y, 0, t), row(want[0], 0, t)) < 1e-5);
        for (index_t t = 0; t < pos; ++t) CHECK(test::max_rel_diff(row(y, 1, t), row(want[0], 1, t)) < 1e-5);
        // From `pos` on, sequence 1 is not finite: the value reached the cache and every later state.
        for (index_t t = pos; t < T; ++t) {
          bool any_finite = false;
          for (float v : row(y, 1, t)) any_finite = any_finite || std::isfinite(v);
          CHECK_FALSE(any_finite);
        }
      }
    };
    check(three_forms(C, x));
    check(three_forms(R, x));
  }
}

TEST_CASE("attention logits of huge magnitude stay finite and match the float64 reference", "[numerics]") {
  auto w = random_layer_weights<float>(cfg, 3);
  // Queries and keys 40 times larger: logits in the thousands, far past exp()'s float range without the running
  // maximum; the feedback's logits too.
  for (auto* b : {&w.mixer.q_w, &w.mixer.k_w, &w.mixer.fb_w})
    for (index_t i = 0; i < b->size(); ++i) (*b)[i] *= 40.0f;
  auto wd = random_layer_weights<double>(cfg, 3);
  for (auto* b : {&wd.mixer.q_w, &wd.mixer.k_w, &wd.mixer.fb_w})
    for (index_t i = 0; i < b->size(); ++i) (*b)[i] = static_cast<double>(static_cast<float>((*b)[i]) * 40.0f);
  const layer<float, backend::cpu> C(cfg, w);
  const layer<double, backend::reference> D(cfg, wd);
  const tensor<float> x = test::random_tensor<float>({2, 40, 16}, 4);
  tensor<double> xd(x.shape());
  for (index_t i = 0; i < x.size(); ++i) xd.data()[i] = x.data()[i];
  const tensor<double> want = D.forward(xd);
  for (const tensor<float>& y : three_forms(C, x)) {
    REQUIRE(all_finite(y.span()));
    // Near one-hot attention amplifies float rounding of the logits: a looser bound than for ordinary weights.
    CHECK(test::max_rel_diff(y.span(), want.span()) < 2e-3);
  }
  // Activations of magnitude 1e15 (LayerNorm squares them: 1e30 still fits a float) give finite outputs that
  // agree with the float reference backend.
  tensor<float> big = x;
  for (auto& v : big.span()) v *= 1e15f;
  const layer<float, backend::reference> R(cfg, w);
  const tensor<float> yb = C.forward(big);
  REQUIRE(all_finite(yb.span()));
  CHECK(test::max_rel_diff(yb.span(), R.forward(big).span()) < 1e-6);
}

TEST_CASE("the feedback gain at its bounds: gamma saturated near gamma_max close to 1, and near 0", "[numerics]") {
  for (const double gamma_max : {1.0 - 1e-7, 1e-9}) {
    for (const double bias : {60.0, -60.0}) {  // sigmoid saturates at 1 and 0
      CAPTURE(gamma_max, bias);
      const layer_config c{16, 2, 1, true, gamma_max, 1e-5};
      auto w = random_layer_weights<float>(c, 5);
      auto wd = random_layer_weights<double>(c, 5);
      w.mixer.gamma_bias[0] = static_cast<float>(bias);
      wd.mixer.gamma_bias[0] = bias;
      const layer<float, backend::cpu> C(c, w);
      const layer<double, backend::reference> D(c, wd);
      const tensor<float> x = test::random_tensor<float>({1, 200, 16}, 6);
      tensor<double> xd(x.shape());
      for (index_t i = 0; i < x.size(); ++i) xd.data()[i] = x.data()[i];
      const tensor<double> want = D.forward(xd);
      for (const tensor<float>& y : three_forms(C, x)) {
        REQUIRE(all_finite(y.span()));
        CHECK(test::max_rel_diff(y.span(), want.span()) < 1e-4);
      }
    }
  }
}

TEST_CASE("RoPE at position 10^6 in float32: the cpu kernel forms the reference's angles", "[numerics]") {
  const index_t d = 16, rows = 8, heads = 2;
  const std::vector<float> inv = rope::inv_freq(d);
  const tensor<float> x = test::random_tensor<float>({rows, heads * d}, 7);
  for (const index_t pos0 : {index_t{1'000'000}, (index_t{1} << 24) + 1}) {
    CAPTURE(pos0);
    tensor<float> a = x, b = x;
    backend::context<backend::cpu> cc;
    backend::context<backend::reference> rc;
    backend::kernels<backend::cpu>::rope(cc, a.as_matrix(), d, pos0, rows, inv.data());
    backend::kernels<backend::reference>::rope(rc, b.as_matrix(), d, pos0, rows, inv.data());
    CHECK(test::max_rel_diff(a.span(), b.span()) < 1e-5);
    // Both rotate by the float32 angle float(pos) * omega_i, as the public modules do; a rotation keeps norms.
    for (index_t r = 0; r < rows; ++r)
      for (index_t i = 0; i < heads * d; i += 2) {
        const double n0 = std::hypot(x.data()[r * heads * d + i], x.data()[r * heads * d + i + 1]);
        const double n1 = std::hypot(a.data()[r * heads * d + i], a.data()[r * heads * d + i + 1]);
        CHECK(std::abs(n1 - n0) <= 1e-5 * std::max(1.0, n0));
      }
    // The angle of pair 0 (omega_0 = 1) is float(pos) itself.
    const float theta = static_cast<float>(pos0);
    const float x0 = x.data()[0], x1 = x.data()[1];
    CHECK(std::abs(b.data()[0] - (x0 * std::cos(theta) - x1 * std::sin(theta))) < 1e-5f);
  }
}

TEST_CASE("one token, and empty batches", "[numerics][errors]") {
  const auto w = random_layer_weights<float>(cfg, 8);
  const layer<float, backend::cpu> C(cfg, w);
  const layer<float, backend::reference> R(cfg, w);
  const tensor<float> x = test::random_tensor<float>({3, 1, 16}, 9);
  CHECK(test::max_rel_diff(C.forward(x).span(), R.forward(x).span()) < 1e-5);
  CHECK_THROWS_WITH(C.forward(tensor<float>({0, 4, 16})), Catch::Contains("with batch, tokens >= 1; got (0, 4, 16)"));
  CHECK_THROWS_WITH(C.forward(tensor<float>({2, 0, 16})), Catch::Contains("with batch, tokens >= 1; got (2, 0, 16)"));
  const decoder_config dc{cfg, 11, 1, true};
  const decoder<float, backend::cpu> M(dc, random_decoder_weights<float>(dc, 10));
  CHECK_THROWS_AS(M.forward(tensor<std::int64_t>({0, 3})), shape_error);
  const tensor<std::int64_t> one = test::random_tokens(2, 1, 11, 11);
  CHECK(all_finite(M.forward(one).span()));
}
