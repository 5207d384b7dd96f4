// sessa/backend/cpu/attention.hpp: the forward branch of the CPU backend, flash style.
//
// Why this file exists: causal attention over T tokens is 2 T^2 D FLOPs per prefill, as much as the
// feedback solve and a third of a layer at T = 4096, D = 512. The reference kernel forms every score row
// and reads K and V once per query; this one runs the same math as GEMM tiles without a T x T matrix.
//
// Algorithm (FlashAttention's online softmax on the CPU):
//   * Work item = (batch row b, kv head h, query tile). A query tile is Bq = query_rows / g positions of
//     the g = H / Hkv query heads that read kv head h, stacked into one (Bq g, d) block (row ii g + hh;
//     256 rows by default), so each K/V tile is packed once for the whole group (GQA/MQA without copying
//     K or V).
//   * For each key tile [j0, j1) of the item's key range (128 keys by default), back to front:
//       S = Q K^T / sqrt(d)             (rows, keys)   one gemm_nt tile
//       m, l, acc online update         row max, P = exp(S - m) (xsimd::exp), l += sum P
//       acc += P V                      (rows, d)      one gemm_nn tile
//     with lazy rescaling: the reference max m of a row moves only when a tile's max exceeds it by more
//     than 8 (P <= e^8 then), so most tiles skip rescaling acc. The result acc / l is exact: m is only the
//     reference point of the exponentials, it cancels in the ratio. The next K/V tile is prefetched
//     during the softmax.
//   * The key range of an item is [min first_key(t), last t]: tiles above the diagonal and (sliding
//     window) before the window are never touched. A tile crossing some row's boundary is masked row by
//     row, and the rows that see none of its keys (above the diagonal) are left out of its two GEMMs.
//   * Packed once: when the tiles' products are GEMMs and a head has several query tiles, each key tile and its
//     value tile are packed into the GEMM's panel layout once per head (all threads, then a barrier), on a grid of
//     key_tile keys from position 0, and every query tile's two products read those panels (flash_tuning::pack_once;
//     otherwise each product packs its tile again, once per query tile). The softmax's exponential is exp_lanes
//     (vscalefps on AVX-512) and its row sums and maxima reduce as trees.
//   * Threads (OpenMP): dynamic scheduling over the items, head by head (a head's K and V stay in the
//     last-level cache), the latest (longest) query tiles first. When the items are few (decode: n = 1
//     per batch row, and batch * Hkv does not divide evenly over the threads) the key range is split
//     (split-K): each part leaves a partial state (m, l, acc) in the context's scratch arena and a second pass merges
//     them, so every thread streams its share of the cache and each cached k, v value is read once.
// flash_detail also holds the pieces the feedback solve (feedback.hpp) shares: the online-softmax state,
// absorb_tile (one key tile into a state), merges of partial states and the thread team helper.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <tuple>
#include <type_traits>
#include <utility>

#include <xsimd/xsimd.hpp>

#include "../../concepts.hpp"
#include "../../core/hparams.hpp"
#include "../../core/tensor.hpp"
#include "../../model/cache.hpp"
#include "gemm.hpp"
#include "parallel.hpp"
#include "widen.hpp"

namespace sessa::backend::simd::inline SESSA_CPU_ABI {  // see config.hpp

/// Tile sizes and thresholds of the flash attention and feedback kernels. Those two copy flash_params once at
/// their start and take their tiles from the copy; they and the kernels of elementwise.hpp read
/// flash_params.parallel_flops when they pick their thread count (threads_for). Tests and benchmarks may change
/// flash_params between calls, never while any thread is inside a cpu kernel: it is a plain global, not
/// synchronized, so a change during a call is a data race.
struct flash_tuning {
  index_t query_rows = 256;       // stacked query rows (positions x heads of a group) per attention tile
  index_t key_tile = 128;         // keys per tile: forward attention and the feedback's pass over the past
  index_t fb_block = 128;         // Bk: rows per block of the feedback solve
  index_t fb_rows = 256;          // rows per tile when a finished block is pushed to later rows
  index_t few_rows_tile = 262144; // bytes of keys per tile in a pass of at most 16 query rows (decode)
  index_t min_split_keys = 256;   // split-K only when every part gets at least this many keys
  double parallel_flops = 1.0e6;  // a call of fewer FLOPs runs on the calling thread
  bool pack_once = true;          // GEMM tiles: pack each key/value tile once for every query tile that reads it
  index_t pack_min_tiles = 8;     // ... in the attention when a head has this many query tiles per thread (>= 2)
};
inline flash_tuning flash_params{};

namespace flash_detail {

template <class T>
inline constexpr T neg_inf = -std::numeric_limits<T>::infinity();

/// Lazy rescaling: a row's reference max moves only when a tile's max exceeds it by more than this.
template <class T>
inline constexpr T lazy_rescale = T(8);

/// Per-thread scratch of the tile loops; grows once, then reused by every call on that thread.
template <class T>
struct thread_buffers {
  buffer<T> q;            // (rows, d)          stacked query rows of an attention tile
  buffer<T> s;            // (rows, keys)       scores, then probabilities, of one tile
  buffer<T> state;        // (rows, dv + 2)     acc | m, l of a tile's rows
  buffer<index_t> range;  // (2, positions)     first key | one past the last key of each query position
  buffer<T> kw, vw;       // (keys, cols)       a key tile and its value tile widened from a narrow cache
};
template <class T>
inline thread_buffers<T>& thread_scratch() {
  thread_local thread_buffers<T> b;
  return b;
}

/// Online-softmax state of `rows` rows over the keys absorbed so far:
///   m (rows) reference max, l (rows) = sum_j exp(s_j - m), acc (rows, dv) = sum_j exp(s_j - m) v_j.
template <class T>
struct softmax_state {
  T* m = nullptr;
  T* l = nullptr;
  matrix<T> acc;

