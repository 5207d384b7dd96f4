// Tests of the CPU GEMM kernels (backend/cpu/gemm.hpp): gemm_nt, gemm_nn and linear against a naive
// double-precision loop, for float and double, over shapes that hit every edge of the blocking (1, MR+-1,
// NR+-1, KC+-1, MC+1, NC+1, primes), column-block views (ld > cols, unaligned data), beta 0/1/other with
// NaN in c when beta == 0, bias null/non-null, accumulate, and 1 or 2 threads (and nested in a parallel region).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "sessa/backend/cpu/gemm.hpp"
#include "sessa/backend/cpu/parallel.hpp"
#include "sessa/core/quant.hpp"
#include "sessa/core/tensor.hpp"

namespace {

using sessa::cmatrix;
using sessa::index_t;
using sessa::matrix;
namespace simd = sessa::backend::simd;

/// A (rows, cols) view into a wider, padded allocation: ld = cols + pad, data offset by `shift` elements
/// (so it is not 64-byte aligned when shift > 0). The padding is filled with `fill` to catch overruns.
template <class T>
struct strided {
  std::vector<T> store;
  matrix<T> view;
  index_t shift = 0;
  strided(index_t rows, index_t cols, index_t pad, index_t shift_, std::mt19937& gen, T fill = T(0))
      : shift(shift_) {
    const index_t ld = cols + pad;
    store.assign(static_cast<std::size_t>(rows * ld + shift + 1), fill);
    std::uniform_real_distribution<double> dist(-1.0, 1.0);
    view = matrix<T>{store.data() + shift, rows, cols, ld};
    for (index_t i = 0; i < rows; ++i)
      for (index_t j = 0; j < cols; ++j) view(i, j) = static_cast<T>(dist(gen));
  }
  cmatrix<T> c() const { return view; }
};

template <class T>
constexpr double eps() {
  return static_cast<double>(std::numeric_limits<T>::epsilon());
}

/// Checks got (M, N) against the double-precision product:
///   ref = alpha * a op(b) + bias + beta * old  (beta == 0: old ignored), with op(b)(k, j) = b_at(k, j).
/// The tolerance is relative to alpha * sum |a||b| + |bias| + |beta old|.
template <class T, class BAt>
void check_product(cmatrix<T> a, BAt b_at, const std::vector<double>& old, cmatrix<T> got, double alpha, double beta,
                   const T* bias, const std::string& what) {
  const index_t M = got.rows, N = got.cols, K = a.cols;
  const double tol = eps<T>() * (8.0 + 2.0 * std::sqrt(static_cast<double>(K)));
  index_t bad = 0;
  for (index_t i = 0; i < M; ++i)
    for (index_t j = 0; j < N; ++j) {
      double s = 0, mag = 0;
      for (index_t k = 0; k < K; ++k) {
        const double p = static_cast<double>(a(i, k)) * static_cast<double>(b_at(k, j));
        s += p;
        mag += std::abs(p);
      }
      double ref = alpha * s;
      mag = std::abs(alpha) * mag;
      if (bias) {
        ref += static_cast<double>(bias[j]);
        mag += std::abs(static_cast<double>(bias[j]));
      }
      if (beta != 0) {
        const double o = old[static_cast<std::size_t>(i * N + j)];
        ref += beta * o;
        mag += std::abs(beta * o);
      }
      const double g = static_cast<double>(got(i, j));
      if (!(std::abs(g - ref) <= tol * mag + 1e-30)) {
        if (bad++ < 3)
          UNSCOPED_INFO(what << ": (" << i << ", " << j << ") got " << g << " want " << ref << " tol " << tol * mag);
      }
    }
  INFO(what);
  CHECK(bad == 0);
}

/// Fills c with values (beta != 0) or NaN (beta == 0) and returns a copy of what it holds.
template <class T>
std::vector<double> prepare_output(matrix<T> c, double beta, std::mt19937& gen) {
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  std::vector<double> old(static_cast<std::size_t>(c.rows * c.cols));
  for (index_t i = 0; i < c.rows; ++i)
    for (index_t j = 0; j < c.cols; ++j) {
      const T v = beta == 0 ? std::numeric_limits<T>::quiet_NaN() : static_cast<T>(dist(gen));
      c(i, j) = v;
      old[static_cast<std::size_t>(i * c.cols + j)] = static_cast<double>(v);
    }
  return old;
}

/// Checks that the padding around a strided output (columns >= cols and the elements before and after) kept `fill`.
template <class T>
void check_padding(const strided<T>& s, T fill, const std::string& what) {
  index_t touched = 0;
  for (std::size_t e = 0; e < s.store.size(); ++e) {
    const auto off = static_cast<index_t>(e) - s.shift;
    const bool inside = off >= 0 && off < s.view.rows * s.view.ld && off % s.view.ld < s.view.cols;
    if (!inside && !(s.store[e] == fill)) ++touched;
  }
  INFO(what);
  CHECK(touched == 0);
}

std::string shape_name(const char* f, index_t M, index_t N, index_t K, double alpha, double beta) {
  return std::string(f) + " M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) +
         " alpha=" + std::to_string(alpha) + " beta=" + std::to_string(beta);
}

/// a_pad < 0: a is padded like the others (pad); otherwise a's row stride is K + a_pad.
template <class T>
void run_gemm_case(bool nt, index_t M, index_t N, index_t K, double alpha, double beta, index_t pad,
                   std::mt19937& gen, index_t a_pad = -1) {
  const T fill = T(-7.25);
  strided<T> a(M, K, a_pad < 0 ? pad : a_pad, pad ? 3 : 0, gen);
  strided<T> b(nt ? N : K, nt ? K : N, pad ? pad + 1 : 0, pad ? 1 : 0, gen);
  strided<T> c(M, N, pad ? pad + 2 : 0, pad ? 5 : 0, gen, fill);
  const std::vector<double> old = prepare_output(c.view, beta, gen);
  const std::string what = shape_name(nt ? "gemm_nt" : "gemm_nn", M, N, K, alpha, beta) + " pad=" + std::to_string(pad);
  if (nt) {
    simd::gemm_nt<T>(a.c(), b.c(), c.view, static_cast<T>(alpha), static_cast<T>(beta));
    check_product<T>(a.c(), [&](index_t k, index_t j) { return b.view(j, k); }, old, c.c(), alpha, beta, nullptr, what);
  } else {
    simd::gemm_nn<T>(a.c(), b.c(), c.view, static_cast<T>(alpha), static_cast<T>(beta));
    check_product<T>(a.c(), [&](index_t k, index_t j) { return b.view(k, j); }, old, c.c(), alpha, beta, nullptr, what);
  }
  check_padding(c, fill, what);
}

template <class T>
void run_linear_case(index_t M, index_t N, index_t K, bool with_bias, bool accumulate, index_t pad, std::mt19937& gen) {
  const T fill = T(-7.25);
  strided<T> x(M, K, pad, pad ? 3 : 0, gen);
  strided<T> w(N, K, pad ? pad + 1 : 0, pad ? 1 : 0, gen);
  strided<T> y(M, N, pad ? pad + 2 : 0, pad ? 5 : 0, gen, fill);
  std::vector<T> bias(static_cast<std::size_t>(N) + 1);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  for (auto& e : bias) e = static_cast<T>(dist(gen));
  const T* bp = with_bias ? bias.data() + 1 : nullptr;  // unaligned bias too
  const double beta = accumulate ? 1.0 : 0.0;
  const std::vector<double> old = prepare_output(y.view, beta, gen);
  const std::string what = shape_name("linear", M, N, K, 1, beta) + " bias=" + std::to_string(with_bias) +
                           " pad=" + std::to_string(pad) + " threads=" + std::to_string(sessa::num_threads());
  simd::linear<T>(x.c(), w.c(), bp, y.view, accumulate);
  check_product<T>(x.c(), [&](index_t k, index_t j) { return w.view(j, k); }, old, y.c(), 1.0, beta, bp, what);
  check_padding(y, fill, what);
}

/// linear() with w stored as S (bfloat16, float16, or q8_0 blocks) and the bias as vector_storage_t<S>, against
/// the double product of the widened (dequantized) values.
template <class T, class S>
void run_narrow_linear_case(index_t M, index_t N, index_t K, bool with_bias, bool accumulate, index_t pad,
                            std::mt19937& gen) {
  using V = sessa::vector_storage_t<S>;
  const T fill = T(-7.25);
  strided<T> x(M, K, pad, pad ? 3 : 0, gen);
  strided<T> y(M, N, pad ? pad + 2 : 0, pad ? 5 : 0, gen, fill);
  const index_t cols = sessa::storage_cols<S>(K);
  const index_t ldw = cols + (pad ? pad + 1 : 0), shift = pad ? 1 : 0;
  std::vector<S> wstore(static_cast<std::size_t>(N * ldw + shift + 1));
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  std::vector<double> row(static_cast<std::size_t>(K));
  for (index_t j = 0; j < N; ++j) {
    for (auto& v : row) v = dist(gen);
    S* dst = wstore.data() + shift + j * ldw;
    if constexpr (sessa::is_block_quantized<S>)
      sessa::quantize_row_q8_0(row.data(), K, dst);
    else
      for (index_t k = 0; k < K; ++k) dst[k] = S(row[static_cast<std::size_t>(k)]);
  }
  const cmatrix<S> w{wstore.data() + shift, N, cols, ldw};
  std::vector<V> bias(static_cast<std::size_t>(N) + 1);
  for (auto& e : bias) e = V(dist(gen));
  std::vector<T> bias_wide(bias.size());
  for (std::size_t j = 0; j < bias.size(); ++j) bias_wide[j] = sessa::widen<T>(bias[j]);
  const double beta = accumulate ? 1.0 : 0.0;
  const std::vector<double> old = prepare_output(y.view, beta, gen);
  const std::string what = shape_name("narrow linear", M, N, K, 1, beta) + " storage=" +
                           std::string(sessa::storage_name<S>()) + " bias=" + std::to_string(with_bias) +
                           " pad=" + std::to_string(pad) + " threads=" + std::to_string(sessa::num_threads());
  simd::linear<T, S>(x.c(), w, with_bias ? bias.data() + 1 : nullptr, y.view, accumulate);
  check_product<T>(x.c(), [&](index_t k, index_t j) { return sessa::weight_at<T>(w.row(j), k); }, old,
                   y.c(), 1.0, beta, with_bias ? bias_wide.data() + 1 : nullptr, what);
  check_padding(y, fill, what);
}

/// Edge sizes of the blocking for T: 0, 1, small primes, MR +- 1, NR +- 1, W +- 1.
template <class T>
std::vector<index_t> edge_sizes() {
  using P = simd::gemm_detail::blocking<T>;
  return {0, 1, 2, 3, 5, P::W - 1, P::W + 1, P::MR - 1, P::MR, P::MR + 1, P::NR - 1, P::NR, P::NR + 1, 37, 64};
}

/// f(std::integral_constant<b_layout, L>{}) with L = nk when nt (b stored (N, K)), else kn (b stored (K, N)).
template <class F>
void with_layout(bool nt, F&& f) {
  using simd::gemm_detail::b_layout;
  if (nt)
    f(std::integral_constant<b_layout, b_layout::nk>{});
  else
    f(std::integral_constant<b_layout, b_layout::kn>{});
}

/// Restores the thread count when a test section ends.
struct thread_guard {
  int saved = sessa::num_threads();
  ~thread_guard() { sessa::set_num_threads(saved); }
};

}  // namespace

