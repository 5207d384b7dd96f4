// sessa/backend/cuda/kernels.cuh: backend::cuda's own kernels (everything else it inherits from thrust_cuda).
//
// Why this file exists: thrust_cuda is correct but maps one work item to one output, which leaves the
// layer's two O(T²·D) parts, forward attention and the feedback solve, reading the cache once per query,
// and LayerNorm on one thread per row. These kernels give them block-level parallelism:
//
//   layer_norm      one block per row: block reductions for mean and variance, then the affine map
//   attention       flash style, no T x T matrix: a block takes 16 stacked query rows (positions x the g query
//                   heads of one kv head, so K and V are read once per group: GQA without copying), loads key
//                   tiles of 32 keys into shared memory, and each warp keeps two rows' online-softmax state
//                   (max, sum, and its d-wide accumulator in registers, d / 32 columns per lane). When blocks
//                   are too few to fill the GPU (decode), the key range is split over blocks (split-K) and a
//                   second kernel merges their partial states exactly.
//   feedback        the recurrence token by token, each token in four kernels: logits of every sequence against
//                   its strict past (a warp per key, keys split over blocks, with partial max / sum per block);
//                   the weights gamma_t softmax_j in place; sum_j w_j s_j with keys split over blocks (columns
//                   over threads, coalesced); s_t = f_t + the parts' sums, to out and the cache. The blocked
//                   solve of docs/FEEDBACK.md (GEMM-shaped, T / Bk sequential steps) is the next step.
//   feedback_push   the transposed solve, from the last token back: per token the logits and weights above,
//                   then its final row pushed into the chunk's earlier rows (rows over blocks, columns coalesced)
//   add_bias, narrow_rows   the epilogue and prologue of narrow-storage GEMMs (core/numeric.hpp)
//
// All math is in the compute type T (float or double); the cache may be narrower (C), every load widens. A
// launch is followed by a check of cudaGetLastError (gpu::check_launch), so a bad launch configuration is a
// backend_error naming the kernel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../../config.hpp"
#include "../../core/numeric.hpp"
#include "memory.cuh"