  /// Rows [r0, r0 + n).
  softmax_state rows(index_t r0, index_t n) const { return {m + r0, l + r0, acc.row_block(r0, n)}; }
  /// No keys yet: m = -inf, l = 0, acc = 0.
  void clear() const {
    std::fill_n(m, acc.rows, neg_inf<T>);
    std::fill_n(l, acc.rows, T(0));
    for (index_t r = 0; r < acc.rows; ++r) std::fill_n(acc.row(r), acc.cols, T(0));
  }
};

/// A state laid out in one block of rows * (dv + 2) values: acc (rows, dv) | m (rows) | l (rows).
template <class T>
inline softmax_state<T> state_in(T* p, index_t rows, index_t dv) {
  return {p + rows * dv, p + rows * dv + rows, matrix<T>(p, rows, dv)};
}

/// Which keys each row of a tile may read: row r reads absolute positions [lo[r / group], hi[r / group]).
/// lo == nullptr means every key of the range. lo_max / hi_min summarize the rows, so that a tile inside
/// every row's range skips the per-row mask.
struct key_mask {
  const index_t* lo = nullptr;
  const index_t* hi = nullptr;
  index_t group = 1;
  index_t lo_max = 0, hi_min = 0;
};

/// True when every value of m is finite (x * 0 is 0 for finite x, NaN for an infinity or a NaN).
template <class C>
inline bool all_finite(cmatrix<C> m) {
  using F = std::conditional_t<std::is_floating_point_v<C>, C, float>;  // bfloat16, float16: as float (exact)
  F z = 0;
  for (index_t r = 0; r < m.rows; ++r) {
    const C* p = m.row(r);
    for (index_t c = 0; c < m.cols; ++c) z += widen<F>(p[c]) * F(0);
  }
  return z == F(0);
}

/// max of x[0, n), n >= 1.
template <class T>
inline T row_max(const T* x, index_t n) {
  using B = xsimd::batch<T>;
  constexpr index_t W = static_cast<index_t>(B::size);
  T mx = neg_inf<T>;
  index_t j = 0;
  if (n >= 2 * W) {
    B a = B::load_unaligned(x), b = B::load_unaligned(x + W);
    for (j = 2 * W; j + 2 * W <= n; j += 2 * W) {
      a = xsimd::max(a, B::load_unaligned(x + j));
      b = xsimd::max(b, B::load_unaligned(x + j + W));
    }
    mx = hmax(xsimd::max(a, b));
  }
  for (; j < n; ++j) mx = std::max(mx, x[j]);
  return mx;
}

/// e^x lane by lane, every x (NaN stays NaN, a large x gives inf, x below -104 its float value, 0 or the smallest
/// subnormal). With AVX-512 floats: xsimd::exp's Cephes polynomial on x - n ln 2, with the power of two 2^n applied
/// by vscalefps, which also covers overflow and underflow, so the range checks and blends of xsimd::exp go (the
/// softmax of the flash tiles spends most of its time here). Otherwise xsimd::exp.
template <class T>
inline xsimd::batch<T> exp_lanes(xsimd::batch<T> x) noexcept {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> && xsimd::batch<T>::size == 16) {
    const __m512 v = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);  // max returns its second operand for a NaN
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), v);  // ln 2 in two parts (Cody and Waite)
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
  }
#endif
  return xsimd::exp(x);
}

/// x[j] <- exp(x[j] - m) for j in [0, n); returns the sum of the new values.
template <class T>
inline T exp_shifted(T* x, index_t n, T m) {
  using B = xsimd::batch<T>;
  constexpr index_t W = static_cast<index_t>(B::size);
  const B mv(m);
  B sum(T(0));
  index_t j = 0;
  for (; j + W <= n; j += W) {
    const B e = exp_lanes(B::load_unaligned(x + j) - mv);
    e.store_unaligned(x + j);
    sum += e;
  }
  T s = hsum(sum);
  for (; j < n; ++j) s += (x[j] = std::exp(x[j] - m));
  return s;
}

/// x[0, n) *= a.
template <class T>
inline void scale_row(T* x, index_t n, T a) {
  using B = xsimd::batch<T>;
  constexpr index_t W = static_cast<index_t>(B::size);
  const B av(a);
  index_t j = 0;
  for (; j + W <= n; j += W) (B::load_unaligned(x + j) * av).store_unaligned(x + j);
  for (; j < n; ++j) x[j] *= a;
}

