// sessa/backend/cpu/reference.hpp: the reference backend, straightforward scalar loops.
//
// This is the oracle: every other backend is tested against it, so each kernel is written to be
// obviously right rather than fast. The math is SPEC.md's, kernel by kernel (contracts in
// backend/kernel_set.hpp):
//   linear      y = x W^T + b                          (x (M, K), W (N, K) row-major as PyTorch stores it)
//   layer_norm  biased variance, eps inside the square root
//   gelu        exact erf form
//   rope        SPEC.md's pair rotation at absolute positions
//   attention   forward branch: causal softmax over the variant's keys, GQA by head index h / g
//   feedback    s_t = f_t + gamma_t * sum_{j<t} softmax_j(q_b,t . k_b,j / sqrt(D)) s_j, row 0 empty
//   feedback_transposed   out_j = g_j + sum_{t>j} gamma_t alpha_{t,j} out_t, from the last token back
//   copy, append_cache, embed   the row moves of the model glue
// Every kernel reads any storage type (weights W, cache C: float, double, bfloat16, float16), widening each value
// to the compute type T as it loads it, so the reference runs every numeric policy (core/numeric.hpp).
// Its execution context holds only the scratch arena: slot 0 is the row of attention scores.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "../../attention/rope.hpp"
#include "../../concepts.hpp"
#include "../../core/hparams.hpp"
#include "../../core/numeric.hpp"
#include "../../core/quant.hpp"
#include "../../core/tensor.hpp"
#include "../../model/cache.hpp"
#include "../kernels.hpp"
#include "../tags.hpp"

namespace sessa::backend {

/// The reference backend's context: its scratch arena (slot 0: one row of attention scores).
template <>
struct context<reference> {
  scratch_arena<memory::host> scratch;
};

template <>
struct kernels<reference> {
  /// y (+)= x w^T + bias. w: (N, K) stored as W, or as q8_0 blocks (N, ceil(K / 32)); bias as vector_storage_t<W>.
  template <scalar T, class W>
  static void linear(context<reference>&, cmatrix<T> x, cmatrix<W> w, const vector_storage_t<W>* bias, matrix<T> y,
                     bool accumulate = false) {
    for (index_t i = 0; i < x.rows; ++i)
      for (index_t j = 0; j < w.rows; ++j) {
        T acc = 0;
        const T* xr = x.row(i);
        const W* wr = w.row(j);
        if constexpr (is_block_quantized<W>) {  // block by block: one scale per 32 weights, the same products
          for (index_t k0 = 0; k0 < x.cols; k0 += W::block) {
            const W& blk = wr[k0 / W::block];
            const float d = static_cast<float>(blk.d);
            const index_t len = std::min<index_t>(W::block, x.cols - k0);
            for (index_t i = 0; i < len; ++i) acc += xr[k0 + i] * static_cast<T>(d * static_cast<float>(blk.q[i]));
          }
        } else {
          for (index_t k = 0; k < x.cols; ++k) acc += xr[k] * widen<T>(wr[k]);
        }
        if (bias) acc += widen<T>(bias[j]);
        y(i, j) = accumulate ? y(i, j) + acc : acc;
      }
  }

  template <scalar T, class W>
  static void layer_norm(context<reference>&, cmatrix<T> x, const W* g, const W* b, T eps, matrix<T> y) {
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
      for (index_t k = 0; k < D; ++k) yr[k] = (xr[k] - mean) * inv * widen<T>(g[k]) + widen<T>(b[k]);
    }
  }

  template <scalar T>
  static void gelu(context<reference>&, matrix<T> x) {
    const T r = static_cast<T>(0.70710678118654752440);
    for (index_t i = 0; i < x.rows; ++i)
      for (index_t k = 0; k < x.cols; ++k) {
        const T a = x(i, k);
        x(i, k) = T(0.5) * a * (T(1) + std::erf(a * r));
      }
  }

