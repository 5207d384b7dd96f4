// sessa/backend/cpu/elementwise.hpp: the O(T·D) kernels of the CPU backend, vectorized and threaded.
//
// Why this file exists: LayerNorm, GELU (with erf), RoPE and the gating product are a small share of a
// layer's FLOPs but not of its time when they run as scalar loops on one thread: at T = 4096, D = 512 the
// reference loops evaluate 2 M erf and 2.6 M sin/cos pairs, tens of milliseconds on one core while the
// other waits. Here every kernel runs over row ranges on the OpenMP threads (one range per thread, when the
// call is large enough) with xsimd batches along a row:
//   layer_norm  mean, variance and the affine map, three passes over a row in SIMD registers
//   gelu        0.5 x (1 + erf(x / sqrt 2)) with xsimd::erf (a few ulp from std::erf)
//   multiply    out = a * b
//   rope        the cos / sin of each (position, pair) computed once per call into a table shared by every
//               head and row of that position (std::cos / std::sin of the same angle rope::rotate forms,
//               so the same values as the reference kernel's), then applied
// The contracts are kernels<reference>'s (backend/cpu/reference.hpp).
#pragma once

#include <algorithm>
#include <cmath>

#include <xsimd/xsimd.hpp>

#include "../../concepts.hpp"
#include "../../config.hpp"
#include "../../core/tensor.hpp"
#include "attention.hpp"
#include "widen.hpp"