/// Rows [r0, r0 + n) of m in the compute type T: a view of m itself when it holds T; otherwise (a bfloat16 or
/// float16 cache) the rows widened into buf, which holds at least n * m.cols values (widen.hpp: exact).
template <class T, class C>
inline cmatrix<T> rows_as(cmatrix<C> m, index_t r0, index_t n, T* buf) noexcept {
  if constexpr (std::is_same_v<T, C>) {
    (void)buf;
    return m.row_block(r0, n);
  } else {
    for (index_t j = 0; j < n; ++j) widen_n<T>(m.row(r0 + j), m.cols, buf + j * m.cols);
    return cmatrix<T>(buf, n, m.cols);
  }
}

/// Prefetches rows [j0, j1) of a (positions, cols) view into the cache hierarchy (the next key tile, while
/// the current one is in the softmax).
template <class C>
inline void prefetch_rows(cmatrix<C> m, index_t j0, index_t j1) {
  constexpr index_t line = static_cast<index_t>(64 / sizeof(C));
  for (index_t j = j0; j < j1; ++j)
    for (index_t k = 0; k < m.cols; k += line) __builtin_prefetch(m.row(j) + k, 0, 2);
}

/// acc (rows, dv) += p (rows, nk) v (nk, dv) for a few rows (decode): v (stored as C: T, or bfloat16 / float16
/// widened in registers) is streamed row after row, each read once and in order, while acc stays in L1. Four rows
/// of v go into each load and store of acc (the same fused multiply-adds in the same order as one row at a time,
/// so the same bits), and the rows few_rows_prefetch_bytes ahead are prefetched. One Zen 5 core, decode over a 32k
/// cache (D = 512, 8 heads): the attention 5.24-5.32 -> 4.95-4.98 ms, the feedback 4.43-4.70 -> 4.05-4.10 ms
/// (builds alternated; four rows without the prefetch made the attention slower, the prefetch on one row at a time
/// gained about 3% of the step).
inline constexpr std::uintptr_t few_rows_prefetch_bytes = 2048;

template <class T, class C>
inline void accumulate_few(cmatrix<T> p, cmatrix<C> v, matrix<T> acc) {
  using B = xsimd::batch<T>;
  constexpr index_t W = static_cast<index_t>(B::size);
  const index_t dv = v.cols;
  index_t j0 = 0;
  for (; j0 + 4 <= v.rows; j0 += 4) {
    const C *v0 = v.row(j0), *v1 = v.row(j0 + 1), *v2 = v.row(j0 + 2), *v3 = v.row(j0 + 3);
#if defined(__GNUC__)
    {  // addresses as integers: the distance may run past the end of v, where a pointer may not point
      const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(v0) + few_rows_prefetch_bytes;
      const std::uintptr_t span = 4 * static_cast<std::uintptr_t>(v.ld) * sizeof(C);
      for (std::uintptr_t o = 0; o < span; o += 64) __builtin_prefetch(reinterpret_cast<const void*>(at + o), 0, 3);
    }
#endif
    for (index_t r = 0; r < p.rows; ++r) {
      const T* pr = p.row(r) + j0;
      const B p0(pr[0]), p1(pr[1]), p2(pr[2]), p3(pr[3]);
      T* a = acc.row(r);
      index_t c = 0;
      for (; c + W <= dv; c += W) {
        B s = B::load_unaligned(a + c);
        s = xsimd::fma(p0, load_widened<T>(v0 + c), s);
        s = xsimd::fma(p1, load_widened<T>(v1 + c), s);
        s = xsimd::fma(p2, load_widened<T>(v2 + c), s);
        xsimd::fma(p3, load_widened<T>(v3 + c), s).store_unaligned(a + c);
      }
      for (; c < dv; ++c) {
        T s = a[c];
        s += pr[0] * widen<T>(v0[c]);
        s += pr[1] * widen<T>(v1[c]);
        s += pr[2] * widen<T>(v2[c]);
        a[c] = s + pr[3] * widen<T>(v3[c]);
      }
    }
  }
  for (index_t j = j0; j < v.rows; ++j) {
    const C* vj = v.row(j);
    for (index_t r = 0; r < p.rows; ++r) {
      const T pj = p(r, j);
      const B pv(pj);
      T* a = acc.row(r);
      index_t c = 0;
      for (; c + W <= dv; c += W) xsimd::fma(pv, load_widened<T>(vj + c), B::load_unaligned(a + c)).store_unaligned(a + c);
      for (; c < dv; ++c) a[c] += pj * widen<T>(vj[c]);
    }
  }
}

/// Row stride of the (rows, nk) score / probability tile of absorb_tile: for many rows and a tile within one K slice,
/// the packed GEMM's stride (gemm_detail::packed_lda), so the product with v reads the probabilities in place;
/// otherwise nk. s_buf holds at least rows * score_ld<T>(rows, nk) values.
template <class T>
inline index_t score_ld(index_t rows, index_t nk) noexcept {
  const index_t lda = gemm_detail::packed_lda<T>(nk);
  return rows > gemm_detail::small_m_rows && lda > 0 ? lda : nk;
}