TEMPLATE_TEST_CASE("gemm_nt and gemm_nn match a double loop on edge shapes", "[gemm]", float, double) {
  using P = simd::gemm_detail::blocking<TestType>;
  std::mt19937 gen(42);
  const auto sizes = edge_sizes<TestType>();
  const double alphas[] = {1.0, -0.5};
  const double betas[] = {0.0, 1.0, 0.3};
  int n = 0;
  for (const bool nt : {true, false})
    for (index_t M : sizes)
      for (index_t N : sizes)
        for (index_t K : {index_t{0}, index_t{1}, index_t{7}, P::W + 3, index_t{64}}) {
          const double alpha = alphas[n % 2], beta = betas[n % 3];
          run_gemm_case<TestType>(nt, M, N, K, alpha, beta, (n % 4) ? 3 : 0, gen);
          ++n;
        }
}

TEMPLATE_TEST_CASE("gemm_nt and gemm_nn cross the cache blocks", "[gemm]", float, double) {
  using P = simd::gemm_detail::blocking<TestType>;
  std::mt19937 gen(7);
  struct shape {
    index_t M, N, K;
  };
  const shape shapes[] = {
      {64, 64, 64},          {128, 128, 64},   {64, 64, 512},         {128, 128, 512},      {100, 96, 64},
      {65, 63, P::KC - 1},   {29, 33, P::KC},  {P::MR + 1, 31, P::KC + 1}, {17, 47, 2 * P::KC + 3},
      {P::MC + 1, 33, 19},   {P::MC - 1, P::NR + 1, P::KC + 5}, {3, P::NC + 1, 5}, {20, P::NC + P::NR + 3, 9},
      {4, 200, 300},         {5, 130, 70},     {131, 1, 97},          {1, 131, 97},
      {12, 37, 600},         {16, 70, 900},    {7, 3, 1001},          {2, 2, 96},
  };
  int n = 0;
  for (const bool nt : {true, false})
    for (const shape& s : shapes)
      for (const double beta : {0.0, 1.0, -1.5}) {
        run_gemm_case<TestType>(nt, s.M, s.N, s.K, n % 2 ? 0.75 : 1.0, beta, (n % 3) ? 2 : 0, gen);
        ++n;
      }
}

