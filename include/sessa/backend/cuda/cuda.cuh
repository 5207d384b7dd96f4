// sessa/backend/cuda/cuda.cuh: backend::cuda, the CUDA backend: thrust_cuda with its hot paths replaced.
//
// Why this backend exists: thrust_cuda (the correctness baseline) maps one work item to one output. backend::cuda
// keeps its memory space (memory::cuda_device) and inherits its kernel set, which is legitimate here since both
// run on the same device memory, and overrides what carries the time:
//   linear      cuBLASLt (blas.cuh): exact float / double (no TF32); bfloat16 / float16 weights on the tensor
//               cores with float accumulation; the bias added by a separate kernel
//   layer_norm  one block per row (kernels.cuh)
//   attention   flash style with GQA by stacked rows, split-K for decode (kernels.cuh); head width <= 256
//               (wider heads run thrust_cuda's kernel)
//   feedback    token by token in four kernels, keys split over blocks (kernels.cuh)
//   feedback_transposed   from the last token back: the feedback's logits and weights, then a push (kernels.cuh)
// gelu, multiply, gain, rope, copy, append_cache and embed are thrust_cuda's (one element per work item already).
//
// Its context adds to thrust_cuda's (stream, scratch arena in device memory) the cuBLASLt handle, created on
// first use and shared by copies of the context, and the device's multiprocessor count. Scratch slots: 0 the
// feedback's logits and softmax statistics, 1 cuBLASLt's workspace, 2 the feedback's partial sums, 3 the
// attention's split-K states or a narrow GEMM's rounded activations.
//
// Status: compiled in CI for sm_90a; run only where tools/gpu_check.sh is run on a GPU (the tests in
// tests/cuda/ compare every kernel with the reference backend and thrust_cuda).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string_view>
#include <type_traits>

#include "../../attention/variants.hpp"
#include "../../config.hpp"
#include "../../core/hparams.hpp"
#include "../../core/numeric.hpp"
#include "../../core/tensor.hpp"
#include "../../model/cache.hpp"
#include "../kernels.hpp"
#include "blas.cuh"
#include "kernels.cuh"
#include "memory.cuh"
#include "thrust.cuh"

namespace sessa::backend {

/// The CUDA backend: thrust_cuda's kernel set with cuBLASLt projections and the kernels of kernels.cuh.
struct cuda {
  static constexpr std::string_view name = "cuda";
  using memory_space = memory::cuda_device;
};

/// cuda's context: thrust_cuda's (stream, scratch) plus the cuBLASLt handle and the device's shape.
template <>
struct context<cuda> : context<thrust_cuda> {
  std::shared_ptr<gpu::blas_handle> blas;  // created on first use
  int multiprocessors = 0;                 // queried on first use

  gpu::blas_handle& lt() {
    if (!blas) blas = std::make_shared<gpu::blas_handle>();
    return *blas;
  }
  int sm_count() {
    if (multiprocessors == 0) {
      int dev = 0;
      gpu::check(cudaGetDevice(&dev), "cudaGetDevice");
      gpu::check(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, dev),
                 "cudaDeviceGetAttribute(multiProcessorCount)");
    }
    return multiprocessors;
  }
};

template <>
struct kernels<cuda> : kernels<thrust_cuda> {
  using S = memory::cuda_device;
  using base = kernels<thrust_cuda>;
  /// cuBLASLt's workspace (32 MiB, the size NVIDIA recommends for Hopper).
  static constexpr index_t blas_workspace_bytes = index_t{32} << 20;

  template <scalar T, class W>
  static void linear(context<cuda>& ctx, cmatrix<T, S> x, cmatrix<W, S> w, pointer<const W, S> bias, matrix<T, S> y,
                     bool accumulate = false) {
    const index_t M = x.rows, N = w.rows, K = x.cols;
    if (M == 0 || N == 0) return;
    if constexpr (std::is_same_v<T, W> || std::is_same_v<T, float>) {
      void* ws = raw(ctx.scratch.template get<std::byte>(1, blas_workspace_bytes));
      if constexpr (std::is_same_v<T, W>) {
        ctx.lt().gemm_tn<T, T>(N, M, K, raw(w.data), w.ld, raw(x.data), x.ld, raw(y.data), y.ld,
                               accumulate ? T(1) : T(0), ws, static_cast<std::size_t>(blas_workspace_bytes),
                               ctx.stream);
      } else {  // narrow weights, float activations: round x to W, multiply on the tensor cores, float out
        W* xn = raw(ctx.scratch.template get<W>(3, M * K));
        gpu::kernels::narrow_rows<T, W><<<grid_for(M * K), 256, 0, ctx.stream>>>(raw(x.data), x.ld, xn, M, K);
        gpu::check_launch("narrow_rows");
        ctx.lt().gemm_tn<W, T>(N, M, K, raw(w.data), w.ld, xn, K, raw(y.data), y.ld, accumulate ? T(1) : T(0), ws,
                               static_cast<std::size_t>(blas_workspace_bytes), ctx.stream);
      }
      if (bias) {
        gpu::kernels::add_bias<T, W><<<grid_for(M * N), 256, 0, ctx.stream>>>(raw(y.data), y.ld, raw(bias), M, N);
        gpu::check_launch("add_bias");
      }
    } else {  // double activations with narrow weights: no cuBLASLt form; the Thrust kernel
      base::linear(ctx, x, w, bias, y, accumulate);
    }
  }