/// Values of s_buf for tiles of at most `rows` rows and `nk` keys (every smaller tile fits).
template <class T>
inline index_t score_buffer(index_t rows, index_t nk) noexcept {
  return rows * (rows > gemm_detail::small_m_rows ? std::max(nk, gemm_detail::blocking<T>::LDA) : nk);
}

/// A key tile and its value tile already in the packed GEMM's layout (gemm_detail::pack_whole_b: k as the b of
/// q k^T, v as the b of p v), or null: absorb_tile then reads the tile's rows and packs them itself.
template <class T>
struct packed_tile {
  const T* k = nullptr;
  const T* v = nullptr;
  const T* next = nullptr;  // the next packed tile's values [next, next + next_values), prefetched during the softmax
  index_t next_values = 0;
};

/// Absorbs the keys kt (nk, dk) and values vt (nk, dv) of absolute positions [j0, j0 + nk), stored as C, into
/// the state st of the rows q (rows, dk):
///   S = alpha q k^T (gemm_nt), online-softmax update of m and l (lazy rescaling of acc), acc += P v (gemm_nn).
/// A narrow C (bfloat16, float16) is widened in registers where the rows are few (the dot-product scores and
/// accumulate_few: a decode step reads the narrow cache itself), otherwise into kbuf / vbuf (each at least
/// nk * cols values) for the GEMM tiles. Under a mask only the rows from the first to the last one that sees a key
/// of the tile take part (rows are in position order, so a diagonal tile skips the rows above it). Rows
/// [next0, next1) of pk and pv (the whole stored keys and values) are prefetched. s_buf: at least
/// rows * score_ld<T>(rows, nk) values of scratch. A q in the packed layout (gemm_detail::packed_lda) is read in
/// place by the score product. With `packed` (the same tile packed once for many query tiles), the two GEMMs read
/// it instead of packing kt and vt.
template <class T, class C = T>
inline void absorb_tile(cmatrix<T> q, cmatrix<C> kt, cmatrix<C> vt, index_t j0, T alpha, const key_mask& mask,
                        T* s_buf, const softmax_state<T>& st, T* kbuf = nullptr, T* vbuf = nullptr,
                        cmatrix<C> pk = {}, cmatrix<C> pv = {}, index_t next0 = 0, index_t next1 = 0,
                        packed_tile<T> packed = {}) {
  using gemm_detail::b_layout;
  const index_t nk = kt.rows, j1 = j0 + nk, dv = vt.cols;
  index_t r0 = 0, r1 = q.rows;
  const bool full = mask.lo == nullptr || (mask.lo_max <= j0 && j1 <= mask.hi_min);
  if (!full) {
    auto sees = [&](index_t r) { return mask.lo[r / mask.group] < j1 && mask.hi[r / mask.group] > j0; };
    while (r0 < r1 && !sees(r0)) ++r0;
    while (r1 > r0 && !sees(r1 - 1)) --r1;
  }
  const index_t rows = r1 - r0;
  if (rows <= 0 || nk <= 0) return;
  const matrix<T> s(s_buf, rows, nk, score_ld<T>(rows, nk));  // (rows, nk) scores, then probabilities
  if (packed.k) {
    gemm_detail::gemm_blocked<T, b_layout::nk>(q.row_block(r0, rows), cmatrix<T>{}, s, alpha, T(0), nullptr, packed.k);
  } else if constexpr (std::is_same_v<T, C>) {
    gemm_nt(q.row_block(r0, rows), kt, s, alpha, T(0));
  } else if (gemm_detail::use_dot(rows, kt.cols)) {
    gemm_detail::gemm_dot<T, C>(q.row_block(r0, rows), kt, s, gemm_detail::epilogue<T>{alpha, T(0), nullptr});
  } else {
    gemm_nt(q.row_block(r0, rows), rows_as<T>(kt, 0, nk, kbuf), s, alpha, T(0));
  }
  // Prefetch spread over the softmax rows; a few rows (decode) stream in order and leave it to the hardware.
  const index_t pf_per_row = next1 > next0 && rows > 16 ? (next1 - next0 + rows - 1) / rows : 0;
  constexpr index_t line = static_cast<index_t>(64 / sizeof(T));
  const index_t pf_packed = packed.next && rows > 16 ? gemm_detail::round_up((packed.next_values + rows - 1) / rows, line) : 0;
  for (index_t i = 0; i < rows; ++i) {
    if (pf_per_row > 0) {
      const index_t p0 = std::min(next1, next0 + i * pf_per_row), p1 = std::min(next1, p0 + pf_per_row);
      prefetch_rows(pk, p0, p1);
      prefetch_rows(pv, p0, p1);
    }
    for (index_t x = i * pf_packed, e = std::min(packed.next_values, x + pf_packed); x < e; x += line)
      __builtin_prefetch(packed.next + x, 0, 2);
    const index_t r = r0 + i;
    T* sr = s.row(i);
    index_t a = 0, b = nk;
    if (!full) {
      a = std::clamp<index_t>(mask.lo[r / mask.group] - j0, 0, nk);
      b = std::clamp<index_t>(mask.hi[r / mask.group] - j0, 0, nk);
      if (a >= b) {
        std::fill_n(sr, nk, T(0));
        continue;
      }
      std::fill(sr, sr + a, T(0));
      std::fill(sr + b, sr + nk, T(0));
    }
    const T mx = row_max(sr + a, b - a);
    T& m = st.m[r];
    if (mx > m + lazy_rescale<T>) {  // includes the row's first keys (m = -inf)
      if (m != neg_inf<T>) {
        const T f = std::exp(m - mx);
        st.l[r] *= f;
        scale_row(st.acc.row(r), dv, f);
      }
      m = mx;
    }
    st.l[r] += exp_shifted(sr + a, b - a, m);
  }
  if (!full && !all_finite(vt)) {
    // A key a row may not see has probability 0, but 0 * inf and 0 * NaN are NaN: a non-finite value at a later
    // position of the same chunk must not reach earlier rows (causality holds for every input). Only inputs or
    // weights that made a NaN or an infinity take this path: each row adds its own keys alone.
    for (index_t i = 0; i < rows; ++i) {
      const index_t r = r0 + i;
      const index_t a = std::clamp<index_t>(mask.lo[r / mask.group] - j0, 0, nk);
      const index_t b = std::clamp<index_t>(mask.hi[r / mask.group] - j0, 0, nk);
      if (a < b)
        accumulate_few(cmatrix<T>(s.row(i) + a, 1, b - a, s.ld), vt.row_block(a, b - a), st.acc.row_block(r, 1));
    }
  } else if (rows <= 4) {
    accumulate_few(cmatrix<T>(s), vt, st.acc.row_block(r0, rows));
  } else if (packed.v) {
    gemm_detail::gemm_blocked<T, b_layout::kn>(cmatrix<T>(s), cmatrix<T>{}, st.acc.row_block(r0, rows), T(1), T(1),
                                               nullptr, packed.v);
  } else {
    gemm_nn(cmatrix<T>(s), rows_as<T>(vt, 0, nk, vbuf), st.acc.row_block(r0, rows), T(1), T(1));
  }
}

