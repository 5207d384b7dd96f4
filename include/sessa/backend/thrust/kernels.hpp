// sessa/backend/thrust/kernels.hpp: the whole kernel set written once over Thrust, for any Thrust system.
//
// Why this file exists: it is the device backends' correctness baseline. Every kernel is a small
// `SESSA_HOST_DEVICE` functor run by a Thrust algorithm (for_each_n over a counting iterator) under an
// explicit execution policy, so the same source runs on the OpenMP system on the CPU (backend::thrust_omp,
// which CI runs) and on a GPU (backend::thrust_cuda, under nvcc). A fast CUDA kernel is tested against this
// and against the reference backend; the math here follows kernels<reference> kernel by kernel (same formulas,
// same order of accumulation per output), not the fast kernels' tilings.
//
//   thrust_kernels<Tag>   the kernels of a Thrust backend. Tag provides the memory space (Tag::memory_space)
//                         and the execution policy for a context (Tag::policy(ctx)); kernels<Tag> derives from
//                         thrust_kernels<Tag>. Contracts: backend/kernel_set.hpp.
//
// Parallel shape of each kernel (all sizes are per call):
//   linear                 one work item per output element, a K-long dot product in the compute type
//   layer_norm             one item per row (mean, variance, then the affine map, in place allowed)
//   gelu, multiply, copy, embed, append_cache, gain   one item per element
//   rope                   one item per (row, head, pair)
//   attention              one item per (row, query head): the reference's three passes over the keys (max,
//                          exp-sum, weighted values) without a score buffer
//   feedback               token by token (a recurrence): per token, one item per (sequence, past key) for
//                          the logits, one per sequence for max and exp-sum, one per (sequence, column) for
//                          s_t = f_t + gamma_t sum_j p_j s_j. Scratch: slot 0 of the context's arena, batch x
//                          capacity logits, then batch x 2 (max, sum).
//   feedback_transposed    from the last token back: the same logits and softmax per token, then one item per
//                          (sequence, earlier token of the chunk, column) pushing the token's final row back.
// Weights and cache may be stored narrower than the compute type (core/numeric.hpp): every load widens.
#pragma once

#include <math.h>

#include <cstdint>
#include <type_traits>

#include "config.hpp"  // before any Thrust header

#include <thrust/for_each.h>
#include <thrust/iterator/counting_iterator.h>

#include "../../attention/variants.hpp"
#include "../../concepts.hpp"
#include "../../core/hparams.hpp"
#include "../../core/numeric.hpp"
#include "../../core/tensor.hpp"
#include "../../model/cache.hpp"
#include "../kernels.hpp"