TEMPLATE_TEST_CASE("an a operand in the packed layout is read in place and matches a double loop", "[gemm]", float,
                   double) {
  // The flash tiles keep their queries and probabilities with row stride packed_lda (the packed A block's), which
  // gemm_blocked reads without a copy when K fits one K slice; one K past the slice, the same stride is packed.
  using P = simd::gemm_detail::blocking<TestType>;
  STATIC_REQUIRE(simd::gemm_detail::packed_lda<TestType>(P::KC) == P::LDA);
  STATIC_REQUIRE(simd::gemm_detail::packed_lda<TestType>(P::KC + 1) == 0);
  std::mt19937 gen(11);
  int n = 0;
  for (const bool nt : {true, false})
    for (const index_t M : {index_t{1}, index_t{P::MR}, index_t{P::MR + 1}, index_t{40}, index_t{P::MC + 3}})
      for (const index_t K : {index_t{1}, index_t{64}, index_t{P::KC - 1}, index_t{P::KC}, index_t{P::KC + 1}})
        for (const index_t N : {index_t{P::NR}, index_t{2 * P::NR + 5}}) {
          const double beta = n % 3 == 0 ? 0.0 : n % 3 == 1 ? 1.0 : -0.5;
          run_gemm_case<TestType>(nt, M, N, K, n % 2 ? 0.5 : 1.0, beta, n % 2 ? 2 : 0, gen, P::LDA - K);
          ++n;
        }
}