/// Keys per tile of a pass of at most `rows` query rows over keys `dk` wide: flash_params.key_tile, except
/// for a few rows (decode), which do little work per key: there a tile is flash_params.few_rows_tile bytes
/// of keys (256 KiB: 1024 keys of d = 64 floats, 128 of D = 512), so the pass streams the cache in long runs
/// (its K and V tiles stay in L2 together; measured best between 16 KiB and 1 MiB).
template <class T>
inline index_t pass_tile(index_t rows, index_t dk, const flash_tuning& tp) {
  if (rows > 16) return std::max<index_t>(1, tp.key_tile);
  return std::clamp<index_t>(tp.few_rows_tile / (dk * static_cast<index_t>(sizeof(T))), 4, 1024);
}

/// Absorbs keys [k_lo, k_hi) of k (positions, dk) and v (positions, dv), stored as C, in tiles of `tile` keys,
/// from the last tile back (the diagonal first), prefetching each next tile. kbuf and vbuf: absorb_tile's (at
/// least tile * cols values each when C is narrower than T).
template <class T, class C>
inline void flash_pass(cmatrix<T> q, cmatrix<C> k, cmatrix<C> v, index_t k_lo, index_t k_hi, index_t tile, T alpha,
                       const key_mask& mask, T* s_buf, const softmax_state<T>& st, T* kbuf = nullptr,
                       T* vbuf = nullptr) {
  for (index_t j1 = k_hi; j1 > k_lo; j1 -= tile) {
    const index_t j0 = std::max(k_lo, j1 - tile), nk = j1 - j0;
    absorb_tile<T, C>(q, k.row_block(j0, nk), v.row_block(j0, nk), j0, alpha, mask, s_buf, st, kbuf, vbuf, k, v,
                      std::max(k_lo, j0 - tile), j0);
  }
}

/// Merges `count` partial states of the same rows (parts[p] over disjoint key sets) into dst, which may be
/// parts[0]. Exact: each part is rescaled from its reference max to the common one.
template <class T>
inline void merge_states(const softmax_state<T>* parts, index_t count, const softmax_state<T>& dst) {
  using B = xsimd::batch<T>;
  constexpr index_t W = static_cast<index_t>(B::size);
  constexpr index_t max_parts = 64;
  const index_t rows = dst.acc.rows, dv = dst.acc.cols;
  count = std::min(count, max_parts);
  for (index_t r = 0; r < rows; ++r) {
    T mx = neg_inf<T>;
    for (index_t p = 0; p < count; ++p) mx = std::max(mx, parts[p].m[r]);
    T w[max_parts];
    T l = 0;
    for (index_t p = 0; p < count; ++p) {
      w[p] = (parts[p].m[r] == neg_inf<T>) ? T(0) : std::exp(parts[p].m[r] - mx);
      l += w[p] * parts[p].l[r];
    }
    T* out = dst.acc.row(r);
    index_t j = 0;
    for (; j + W <= dv; j += W) {
      B a = B(w[0]) * B::load_unaligned(parts[0].acc.row(r) + j);
      for (index_t p = 1; p < count; ++p) a = xsimd::fma(B(w[p]), B::load_unaligned(parts[p].acc.row(r) + j), a);
      a.store_unaligned(out + j);
    }
    for (; j < dv; ++j) {
      T a = w[0] * parts[0].acc(r, j);
      for (index_t p = 1; p < count; ++p) a += w[p] * parts[p].acc(r, j);
      out[j] = a;
    }
    dst.m[r] = mx;
    dst.l[r] = l;
  }
}