namespace sessa::backend {

/// Device-callable math in the compute type (the C library's float and double functions, which nvcc provides
/// in device code too).
namespace thrust_math {
SESSA_HOST_DEVICE inline float exp(float x) { return ::expf(x); }
SESSA_HOST_DEVICE inline double exp(double x) { return ::exp(x); }
SESSA_HOST_DEVICE inline float sqrt(float x) { return ::sqrtf(x); }
SESSA_HOST_DEVICE inline double sqrt(double x) { return ::sqrt(x); }
SESSA_HOST_DEVICE inline float erf(float x) { return ::erff(x); }
SESSA_HOST_DEVICE inline double erf(double x) { return ::erf(x); }
SESSA_HOST_DEVICE inline float tanh(float x) { return ::tanhf(x); }
SESSA_HOST_DEVICE inline double tanh(double x) { return ::tanh(x); }
SESSA_HOST_DEVICE inline float cos(float x) { return ::cosf(x); }
SESSA_HOST_DEVICE inline double cos(double x) { return ::cos(x); }
SESSA_HOST_DEVICE inline float sin(float x) { return ::sinf(x); }
SESSA_HOST_DEVICE inline double sin(double x) { return ::sin(x); }
template <class T>
SESSA_HOST_DEVICE inline T max(T a, T b) {
  return a < b ? b : a;
}
template <class T>
SESSA_HOST_DEVICE inline T neg_inf() {
  return -static_cast<T>(HUGE_VAL);
}
}  // namespace thrust_math

namespace thrust_fn {

/// A raw row-major view for device code: element (i, j) at p[i * ld + j].
template <class T>
struct view {
  T* p;
  index_t ld;
  SESSA_HOST_DEVICE T& operator()(index_t i, index_t j) const { return p[i * ld + j]; }
};
template <class T, class S>
view<T> raw_view(matrix<T, S> m) {
  return {raw(m.data), m.ld};
}

template <class T, class W>
struct linear {
  view<const T> x;
  view<const W> w;
  const W* bias;
  view<T> y;
  index_t N, K;
  bool accumulate;
  SESSA_HOST_DEVICE void operator()(index_t e) const {
    const index_t i = e / N, j = e % N;
    T acc = 0;
    for (index_t k = 0; k < K; ++k) acc += x(i, k) * widen<T>(w(j, k));
    if (bias) acc += widen<T>(bias[j]);
    y(i, j) = accumulate ? y(i, j) + acc : acc;
  }
};

template <class T, class W>
struct layer_norm {
  view<const T> x;
  const W* g;
  const W* b;
  T eps;
  view<T> y;
  index_t D;
  SESSA_HOST_DEVICE void operator()(index_t i) const {
    T mean = 0;
    for (index_t k = 0; k < D; ++k) mean += x(i, k);
    mean /= static_cast<T>(D);
    T var = 0;
    for (index_t k = 0; k < D; ++k) var += (x(i, k) - mean) * (x(i, k) - mean);
    var /= static_cast<T>(D);
    const T inv = T(1) / thrust_math::sqrt(var + eps);
    for (index_t k = 0; k < D; ++k) y(i, k) = (x(i, k) - mean) * inv * widen<T>(g[k]) + widen<T>(b[k]);
  }
};

template <class T>
struct gelu {
  view<T> x;
  index_t cols;
  SESSA_HOST_DEVICE void operator()(index_t e) const {
    T& v = x(e / cols, e % cols);
    const T a = v;
    v = T(0.5) * a * (T(1) + thrust_math::erf(a * static_cast<T>(0.70710678118654752440)));
  }
};

template <class T>
struct multiply {
  view<const T> a, b;
  view<T> out;
  index_t cols;
  SESSA_HOST_DEVICE void operator()(index_t e) const {
    const index_t i = e / cols, k = e % cols;
    out(i, k) = a(i, k) * b(i, k);
  }
};

template <class T>
struct gain {
  T* g;
  T gamma_max;
  SESSA_HOST_DEVICE void operator()(index_t i) const { g[i] = gamma_max * thrust_math::tanh(g[i]); }
};

template <class T>
struct rope {
  view<T> x;
  const float* inv_freq;
  index_t d, heads, pos0, n;
  SESSA_HOST_DEVICE void operator()(index_t e) const {
    const index_t half = d / 2, i = e % half, h = (e / half) % heads, r = e / (half * heads);
    const T t = static_cast<T>(pos0 + r % n);
    const T theta = t * static_cast<T>(inv_freq[i]);
    const T c = thrust_math::cos(theta), s = thrust_math::sin(theta);
    T* p = &x(r, h * d + 2 * i);
    const T x0 = p[0], x1 = p[1];
    p[0] = x0 * c - x1 * s;
    p[1] = x0 * s + x1 * c;
  }
};

/// One (row, query head) of the forward branch: the query at position t = pos0 + i reads keys
/// [first_key(t), t] of kv head h / g.
template <class T, class C, class A>
struct attention {
  A variant;
  view<const T> q;
  view<T> out;
  const C* k;  // (batch, Hkv, capacity, d)
  const C* v;
  index_t H, Hkv, g, d, capacity, pos0, n;
  T scale;
  SESSA_HOST_DEVICE void operator()(index_t e) const {
    const index_t h = e % H, r = e / H, b = r / n, t = pos0 + r % n, j0 = variant.first_key(t);
    const T* qh = &q(r, h * d);
    const C* K = k + ((b * Hkv + h / g) * capacity) * d;
    const C* V = v + ((b * Hkv + h / g) * capacity) * d;
    T* o = &out(r, h * d);
    T mx = thrust_math::neg_inf<T>();
    for (index_t j = j0; j <= t; ++j) mx = thrust_math::max(mx, dot(qh, K + j * d) * scale);
    T sum = 0;
    for (index_t c = 0; c < d; ++c) o[c] = 0;
    for (index_t j = j0; j <= t; ++j) {
      const T p = thrust_math::exp(dot(qh, K + j * d) * scale - mx);
      sum += p;
      for (index_t c = 0; c < d; ++c) o[c] += p * widen<T>(V[j * d + c]);
    }
    const T inv = T(1) / sum;
    for (index_t c = 0; c < d; ++c) o[c] *= inv;
  }
  SESSA_HOST_DEVICE T dot(const T* a, const C* bk) const {
    T acc = 0;
    for (index_t c = 0; c < d; ++c) acc += a[c] * widen<T>(bk[c]);
    return acc;
  }
};

/// Feedback, step (a): logits of token row r against past keys j < t of its sequence.
template <class T, class C>
struct feedback_logits {
  view<const T> qb;
  const C* kb;  // (batch, capacity, D)
  T* logits;    // (batch, capacity)
  index_t n, i, t, D, capacity;
  T scale;
  SESSA_HOST_DEVICE void operator()(index_t e) const {
    const index_t b = e / t, j = e % t;
    const T* q = &qb(b * n + i, 0);
    const C* key = kb + (b * capacity + j) * D;
    T acc = 0;
    for (index_t k = 0; k < D; ++k) acc += q[k] * widen<T>(key[k]);
    logits[b * capacity + j] = acc * scale;
  }
};

/// Feedback, step (b): per sequence, the max of its t logits, their exponentials in place and their sum.
template <class T>
struct feedback_softmax {
  T* logits;  // (batch, capacity)
  T* stats;   // (batch, 2): max | sum
  index_t t, capacity;
  SESSA_HOST_DEVICE void operator()(index_t b) const {
    T* p = logits + b * capacity;
    T mx = thrust_math::neg_inf<T>();
    for (index_t j = 0; j < t; ++j) mx = thrust_math::max(mx, p[j]);
    T sum = 0;
    for (index_t j = 0; j < t; ++j) sum += (p[j] = thrust_math::exp(p[j] - mx));
    stats[2 * b] = mx;
    stats[2 * b + 1] = sum;
  }
};

/// Feedback, step (c): column k of s_t for sequence b, written to out and to the cache.
template <class T, class C>
struct feedback_solve {
  view<const T> f;
  const T* gamma;
  const T* logits;  // (batch, capacity): exponentials
  const T* stats;   // (batch, 2)
  C* s;             // (batch, capacity, D)
  view<T> out;
  index_t n, i, t, D, capacity;
  SESSA_HOST_DEVICE void operator()(index_t e) const {
    const index_t b = e / D, k = e % D, r = b * n + i;
    T st = f(r, k);
    if (t > 0) {
      const T* p = logits + b * capacity;
      const T sum = stats[2 * b + 1];
      const C* sb = s + b * capacity * D;
      for (index_t j = 0; j < t; ++j) {
        const T w = gamma[r] * (p[j] / sum);
        st += w * widen<T>(sb[j * D + k]);
      }
    }
    out(r, k) = st;
    s[(b * capacity + t) * D + k] = narrow<C>(st);
  }
};

/// Transposed feedback, one token: out row (b, j) += w_j out row (b, i) for the chunk's earlier tokens j < i,
/// with w_j = gamma_r softmax_j from the exponentials and sums of steps (a) and (b).
template <class T>
struct feedback_push {
  const T* gamma;
  const T* logits;  // (batch, capacity): exponentials
  const T* stats;   // (batch, 2)
  view<T> out;
  index_t n, i, pos0, D, capacity;
  SESSA_HOST_DEVICE void operator()(index_t e) const {
    const index_t k = e % D, j = (e / D) % i, b = e / (D * i), r = b * n + i;
    const T w = gamma[r] * (logits[b * capacity + pos0 + j] / stats[2 * b + 1]);
    out(b * n + j, k) += w * out(r, k);
  }
};

template <class T>
struct copy {
  view<const T> src;
  view<T> dst;
  index_t cols;
  SESSA_HOST_DEVICE void operator()(index_t e) const {
    const index_t i = e / cols, k = e % cols;
    dst(i, k) = src(i, k);
  }
};

/// One value of the chunk into the cache: element e of (batch*n, 2 kvd + D) = [k | v | k_b].
template <class T, class C>
struct append_cache {
  view<const T> kv, kb;
  C *k, *v, *kbc;
  index_t n, pos0, d, kvd, Hkv, D, capacity;
  SESSA_HOST_DEVICE void operator()(index_t e) const {
    const index_t width = 2 * kvd + D, r = e / width, c = e % width, b = r / n, t = pos0 + r % n;
    if (c < 2 * kvd) {
      const index_t cc = c < kvd ? c : c - kvd, h = cc / d, x = cc % d;
      C* dst = c < kvd ? k : v;
      dst[((b * Hkv + h) * capacity + t) * d + x] = narrow<C>(kv(r, c));
    } else {
      kbc[(b * capacity + t) * D + (c - 2 * kvd)] = narrow<C>(kb(r, c - 2 * kvd));
    }
  }
};

template <class T, class W>
struct embed {
  view<const W> table;
  const std::int64_t* tokens;
  view<T> h;
  index_t cols;
  SESSA_HOST_DEVICE void operator()(index_t e) const {
    const index_t r = e / cols, k = e % cols;
    h(r, k) = widen<T>(table(tokens[r], k));
  }
};

}  // namespace thrust_fn

/// The kernel set of a Thrust backend Tag (see the top of this file).
template <class Tag>
struct thrust_kernels {
  using S = typename Tag::memory_space;
  static_assert(!S::host_accessible, "sessa: a Thrust backend's memory space is a device space");
  using ctx_t = context<Tag>;