namespace sessa::backend::simd::inline SESSA_CPU_ABI {  // see config.hpp

namespace elementwise_detail {

/// f(r0, r1) over [0, rows) split into one contiguous range per thread (at most max_threads), or f(0, rows) on the calling
/// thread when `work` (about one FLOP per element) is too small to share or a region is already running.
template <class F>
inline void for_rows(index_t rows, double work, int max_threads, F&& f) {
  const int nt = flash_detail::threads_for(work, max_threads);
  if (nt == 1 || rows < 2) {
    f(index_t{0}, rows);
    return;
  }
  flash_detail::run_team(nt, [&](const flash_detail::team& tm) {
    const index_t parts = tm.size();
    tm.for_static(parts, [&](index_t p) {
      const index_t r0 = rows * p / parts, r1 = rows * (p + 1) / parts;
      if (r1 > r0) f(r0, r1);
    });
  });
}

/// Per-thread cos / sin table of rope(): grown once, then reused.
template <class T>
inline buffer<T>& rope_table() {
  thread_local buffer<T> table;
  return table;
}

}  // namespace elementwise_detail

/// y = (x - mean) / sqrt(var + eps) * g + b per row of x (rows, D); y may alias x. g and b are stored as W (T or a
/// narrower storage type, widened as they are loaded).
template <scalar T, class Wt = T>
void layer_norm(cmatrix<T> x, const Wt* g, const Wt* b, T eps, matrix<T> y, int max_threads = num_threads()) {
  using B = xsimd::batch<T>;
  constexpr index_t W = static_cast<index_t>(B::size);
  const index_t D = x.cols;
  elementwise_detail::for_rows(x.rows, 8.0 * static_cast<double>(x.rows * D), max_threads, [&](index_t r0, index_t r1) {
    for (index_t i = r0; i < r1; ++i) {
      const T* xr = x.row(i);
      T* yr = y.row(i);
      index_t k = 0;
      B acc(T(0));
      for (; k + W <= D; k += W) acc += B::load_unaligned(xr + k);
      T sum = xsimd::hadd(acc);
      for (; k < D; ++k) sum += xr[k];
      const T mean = sum / static_cast<T>(D);
      const B mv(mean);
      B vacc(T(0));
      for (k = 0; k + W <= D; k += W) {
        const B c = B::load_unaligned(xr + k) - mv;
        vacc = xsimd::fma(c, c, vacc);
      }
      T var = xsimd::hadd(vacc);
      for (; k < D; ++k) var += (xr[k] - mean) * (xr[k] - mean);
      var /= static_cast<T>(D);
      const T inv = T(1) / std::sqrt(var + eps);
      const B iv(inv);
      for (k = 0; k + W <= D; k += W) {
        const B c = (B::load_unaligned(xr + k) - mv) * iv;
        xsimd::fma(c, load_widened<T>(g + k), load_widened<T>(b + k)).store_unaligned(yr + k);
      }
      for (; k < D; ++k) yr[k] = (xr[k] - mean) * inv * widen<T>(g[k]) + widen<T>(b[k]);
    }
  });
}

/// x <- 0.5 x (1 + erf(x / sqrt 2)) in place (x may be a column block of a wider matrix).
template <scalar T>
void gelu(matrix<T> x, int max_threads = num_threads()) {
  using B = xsimd::batch<T>;
  constexpr index_t W = static_cast<index_t>(B::size);
  const T r = static_cast<T>(0.70710678118654752440);
  const index_t C = x.cols;
  elementwise_detail::for_rows(x.rows, 30.0 * static_cast<double>(x.rows * C), max_threads, [&](index_t r0, index_t r1) {
    const B rv(r), half(T(0.5)), one(T(1));
    for (index_t i = r0; i < r1; ++i) {
      T* xr = x.row(i);
      index_t k = 0;
      for (; k + W <= C; k += W) {
        const B a = B::load_unaligned(xr + k);
        (half * a * (one + xsimd::erf(a * rv))).store_unaligned(xr + k);
      }
      for (; k < C; ++k) xr[k] = T(0.5) * xr[k] * (T(1) + std::erf(xr[k] * r));
    }
  });
}

/// out = a * b elementwise (out may alias either).
template <scalar T>
void multiply(cmatrix<T> a, cmatrix<T> b, matrix<T> out, int max_threads = num_threads()) {
  using B = xsimd::batch<T>;
  constexpr index_t W = static_cast<index_t>(B::size);
  const index_t C = a.cols;
  elementwise_detail::for_rows(a.rows, static_cast<double>(a.rows * C), max_threads, [&](index_t r0, index_t r1) {
    for (index_t i = r0; i < r1; ++i) {
      const T *ar = a.row(i), *br = b.row(i);
      T* orow = out.row(i);
      index_t k = 0;
      for (; k + W <= C; k += W) (B::load_unaligned(ar + k) * B::load_unaligned(br + k)).store_unaligned(orow + k);
      for (; k < C; ++k) orow[k] = ar[k] * br[k];
    }
  });
}

/// Rotates every head (width d) of every row of x in place; row r is at position pos0 + r % n.
template <scalar T>
void rope(matrix<T> x, index_t d, index_t pos0, index_t n, const float* inv_freq, int max_threads = num_threads()) {
  const index_t half = d / 2, heads = x.cols / d;
  // table (n, 2 * half): cos | sin of (pos0 + p) * omega_i, formed exactly as rope::rotate forms them.
  buffer<T>& table = elementwise_detail::rope_table<T>();
  table.reserve(n * 2 * half);
  T* tab = table.data();
  elementwise_detail::for_rows(n, 40.0 * static_cast<double>(n * half), max_threads, [&](index_t p0, index_t p1) {
    for (index_t p = p0; p < p1; ++p) {
      const T t = static_cast<T>(pos0 + p);
      T* cs = tab + p * 2 * half;
      for (index_t i = 0; i < half; ++i) {
        const T theta = t * static_cast<T>(inv_freq[i]);
        cs[i] = std::cos(theta);
        cs[half + i] = std::sin(theta);
      }
    }
  });
  elementwise_detail::for_rows(x.rows, 4.0 * static_cast<double>(x.rows * x.cols), max_threads, [&](index_t r0, index_t r1) {
    for (index_t r = r0; r < r1; ++r) {
      const T* cs = tab + (r % n) * 2 * half;
      const T* sn = cs + half;
      for (index_t h = 0; h < heads; ++h) {
        T* xh = x.row(r) + h * d;
        for (index_t i = 0; i < half; ++i) {
          const T x0 = xh[2 * i], x1 = xh[2 * i + 1];
          xh[2 * i] = x0 * cs[i] - x1 * sn[i];
          xh[2 * i + 1] = x0 * sn[i] + x1 * cs[i];
        }
      }
    }
  });
}

}  // namespace sessa::backend::simd::inline SESSA_CPU_ABI