  template <scalar T>
  static void multiply(context<reference>&, cmatrix<T> a, cmatrix<T> b, matrix<T> out) {
    for (index_t i = 0; i < a.rows; ++i)
      for (index_t k = 0; k < a.cols; ++k) out(i, k) = a(i, k) * b(i, k);
  }

  template <scalar T>
  static void gain(context<reference>&, T* gamma, index_t n, T gamma_max) {
    for (index_t i = 0; i < n; ++i) gamma[i] = gamma_max * std::tanh(gamma[i]);
  }

  template <scalar T>
  static void rope(context<reference>&, matrix<T> x, index_t d, index_t pos0, index_t n, const float* inv_freq) {
    for (index_t r = 0; r < x.rows; ++r)
      for (index_t h = 0; h < x.cols / d; ++h) sessa::rope::rotate(x.row(r) + h * d, d, pos0 + r % n, inv_freq);
  }

  template <scalar T, class C, attention_variant A>
  static void attention(context<reference>& ctx, const A& variant, const layer_config& c, cmatrix<T> q,
                        cache_view<const C> cache, index_t pos0, index_t n, matrix<T> out) {
    const index_t H = c.n_heads, d = c.head_dim(), g = c.group_size();
    const T scale = T(1) / std::sqrt(static_cast<T>(d));
    T* p = ctx.scratch.get<T>(0, cache.capacity());  // one row of scores
    for (index_t b = 0; b < cache.batch(); ++b)
      for (index_t i = 0; i < n; ++i) {
        const index_t t = pos0 + i, j0 = variant.first_key(t);
        for (index_t h = 0; h < H; ++h) {
          const T* qh = q.row(b * n + i) + h * d;
          const cmatrix<C> K = cache.k(b, h / g), V = cache.v(b, h / g);  // (capacity, d)
          T mx = -std::numeric_limits<T>::infinity();
          for (index_t j = j0; j <= t; ++j) {
            T acc = 0;
            for (index_t k = 0; k < d; ++k) acc += qh[k] * widen<T>(K(j, k));
            p[j] = acc * scale;
            mx = std::max(mx, p[j]);
          }
          T sum = 0;
          for (index_t j = j0; j <= t; ++j) sum += (p[j] = std::exp(p[j] - mx));
          T* o = out.row(b * n + i) + h * d;
          for (index_t k = 0; k < d; ++k) o[k] = 0;
          for (index_t j = j0; j <= t; ++j) {
            const T w = p[j] / sum;
            for (index_t k = 0; k < d; ++k) o[k] += w * widen<T>(V(j, k));
          }
        }
      }
  }

  /// Row by row in token order. Each s_t is formed in T, written to out, and stored in the cache as C; later
  /// rows read the stored (rounded) value, as a decode step would.
  template <scalar T, class C>
  static void feedback(context<reference>& ctx, const layer_config& c, cmatrix<T> qb, const T* gamma, cmatrix<T> f,
                       cache_view<C> cache, index_t pos0, index_t n, matrix<T> out) {
    const index_t D = c.d_model;
    const T scale = T(1) / std::sqrt(static_cast<T>(D));
    T* p = ctx.scratch.get<T>(0, cache.capacity());
    for (index_t b = 0; b < cache.batch(); ++b) {
      const cmatrix<C> Kb = cache.kb(b);
      const matrix<C> S = cache.s(b);  // (capacity, D)
      for (index_t i = 0; i < n; ++i) {
        const index_t t = pos0 + i, r = b * n + i;
        T* st = out.row(r);
        for (index_t k = 0; k < D; ++k) st[k] = f(r, k);
        if (t > 0) {
          T mx = -std::numeric_limits<T>::infinity();
          for (index_t j = 0; j < t; ++j) {
            T acc = 0;
            for (index_t k = 0; k < D; ++k) acc += qb(r, k) * widen<T>(Kb(j, k));
            p[j] = acc * scale;
            mx = std::max(mx, p[j]);
          }
          T sum = 0;
          for (index_t j = 0; j < t; ++j) sum += (p[j] = std::exp(p[j] - mx));
          for (index_t j = 0; j < t; ++j) {
            const T w = gamma[r] * (p[j] / sum);
            const C* sj = S.row(j);
            for (index_t k = 0; k < D; ++k) st[k] += w * widen<T>(sj[k]);
          }
        }
        for (index_t k = 0; k < D; ++k) S(t, k) = narrow<C>(st[k]);
      }
    }
  }