  template <class F>
  static void run(ctx_t& ctx, index_t n, const F& f) {
    if (n <= 0) return;
    thrust::for_each_n(Tag::policy(ctx), thrust::counting_iterator<index_t>(0), n, f);
  }

  template <scalar T, class W>
  static void linear(ctx_t& ctx, cmatrix<T, S> x, cmatrix<W, S> w, pointer<const W, S> bias, matrix<T, S> y,
                     bool accumulate = false) {
    run(ctx, x.rows * w.rows,
        thrust_fn::linear<T, W>{thrust_fn::raw_view(x), thrust_fn::raw_view(w), raw(bias), thrust_fn::raw_view(y),
                                w.rows, x.cols, accumulate});
  }

  /// g, b: space_ptr<W, S> or space_ptr<const W, S>.
  template <scalar T, class G>
  static void layer_norm(ctx_t& ctx, cmatrix<T, S> x, G g, G b, T eps, matrix<T, S> y) {
    using W = std::remove_const_t<std::remove_pointer_t<decltype(raw(g))>>;
    static_assert(std::is_same_v<G, space_ptr<const W, S>> || std::is_same_v<G, space_ptr<W, S>>,
                  "sessa: thrust layer_norm takes its parameters as pointers of the backend's space");
    run(ctx, x.rows,
        thrust_fn::layer_norm<T, W>{thrust_fn::raw_view(x), raw(g), raw(b), eps, thrust_fn::raw_view(y), x.cols});
  }