TEMPLATE_TEST_CASE("an operand packed once (pack_whole_b) gives the products of packing it per call", "[gemm]", float,
                   double) {
  // The flash tiles pack a key / value tile once for many query tiles: gemm_blocked then reads the caller's panels.
  // Same panels, same order of the sums: the result must equal the per-call packing bit for bit, for every K slice and
  // column block (N past NC, K past KC), edge panels, and panels packed in two separate calls (two threads' shares).
  using T = TestType;
  namespace gd = simd::gemm_detail;
  using P = gd::blocking<T>;
  std::mt19937 gen(23);
  struct shape {
    index_t M, N, K;
  };
  const shape shapes[] = {{1, 1, 1},       {P::MR + 1, P::NR - 1, 64}, {40, 128, 64},         {33, 64, 128},
                          {7, 24, P::KC + 3}, {20, P::NC + P::NR + 3, 9}, {P::MC + 5, 70, 2 * P::KC + 1}};
  int n = 0;
  for (const bool nt : {true, false})
    for (const shape& sh : shapes) {
      const index_t M = sh.M, N = sh.N, K = sh.K;
      strided<T> a(M, K, 2, 1, gen);
      strided<T> b(nt ? N : K, nt ? K : N, 3, 1, gen);
      strided<T> want(M, N, 0, 0, gen), got(M, N, 0, 0, gen);
      for (index_t i = 0; i < M; ++i)
        for (index_t j = 0; j < N; ++j) got.view(i, j) = want.view(i, j);  // beta != 0 reads the same old values
      std::vector<T> packed(static_cast<std::size_t>(gd::packed_b_values<T>(K, N)), std::numeric_limits<T>::quiet_NaN());
      const index_t panels = gd::panels<T>(N), mid = panels / 2;
      const T alpha = n % 2 ? T(0.5) : T(1), beta = n % 3 == 0 ? T(0) : T(1);
      CAPTURE(nt, M, N, K, alpha, beta);
      with_layout(nt, [&](auto layout) {
        constexpr gd::b_layout L = decltype(layout)::value;
        gd::pack_whole_b<T, L>(b.c(), packed.data(), mid, panels);
        gd::pack_whole_b<T, L>(b.c(), packed.data(), 0, mid);
        gd::gemm_blocked<T, L>(a.c(), b.c(), want.view, alpha, beta, nullptr);
        gd::gemm_blocked<T, L>(a.c(), cmatrix<T>{}, got.view, alpha, beta, nullptr, packed.data());
      });
      index_t differ = 0;
      for (index_t i = 0; i < M; ++i)
        for (index_t j = 0; j < N; ++j) differ += !(got.view(i, j) == want.view(i, j));
      CHECK(differ == 0);
      ++n;
    }
}

TEST_CASE("an operand packed once may be stored as bfloat16: widened as it is packed", "[gemm]") {
  namespace gd = simd::gemm_detail;
  std::mt19937 gen(29);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  for (const bool nt : {true, false}) {
    const index_t M = 19, N = 45, K = 70;
    strided<float> a(M, K, 0, 0, gen);
    std::vector<sessa::bfloat16> bs(static_cast<std::size_t>(N * K));
    std::vector<float> bw(bs.size());
    for (std::size_t i = 0; i < bs.size(); ++i) {
      bs[i] = sessa::bfloat16(dist(gen));
      bw[i] = sessa::widen<float>(bs[i]);
    }
    const index_t rows = nt ? N : K, cols = nt ? K : N;
    std::vector<float> packed(static_cast<std::size_t>(gd::packed_b_values<float>(K, N)));
    strided<float> want(M, N, 0, 0, gen), got(M, N, 0, 0, gen);
    CAPTURE(nt);
    with_layout(nt, [&](auto layout) {
      constexpr gd::b_layout L = decltype(layout)::value;
      gd::pack_whole_b<float, L, sessa::bfloat16>(cmatrix<sessa::bfloat16>(bs.data(), rows, cols), packed.data(), 0,
                                                  gd::panels<float>(N));
      gd::gemm_blocked<float, L>(a.c(), cmatrix<float>(bw.data(), rows, cols), want.view, 1.f, 0.f, nullptr);
      gd::gemm_blocked<float, L>(a.c(), cmatrix<float>{}, got.view, 1.f, 0.f, nullptr, packed.data());
    });
    index_t differ = 0;
    for (index_t i = 0; i < M; ++i)
      for (index_t j = 0; j < N; ++j) differ += !(got.view(i, j) == want.view(i, j));
    CHECK(differ == 0);
  }
}