  /// From the chunk's last token back: when token t is reached every later token has pushed into out_t, so
  /// out_t is final; its softmax row alpha_{t,.} is formed as in feedback and out_t pushed into the chunk's
  /// earlier tokens j: out_j += gamma_t alpha_{t,j} out_t.
  template <scalar T, class C>
  static void feedback_transposed(context<reference>& ctx, const layer_config& c, cmatrix<T> qb, const T* gamma,
                                  cmatrix<T> g, cache_view<const C> cache, index_t pos0, index_t n, matrix<T> out) {
    const index_t D = c.d_model;
    const T scale = T(1) / std::sqrt(static_cast<T>(D));
    T* p = ctx.scratch.get<T>(0, cache.capacity());
    for (index_t b = 0; b < cache.batch(); ++b) {
      const cmatrix<C> Kb = cache.kb(b);
      for (index_t i = 0; i < n; ++i)
        if (out.row(b * n + i) != g.row(b * n + i))
          for (index_t k = 0; k < D; ++k) out(b * n + i, k) = g(b * n + i, k);
      for (index_t i = n - 1; i >= 0; --i) {
        const index_t t = pos0 + i, r = b * n + i;
        if (t == 0 || i == 0) continue;  // no past, or no earlier token of the chunk to push into
        T mx = -std::numeric_limits<T>::infinity();
        for (index_t j = 0; j < t; ++j) {
          T acc = 0;
          for (index_t k = 0; k < D; ++k) acc += qb(r, k) * widen<T>(Kb(j, k));
          p[j] = acc * scale;
          mx = std::max(mx, p[j]);
        }
        T sum = 0;
        for (index_t j = 0; j < t; ++j) sum += (p[j] = std::exp(p[j] - mx));
        const T* ot = out.row(r);
        for (index_t j = pos0; j < t; ++j) {
          const T w = gamma[r] * (p[j] / sum);
          T* oj = out.row(b * n + (j - pos0));
          for (index_t k = 0; k < D; ++k) oj[k] += w * ot[k];
        }
      }
    }
  }

  template <scalar T>
  static void copy(context<reference>&, cmatrix<T> src, matrix<T> dst) {
    for (index_t i = 0; i < src.rows; ++i)
      for (index_t k = 0; k < src.cols; ++k) dst(i, k) = src(i, k);
  }

  template <scalar T, class C>
  static void append_cache(context<reference>&, const layer_config& c, cmatrix<T> kv, cmatrix<T> kb,
                           cache_view<C> cache, index_t pos0, index_t n) {
    const index_t d = c.head_dim(), kvd = c.kv_dim(), D = c.d_model;
    for (index_t b = 0; b < cache.batch(); ++b)
      for (index_t i = 0; i < n; ++i) {
        const index_t r = b * n + i, t = pos0 + i;
        for (index_t h = 0; h < c.n_kv_heads; ++h)
          for (index_t k = 0; k < d; ++k) {
            cache.k(b, h)(t, k) = narrow<C>(kv(r, h * d + k));
            cache.v(b, h)(t, k) = narrow<C>(kv(r, kvd + h * d + k));
          }
        for (index_t k = 0; k < D; ++k) cache.kb(b)(t, k) = narrow<C>(kb(r, k));
      }
  }

  /// h row r = table row tokens[r] (table (V, D) stored as W, or q8_0 blocks (V, ceil(D / 32))), widened to T.
  template <scalar T, class W>
  static void embed(context<reference>&, cmatrix<W> table, const std::int64_t* tokens, matrix<T> h) {
    for (index_t r = 0; r < h.rows; ++r)
      for (index_t k = 0; k < h.cols; ++k) h(r, k) = weight_at<T>(table.row(tokens[r]), k);
  }
};

}  // namespace sessa::backend