/// The threads of one parallel region. Work-sharing loops end with a barrier; without OpenMP (or with one
/// thread) they are plain loops. Nothing thrown inside leaves the region: per-thread set-up runs through
/// guard(), loop bodies through the region's error collector, and run_team() rethrows after the region.
class team {
 public:
  team(bool omp, detail::region_errors& errors) : omp_(omp), errors_(&errors) {}
  int size() const {
#if SESSA_HAS_OPENMP
    if (omp_) return omp_get_num_threads();
#endif
    return 1;
  }
  /// Runs f() (per-thread set-up that may throw, such as growing a buffer); false when it or an earlier
  /// piece of the region failed. The loops below skip their bodies from then on, on every thread.
  template <class F>
  bool guard(F&& f) const {
    return errors_->run(std::forward<F>(f));
  }
  /// f(i) for i in [0, n), contiguous near-equal shares per thread.
  template <class F>
  void for_static(index_t n, F&& f) const {
#if SESSA_HAS_OPENMP
    if (omp_) {
#pragma omp for schedule(static)
      for (index_t i = 0; i < n; ++i) errors_->run([&] { f(i); });
      return;
    }
#endif
    for (index_t i = 0; i < n; ++i) errors_->run([&] { f(i); });
  }
  /// f(i) for i in [0, n), handed out one at a time in order.
  template <class F>
  void for_dynamic(index_t n, F&& f) const {
#if SESSA_HAS_OPENMP
    if (omp_) {
#pragma omp for schedule(dynamic, 1)
      for (index_t i = 0; i < n; ++i) errors_->run([&] { f(i); });
      return;
    }
#endif
    for (index_t i = 0; i < n; ++i) errors_->run([&] { f(i); });
  }

 private:
  bool omp_;
  detail::region_errors* errors_;
};

/// Runs f(team) on nt threads (a parallel region of its own, so the loops bind to it even when the caller
/// is inside another region), or on the calling thread when nt == 1; then rethrows the first exception any
/// piece of f threw.
template <class F>
inline void run_team(int nt, F&& f) {
  detail::region_errors errors;
#if SESSA_HAS_OPENMP
  if (nt > 1) {
#pragma omp parallel num_threads(nt)
    errors.run([&] { f(team(true, errors)); });
    errors.rethrow_if_failed();
    return;
  }
#else
  (void)nt;
#endif
  errors.run([&] { f(team(false, errors)); });
  errors.rethrow_if_failed();
}

/// Threads for a call of `flops` FLOPs, at most max_threads: one inside a parallel region or below
/// flash_params.parallel_flops.
inline int threads_for(double flops, int max_threads) {
#if SESSA_HAS_OPENMP
  if (omp_in_parallel() || flops < flash_params.parallel_flops) return 1;
  return std::max(1, max_threads);
#else
  (void)flops, (void)max_threads;
  return 1;
#endif
}

/// Parts to split each of `items` equal work items into so that items * parts spreads evenly over nt
/// threads, given `keys` keys per item (each part gets at least min_keys keys). 1 when not worth it.
inline index_t key_splits(index_t items, int nt, index_t keys, index_t min_keys) {
  if (nt <= 1 || items <= 0 || items >= 4 * static_cast<index_t>(nt)) return 1;
  index_t parts = std::min<index_t>(64, nt / std::gcd(items, static_cast<index_t>(nt)));
  while (parts > 1 && keys < parts * std::max<index_t>(1, min_keys)) --parts;
  return parts;
}

/// [begin, end) of part p of `parts` near-equal parts of [lo, hi).
inline std::pair<index_t, index_t> part_range(index_t lo, index_t hi, index_t p, index_t parts) {
  const index_t n = hi - lo;
  return {lo + n * p / parts, lo + n * (p + 1) / parts};
}

}  // namespace flash_detail