TEMPLATE_TEST_CASE("linear matches a double loop with 1 and 2 threads", "[gemm][linear]", float, double) {
  using P = simd::gemm_detail::blocking<TestType>;
  thread_guard guard;
  std::mt19937 gen(3);
  struct shape {
    index_t M, N, K;
  };
  const shape shapes[] = {
      {0, 5, 5},  {5, 0, 5},   {4, 6, 0},   {1, 1, 1},  {1, 37, 64},          {2, 64, 33},    {3, 17, 100},
      {4, 130, 70}, {5, 9, 3}, {8, 65, 129}, {15, 33, 31}, {16, 64, 512},     {16, 67, 300},  {17, 64, 64},
      {P::MR - 1, 31, 17}, {P::MR + 1, P::NR + 1, P::KC + 1}, {37, 100, 2 * P::KC + 1}, {100, 37, 50},
      {2 * P::MC + 3, 3 * P::NR - 1, 40}, {300, 200, 100}, {64, P::NC + 5, 16},
      // the dot-product (decode) path: M <= 16 with a long K, partial row and column tiles
      {5, 33, 300}, {7, 9, 1000}, {16, 67, 800}, {11, 63, 577}, {3, 1, 200},
      // the panel path (float on AVX-512, 8..16 rows): whole and partial tiles of w rows, K tails
      {12, 29, 650}, {13, 7, 1000}, {16, 17, 769}, {8, 16, 1024}, {9, 19, 500}, {16, 3, 4100},
  };
  // The panel path is among them where this build has it (8..16 rows of float).
  CHECK(simd::gemm_detail::use_panel<float, float>(16) == simd::gemm_detail::has_panel_path<float, float>);
  CHECK(simd::gemm_detail::use_panel<float, float>(8) == simd::gemm_detail::has_panel_path<float, float>);
  CHECK_FALSE(simd::gemm_detail::use_panel<float, float>(7));
  CHECK_FALSE(simd::gemm_detail::use_panel<double, double>(16));
  CHECK(simd::gemm_detail::use_panel<float, sessa::bfloat16>(12) == simd::gemm_detail::has_panel_path<float, float>);
  CHECK_FALSE(simd::gemm_detail::use_panel<float, sessa::bfloat16>(11));
  CHECK(simd::gemm_detail::use_panel<float, sessa::float16>(16) == simd::gemm_detail::has_panel_path<float, float>);
  CHECK_FALSE(simd::gemm_detail::use_panel<float, sessa::float16>(15));
  CHECK_FALSE(simd::gemm_detail::use_panel<float, sessa::q8_0>(16));
  // Both linear() paths are among the shapes: the dot-product tiles (decode) and the packed GEMM.
  CHECK(simd::gemm_detail::use_dot(16, 800));
  CHECK(simd::gemm_detail::use_dot(1, 1));
  CHECK_FALSE(simd::gemm_detail::use_dot(16, 512));
  CHECK_FALSE(simd::gemm_detail::use_dot(17, 10000));
  for (const int threads : {1, 2}) {
    sessa::set_num_threads(threads);
    int n = 0;
    for (const shape& s : shapes)
      for (const bool with_bias : {false, true})
        for (const bool accumulate : {false, true}) {
          run_linear_case<TestType>(s.M, s.N, s.K, with_bias, accumulate, (n % 3) ? 3 : 0, gen);
          ++n;
        }
  }
}

TEMPLATE_TEST_CASE("linear with bf16 / f16 / q8_0 weights matches the product of the widened weights", "[gemm][linear]",
                   (std::pair<float, sessa::bfloat16>), (std::pair<float, sessa::float16>),
                   (std::pair<double, sessa::bfloat16>), (std::pair<float, sessa::q8_0>),
                   (std::pair<double, sessa::q8_0>)) {
  using T = typename TestType::first_type;
  using S = typename TestType::second_type;
  using P = simd::gemm_detail::blocking<T>;
  thread_guard guard;
  std::mt19937 gen(13);
  struct shape {
    index_t M, N, K;
  };
  // Both paths: the dot-product tiles widening in registers (decode: M <= 16, long K; K tails) and the packed GEMM
  // widening each panel (full and partial panels, K slices beyond KC, row blocks beyond MC).
  const shape shapes[] = {
      {1, 1, 1},    {1, 37, 64},  {1, 9, P::W + 3}, {2, 64, 200},  {3, 17, 100},  {7, 9, 1000}, {16, 67, 800},
      // the panel path's sizes (on AVX-512: f16 from 16 rows, bf16 from 12; the dot tiles elsewhere): whole and
      // partial tiles of w rows, K tails past the last cache line, odd K (bf16's last weight alone)
      {16, 9, 1000}, {12, 13, 700}, {16, 17, 769}, {12, 8, 801}, {13, 25, 640}, {15, 3, 1099},
      {11, 63, 577}, {17, 64, 64}, {P::MR + 1, P::NR + 1, P::KC + 1}, {37, 100, 2 * P::KC + 1},
      {2 * P::MC + 3, 3 * P::NR - 1, 40}, {100, 37, 50},
  };
  INFO("widening path: " << (simd::widen_path<T, S>()));
  for (const int threads : {1, 2}) {
    sessa::set_num_threads(threads);
    int n = 0;
    for (const shape& s : shapes)
      for (const bool with_bias : {false, true}) {
        run_narrow_linear_case<T, S>(s.M, s.N, s.K, with_bias, n % 2 == 1, (n % 3) ? 3 : 0, gen);
        ++n;
      }
  }
}