  template <scalar T>
  static void gelu(ctx_t& ctx, matrix<T, S> x) {
    run(ctx, x.rows * x.cols, thrust_fn::gelu<T>{thrust_fn::raw_view(x), x.cols});
  }

  template <scalar T>
  static void multiply(ctx_t& ctx, cmatrix<T, S> a, cmatrix<T, S> b, matrix<T, S> out) {
    run(ctx, a.rows * a.cols,
        thrust_fn::multiply<T>{thrust_fn::raw_view(a), thrust_fn::raw_view(b), thrust_fn::raw_view(out), a.cols});
  }

  template <scalar T>
  static void gain(ctx_t& ctx, pointer<T, S> gamma, index_t n, T gamma_max) {
    run(ctx, n, thrust_fn::gain<T>{raw(gamma), gamma_max});
  }

  template <scalar T>
  static void rope(ctx_t& ctx, matrix<T, S> x, index_t d, index_t pos0, index_t n, pointer<const float, S> inv_freq) {
    const index_t heads = x.cols / d;
    run(ctx, x.rows * heads * (d / 2), thrust_fn::rope<T>{thrust_fn::raw_view(x), raw(inv_freq), d, heads, pos0, n});
  }

  template <scalar T, class C, attention_variant A>
  static void attention(ctx_t& ctx, const A& variant, const layer_config& c, cmatrix<T, S> q,
                        cache_view<const C, S> cache, index_t pos0, index_t n, matrix<T, S> out) {
    const index_t d = c.head_dim();
    const T scale = T(1) / thrust_math::sqrt(static_cast<T>(d));
    run(ctx, cache.batch() * n * c.n_heads,
        thrust_fn::attention<T, C, A>{variant, thrust_fn::raw_view(q), thrust_fn::raw_view(out), raw(cache.k_base()),
                                      raw(cache.v_base()), c.n_heads, c.n_kv_heads, c.group_size(), d,
                                      cache.capacity(), pos0, n, scale});
  }