namespace sessa::gpu {

/// Throws backend_error naming `kernel` when its launch failed (cudaGetLastError).
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

namespace kernels {

template <class T>
__device__ inline T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <class T>
__device__ inline T warp_max(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
/// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
template <class T>
__device__ inline T block_sum(T v, T* shared32) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // shared32 may still be read by an earlier call
  if (lane == 0) shared32[warp] = v;
  __syncthreads();
  v = lane < warps ? shared32[lane] : T(0);
  return warp_sum(v);
}

template <class T>
__device__ inline T neg_inf() {
  return -static_cast<T>(HUGE_VAL);
}
__device__ inline float dexp(float x) { return expf(x); }
__device__ inline double dexp(double x) { return exp(x); }

// ---------------------------------------------------------------- layer_norm: one block per row

template <class T, class W>
__global__ void layer_norm(const T* __restrict__ x, std::int64_t ldx, const W* __restrict__ g,
                           const W* __restrict__ b, T eps, T* y, std::int64_t ldy, std::int64_t D) {
  __shared__ T red[32];
  const T* xr = x + blockIdx.x * ldx;
  T* yr = y + blockIdx.x * ldy;
  T s = 0;
  for (std::int64_t k = threadIdx.x; k < D; k += blockDim.x) s += xr[k];
  const T mean = block_sum(s, red) / static_cast<T>(D);
  T v = 0;
  for (std::int64_t k = threadIdx.x; k < D; k += blockDim.x) v += (xr[k] - mean) * (xr[k] - mean);
  const T var = block_sum(v, red) / static_cast<T>(D);
  const T inv = T(1) / sqrt(var + eps);
  for (std::int64_t k = threadIdx.x; k < D; k += blockDim.x)
    yr[k] = (xr[k] - mean) * inv * widen<T>(g[k]) + widen<T>(b[k]);
}

// ---------------------------------------------------------------- narrow-GEMM prologue and epilogue

/// out (rows, cols, contiguous) = x (rows, cols, ldx) rounded to W.
template <class T, class W>
__global__ void narrow_rows(const T* __restrict__ x, std::int64_t ldx, W* __restrict__ out, std::int64_t rows,
                            std::int64_t cols) {
  const std::int64_t n = rows * cols;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    out[e] = narrow<W>(x[(e / cols) * ldx + e % cols]);
}

/// y (rows, cols, ldy) += bias (cols).
template <class T, class W>
__global__ void add_bias(T* y, std::int64_t ldy, const W* __restrict__ bias, std::int64_t rows, std::int64_t cols) {
  const std::int64_t n = rows * cols;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    y[(e / cols) * ldy + e % cols] += widen<T>(bias[e % cols]);
}

// ---------------------------------------------------------------- attention (flash style)

inline constexpr int attn_rows_per_warp = 2;
inline constexpr int attn_warps = 8;
inline constexpr int attn_rows = attn_rows_per_warp * attn_warps;  // stacked query rows per block
inline constexpr int attn_keys = 32;                               // keys per shared-memory tile

/// Forward attention for the rows [blockIdx.x * attn_rows, +attn_rows) of (sequence b, kv head h) =
/// (blockIdx.y / Hkv, blockIdx.y % Hkv), keys split into gridDim.z parts. Stacked row r is position i = r / g,
/// query head h * g + r % g. DC = columns per lane (d <= 32 * DC). With one part (gridDim.z == 1) it writes the
/// normalized output; otherwise the part's state (acc | m | l) to `partial` for attention_merge.
template <class T, class C, class A, int DC>
__global__ void __launch_bounds__(attn_warps * 32)
    attention(A variant, const T* __restrict__ q, std::int64_t ldq, const C* __restrict__ k, const C* __restrict__ v,
              T* out, std::int64_t ldo, T* partial, std::int64_t n, std::int64_t g, std::int64_t Hkv, std::int64_t d,
              std::int64_t capacity, std::int64_t pos0, T scale) {
  extern __shared__ unsigned char smem_raw[];
  T* ks = reinterpret_cast<T*>(smem_raw);   // (attn_keys, d + 1)  keys, padded against bank conflicts
  T* vs = ks + attn_keys * (d + 1);         // (attn_keys, d)      values
  T* qs = vs + attn_keys * d;               // (attn_rows, d)      the block's query rows
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const std::int64_t b = blockIdx.y / Hkv, h = blockIdx.y % Hkv, rows_total = n * g;
  const std::int64_t r0 = static_cast<std::int64_t>(blockIdx.x) * attn_rows;
  const C* K = k + ((b * Hkv + h) * capacity) * d;
  const C* V = v + ((b * Hkv + h) * capacity) * d;

  // The block's query rows, and the union of their key ranges.
  for (std::int64_t e = threadIdx.x; e < attn_rows * d; e += blockDim.x) {
    const std::int64_t r = r0 + e / d, c = e % d;
    T val = 0;
    if (r < rows_total) val = q[(b * n + r / g) * ldq + (h * g + r % g) * d + c];
    qs[e] = val;
  }
  const std::int64_t r_last = (r0 + attn_rows < rows_total ? r0 + attn_rows : rows_total) - 1;
  std::int64_t k_lo = variant.first_key(pos0 + r0 / g);
  for (std::int64_t i = r0 / g + 1; i <= r_last / g; ++i) {
    const std::int64_t f = variant.first_key(pos0 + i);
    k_lo = f < k_lo ? f : k_lo;
  }
  std::int64_t k_hi = pos0 + r_last / g + 1;
  if (gridDim.z > 1) {  // this part's share of the keys
    const std::int64_t len = k_hi - k_lo, p = blockIdx.z, P = gridDim.z;
    const std::int64_t a = k_lo + len * p / P, e = k_lo + len * (p + 1) / P;
    k_lo = a;
    k_hi = e;
  }

  // Per warp: attn_rows_per_warp rows, each with m, l and DC accumulator columns per lane.
  T m[attn_rows_per_warp], l[attn_rows_per_warp], acc[attn_rows_per_warp][DC];
  std::int64_t lo[attn_rows_per_warp], hi[attn_rows_per_warp];
#pragma unroll
  for (int rr = 0; rr < attn_rows_per_warp; ++rr) {
    const std::int64_t r = r0 + warp * attn_rows_per_warp + rr;
    const std::int64_t t = pos0 + (r < rows_total ? r / g : 0);
    lo[rr] = r < rows_total ? variant.first_key(t) : 0;
    hi[rr] = r < rows_total ? t + 1 : 0;  // an absent row sees no key
    m[rr] = neg_inf<T>();
    l[rr] = 0;
#pragma unroll
    for (int u = 0; u < DC; ++u) acc[rr][u] = 0;
  }
  __syncthreads();

  for (std::int64_t j0 = k_lo; j0 < k_hi; j0 += attn_keys) {
    const std::int64_t nk = k_hi - j0 < attn_keys ? k_hi - j0 : attn_keys;
    for (std::int64_t e = threadIdx.x; e < attn_keys * d; e += blockDim.x) {
      const std::int64_t j = e / d, c = e % d;
      ks[j * (d + 1) + c] = j < nk ? widen<T>(K[(j0 + j) * d + c]) : T(0);
      vs[j * d + c] = j < nk ? widen<T>(V[(j0 + j) * d + c]) : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int rr = 0; rr < attn_rows_per_warp; ++rr) {
      const int lr = warp * attn_rows_per_warp + rr;  // row within the block
      const std::int64_t j = j0 + lane;
      T s = neg_inf<T>();
      if (lane < nk && j >= lo[rr] && j < hi[rr]) {
        const T* qr = qs + lr * d;
        const T* kr = ks + lane * (d + 1);
        T dot = 0;
        for (std::int64_t c = 0; c < d; ++c) dot += qr[c] * kr[c];
        s = dot * scale;
      }
      const T mt = warp_max(s);
      if (mt == neg_inf<T>()) continue;  // no key of this tile for this row (warp-uniform)
      const T mn = m[rr] > mt ? m[rr] : mt;
      const T alpha = m[rr] == neg_inf<T>() ? T(0) : dexp(m[rr] - mn);
      const T p = s == neg_inf<T>() ? T(0) : dexp(s - mn);
      l[rr] = l[rr] * alpha + warp_sum(p);
      m[rr] = mn;
#pragma unroll
      for (int u = 0; u < DC; ++u) acc[rr][u] *= alpha;
      // Only the row's own keys: a masked key's p is 0, but 0 * inf and 0 * NaN are NaN, and a non-finite value
      // at a later position of the chunk must not reach this row. The bounds are warp-uniform (one row).
      const int ja = lo[rr] > j0 ? static_cast<int>(lo[rr] - j0) : 0;
      const int jb = hi[rr] - j0 < nk ? static_cast<int>(hi[rr] - j0) : static_cast<int>(nk);
      for (int jj = ja; jj < jb; ++jj) {
        const T pj = __shfl_sync(0xffffffffu, p, jj);
#pragma unroll
        for (int u = 0; u < DC; ++u) {
          const std::int64_t c = lane + 32 * u;
          if (c < d) acc[rr][u] += pj * vs[jj * d + c];
        }
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int rr = 0; rr < attn_rows_per_warp; ++rr) {
    const std::int64_t r = r0 + warp * attn_rows_per_warp + rr;
    if (r >= rows_total) continue;
    if (gridDim.z == 1) {
      T* o = out + (b * n + r / g) * ldo + (h * g + r % g) * d;
      const T inv = T(1) / l[rr];
#pragma unroll
      for (int u = 0; u < DC; ++u) {
        const std::int64_t c = lane + 32 * u;
        if (c < d) o[c] = acc[rr][u] * inv;
      }
    } else {  // partial state of part z: (parts, batch*Hkv, rows_total, d + 2)
      T* st = partial + ((static_cast<std::int64_t>(blockIdx.z) * gridDim.y + blockIdx.y) * rows_total + r) * (d + 2);
#pragma unroll
      for (int u = 0; u < DC; ++u) {
        const std::int64_t c = lane + 32 * u;
        if (c < d) st[c] = acc[rr][u];
      }
      if (lane == 0) {
        st[d] = m[rr];
        st[d + 1] = l[rr];
      }
    }
  }
}

/// Merges the parts' partial states of one stacked row per block (blockIdx.x: row, blockIdx.y: sequence x kv
/// head) into the normalized output. Exact: each part is rescaled from its max to the common one.
template <class T>
__global__ void attention_merge(const T* __restrict__ partial, int parts, T* out, std::int64_t ldo, std::int64_t n,
                                std::int64_t g, std::int64_t Hkv, std::int64_t d) {
  const std::int64_t rows_total = n * g, r = blockIdx.x, b = blockIdx.y / Hkv, h = blockIdx.y % Hkv;
  T mx = neg_inf<T>();
  for (int p = 0; p < parts; ++p) {
    const T mp = partial[((static_cast<std::int64_t>(p) * gridDim.y + blockIdx.y) * rows_total + r) * (d + 2) + d];
    mx = mp > mx ? mp : mx;
  }
  T l = 0;
  for (int p = 0; p < parts; ++p) {
    const T* st = partial + ((static_cast<std::int64_t>(p) * gridDim.y + blockIdx.y) * rows_total + r) * (d + 2);
    if (st[d] != neg_inf<T>()) l += dexp(st[d] - mx) * st[d + 1];
  }
  T* o = out + (b * n + r / g) * ldo + (h * g + r % g) * d;
  for (std::int64_t c = threadIdx.x; c < d; c += blockDim.x) {
    T a = 0;
    for (int p = 0; p < parts; ++p) {
      const T* st = partial + ((static_cast<std::int64_t>(p) * gridDim.y + blockIdx.y) * rows_total + r) * (d + 2);
      if (st[d] != neg_inf<T>()) a += dexp(st[d] - mx) * st[c];
    }
    o[c] = a / l;
  }
}

// ---------------------------------------------------------------- feedback, token by token

inline constexpr int fb_threads = 256;
inline constexpr int fb_keys_per_block = 256;  // past keys per block of the logits kernel

/// Step (a) for token row i of the chunk (absolute position t > 0): logits[b][j] = qb_r . kb_b[j] * scale for
/// j < t, a warp per key; each block also leaves its keys' max and exp-sum in stats (blocks of sequence b).
/// Grid: (ceil(t / fb_keys_per_block), batch).
template <class T, class C>
__global__ void __launch_bounds__(fb_threads)
    feedback_logits(const T* __restrict__ qb, std::int64_t ldq, const C* __restrict__ kb, T* logits, T* stats,
                    std::int64_t n, std::int64_t i, std::int64_t t, std::int64_t D, std::int64_t capacity, T scale) {
  __shared__ T red[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = fb_threads / 32;
  const std::int64_t b = blockIdx.y, r = b * n + i;
  const std::int64_t j0 = static_cast<std::int64_t>(blockIdx.x) * fb_keys_per_block;
  const std::int64_t j1 = j0 + fb_keys_per_block < t ? j0 + fb_keys_per_block : t;
  const T* q = qb + r * ldq;
  T* lg = logits + b * capacity;
  for (std::int64_t j = j0 + warp; j < j1; j += warps) {
    const C* key = kb + (b * capacity + j) * D;
    T acc = 0;
    for (std::int64_t c = lane; c < D; c += 32) acc += q[c] * widen<T>(key[c]);
    acc = warp_sum(acc);
    if (lane == 0) lg[j] = acc * scale;
  }
  __syncthreads();
  T mx = neg_inf<T>();
  for (std::int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) mx = lg[j] > mx ? lg[j] : mx;
  mx = warp_max(mx);
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  mx = neg_inf<T>();
  for (int w = 0; w < warps; ++w) mx = red[w] > mx ? red[w] : mx;
  __syncthreads();
  T sum = 0;
  for (std::int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) sum += dexp(lg[j] - mx);
  sum = block_sum(sum, red);
  if (threadIdx.x == 0) {
    T* st = stats + (b * gridDim.x + blockIdx.x) * 2;
    st[0] = mx;
    st[1] = sum;
  }
}

/// Step (b): the logits of sequence b = blockIdx.y become the feedback weights gamma_r * softmax_j, in place,
/// from the blocks' partial max / sum (`parts` of them per sequence). Grid: (ceil(t / blockDim.x), batch).
template <class T>
__global__ void feedback_weights(T* logits, const T* __restrict__ stats, int parts, const T* __restrict__ gamma,
                                 std::int64_t n, std::int64_t i, std::int64_t t, std::int64_t capacity) {
  const std::int64_t b = blockIdx.y, j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= t) return;
  T mx = neg_inf<T>();
  for (int p = 0; p < parts; ++p) mx = stats[(b * parts + p) * 2] > mx ? stats[(b * parts + p) * 2] : mx;
  T l = 0;
  for (int p = 0; p < parts; ++p) l += dexp(stats[(b * parts + p) * 2] - mx) * stats[(b * parts + p) * 2 + 1];
  T* lg = logits + b * capacity;
  lg[j] = gamma[b * n + i] * (dexp(lg[j] - mx) / l);
}

/// Step (c): partial[part][b][k] = sum_{j in part} w_j s_j[k]: columns k over blockIdx.x * blockDim.x +
/// threadIdx.x, key parts over blockIdx.y, sequences over blockIdx.z.
template <class T, class C>
__global__ void feedback_sum(const T* __restrict__ weights, const C* __restrict__ s, T* partial, std::int64_t t,
                             std::int64_t D, std::int64_t capacity, std::int64_t batch) {
  const std::int64_t b = blockIdx.z, part = blockIdx.y, parts = gridDim.y;
  const std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= D) return;
  const std::int64_t j0 = t * part / parts, j1 = t * (part + 1) / parts;
  const T* w = weights + b * capacity;
  const C* sb = s + b * capacity * D;
  T a = 0;
  for (std::int64_t j = j0; j < j1; ++j) a += w[j] * widen<T>(sb[j * D + k]);
  partial[(part * batch + b) * D + k] = a;
}

/// Step (d): s_t = f + the parts' sums, written to out and to the cache's row t. Grid: (ceil(D / blockDim.x), batch).
template <class T, class C>
__global__ void feedback_finish(const T* __restrict__ f, std::int64_t ldf, const T* __restrict__ partial, int parts,
                                C* s, T* out, std::int64_t ldo, std::int64_t n, std::int64_t i, std::int64_t t,
                                std::int64_t D, std::int64_t capacity, std::int64_t batch) {
  const std::int64_t b = blockIdx.y, r = b * n + i;
  const std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= D) return;
  T st = f[r * ldf + k];
  for (int p = 0; p < parts; ++p) st += partial[(p * batch + b) * D + k];
  out[r * ldo + k] = st;
  s[(b * capacity + t) * D + k] = narrow<C>(st);
}

/// Transposed feedback, token row i of the chunk: out[b][j] += w_j out[b][i] for the chunk's earlier rows j < i,
/// w the weights of step (b) at positions pos0 + j. Columns over blockIdx.x * blockDim.x + threadIdx.x (coalesced),
/// rows over blockIdx.y in a grid-stride loop, sequences over blockIdx.z.
template <class T>
__global__ void feedback_push(const T* __restrict__ weights, T* out, std::int64_t ldo, std::int64_t n, std::int64_t i,
                              std::int64_t pos0, std::int64_t D, std::int64_t capacity) {
  const std::int64_t b = blockIdx.z, k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= D) return;
  const T oi = out[(b * n + i) * ldo + k];
  const T* w = weights + b * capacity + pos0;
  for (std::int64_t j = blockIdx.y; j < i; j += gridDim.y) out[(b * n + j) * ldo + k] += w[j] * oi;
}

}  // namespace kernels

}  // namespace sessa::gpu