  /// g, b: pointers of the space to W or const W.
  template <scalar T, class G>
  static void layer_norm(context<cuda>& ctx, cmatrix<T, S> x, G g, G b, T eps, matrix<T, S> y) {
    using W = std::remove_const_t<std::remove_pointer_t<decltype(raw(g))>>;
    if (x.rows == 0) return;
    gpu::kernels::layer_norm<T, W><<<static_cast<unsigned>(x.rows), 256, 0, ctx.stream>>>(
        raw(x.data), x.ld, raw(g), raw(b), eps, raw(y.data), y.ld, x.cols);
    gpu::check_launch("layer_norm");
  }

  template <scalar T, class C, attention_variant A>
  static void attention(context<cuda>& ctx, const A& variant, const layer_config& c, cmatrix<T, S> q,
                        cache_view<const C, S> cache, index_t pos0, index_t n, matrix<T, S> out) {
    const index_t d = c.head_dim(), g = c.group_size(), Hkv = c.n_kv_heads, batch = cache.batch();
    if (n <= 0 || batch <= 0) return;
    if (d > 256) return base::attention(ctx, variant, c, q, cache, pos0, n, out);
    if (d <= 32) return attention_dc<T, C, A, 1>(ctx, variant, q, cache, pos0, n, out, d, g, Hkv, batch);
    if (d <= 64) return attention_dc<T, C, A, 2>(ctx, variant, q, cache, pos0, n, out, d, g, Hkv, batch);
    if (d <= 128) return attention_dc<T, C, A, 4>(ctx, variant, q, cache, pos0, n, out, d, g, Hkv, batch);
    return attention_dc<T, C, A, 8>(ctx, variant, q, cache, pos0, n, out, d, g, Hkv, batch);
  }

  template <scalar T, class C>
  static void feedback(context<cuda>& ctx, const layer_config& c, cmatrix<T, S> qb, pointer<const T, S> gamma,
                       cmatrix<T, S> f, cache_view<C, S> cache, index_t pos0, index_t n, matrix<T, S> out) {
    namespace gk = gpu::kernels;
    const index_t D = c.d_model, batch = cache.batch(), cap = cache.capacity();
    if (n <= 0 || batch <= 0) return;
    const T scale = T(1) / std::sqrt(static_cast<T>(D));
    const index_t max_parts = (cap + gk::fb_keys_per_block - 1) / gk::fb_keys_per_block;
    T* logits = raw(ctx.scratch.template get<T>(0, batch * cap + 2 * batch * max_parts));
    T* stats = logits + batch * cap;
    constexpr index_t sum_threads = 128;
    const index_t col_blocks = (D + sum_threads - 1) / sum_threads;
    const index_t want_parts = std::clamp<index_t>(2 * ctx.sm_count() / std::max<index_t>(1, col_blocks * batch), 1, 64);
    T* partial = raw(ctx.scratch.template get<T>(2, 64 * batch * D));
    C* s = raw(cache.s_base());
    for (index_t i = 0; i < n; ++i) {
      const index_t t = pos0 + i;
      int kp = 0;
      if (t > 0) {
        const index_t parts = (t + gk::fb_keys_per_block - 1) / gk::fb_keys_per_block;
        gk::feedback_logits<T, C><<<dim3(static_cast<unsigned>(parts), static_cast<unsigned>(batch)), gk::fb_threads, 0,
                                    ctx.stream>>>(raw(qb.data), qb.ld, raw(cache.kb_base()), logits, stats, n, i, t, D,
                                                  cap, scale);
        gpu::check_launch("feedback_logits");
        gk::feedback_weights<T><<<dim3(static_cast<unsigned>((t + 255) / 256), static_cast<unsigned>(batch)), 256, 0,
                                  ctx.stream>>>(logits, stats, static_cast<int>(parts), raw(gamma), n, i, t, cap);
        gpu::check_launch("feedback_weights");
        kp = static_cast<int>(std::clamp<index_t>(t / 64, 1, want_parts));
        gk::feedback_sum<T, C><<<dim3(static_cast<unsigned>(col_blocks), static_cast<unsigned>(kp),
                                      static_cast<unsigned>(batch)),
                                 sum_threads, 0, ctx.stream>>>(logits, s, partial, t, D, cap, batch);
        gpu::check_launch("feedback_sum");
      }
      gk::feedback_finish<T, C><<<dim3(static_cast<unsigned>((D + 255) / 256), static_cast<unsigned>(batch)), 256, 0,
                                  ctx.stream>>>(raw(f.data), f.ld, partial, kp, s, raw(out.data), out.ld, n, i, t, D,
                                                cap, batch);
      gpu::check_launch("feedback_finish");
    }
  }