  template <scalar T, class C>
  static void feedback(ctx_t& ctx, const layer_config& c, cmatrix<T, S> qb, pointer<const T, S> gamma,
                       cmatrix<T, S> f, cache_view<C, S> cache, index_t pos0, index_t n, matrix<T, S> out) {
    const index_t D = c.d_model, batch = cache.batch(), cap = cache.capacity();
    const T scale = T(1) / thrust_math::sqrt(static_cast<T>(D));
    T* logits = raw(ctx.scratch.template get<T>(0, batch * cap + 2 * batch));
    T* stats = logits + batch * cap;
    for (index_t i = 0; i < n; ++i) {
      const index_t t = pos0 + i;
      if (t > 0) {
        run(ctx, batch * t,
            thrust_fn::feedback_logits<T, C>{thrust_fn::raw_view(qb), raw(cache.kb_base()), logits, n, i, t, D, cap,
                                             scale});
        run(ctx, batch, thrust_fn::feedback_softmax<T>{logits, stats, t, cap});
      }
      run(ctx, batch * D,
          thrust_fn::feedback_solve<T, C>{thrust_fn::raw_view(f), raw(gamma), logits, stats, raw(cache.s_base()),
                                          thrust_fn::raw_view(out), n, i, t, D, cap});
    }
  }

  /// From the chunk's last token back, one token at a time: its softmax row (steps (a) and (b) of feedback),
  /// then its final out row pushed into the chunk's earlier rows.
  template <scalar T, class C>
  static void feedback_transposed(ctx_t& ctx, const layer_config& c, cmatrix<T, S> qb, pointer<const T, S> gamma,
                                  cmatrix<T, S> g, cache_view<const C, S> cache, index_t pos0, index_t n,
                                  matrix<T, S> out) {
    const index_t D = c.d_model, batch = cache.batch(), cap = cache.capacity();
    if (n <= 0 || batch <= 0) return;
    const T scale = T(1) / thrust_math::sqrt(static_cast<T>(D));
    if (raw(out.data) != raw(g.data)) copy(ctx, g, out);
    T* logits = raw(ctx.scratch.template get<T>(0, batch * cap + 2 * batch));
    T* stats = logits + batch * cap;
    for (index_t i = n - 1; i >= 1; --i) {
      const index_t t = pos0 + i;
      run(ctx, batch * t,
          thrust_fn::feedback_logits<T, C>{thrust_fn::raw_view(qb), raw(cache.kb_base()), logits, n, i, t, D, cap,
                                           scale});
      run(ctx, batch, thrust_fn::feedback_softmax<T>{logits, stats, t, cap});
      run(ctx, batch * i * D,
          thrust_fn::feedback_push<T>{raw(gamma), logits, stats, thrust_fn::raw_view(out), n, i, pos0, D, cap});
    }
  }

  template <scalar T>
  static void copy(ctx_t& ctx, cmatrix<T, S> src, matrix<T, S> dst) {
    run(ctx, src.rows * src.cols, thrust_fn::copy<T>{thrust_fn::raw_view(src), thrust_fn::raw_view(dst), src.cols});
  }

  template <scalar T, class C>
  static void append_cache(ctx_t& ctx, const layer_config& c, cmatrix<T, S> kv, cmatrix<T, S> kb,
                           cache_view<C, S> cache, index_t pos0, index_t n) {
    const index_t kvd = c.kv_dim(), D = c.d_model;
    run(ctx, cache.batch() * n * (2 * kvd + D),
        thrust_fn::append_cache<T, C>{thrust_fn::raw_view(kv), thrust_fn::raw_view(kb), raw(cache.k_base()),
                                      raw(cache.v_base()), raw(cache.kb_base()), n, pos0, c.head_dim(), kvd,
                                      c.n_kv_heads, D, cache.capacity()});
  }

  template <scalar T, class W>
  static void embed(ctx_t& ctx, cmatrix<W, S> table, pointer<const std::int64_t, S> tokens, matrix<T, S> h) {
    run(ctx, h.rows * h.cols, thrust_fn::embed<T, W>{thrust_fn::raw_view(table), raw(tokens), thrust_fn::raw_view(h), h.cols});
  }
};

}  // namespace sessa::backend
