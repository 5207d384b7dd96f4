// sessa/backend/cpu/reference.hpp: the reference backend, straightforward scalar loops.
//
// This is the oracle: every other backend is tested against it, so each kernel is written to be
// obviously right rather than fast. The math is SPEC.md's, kernel by kernel:
//   linear      y = x W^T + b                          (x (M, K), W (N, K) row-major as PyTorch stores it)
//   layer_norm  biased variance, eps inside the square root
//   gelu        exact erf form
//   rope        SPEC.md's pair rotation at absolute positions
//   attention   forward branch: causal softmax over the variant's keys, GQA by head index h / g
//   feedback    s_t = f_t + gamma_t * sum_{j<t} softmax_j(q_b,t . k_b,j / sqrt(D)) s_j, row 0 empty
// Rows of a chunk are laid out batch-major: row b * n + i is token i of batch row b, at absolute position
// pos0 + i. The keys, values and feedback keys of the chunk are in the cache before attention/feedback run.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "../../attention/rope.hpp"
#include "../../concepts.hpp"
#include "../../core/hparams.hpp"
#include "../../core/tensor.hpp"
#include "../../model/cache.hpp"
#include "../kernels.hpp"
#include "../tags.hpp"

namespace sessa::backend {

template <>
struct kernels<reference> {
  /// y (M, N) = x (M, K) * w (N, K)^T + bias (N; may be null). With accumulate, y += instead of y =.
  template <scalar T>
  static void linear(cmatrix<T> x, cmatrix<T> w, const T* bias, matrix<T> y, bool accumulate = false) {
    for (index_t i = 0; i < x.rows; ++i)
      for (index_t j = 0; j < w.rows; ++j) {
        T acc = 0;
        const T* xr = x.row(i);
        const T* wr = w.row(j);
        for (index_t k = 0; k < x.cols; ++k) acc += xr[k] * wr[k];
        if (bias) acc += bias[j];
        y(i, j) = accumulate ? y(i, j) + acc : acc;
      }
  }

  /// y = (x - mean) / sqrt(var + eps) * g + b per row; y may alias x.
  template <scalar T>
  static void layer_norm(cmatrix<T> x, const T* g, const T* b, T eps, matrix<T> y) {
    const index_t D = x.cols;
    for (index_t i = 0; i < x.rows; ++i) {
      const T* xr = x.row(i);
      T mean = 0;
      for (index_t k = 0; k < D; ++k) mean += xr[k];
      mean /= static_cast<T>(D);
      T var = 0;
      for (index_t k = 0; k < D; ++k) var += (xr[k] - mean) * (xr[k] - mean);
      var /= static_cast<T>(D);
      const T inv = T(1) / std::sqrt(var + eps);
      T* yr = y.row(i);
      for (index_t k = 0; k < D; ++k) yr[k] = (xr[k] - mean) * inv * g[k] + b[k];
    }
  }

  /// x <- 0.5 x (1 + erf(x / sqrt 2)) in place.
  template <scalar T>
  static void gelu(matrix<T> x) {
    const T r = static_cast<T>(0.70710678118654752440);
    for (index_t i = 0; i < x.rows; ++i)
      for (index_t k = 0; k < x.cols; ++k) {
        const T a = x(i, k);
        x(i, k) = T(0.5) * a * (T(1) + std::erf(a * r));
      }
  }

  /// out = a * b elementwise (out may alias either).
  template <scalar T>
  static void multiply(cmatrix<T> a, cmatrix<T> b, matrix<T> out) {
    for (index_t i = 0; i < a.rows; ++i)
      for (index_t k = 0; k < a.cols; ++k) out(i, k) = a(i, k) * b(i, k);
  }

  /// gamma_r <- gamma_max * tanh(gamma_r) for each of n values (gamma holds bias + ctx . a on entry).
  template <scalar T>
  static void gain(T* gamma, index_t n, T gamma_max) {
    for (index_t i = 0; i < n; ++i) gamma[i] = gamma_max * std::tanh(gamma[i]);
  }

