// The cpu backend's O(T·D) kernels (backend/cpu/elementwise.hpp) against the reference kernels: LayerNorm,
// GELU, the gating product and RoPE, in float and double, on widths that are no multiple of a SIMD batch,
// on column blocks of wider matrices (leading dimension > width), in place and out of place, with one thread
// and with two (the threading threshold set to 0, so every call of more than one row is split).
#include <catch2/catch.hpp>

#include "support.hpp"

using namespace sessa;
using sessa::test::max_rel_diff;

namespace {

using ref = backend::kernels<backend::reference>;
using cpu = backend::kernels<backend::cpu>;

using threads_guard = test::settings_guard;

template <class T>
constexpr double tol() {
  return std::is_same_v<T, float> ? 2e-6 : 1e-14;
}

/// max |a - b| / max |b| over the elements of two views of the same shape.
template <class T>
double view_diff(cmatrix<T> a, cmatrix<T> b) {
  double num = 0, den = 0;
  for (index_t i = 0; i < a.rows; ++i)
    for (index_t k = 0; k < a.cols; ++k) {
      num = std::max(num, std::abs(static_cast<double>(a(i, k)) - static_cast<double>(b(i, k))));
      den = std::max(den, std::abs(static_cast<double>(b(i, k))));
    }
  return den > 0 ? num / den : num;
}

}  // namespace

TEMPLATE_TEST_CASE("cpu elementwise kernels match the reference kernels", "[cpu][elementwise]", float, double) {
  using T = TestType;
  const threads_guard guard;
  const int threads = GENERATE(1, 2);
  set_num_threads(threads);
  // Threshold 0: with 2 threads every call of more than one row is split over the threads, whatever its size.
  backend::simd::flash_params.parallel_flops = 0;
  // rows x width: one row (decode), a width below one SIMD batch, odd widths, and calls big enough to thread.
  const auto [rows, width] = GENERATE(table<index_t, index_t>({{1, 64}, {3, 5}, {7, 37}, {300, 513}, {2048, 96}}));
  CAPTURE(threads, rows, width);
  backend::context<backend::reference> rc;
  backend::context<backend::cpu> cc;
  const index_t ld = width + 3;  // every view is a column block of a wider matrix
  const tensor<T> x0 = test::random_tensor<T>({rows, ld}, 1, 2.0);
  const tensor<T> g = test::random_tensor<T>({width}, 2), b = test::random_tensor<T>({width}, 3);
  const auto view = [&](tensor<T>& t) { return matrix<T>(t.data() + 1, rows, width, ld); };

  SECTION("layer_norm, out of place and in place") {
    tensor<T> want(x0.shape()), got(x0.shape());
    tensor<T> xin = x0;
    ref::layer_norm(rc, cmatrix<T>(view(xin)), g.data(), b.data(), T(1e-5), view(want));
    cpu::layer_norm(cc, cmatrix<T>(view(xin)), g.data(), b.data(), T(1e-5), view(got));
    CHECK(view_diff<T>(view(got), view(want)) <= tol<T>());
    cpu::layer_norm(cc, cmatrix<T>(view(xin)), g.data(), b.data(), T(1e-5), view(xin));
    CHECK(view_diff<T>(view(xin), view(want)) <= tol<T>());
  }
  SECTION("gelu in place, leaving the columns outside the view alone") {
    tensor<T> want = x0, got = x0;
    ref::gelu(rc, view(want));
    cpu::gelu(cc, view(got));
    CHECK(max_rel_diff(got.span(), want.span()) <= tol<T>());
    CHECK(got[0] == x0[0]);  // column 0 is outside the view
  }
  SECTION("multiply, with the output aliasing an input") {
    const tensor<T> y0 = test::random_tensor<T>({rows, ld}, 4);
    tensor<T> want(x0.shape()), a = x0, bb = y0;
    ref::multiply(rc, cmatrix<T>(view(a)), cmatrix<T>(view(bb)), view(want));
    cpu::multiply(cc, cmatrix<T>(view(a)), cmatrix<T>(view(bb)), view(a));
    CHECK(view_diff<T>(view(a), view(want)) <= tol<T>());
    tensor<T> a2 = x0;
    cpu::multiply(cc, cmatrix<T>(view(a2)), cmatrix<T>(view(bb)), view(bb));
    CHECK(view_diff<T>(view(bb), view(want)) <= tol<T>());
  }
  SECTION("rope: heads of width d at positions pos0 + r % n, batch-major rows") {
    const index_t d = 8, heads = 3, n = rows % 2 == 0 ? rows / 2 : rows;  // two batch rows when rows is even
    const auto freq = rope::inv_freq(d);
    for (index_t pos0 : {index_t{0}, index_t{4093}, index_t{70000}}) {
      CAPTURE(pos0);
      tensor<T> want = test::random_tensor<T>({rows, heads * d + 2}, 5), got = want;
      const auto hv = [&](tensor<T>& t) { return matrix<T>(t.data() + 2, rows, heads * d, heads * d + 2); };
      ref::rope(rc, hv(want), d, pos0, n, freq.data());
      cpu::rope(cc, hv(got), d, pos0, n, freq.data());
      CHECK(max_rel_diff(got.span(), want.span()) <= tol<T>());
    }
  }
}