  template <scalar T, class C>
  static void feedback_transposed(context<cuda>& ctx, const layer_config& c, cmatrix<T, S> qb,
                                  pointer<const T, S> gamma, cmatrix<T, S> g, cache_view<const C, S> cache,
                                  index_t pos0, index_t n, matrix<T, S> out) {
    namespace gk = gpu::kernels;
    const index_t D = c.d_model, batch = cache.batch(), cap = cache.capacity();
    if (n <= 0 || batch <= 0) return;
    if (raw(out.data) != raw(g.data)) base::copy(ctx, g, out);
    const T scale = T(1) / std::sqrt(static_cast<T>(D));
    const index_t max_parts = (cap + gk::fb_keys_per_block - 1) / gk::fb_keys_per_block;
    T* logits = raw(ctx.scratch.template get<T>(0, batch * cap + 2 * batch * max_parts));
    T* stats = logits + batch * cap;
    constexpr index_t push_threads = 128;
    const index_t col_blocks = (D + push_threads - 1) / push_threads;
    for (index_t i = n - 1; i >= 1; --i) {
      const index_t t = pos0 + i;
      const index_t parts = (t + gk::fb_keys_per_block - 1) / gk::fb_keys_per_block;
      gk::feedback_logits<T, C><<<dim3(static_cast<unsigned>(parts), static_cast<unsigned>(batch)), gk::fb_threads, 0,
                                  ctx.stream>>>(raw(qb.data), qb.ld, raw(cache.kb_base()), logits, stats, n, i, t, D,
                                                cap, scale);
      gpu::check_launch("feedback_logits");
      gk::feedback_weights<T><<<dim3(static_cast<unsigned>((t + 255) / 256), static_cast<unsigned>(batch)), 256, 0,
                                ctx.stream>>>(logits, stats, static_cast<int>(parts), raw(gamma), n, i, t, cap);
      gpu::check_launch("feedback_weights");
      gk::feedback_push<T><<<dim3(static_cast<unsigned>(col_blocks), static_cast<unsigned>(std::min<index_t>(i, 1024)),
                                  static_cast<unsigned>(batch)),
                             push_threads, 0, ctx.stream>>>(logits, raw(out.data), out.ld, n, i, pos0, D, cap);
      gpu::check_launch("feedback_push");
    }
  }

 private:
  /// Blocks for a grid-stride loop over n elements.
  static unsigned grid_for(index_t n) {
    return static_cast<unsigned>(std::clamp<index_t>((n + 255) / 256, 1, index_t{65535} * 8));
  }

  template <scalar T, class C, attention_variant A, int DC>
  static void attention_dc(context<cuda>& ctx, const A& variant, cmatrix<T, S> q, cache_view<const C, S> cache,
                           index_t pos0, index_t n, matrix<T, S> out, index_t d, index_t g, index_t Hkv,
                           index_t batch) {
    namespace gk = gpu::kernels;
    const index_t rows_total = n * g, blocks_x = (rows_total + gk::attn_rows - 1) / gk::attn_rows;
    const index_t heads = batch * Hkv;
    // Split-K when the blocks cannot fill the GPU (decode): parts of at least 256 keys each.
    const index_t keys = pos0 + n;  // an upper bound of any row's key range
    index_t parts = 1;
    if (blocks_x * heads < 2 * ctx.sm_count())
      parts = std::clamp<index_t>(std::min<index_t>(2 * ctx.sm_count() / (blocks_x * heads), keys / 256), 1, 64);
    const std::size_t smem =
        static_cast<std::size_t>(gk::attn_keys * (d + 1) + gk::attn_keys * d + gk::attn_rows * d) * sizeof(T);
    auto* kernel = &gk::attention<T, C, A, DC>;
    if (smem > 48 * 1024)
      gpu::check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
                 "cudaFuncSetAttribute(attention, MaxDynamicSharedMemorySize)");
    T* partial = parts > 1 ? raw(ctx.scratch.template get<T>(3, parts * heads * rows_total * (d + 2))) : nullptr;
    const T scale = T(1) / std::sqrt(static_cast<T>(d));
    kernel<<<dim3(static_cast<unsigned>(blocks_x), static_cast<unsigned>(heads), static_cast<unsigned>(parts)),
             gk::attn_warps * 32, smem, ctx.stream>>>(variant, raw(q.data), q.ld, raw(cache.k_base()),
                                                      raw(cache.v_base()), raw(out.data), out.ld, partial, n, g, Hkv,
                                                      d, cache.capacity(), pos0, scale);
    gpu::check_launch("attention");
    if (parts > 1) {
      gk::attention_merge<T><<<dim3(static_cast<unsigned>(rows_total), static_cast<unsigned>(heads)), 128, 0,
                               ctx.stream>>>(partial, static_cast<int>(parts), raw(out.data), out.ld, n, g, Hkv, d);
      gpu::check_launch("attention_merge");
    }
  }
};

}  // namespace sessa::backend