  /// Rotates every head (width d) of every row in place; row r is at position pos0 + r % n.
  template <scalar T>
  static void rope(matrix<T> x, index_t d, index_t pos0, index_t n, const float* inv_freq) {
    for (index_t r = 0; r < x.rows; ++r)
      for (index_t h = 0; h < x.cols / d; ++h) sessa::rope::rotate(x.row(r) + h * d, d, pos0 + r % n, inv_freq);
  }

  /// Forward branch. q (batch*n, H*d) -> out (batch*n, H*d); query head h reads kv head h / g over keys
  /// [variant.first_key(t), t] of the cache.
  template <scalar T, attention_variant A>
  static void attention(const A& variant, const layer_config& c, cmatrix<T> q, const layer_cache<T>& cache,
                        index_t pos0, index_t n, matrix<T> out, workspace<T>& ws) {
    const index_t H = c.n_heads, d = c.head_dim(), g = c.group_size();
    const T scale = T(1) / std::sqrt(static_cast<T>(d));
    T* p = ws.scores.data();  // (t + 1) scores
    for (index_t b = 0; b < cache.batch(); ++b)
      for (index_t i = 0; i < n; ++i) {
        const index_t t = pos0 + i, j0 = variant.first_key(t);
        for (index_t h = 0; h < H; ++h) {
          const T* qh = q.row(b * n + i) + h * d;
          const cmatrix<T> K = cache.k(b, h / g), V = cache.v(b, h / g);  // (capacity, d)
          T mx = -std::numeric_limits<T>::infinity();
          for (index_t j = j0; j <= t; ++j) {
            T acc = 0;
            for (index_t k = 0; k < d; ++k) acc += qh[k] * K(j, k);
            p[j] = acc * scale;
            mx = std::max(mx, p[j]);
          }
          T sum = 0;
          for (index_t j = j0; j <= t; ++j) sum += (p[j] = std::exp(p[j] - mx));
          T* o = out.row(b * n + i) + h * d;
          for (index_t k = 0; k < d; ++k) o[k] = 0;
          for (index_t j = j0; j <= t; ++j) {
            const T w = p[j] / sum;
            for (index_t k = 0; k < d; ++k) o[k] += w * V(j, k);
          }
        }
      }
  }

  /// Feedback solve, row by row in token order. qb (batch*n, D), gamma (batch*n), f (batch*n, D) ->
  /// out (batch*n, D) and cache.s rows [pos0, pos0 + n). The strict past [0, t) is read from the cache.
  template <scalar T>
  static void feedback(const layer_config& c, cmatrix<T> qb, const T* gamma, cmatrix<T> f, layer_cache<T>& cache,
                       index_t pos0, index_t n, matrix<T> out, workspace<T>& ws) {
    const index_t D = c.d_model;
    const T scale = T(1) / std::sqrt(static_cast<T>(D));
    T* p = ws.scores.data();
    for (index_t b = 0; b < cache.batch(); ++b) {
      const cmatrix<T> Kb = cache.kb(b);
      const matrix<T> S = cache.s(b);  // (capacity, D)
      for (index_t i = 0; i < n; ++i) {
        const index_t t = pos0 + i, r = b * n + i;
        T* st = S.row(t);
        for (index_t k = 0; k < D; ++k) st[k] = f(r, k);
        if (t > 0) {
          T mx = -std::numeric_limits<T>::infinity();
          for (index_t j = 0; j < t; ++j) {
            T acc = 0;
            for (index_t k = 0; k < D; ++k) acc += qb(r, k) * Kb(j, k);
            p[j] = acc * scale;
            mx = std::max(mx, p[j]);
          }
          T sum = 0;
          for (index_t j = 0; j < t; ++j) sum += (p[j] = std::exp(p[j] - mx));
          for (index_t j = 0; j < t; ++j) {
            const T w = gamma[r] * (p[j] / sum);
            const T* sj = S.row(j);
            for (index_t k = 0; k < D; ++k) st[k] += w * sj[k];
          }
        }
        for (index_t k = 0; k < D; ++k) out(r, k) = st[k];
      }
    }
  }
};

}  // namespace sessa::backend