TEMPLATE_TEST_CASE("one row of x against short rows of w (dot_row_run, dot_row_seq) gives the bits of the dot tiles",
                   "[gemm]", (std::pair<float, float>), (std::pair<double, double>), (std::pair<float, sessa::bfloat16>),
                   (std::pair<float, sessa::float16>), (std::pair<double, sessa::bfloat16>)) {
  using T = typename TestType::first_type;
  using S = typename TestType::second_type;
  namespace gd = simd::gemm_detail;
  using P = gd::blocking<T>;
  constexpr index_t W = P::W;
  std::mt19937 gen(29);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  index_t runs = 0;
  // K: multiples of W that the run takes, then the rows that dot_row_seq reads one after the other, up to the
  // longest (and one beyond, which the tiles keep); N: under one block of W rows, whole blocks, a remainder for the
  // tiles, and enough blocks that the run's prefetch reaches ahead of the loads.
  constexpr index_t seq_max = gd::seq_row_bytes / static_cast<index_t>(sizeof(S)) / W * W;
  for (const index_t K : {W, 2 * W, 3 * W, 4 * W, gd::short_row_batches * W, (gd::short_row_batches + 1) * W,
                          (gd::short_row_batches + 3) * W, seq_max - W, seq_max, seq_max + W})
    for (const index_t N : {W - 1, W, W + 1, 3 * W + 5, 40 * W + 3})
      for (const index_t pad : {index_t(0), index_t(5)})
        for (const int variant : {0, 1, 2}) {  // plain; bias; bias and beta
          const index_t ldw = K + pad;
          std::vector<S> wstore(static_cast<std::size_t>(N * ldw + 1));
          for (auto& v : wstore) v = S(dist(gen));
          const cmatrix<S> w{wstore.data() + (pad ? 1 : 0), N, K, ldw};
          std::vector<T> x(static_cast<std::size_t>(K)), bias(static_cast<std::size_t>(N));
          for (auto& v : x) v = static_cast<T>(dist(gen));
          for (auto& v : bias) v = static_cast<T>(dist(gen));
          std::vector<T> y0(static_cast<std::size_t>(N)), y1;
          for (auto& v : y0) v = static_cast<T>(dist(gen));
          const std::vector<double> old(y0.begin(), y0.end());
          y1 = y0;
          const double beta = variant == 2 ? 0.5 : 0.0;
          const gd::epilogue<T> ep{T(0.375), static_cast<T>(beta), variant > 0 ? bias.data() : nullptr};
          gd::gemm_dot<T, S>(cmatrix<T>(x.data(), 1, K), w, matrix<T>(y0.data(), 1, N), ep);
          // The tiles of R1 rows alone, on x in the order gemm_dot gives them.
          std::vector<T> xo = x;
          if constexpr (sessa::backend::simd::has_pair_path<T, S>)
            if (K >= 2 * W) sessa::backend::simd::pair_order(x.data(), K, xo.data());
          for (index_t j = 0; j < N; j += P::R1) {
            const index_t r = std::min<index_t>(P::R1, N - j);
            gd::epilogue<T> e = ep;
            if (e.bias) e.bias += j;
            gd::dot_row_tiles<T, S>[static_cast<std::size_t>(r - 1)](xo.data(), K, w.row(j), w.ld, K, w.row(j),
                                                                      y1.data() + j, N, e);
          }
          const std::string what = "K=" + std::to_string(K) + " N=" + std::to_string(N) + " pad=" +
                                   std::to_string(pad) + " variant=" + std::to_string(variant) + " storage=" +
                                   std::string(sessa::storage_name<S>());
          INFO(what);
          CHECK(std::memcmp(y0.data(), y1.data(), y0.size() * sizeof(T)) == 0);
          check_product<T>(cmatrix<T>(x.data(), 1, K), [&](index_t k, index_t j) { return sessa::weight_at<T>(w.row(j), k); },
                           old, cmatrix<T>(y0.data(), 1, N), 0.375, beta, ep.bias, what);
          runs += K * static_cast<index_t>(sizeof(S)) <= gd::seq_row_bytes && N >= W;
        }
  CHECK(runs > 0);
}

TEST_CASE("load_widened is exact for every bf16 and f16 bit pattern", "[gemm]") {
  using batch = xsimd::batch<float>;
  constexpr std::size_t W = batch::size;
  index_t bad16 = 0, badbf = 0;
  std::vector<sessa::float16> h(W);
  std::vector<sessa::bfloat16> b(W);
  alignas(64) float got[W];
  for (std::uint32_t base = 0; base < 65536; base += W) {
    for (std::size_t i = 0; i < W; ++i) {
      h[i] = sessa::float16::from_bits(static_cast<std::uint16_t>(base + i));
      b[i] = sessa::bfloat16::from_bits(static_cast<std::uint16_t>(base + i));
    }
    simd::load_widened<float>(h.data()).store_aligned(got);
    for (std::size_t i = 0; i < W; ++i) {
      const float want = static_cast<float>(h[i]);
      bad16 += !(got[i] == want || (std::isnan(got[i]) && std::isnan(want)));
    }
    simd::load_widened<float>(b.data()).store_aligned(got);
    for (std::size_t i = 0; i < W; ++i) {
      const float want = static_cast<float>(b[i]);
      badbf += std::memcmp(&got[i], &want, sizeof(float)) != 0;
    }
  }
  INFO("f16 path " << (simd::widen_path<float, sessa::float16>()) << ", bf16 path "
                   << (simd::widen_path<float, sessa::bfloat16>()));
  CHECK(bad16 == 0);
  CHECK(badbf == 0);
}

TEST_CASE("linear on a prefill-sized product with 2 threads", "[gemm][linear]") {
  thread_guard guard;
  sessa::set_num_threads(2);
  std::mt19937 gen(11);
  run_linear_case<float>(1031, 515, 523, true, false, 0, gen);
  run_linear_case<float>(260, 1040, 300, true, true, 5, gen);
}

