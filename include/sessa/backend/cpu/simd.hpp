// sessa/backend/cpu/simd.hpp: the fast CPU backend, kernels<cpu> and its context.
//
// kernels<cpu> derives from kernels<reference> (same memory space, host) and overrides the kernels that carry
// the work:
//   linear      packed, cache-blocked GEMM on xsimd micro-kernels, OpenMP over output tiles (gemm.hpp)
//   attention   flash-style forward branch: query tiles against key tiles, online softmax (attention.hpp)
//   feedback    the blocked feedback solve with partial online-softmax states (feedback.hpp)
//   feedback_transposed   its transpose, backward in time, blocked the same way (feedback.hpp)
//   layer_norm, gelu, multiply, rope   O(T D), vectorized and threaded over rows (elementwise.hpp)
// The rest (gain: T values; copy, append_cache, embed: row moves) is the reference's. Weights may be stored as the
// compute type, as bfloat16 / float16 (linear and layer_norm widen them in registers: widen.hpp) or as q8_0 blocks
// (linear dequantizes them in registers; the vectors are float32); the cache is the compute type or bfloat16 /
// float16 (attention and feedback widen it as they read it, in registers on the decode path and per tile for the
// prefill GEMMs, and keep each block's s rounded as the cache stores it, so a chunk reads its own s exactly as a
// later decode step does): every numeric policy of core/numeric.hpp runs here.
//
// context<cpu> adds the thread count to the reference's context: `threads` (0 = the process-wide default,
// set_num_threads()) caps every parallel region a kernel of this call opens, whichever thread makes the call.
// Its scratch arena holds the feedback's row states (slot 1), diagonal blocks (slot 2) and the split-K partial
// states of both attention passes (slot 3); the tile loops' per-thread buffers are thread_local.
#pragma once

#include "../../concepts.hpp"
#include "../../core/tensor.hpp"
#include "../kernels.hpp"
#include "../tags.hpp"
#include "attention.hpp"
#include "elementwise.hpp"
#include "feedback.hpp"
#include "gemm.hpp"
#include "parallel.hpp"
#include "reference.hpp"

namespace sessa::backend {

/// The cpu backend's context: the reference's (its scratch arena) and the thread count.
template <>
struct context<cpu> : context<reference> {
  int threads = 0;  // threads per kernel; 0 = sessa::num_threads(), the process-wide default

  /// The thread count kernels of this context use.
  int max_threads() const noexcept { return threads > 0 ? threads : num_threads(); }
};

template <>
struct kernels<cpu> : kernels<reference> {
  /// Weights W: the compute type, bfloat16 / float16 widened in registers, or q8_0 blocks dequantized in registers
  /// (gemm.hpp, widen.hpp); the bias as vector_storage_t<W>.
  template <scalar T, class W>
  static void linear(context<cpu>& ctx, cmatrix<T> x, cmatrix<W> w, const vector_storage_t<W>* bias, matrix<T> y,
                     bool accumulate = false) {
    simd::linear<T, W>(x, w, bias, y, accumulate, ctx.max_threads());
  }

  template <scalar T, class W>
  static void layer_norm(context<cpu>& ctx, cmatrix<T> x, const W* g, const W* b, T eps, matrix<T> y) {
    simd::layer_norm<T, W>(x, g, b, eps, y, ctx.max_threads());
  }
  template <scalar T>
  static void gelu(context<cpu>& ctx, matrix<T> x) {
    simd::gelu(x, ctx.max_threads());
  }
  template <scalar T>
  static void multiply(context<cpu>& ctx, cmatrix<T> a, cmatrix<T> b, matrix<T> out) {
    simd::multiply(a, b, out, ctx.max_threads());
  }
  template <scalar T>
  static void rope(context<cpu>& ctx, matrix<T> x, index_t d, index_t pos0, index_t n, const float* inv_freq) {
    simd::rope(x, d, pos0, n, inv_freq, ctx.max_threads());
  }

  /// Forward branch (flash style, attention.hpp); same contract as kernels<reference>::attention.
  template <scalar T, class C, attention_variant A>
  static void attention(context<cpu>& ctx, const A& variant, const layer_config& c, cmatrix<T> q,
                        cache_view<const C> cache, index_t pos0, index_t n, matrix<T> out) {
    simd::attention(variant, c, q, cache, pos0, n, out, ctx.scratch, ctx.max_threads());
  }

  /// Values of T the attention and feedback kernels take from ctx.scratch for packed tiles in a pass of n tokens per
  /// sequence, at the current flash_params (simd::packed_tile_values): what a forward call's memory plan counts.
  template <scalar T, class C>
  static index_t packed_tile_values(const layer_config& c, index_t batch, index_t n, index_t capacity) noexcept {
    return simd::packed_tile_values<T, C>(c, batch, n, capacity);
  }

  /// Feedback solve (blocked, feedback.hpp); same contract as kernels<reference>::feedback.
  template <scalar T, class C>
  static void feedback(context<cpu>& ctx, const layer_config& c, cmatrix<T> qb, const T* gamma, cmatrix<T> f,
                       cache_view<C> cache, index_t pos0, index_t n, matrix<T> out) {
    simd::feedback(c, qb, gamma, f, cache, pos0, n, out, ctx.scratch, ctx.max_threads());
  }

  /// Transposed feedback solve (blocked, feedback.hpp); same contract as kernels<reference>::feedback_transposed.
  template <scalar T, class C>
  static void feedback_transposed(context<cpu>& ctx, const layer_config& c, cmatrix<T> qb, const T* gamma,
                                  cmatrix<T> g, cache_view<const C> cache, index_t pos0, index_t n, matrix<T> out) {
    simd::feedback_transposed(c, qb, gamma, g, cache, pos0, n, out, ctx.scratch, ctx.max_threads());
  }
};

}  // namespace sessa::backend
