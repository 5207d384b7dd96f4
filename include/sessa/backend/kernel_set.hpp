// sessa/backend/kernel_set.hpp: the kernels every backend provides, their contracts, and the compile-time
// check that a backend provides all of them.
//
// For backend B with memory space S = space_of<B> and a model's numeric policy P, with T = compute_t<P>,
// W = weight_t<P>, C = cache_t<P> (core/numeric.hpp), kernels<B> has these static member functions; every one
// takes the execution context `context<B>& ctx` first and views of space S only:
//
//   linear(ctx, cmatrix<T,S> x, cmatrix<W,S> w, pointer<const V,S> bias, matrix<T,S> y, bool accumulate)
//       y (M, N) = x (M, K) w (N, K)^T + bias (N; may be null); with accumulate, y += instead of y =.
//       V = vector_storage_t<W> (W itself, float for q8_0); a q8_0 w is (N, ceil(K / 32)) blocks.
//   layer_norm(ctx, cmatrix<T,S> x, pointer<const V,S> g, pointer<const V,S> b, T eps, matrix<T,S> y)
//       per row: (x - mean) / sqrt(biased variance + eps) * g + b; y may alias x.
//   gelu(ctx, matrix<T,S> x)                  x <- 0.5 x (1 + erf(x / sqrt 2)), in place
//   multiply(ctx, cmatrix<T,S> a, cmatrix<T,S> b, matrix<T,S> out)      out = a * b elementwise (may alias)
//   gain(ctx, pointer<T,S> gamma, index_t n, T gamma_max)                gamma <- gamma_max tanh(gamma)
//   rope(ctx, matrix<T,S> x, index_t d, index_t pos0, index_t n, pointer<const float,S> inv_freq)
//       rotates every head (width d) of every row in place; row r is at position pos0 + r % n.
//   attention(ctx, const A& variant, const layer_config& c, cmatrix<T,S> q, cache_view<const C,S> cache,
//             index_t pos0, index_t n, matrix<T,S> out)
//       forward branch: q (batch*n, H*d) -> out (batch*n, H*d); query head h of the token at position
//       t = pos0 + i reads keys [variant.first_key(t), t] of kv head h / g. For every attention_variant.
//   feedback(ctx, const layer_config& c, cmatrix<T,S> qb, pointer<const T,S> gamma, cmatrix<T,S> f,
//            cache_view<C,S> cache, index_t pos0, index_t n, matrix<T,S> out)
//       the feedback solve in token order: s_t = f_t + gamma_t sum_{j<t} softmax_j(qb_t . kb_j / sqrt D) s_j;
//       writes s to out (batch*n, D) and to the cache's s rows [pos0, pos0 + n).
//   feedback_transposed(ctx, const layer_config& c, cmatrix<T,S> qb, pointer<const T,S> gamma, cmatrix<T,S> g,
//                       cache_view<const C,S> cache, index_t pos0, index_t n, matrix<T,S> out)
//       the transposed solve, backward in time: for the chunk's tokens at positions [pos0, pos0 + n) (their k_b
//       in the cache), out_j = g_j + sum_{t > j in the chunk} gamma_t alpha_{t,j} out_t, with alpha_{t,.} the
//       softmax over the strict past [0, t) of feedback. That is out = (I - Gamma A)^{-T} g over the chunk: the
//       adjoint of feedback with respect to f (with qb, gamma and k_b fixed, <feedback(f), g> = <f, out>), what
//       a backward pass and the influence of every input on one output need. out (batch*n, D) may alias g;
//       the cache is only read.
//   copy(ctx, cmatrix<T,S> src, matrix<T,S> dst)                         dst = src (same shape, any strides)
//   append_cache(ctx, const layer_config& c, cmatrix<T,S> kv, cmatrix<T,S> kb, cache_view<C,S> cache,
//                index_t pos0, index_t n)
//       writes the chunk's keys and values (kv: (batch*n, 2 Hkv d) = [k | v], head h at columns h*d) and
//       feedback keys (kb: (batch*n, D)) into cache positions [pos0, pos0 + n), rounded to C.
//   embed(ctx, cmatrix<W,S> table, pointer<const std::int64_t,S> tokens, matrix<T,S> h)
//       h row r = table row tokens[r] (the ids are already checked to lie in [0, table.rows)).
//
// Optional: packed_tile_values<T, C>(const layer_config& c, index_t batch, index_t n, index_t capacity), the values
// of T the kernels take from ctx.scratch for tiles shared by a pass of n tokens per sequence, which the memory plans
// count (model/layer.hpp: kernel_tile_values; kernels<cpu> has it, others are planned at the cpu's default tiles).
//
// Rows of a chunk are batch-major: row b * n + i is token i of sequence b, at absolute position pos0 + i. The
// chunk's keys, values and feedback keys are in the cache (append_cache) before attention and feedback run.
// A kernel may run inside an enclosing OpenMP parallel region; kernels that need scratch take it from
// ctx.scratch (a scratch_arena of space S), so calls after the first do not allocate.
//
// verify_kernel_set<B, P>() checks the whole set at compile time, one static_assert per kernel, each naming
// the kernel it misses. Every model type runs it, so a backend that forgot a kernel, or has none for a storage
// type, fails where the model is instantiated, and never falls back to another backend's code. (Host backends
// still extend one another by inheritance, kernels<cpu> : kernels<reference>; a device backend's views are of
// its own space, which no host kernel accepts.)
#pragma once