TEST_CASE("gemm and linear run concurrently inside a parallel region", "[gemm][linear]") {
  // Each thread uses its own thread-local pack buffers; linear() must not fork a nested team.
  std::mt19937 gen(5);
  const index_t M = 70, N = 66, K = 300;
  std::vector<strided<float>> as, bs, cs, ys;
  std::vector<std::vector<double>> olds;
  for (int t = 0; t < 4; ++t) {
    as.emplace_back(M, K, 0, 0, gen);
    bs.emplace_back(N, K, 0, 0, gen);
    cs.emplace_back(M, N, 0, 0, gen);
    ys.emplace_back(M, N, 0, 0, gen);
  }
#if SESSA_HAS_OPENMP
#pragma omp parallel for num_threads(2) schedule(static, 1)
#endif
  for (int t = 0; t < 4; ++t) {
    simd::gemm_nt<float>(as[t].c(), bs[t].c(), cs[t].view, 1.f, 0.f);
    simd::linear<float>(as[t].c(), bs[t].c(), nullptr, ys[t].view, false);
  }
  for (int t = 0; t < 4; ++t) {
    const auto& b = bs[static_cast<std::size_t>(t)];
    const auto b_t = [&](index_t k, index_t j) { return b.view(j, k); };
    check_product<float>(as[t].c(), b_t, {}, cs[t].c(), 1.0, 0.0, nullptr, "gemm_nt in parallel region");
    check_product<float>(as[t].c(), b_t, {}, ys[t].c(), 1.0, 0.0, nullptr, "linear in parallel region");
  }
}

TEST_CASE("lane reduction and transposing pack agree with scalar code", "[gemm]") {
  namespace gd = simd::gemm_detail;
  std::mt19937 gen(9);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  {
    using batch = xsimd::batch<float>;
    constexpr std::size_t W = batch::size;
    alignas(64) float lanes[W * W];
    for (auto& e : lanes) e = dist(gen);
    batch v[W];
    for (std::size_t i = 0; i < W; ++i) v[i] = batch::load_aligned(lanes + i * W);
    float out[W];
    gd::reduce_lanes<float>(v, out);
    for (std::size_t i = 0; i < W; ++i) {
      double s = 0;
      float mx = lanes[i * W];
      for (std::size_t l = 0; l < W; ++l) {
        s += lanes[i * W + l];
        mx = std::max(mx, lanes[i * W + l]);
      }
      CHECK(out[i] == Approx(s).margin(1e-5));
      CHECK(simd::hsum(v[i]) == Approx(s).margin(1e-5));
      CHECK(simd::hmax(v[i]) == mx);
    }
  }
  {
    using batch = xsimd::batch<double>;
    constexpr std::size_t W = batch::size;
    alignas(64) double lanes[W];
    for (int rep = 0; rep < 20; ++rep) {
      double s = 0, mx = -1e300;
      for (auto& e : lanes) {
        e = dist(gen);
        s += e;
        mx = std::max(mx, e);
      }
      const batch v = batch::load_aligned(lanes);
      CHECK(simd::hsum(v) == Approx(s).margin(1e-14));
      CHECK(simd::hmax(v) == mx);
    }
  }
  {
    using P = gd::blocking<double>;
    const index_t kc = 3 * P::W + 2, ld = kc + 3;
    std::vector<double> src(static_cast<std::size_t>(P::NR * ld)), dst(static_cast<std::size_t>(kc * P::NR) + 64);
    for (auto& e : src) e = dist(gen);
    double* d = dst.data() + (64 - reinterpret_cast<std::uintptr_t>(dst.data()) % 64) / sizeof(double) % 8;
    gd::pack_b_nk(src.data(), ld, P::NR, kc, d);
    index_t bad = 0;
    for (index_t k = 0; k < kc; ++k)
      for (index_t j = 0; j < P::NR; ++j) bad += d[k * P::NR + j] != src[static_cast<std::size_t>(j * ld + k)];
    CHECK(bad == 0);
  }
}

TEST_CASE("q8_0 quantization: within half a step of each weight, scale max|w| / 127, zero padding", "[gemm][quant]") {
  std::mt19937 gen(17);
  std::uniform_real_distribution<double> dist(-3.0, 3.0);
  for (const index_t n : {1, 5, 31, 32, 33, 64, 100}) {
    std::vector<double> w(static_cast<std::size_t>(n));
    for (auto& v : w) v = dist(gen);
    if (n >= 40) std::fill(w.begin() + 32, w.begin() + 40, 0.0);  // a block with some zeros
    std::vector<sessa::q8_0> q(static_cast<std::size_t>(sessa::storage_cols<sessa::q8_0>(n)));
    sessa::quantize_row_q8_0(w.data(), n, q.data());
    std::vector<double> back(static_cast<std::size_t>(n));
    sessa::dequantize_row_q8_0(q.data(), n, back.data());
    for (index_t b = 0; b < static_cast<index_t>(q.size()); ++b) {
      double amax = 0;
      const index_t used = std::min<index_t>(32, n - 32 * b);
      for (index_t i = 0; i < used; ++i) amax = std::max(amax, std::abs(w[static_cast<std::size_t>(32 * b + i)]));
      const double d = static_cast<double>(static_cast<float>(q[static_cast<std::size_t>(b)].d));
      CAPTURE(n, b, amax, d);
      CHECK(std::abs(d - amax / 127.0) <= amax / 127.0 * 1e-3);  // float16 rounding of the scale
      for (index_t i = 0; i < 32; ++i) {
        const int qi = q[static_cast<std::size_t>(b)].q[i];
        if (i >= used) CHECK(qi == 0);
        else {
          const std::size_t k = static_cast<std::size_t>(32 * b + i);
          CHECK(std::abs(back[k] - w[k]) <= 0.5 * d * (1 + 1e-6) + amax * 2e-3 / 127.0);
          CHECK(std::abs(qi) <= 127);
        }
      }
    }
    sessa::check_row_q8_0(q.data(), n, "row");  // what the quantizer writes passes the loader's checks
  }
  // A block whose values are multiples of a float16 scale is exact; an all-zero block has scale 0.
  std::vector<float> exact(64, 0.0f);
  for (int i = 0; i < 32; ++i) exact[static_cast<std::size_t>(i)] = 0.25f * static_cast<float>(i - 16) * (i == 0 ? 0.0f : 1.0f);
  exact[0] = 0.25f * 127.0f;
  std::vector<sessa::q8_0> q(2);
  sessa::quantize_row_q8_0(exact.data(), 64, q.data());
  CHECK(static_cast<float>(q[0].d) == 0.25f);
  CHECK(q[0].q[0] == 127);
  CHECK(q[0].q[1] == -15);
  CHECK(static_cast<float>(q[1].d) == 0.0f);
  for (index_t k = 0; k < 64; ++k) CHECK(sessa::dequantize_at<float>(q.data(), k) == exact[static_cast<std::size_t>(k)]);
}