/// Forward branch, kernels<reference>::attention's contract: q (batch*n, H*d) -> out (batch*n, H*d); the
/// query at position t = pos0 + i of head h reads keys [variant.first_key(t), t] of kv head h / g. The cache
/// holds T, or bfloat16 / float16 widened tile by tile as the pass reads it.
/// Scratch: slot 3 of `scratch` holds the split-K partial states. Up to max_threads threads.
template <scalar T, class C, attention_variant A>
void attention(const A& variant, const layer_config& c, cmatrix<T> q, cache_view<const C> cache, index_t pos0,
               index_t n, matrix<T> out, scratch_arena<memory::host>& scratch, int max_threads = num_threads()) {
  using namespace flash_detail;
  const index_t Hkv = c.n_kv_heads, d = c.head_dim(), g = c.group_size(), batch = cache.batch();
  if (n <= 0 || batch <= 0) return;
  const flash_tuning tp = flash_params;
  const T scale = T(1) / std::sqrt(static_cast<T>(d));
  const index_t Bq = std::max<index_t>(1, tp.query_rows / g);  // query positions per tile
  const index_t qtiles = (n + Bq - 1) / Bq;
  const index_t heads = batch * Hkv, items = heads * qtiles;
  const index_t rows_max = std::min(n, Bq) * g;  // stacked rows of the largest tile
  const index_t Bk = pass_tile<T>(rows_max, d, tp);  // keys per tile
  // Row stride of the stacked queries when the tiles' score products are GEMMs reading them in place (0: a view).
  const index_t q_ld = rows_max > gemm_detail::small_m_rows ? gemm_detail::packed_lda<T>(d) : 0;

  // Keys read per query, on average (first and last row), for the thread decision.
  const index_t t_last = pos0 + n - 1;
  const double keys_per_row =
      0.5 * static_cast<double>((pos0 + 1 - variant.first_key(pos0)) + (t_last + 1 - variant.first_key(t_last)));
  const int nt = threads_for(4.0 * static_cast<double>(d * c.n_heads * batch * n) * keys_per_row, max_threads);

  // Split-K when all items share one query tile (so equal key ranges) and they spread badly over the threads.
  index_t ks = 1, k_lo0 = 0;
  if (qtiles == 1) {
    k_lo0 = variant.first_key(pos0);
    for (index_t i = 1; i < n; ++i) k_lo0 = std::min(k_lo0, variant.first_key(pos0 + i));
    ks = key_splits(heads, nt, pos0 + n - k_lo0, tp.min_split_keys);
  }
  const index_t slot = rows_max * (d + 2);  // one partial state: acc (rows, d) | m | l
  T* partials = ks > 1 ? scratch.get<T>(3, heads * ks * slot) : nullptr;

  // Several query tiles of a head read the same key tiles: when the tiles' products are GEMMs, each key tile and its
  // value tile are packed once per head into the GEMM's layout (a grid of Bk keys from position 0, up to the chunk's
  // last key; a tile reaching past some rows' keys is masked as before), instead of once per query tile. Heads then go
  // one after the other: pack the head's tiles (all threads), then its query tiles (dynamic, the longest first). The
  // barrier after each head costs the imbalance of its last tiles, so a head needs pack_min_tiles query tiles per
  // thread (at 2 threads and the default 8: 16 tiles, 4096 positions of one query head per kv head).
  const index_t min_qtiles = std::max<index_t>(2, nt > 1 ? tp.pack_min_tiles * nt : 2);
  const bool prepack = tp.pack_once && q_ld > 0 && qtiles >= min_qtiles && ks == 1;
  const index_t kend = pos0 + n;  // one past the chunk's last key
  index_t jt0 = 0, ntiles = 0, kstride = 0, tstride = 0;
  T* packs = nullptr;
  if (prepack) {
    index_t k_first = variant.first_key(pos0);
    for (index_t i = 1; i < n; ++i) k_first = std::min(k_first, variant.first_key(pos0 + i));
    jt0 = k_first / Bk;
    ntiles = (kend + Bk - 1) / Bk - jt0;
    kstride = gemm_detail::packed_b_values<T>(d, gemm_detail::round_up(Bk, gemm_detail::blocking<T>::NR));
    tstride = kstride + gemm_detail::packed_b_values<T>(Bk, d);
    packs = scratch.get<T>(3, ntiles * tstride);
  }

  run_team(nt, [&](const team& tm) {
    thread_buffers<T>& tb = thread_scratch<T>();
    tm.guard([&] {
      tb.q.reserve(rows_max * std::max(d, q_ld));
      tb.s.reserve(score_buffer<T>(rows_max, Bk));
      tb.state.reserve(slot);
      tb.range.reserve(2 * std::min(n, Bq));
      if constexpr (!std::is_same_v<T, C>) {
        tb.kw.reserve(Bk * d);
        tb.vw.reserve(Bk * d);
      }
    });

    // One work item: query tile qt of kv head h of batch row b (part `part` of its keys under split-K).
    auto run_item = [&](index_t b, index_t h, index_t qt, index_t part, index_t u) {
      const index_t i0 = qt * Bq, np = std::min(Bq, n - i0), rows = np * g;

      // Queries: the g heads of the group stacked, row ii * g + hh; copied once per tile into the packed GEMM's
      // layout when the tiles' products are GEMMs (q_ld > 0), otherwise a strided view when g == 1.
      cmatrix<T> qs(q.row(b * n + i0) + h * d, np, d, q.ld);
      if (q_ld > 0) {
        for (index_t r = 0; r < rows; ++r)
          std::memcpy(tb.q.data() + r * q_ld, q.row(b * n + i0 + r / g) + (h * g + r % g) * d,
                      sizeof(T) * static_cast<std::size_t>(d));
        qs = cmatrix<T>(tb.q.data(), rows, d, q_ld);
      } else if (g > 1) {
        for (index_t ii = 0; ii < np; ++ii)
          std::memcpy(tb.q.data() + ii * g * d, q.row(b * n + i0 + ii) + h * g * d, sizeof(T) * static_cast<std::size_t>(g * d));
        qs = cmatrix<T>(tb.q.data(), rows, d);
      }
      // Key ranges per position: [first_key(t), t + 1).
      index_t* lo = tb.range.data();
      index_t* hi = lo + np;
      key_mask mask{lo, hi, g, 0, 0};
      for (index_t ii = 0; ii < np; ++ii) {
        const index_t t = pos0 + i0 + ii;
        lo[ii] = variant.first_key(t);
        hi[ii] = t + 1;
      }
      mask.lo_max = *std::max_element(lo, lo + np);
      mask.hi_min = hi[0];
      index_t k_lo = *std::min_element(lo, lo + np), k_hi = hi[np - 1];
      if (ks > 1) std::tie(k_lo, k_hi) = part_range(k_lo, k_hi, part, ks);

      const softmax_state<T> st = state_in(ks > 1 ? partials + u * slot : tb.state.data(), rows, d);
      st.clear();
      const cmatrix<C> kh = cache.k(b, h), vh = cache.v(b, h);
      if (prepack) {
        // The grid tiles holding [k_lo, k_hi), from the last back.
        for (index_t jt = (k_hi - 1) / Bk; jt >= k_lo / Bk; --jt) {
          const index_t j0 = jt * Bk, nk = std::min(Bk, kend - j0);
          const T* tile = packs + (jt - jt0) * tstride;
          packed_tile<T> pt{tile, tile + kstride};
          if (jt > k_lo / Bk) {
            pt.next = tile - tstride;
            pt.next_values = tstride;
          }
          absorb_tile<T, C>(qs, kh.row_block(j0, nk), vh.row_block(j0, nk), j0, scale, mask, tb.s.data(), st,
                            tb.kw.data(), tb.vw.data(), {}, {}, 0, 0, pt);
        }
      } else {
        flash_pass<T, C>(qs, kh, vh, k_lo, k_hi, Bk, scale, mask, tb.s.data(), st, tb.kw.data(), tb.vw.data());
      }
      if (ks == 1)
        for (index_t r = 0; r < rows; ++r) {
          T* o = out.row(b * n + i0 + r / g) + (h * g + r % g) * d;
          const T* a = st.acc.row(r);
          const T inv = T(1) / st.l[r];
          for (index_t k = 0; k < d; ++k) o[k] = a[k] * inv;
        }
    };

    if (prepack) {
      for (index_t hd = 0; hd < heads; ++hd) {
        const index_t b = hd / Hkv, h = hd % Hkv;
        const cmatrix<C> kh = cache.k(b, h), vh = cache.v(b, h);
        tm.for_static(2 * ntiles, [&](index_t w) {  // tile w / 2: its keys (w even) or its values (w odd)
          const index_t jt = jt0 + w / 2, j0 = jt * Bk, nk = std::min(Bk, kend - j0);
          T* tile = packs + (w / 2) * tstride;
          if (w % 2 == 0)
            gemm_detail::pack_whole_b<T, gemm_detail::b_layout::nk, C>(kh.row_block(j0, nk), tile, 0,
                                                                        gemm_detail::panels<T>(nk));
          else
            gemm_detail::pack_whole_b<T, gemm_detail::b_layout::kn, C>(vh.row_block(j0, nk), tile + kstride, 0,
                                                                        gemm_detail::panels<T>(d));
        });
        tm.for_dynamic(qtiles, [&](index_t i) { run_item(b, h, qtiles - 1 - i, 0, 0); });
      }
      return;
    }

    tm.for_dynamic(items * ks, [&](index_t u) {
      const index_t part = u % ks, item = u / ks;
      // Head by head (its K, V stay in the last-level cache), the latest (longest) query tiles first.
      const index_t qt = qtiles - 1 - item % qtiles;
      const index_t b = (item / qtiles) / Hkv, h = (item / qtiles) % Hkv;
      run_item(b, h, qt, part, u);
    });

    if (ks > 1)
      tm.for_static(heads, [&](index_t item) {
        const index_t b = item / Hkv, h = item % Hkv, rows = n * g;
        softmax_state<T> parts[64];
        const index_t np = std::min<index_t>(ks, 64);
        for (index_t p = 0; p < np; ++p) parts[p] = state_in(partials + (item * ks + p) * slot, rows, d);
        merge_states(parts, np, parts[0]);
        for (index_t r = 0; r < rows; ++r) {
          T* o = out.row(b * n + r / g) + (h * g + r % g) * d;
          const T* a = parts[0].acc.row(r);
          const T inv = T(1) / parts[0].l[r];
          for (index_t k = 0; k < d; ++k) o[k] = a[k] * inv;
        }
      });
  });
}

}  // namespace sessa::backend::simd::inline SESSA_CPU_ABI