#include <cstdint>

#include "../attention/variants.hpp"
#include "../concepts.hpp"
#include "../core/hparams.hpp"
#include "../core/tensor.hpp"
#include "../model/cache.hpp"
#include "kernels.hpp"

namespace sessa::backend {

template <class B, class P, class S = space_of<B>, class T = compute_t<P>, class W = weight_t<P>>
concept has_linear = requires(context<B>& ctx, cmatrix<T, S> x, cmatrix<W, S> w,
                              pointer<const vector_storage_t<W>, S> bias, matrix<T, S> y) {
  kernels<B>::linear(ctx, x, w, bias, y, true);
};
template <class B, class P, class S = space_of<B>, class T = compute_t<P>, class W = weight_t<P>>
concept has_layer_norm = requires(context<B>& ctx, cmatrix<T, S> x, pointer<const vector_storage_t<W>, S> g,
                                  matrix<T, S> y, T eps) {
  kernels<B>::layer_norm(ctx, x, g, g, eps, y);
};
template <class B, class P, class S = space_of<B>, class T = compute_t<P>>
concept has_gelu = requires(context<B>& ctx, matrix<T, S> x) { kernels<B>::gelu(ctx, x); };
template <class B, class P, class S = space_of<B>, class T = compute_t<P>>
concept has_multiply = requires(context<B>& ctx, cmatrix<T, S> a, matrix<T, S> out) {
  kernels<B>::multiply(ctx, a, a, out);
};
template <class B, class P, class S = space_of<B>, class T = compute_t<P>>
concept has_gain = requires(context<B>& ctx, pointer<T, S> g, index_t n, T m) { kernels<B>::gain(ctx, g, n, m); };
template <class B, class P, class S = space_of<B>, class T = compute_t<P>>
concept has_rope = requires(context<B>& ctx, matrix<T, S> x, index_t i, pointer<const float, S> f) {
  kernels<B>::rope(ctx, x, i, i, i, f);
};
template <class B, class P, class S = space_of<B>, class T = compute_t<P>, class C = cache_t<P>>
concept has_attention = requires(context<B>& ctx, const layer_config& c, cmatrix<T, S> q,
                                 cache_view<const C, S> cache, index_t i, matrix<T, S> out) {
  kernels<B>::attention(ctx, attention::causal{}, c, q, cache, i, i, out);
  kernels<B>::attention(ctx, attention::sliding_window{}, c, q, cache, i, i, out);
};
template <class B, class P, class S = space_of<B>, class T = compute_t<P>, class C = cache_t<P>>
concept has_feedback = requires(context<B>& ctx, const layer_config& c, cmatrix<T, S> qb, pointer<const T, S> g,
                                cache_view<C, S> cache, index_t i, matrix<T, S> out) {
  kernels<B>::feedback(ctx, c, qb, g, qb, cache, i, i, out);
};
template <class B, class P, class S = space_of<B>, class T = compute_t<P>, class C = cache_t<P>>
concept has_feedback_transposed = requires(context<B>& ctx, const layer_config& c, cmatrix<T, S> qb,
                                           pointer<const T, S> g, cache_view<const C, S> cache, index_t i,
                                           matrix<T, S> out) {
  kernels<B>::feedback_transposed(ctx, c, qb, g, qb, cache, i, i, out);
};
template <class B, class P, class S = space_of<B>, class T = compute_t<P>>
concept has_copy = requires(context<B>& ctx, cmatrix<T, S> src, matrix<T, S> dst) { kernels<B>::copy(ctx, src, dst); };
template <class B, class P, class S = space_of<B>, class T = compute_t<P>, class C = cache_t<P>>
concept has_append_cache = requires(context<B>& ctx, const layer_config& c, cmatrix<T, S> kv, cache_view<C, S> cache,
                                    index_t i) { kernels<B>::append_cache(ctx, c, kv, kv, cache, i, i); };
template <class B, class P, class S = space_of<B>, class T = compute_t<P>, class W = weight_t<P>>
concept has_embed = requires(context<B>& ctx, cmatrix<W, S> table, pointer<const std::int64_t, S> tok,
                             matrix<T, S> h) { kernels<B>::embed(ctx, table, tok, h); };

/// The whole kernel set of backend B for numeric policy P.
template <class B, class P>
concept kernel_set = has_linear<B, P> && has_layer_norm<B, P> && has_gelu<B, P> && has_multiply<B, P> &&
                     has_gain<B, P> && has_rope<B, P> && has_attention<B, P> && has_feedback<B, P> &&
                     has_feedback_transposed<B, P> && has_copy<B, P> && has_append_cache<B, P> && has_embed<B, P>;

/// Checks the kernel set at compile time with one message per missing kernel; true when complete.
template <class B, class P>
consteval bool verify_kernel_set() {
  constexpr bool has_kernels = !requires { kernels<B>::unspecialized; };
  constexpr bool has_context = !requires { context<B>::unspecialized; };
  static_assert(has_kernels,
                "sessa: no kernels for this backend tag; include the header that specializes sessa::backend::kernels<Tag> "
                "(sessa/sessa.hpp for reference and cpu, sessa/thrust_omp.hpp, sessa/cuda.cuh)");
  static_assert(!has_kernels || has_context,
                "sessa: no execution context for this backend tag; a backend specializes sessa::backend::context<Tag> "
                "next to its kernels");
  if constexpr (has_kernels && has_context) {
#define SESSA_KERNEL_CHECK_(k)                                                                                    \
  static_assert(has_##k<B, P>, "sessa: this backend's kernels<Tag> has no `" #k "` kernel for this numeric "     \
                               "policy (compute type, weight and cache storage); a backend declares its whole " \
                               "kernel set, see sessa/backend/kernel_set.hpp")
    SESSA_KERNEL_CHECK_(linear);
    SESSA_KERNEL_CHECK_(layer_norm);
    SESSA_KERNEL_CHECK_(gelu);
    SESSA_KERNEL_CHECK_(multiply);
    SESSA_KERNEL_CHECK_(gain);
    SESSA_KERNEL_CHECK_(rope);
    SESSA_KERNEL_CHECK_(attention);
    SESSA_KERNEL_CHECK_(feedback);
    SESSA_KERNEL_CHECK_(feedback_transposed);
    SESSA_KERNEL_CHECK_(copy);
    SESSA_KERNEL_CHECK_(append_cache);
    SESSA_KERNEL_CHECK_(embed);
#undef SESSA_KERNEL_CHECK_
    return kernel_set<B, P>;
  } else {
    return false;
  }
}

}  // namespace sessa::backend