TEST_CASE("q8_0: non-finite or out-of-range weights and damaged blocks are refused by name", "[gemm][quant]") {
  std::vector<sessa::q8_0> q(2);
  std::vector<float> w(40, 1.0f);
  w[35] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_AS(sessa::quantize_row_q8_0(w.data(), 40, q.data(), "layers.0.W_in.weight row 3"), sessa::value_error);
  CHECK_THROWS_WITH(sessa::quantize_row_q8_0(w.data(), 40, q.data(), "layers.0.W_in.weight row 3"),
                    Catch::Contains("layers.0.W_in.weight row 3") && Catch::Contains("column 35"));
  w[35] = std::numeric_limits<float>::infinity();
  CHECK_THROWS_AS(sessa::quantize_row_q8_0(w.data(), 40, q.data()), sessa::value_error);
  w[35] = 1e7f;  // a scale of 1e7 / 127 > 65504
  CHECK_THROWS_WITH(sessa::quantize_row_q8_0(w.data(), 40, q.data(), "head"),
                    Catch::Contains("head") && Catch::Contains("q8_0's range"));
  w[35] = 8.0e6f;  // 8e6 / 127 = 62992: fits
  CHECK_NOTHROW(sessa::quantize_row_q8_0(w.data(), 40, q.data()));

  std::vector<float> ok(40, 0.5f);
  sessa::quantize_row_q8_0(ok.data(), 40, q.data());
  auto damaged = q;
  damaged[1].q[20] = 3;  // padding past column 40
  CHECK_THROWS_WITH(sessa::check_row_q8_0(damaged.data(), 40, "t"), Catch::Contains("padding"));
  damaged = q;
  damaged[0].q[4] = -128;
  CHECK_THROWS_WITH(sessa::check_row_q8_0(damaged.data(), 40, "t"), Catch::Contains("-128"));
  damaged = q;
  damaged[1].d = sessa::float16(-1.0f);
  CHECK_THROWS_WITH(sessa::check_row_q8_0(damaged.data(), 40, "t"), Catch::Contains("block 1"));
  damaged[1].d = sessa::float16::from_bits(0x7E00);  // NaN
  CHECK_THROWS_AS(sessa::check_row_q8_0(damaged.data(), 40, "t"), sessa::value_error);
  // The kernel refuses a block count that does not match K.
  std::vector<float> x(40, 1.0f), y(2);
  const auto wrong_blocks = [&] {
    simd::linear<float, sessa::q8_0>(cmatrix<float>(x.data(), 1, 40), cmatrix<sessa::q8_0>(q.data(), 1, 1), nullptr,
                                     matrix<float>(y.data(), 1, 1), false);
  };
  CHECK_THROWS_AS(wrong_blocks(), sessa::shape_error);
}

TEST_CASE("load_dequantized is exact for every int8 value and scale position", "[gemm][quant]") {
  using batch = xsimd::batch<float>;
  constexpr index_t W = static_cast<index_t>(batch::size);
  std::vector<sessa::q8_0> row(8);
  for (std::size_t b = 0; b < row.size(); ++b) {
    row[b].d = sessa::float16(static_cast<float>(b + 1) * 0.0078125f + (b == 7 ? 3000.0f : 0.0f));
    for (int i = 0; i < 32; ++i) row[b].q[i] = static_cast<std::int8_t>(static_cast<int>(b) * 32 + i - 128 == -128 ? -127 : static_cast<int>(b) * 32 + i - 128);
  }
  alignas(64) float got[64];
  index_t bad = 0;
  for (index_t k = 0; k < 256; k += W) {
    simd::load_dequantized<float>(row.data(), k).store_aligned(got);
    for (index_t i = 0; i < W; ++i) {
      const sessa::q8_0& b = row[static_cast<std::size_t>((k + i) / 32)];
      const float want = static_cast<float>(b.d) * static_cast<float>(b.q[(k + i) % 32]);
      bad += got[i] != want;
    }
  }
  std::vector<double> wide(200);
  simd::dequantize_n<double>(row.data(), 32, 200, wide.data());
  for (index_t k = 0; k < 200; ++k) bad += wide[static_cast<std::size_t>(k)] != sessa::dequantize_at<double>(row.data(), 32 + k);
  INFO("q8_0 path " << (simd::widen_path<float, sessa::q8_0>()));
  CHECK(bad == 0);
}
