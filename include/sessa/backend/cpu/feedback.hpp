// sessa/backend/cpu/feedback.hpp: the feedback solve of the CPU backend, blocked, without a T x T matrix.
//
// Why this file exists: the feedback branch s_t = f_t + gamma_t * sum_{j<t} softmax_j(q_b,t . k_b,j / sqrt D) s_j
// is a recurrence (s_t reads the earlier outputs s_j), so the reference kernel walks it row by row: 2 T^2 D
// FLOPs as dot products and axpys at memory speed. But the logits depend only on the projections (every k_b
// of the chunk is in the cache before the call); only the s_j are sequential. This kernel turns almost all of
// the work into GEMM tiles that run in parallel. docs/FEEDBACK.md has the derivation, cost and schedule.
//
// Algorithm (rows of a chunk in blocks of Bk; every row keeps an online-softmax state m, l, acc (D wide)):
//   (0) past: each row's state absorbs the cached past [0, pos0) in a flash pass (gemm_nt, softmax, gemm_nn
//       tiles), in parallel over row tiles; split over the keys (and merged) when the rows are few (decode).
//   for each block J in order:
//   (a1) diagonal logits S_JJ = Q_J K_J^T / sqrt D (gemm_nt); per row i of J the final max over its whole
//        strict past, the rescale alpha_i of its state, the in-block probabilities p_ij (j < i in J), and
//        coef_i = gamma_i / l_i with l_i the full softmax denominator. Rows split over the threads.
//   (a2) the in-block unit lower-triangular solve s_i = f_i + coef_i (alpha_i acc_i + sum_{j<i in J} p_ij s_j),
//        in row order; columns are independent, so the threads split D into 4-batch-wide column slices and
//        each runs all of J's rows for its slice (4 rows x 4 batches register tile). s_i goes to the cache
//        and to out.
//   (b)  push block J into every later row: S = Q_I K_J^T (gemm_nt), online-softmax update, acc_I += P S_J
//        (gemm_nn), rows [end of J, n) split evenly over the threads. With many rows the block's k_b and s are
//        packed into the GEMM's panels once, k_b in (a1) and s slice by slice in (a2), for all the row tiles of (b).
// Row t = 0 (absolute position 0) has no past: l = 0, coef = 0, s_0 = f_0.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>

#include <xsimd/xsimd.hpp>

#include "../../concepts.hpp"
#include "../../core/hparams.hpp"
#include "../../core/tensor.hpp"
#include "../../model/cache.hpp"
#include "attention.hpp"
#include "gemm.hpp"
#include "parallel.hpp"
#include "widen.hpp"

namespace sessa::backend::simd::inline SESSA_CPU_ABI {  // see config.hpp

namespace feedback_detail {

/// Pointers of one column slice of a block's solve; row i (block-relative) of each is at base + i * ld.
template <class T>
struct solve_slice {
  const T* p;      // (Bk, ldp)  in-block probabilities p_ij, j < i (block-relative columns)
  index_t ldp;
  const T* alpha;  // (Bk)       rescale of each row's state
  const T* coef;   // (Bk)       gamma_i / l_i (0 for a row without past)
  const T* acc;    // (Bk, lda)  states' weighted sums, at the slice's first column
  index_t lda;
  const T* f;      // (Bk, ldf)  forward branch, at the slice's first column
  index_t ldf;
  T* s;            // (Bk, lds)  the block's s as later rows read it (rounded to the cache type), at the slice's
                   //            first column: the cache rows themselves when the cache holds T
  index_t lds;
  T* out;          // (Bk, ldo)  output rows, at the slice's first column
  index_t ldo;
};

/// x rounded to the cache type C and widened back: what a later row reads of a value the cache stores (exact
/// sessa::narrow / sessa::widen, lane by lane; the identity when C is T).
template <class C, class T>
inline xsimd::batch<T> as_stored(xsimd::batch<T> x) noexcept {
  if constexpr (std::is_same_v<T, C>) {
    return x;
  } else {
    constexpr std::size_t W = xsimd::batch<T>::size;
    alignas(64) T lanes[W];
    x.store_aligned(lanes);
    for (std::size_t i = 0; i < W; ++i) lanes[i] = widen<T>(narrow<C>(lanes[i]));
    return xsimd::batch<T>::load_aligned(lanes);
  }
}

/// Rows [i0, i0 + RB) of the in-block solve for NB batches of columns: all earlier rows of the block are
/// final in x.s; the RB rows are solved in registers, each reading the ones before it as the cache stores them
/// (C): out gets s_i, x.s and the later rows its value rounded to C.
template <class T, class C, int NB, int RB>
inline void solve_rows(const solve_slice<T>& x, index_t i0) {
  using B = xsimd::batch<T>;
  constexpr index_t W = static_cast<index_t>(B::size);
  B r[RB][NB];
SESSA_UNROLL(8)
  for (int k = 0; k < RB; ++k) {
    const B a(x.alpha[i0 + k]);
SESSA_UNROLL(4)
    for (int v = 0; v < NB; ++v) r[k][v] = a * B::load_unaligned(x.acc + (i0 + k) * x.lda + v * W);
  }
  const T* p = x.p + i0 * x.ldp;
  for (index_t j = 0; j < i0; ++j) {
    B sj[NB];
SESSA_UNROLL(4)
    for (int v = 0; v < NB; ++v) sj[v] = B::load_unaligned(x.s + j * x.lds + v * W);
SESSA_UNROLL(8)
    for (int k = 0; k < RB; ++k) {
      const B pk(p[k * x.ldp + j]);
SESSA_UNROLL(4)
      for (int v = 0; v < NB; ++v) r[k][v] = xsimd::fma(pk, sj[v], r[k][v]);
    }
  }
SESSA_UNROLL(8)
  for (int k = 0; k < RB; ++k) {
    for (int kk = 0; kk < k; ++kk) {  // r[kk] already holds s_{i0 + kk}
      const B pk(p[k * x.ldp + i0 + kk]);
SESSA_UNROLL(4)
      for (int v = 0; v < NB; ++v) r[k][v] = xsimd::fma(pk, r[kk][v], r[k][v]);
    }
    const B ck(x.coef[i0 + k]);
    const index_t i = i0 + k;
SESSA_UNROLL(4)
    for (int v = 0; v < NB; ++v) {
      r[k][v] = xsimd::fma(ck, r[k][v], B::load_unaligned(x.f + i * x.ldf + v * W));
      r[k][v].store_unaligned(x.out + i * x.ldo + v * W);
      r[k][v] = as_stored<C>(r[k][v]);
      r[k][v].store_unaligned(x.s + i * x.lds + v * W);
    }
  }
}

/// The whole block (nrows rows, in order) for NB batches of columns.
template <class T, class C, int NB>
inline void solve_block(const solve_slice<T>& x, index_t nrows) {
  index_t i0 = 0;
  for (; i0 + 4 <= nrows; i0 += 4) solve_rows<T, C, NB, 4>(x, i0);
  switch (nrows - i0) {
    case 3: solve_rows<T, C, NB, 3>(x, i0); break;
    case 2: solve_rows<T, C, NB, 2>(x, i0); break;
    case 1: solve_rows<T, C, NB, 1>(x, i0); break;
    default: break;
  }
}

/// The block for `cols` columns (fewer than one batch), scalar.
template <class T, class C>
inline void solve_block_scalar(const solve_slice<T>& x, index_t nrows, index_t cols) {
  for (index_t i = 0; i < nrows; ++i)
    for (index_t c = 0; c < cols; ++c) {
      T a = x.alpha[i] * x.acc[i * x.lda + c];
      for (index_t j = 0; j < i; ++j) a += x.p[i * x.ldp + j] * x.s[j * x.lds + c];
      const T v = x.f[i * x.ldf + c] + x.coef[i] * a;
      x.s[i * x.lds + c] = widen<T>(narrow<C>(v));
      x.out[i * x.ldo + c] = v;
    }
}

/// The block for `cols` columns starting at the slice: 4-batch slices are the unit of work; a narrower
/// tail takes the widest kernel that fits, then scalar columns.
template <class T, class C>
inline void solve_columns(solve_slice<T> x, index_t nrows, index_t cols) {
  constexpr index_t W = static_cast<index_t>(xsimd::batch<T>::size);
  const index_t nb = cols / W;
  switch (nb) {
    case 0: break;
    case 1: solve_block<T, C, 1>(x, nrows); break;
    case 2: solve_block<T, C, 2>(x, nrows); break;
    case 3: solve_block<T, C, 3>(x, nrows); break;
    default: solve_block<T, C, 4>(x, nrows); break;
  }
  const index_t done = std::min<index_t>(nb, 4) * W;
  if (cols > done) {
    x.acc += done;
    x.f += done;
    x.s += done;
    x.out += done;
    solve_block_scalar<T, C>(x, nrows, cols - done);
  }
}

/// x[j] <- c[j] exp(x[j] - m[j]) for j in [0, n): probabilities of keys against per-column row statistics.
template <class T>
inline void weights_from_stats(T* x, index_t n, const T* m, const T* c) {
  using B = xsimd::batch<T>;
  constexpr index_t W = static_cast<index_t>(B::size);
  index_t j = 0;
  for (; j + W <= n; j += W)
    (B::load_unaligned(c + j) * xsimd::exp(B::load_unaligned(x + j) - B::load_unaligned(m + j))).store_unaligned(x + j);
  for (; j < n; ++j) x[j] = c[j] * std::exp(x[j] - m[j]);
}

/// The in-block backward solve for `cols` columns: rows j of the block from the last back,
/// o_j += sum_{i > j} w_ij o_i, where w (nrows, ldw) holds w_ij in row i, column j (< i).
template <class T>
inline void solve_block_transposed(const T* w, index_t ldw, T* o, index_t ldo, index_t nrows, index_t cols) {
  using B = xsimd::batch<T>;
  constexpr index_t W = static_cast<index_t>(B::size);
  for (index_t j = nrows - 2; j >= 0; --j) {
    T* oj = o + j * ldo;
    index_t c = 0;
    for (; c + 2 * W <= cols; c += 2 * W) {
      B a0 = B::load_unaligned(oj + c), a1 = B::load_unaligned(oj + c + W);
      for (index_t i = j + 1; i < nrows; ++i) {
        const B wi(w[i * ldw + j]);
        a0 = xsimd::fma(wi, B::load_unaligned(o + i * ldo + c), a0);
        a1 = xsimd::fma(wi, B::load_unaligned(o + i * ldo + c + W), a1);
      }
      a0.store_unaligned(oj + c);
      a1.store_unaligned(oj + c + W);
    }
    for (; c + W <= cols; c += W) {
      B a = B::load_unaligned(oj + c);
      for (index_t i = j + 1; i < nrows; ++i) a = xsimd::fma(B(w[i * ldw + j]), B::load_unaligned(o + i * ldo + c), a);
      a.store_unaligned(oj + c);
    }
    for (; c < cols; ++c) {
      T a = oj[c];
      for (index_t i = j + 1; i < nrows; ++i) a += w[i * ldw + j] * o[i * ldo + c];
      oj[c] = a;
    }
  }
}

}  // namespace feedback_detail

/// Feedback solve, kernels<reference>::feedback's contract: qb (batch*n, D), gamma (batch*n), f (batch*n, D)
/// -> out (batch*n, D) and cache.s rows [pos0, pos0 + n); the strict past [0, t) is read from the cache
/// (k_b of the chunk included). A cache of bfloat16 / float16 (C) is widened tile by tile as it is read; each
/// block's k_b rows are widened once, and its s rows kept as the cache rounds them, so every row reads s_j
/// exactly as a later decode step reads it from the cache.
/// Scratch: slots 1 (row states), 2 (diagonal blocks; with a narrow cache also the block's widened k_b and s;
/// with many rows a copy of qb) and 3 (split-K partial states) of `scratch`. Up to max_threads threads.
template <scalar T, class C>
void feedback(const layer_config& c, cmatrix<T> qb, const T* gamma, cmatrix<T> f, cache_view<C> cache, index_t pos0,
              index_t n, matrix<T> out, scratch_arena<memory::host>& scratch, int max_threads = num_threads()) {
  using namespace flash_detail;
  using feedback_detail::solve_slice;
  constexpr index_t W = static_cast<index_t>(xsimd::batch<T>::size);
  const index_t D = c.d_model, batch = cache.batch(), rows = batch * n;
  if (n <= 0 || batch <= 0) return;
  const flash_tuning tp = flash_params;
  const T scale = T(1) / std::sqrt(static_cast<T>(D));
  const index_t Bk = std::max<index_t>(1, tp.fb_block), Mt = std::max<index_t>(1, tp.fb_rows);
  const index_t nblocks = (n + Bk - 1) / Bk;
  const int nt = threads_for(4.0 * static_cast<double>(D * batch * n) * (static_cast<double>(pos0) + 0.5 * static_cast<double>(n)), max_threads);
  const cache_view<const C> cc = cache;
  constexpr bool narrow_cache = !std::is_same_v<T, C>;

  const softmax_state<T> state = state_in(scratch.get<T>(1, rows * (D + 2)), rows, D);  // row b * n + i
  // Per batch row: p (Bk, Bk) | alpha (Bk) | coef (Bk), and with a narrow cache k_b (Bn, D) | s (Bn, D) of the block
  // (Bn = min(Bk, n) rows: a decode step keeps one).
  const index_t Bn = std::min(Bk, n);
  const index_t bstride = Bk * (Bk + 2) + (narrow_cache ? 2 * Bn * D : 0);
  // With many rows and D at least half a K slice, slot 2 also holds the chunk's q_b rows in the packed GEMM's layout
  // (gemm_detail::packed_lda: a row stride of at most 2 D + 16, as the layer's memory plan assumes), copied once:
  // the products of (0), (a1) and (b) read them in place instead of packing the same rows for every key tile and
  // every block.
  const index_t qld = n > gemm_detail::small_m_rows && 2 * D >= gemm_detail::blocking<T>::KC
                          ? gemm_detail::packed_lda<T>(D)
                          : 0;
  // With the copy (many rows), each block's k_b and s rows are also packed once into the GEMM's layout (k_b as the b
  // of q_b k_b^T, s as the b of p s) for every row tile of the push (b), instead of once per row tile: per batch row,
  // pstride values after the copy.
  namespace gd = gemm_detail;
  const bool pack_block = tp.pack_once && qld > 0;
  const index_t kpstride = gd::packed_b_values<T>(D, gd::round_up(Bk, gd::blocking<T>::NR));
  const index_t pstride = pack_block ? kpstride + gd::packed_b_values<T>(Bk, D) : 0;
  const index_t pack_at = gd::round_up(batch * bstride + rows * qld, static_cast<index_t>(64 / sizeof(T)));  // a cache line
  T* const blocks = scratch.get<T>(2, pack_at + batch * pstride);
  T* const qcopy = qld > 0 ? blocks + batch * bstride : nullptr;
  T* const bpacks = pack_block ? blocks + pack_at : nullptr;
  const cmatrix<T> qv = qcopy ? cmatrix<T>(qcopy, rows, D, qld) : qb;
  // Block J's k_b rows (from pos0 + J0) and s rows as the chunk's rows read them, in T.
  auto block_kb = [&](index_t b, index_t J0, index_t nJ) -> cmatrix<T> {
    if constexpr (narrow_cache) return cmatrix<T>(blocks + b * bstride + Bk * (Bk + 2), nJ, D);
    else return cc.kb(b).row_block(pos0 + J0, nJ);
  };
  auto block_s = [&](index_t b, index_t J0, index_t nJ) -> matrix<T> {
    if constexpr (narrow_cache) return matrix<T>(blocks + b * bstride + Bk * (Bk + 2) + Bn * D, nJ, D);
    else return cache.s(b).row_block(pos0 + J0, nJ);
  };

  // The pass over the past: row tiles of Mt rows, split over the keys when they are few.
  const index_t ptiles = (n + Mt - 1) / Mt, pitems = batch * ptiles, prows = std::min(n, Mt);
  const index_t Bp = pass_tile<T>(prows, D, tp);  // keys per tile of the past pass
  const index_t ks = pos0 > 0 ? key_splits(pitems, nt, pos0, tp.min_split_keys) : 1;
  const index_t slot = prows * (D + 2);
  T* const partials = ks > 1 ? scratch.get<T>(3, pitems * ks * slot) : nullptr;

  constexpr index_t CW = 4 * W;  // columns per slice of the in-block solve
  static_assert(CW % gemm_detail::blocking<T>::NR == 0, "feedback: a solve slice must be whole GEMM panels");
  const index_t col_items = (D + CW - 1) / CW;

  run_team(nt, [&](const team& tm) {
    thread_buffers<T>& tb = thread_scratch<T>();
    tm.guard([&] {
      tb.s.reserve(score_buffer<T>(prows, std::max(Bp, Bk)));
      if constexpr (narrow_cache) {
        tb.kw.reserve(Bp * D);
        tb.vw.reserve(Bp * D);
      }
    });
    const index_t P = tm.size();
    if (qcopy)
      tm.for_static(rows, [&](index_t r) {
        std::memcpy(qcopy + r * qld, qb.row(r), sizeof(T) * static_cast<std::size_t>(D));
      });

    // (0) every row's state over the cached past [0, pos0).
    if (pos0 == 0) {
      tm.for_static(rows, [&](index_t r) { state.rows(r, 1).clear(); });
    } else {
      tm.for_dynamic(pitems * ks, [&](index_t u) {
        const index_t part = u % ks, item = u / ks, b = item / ptiles, r0 = (item % ptiles) * Mt;
        const index_t nr = std::min(Mt, n - r0);
        const softmax_state<T> st = ks > 1 ? state_in(partials + u * slot, nr, D) : state.rows(b * n + r0, nr);
        st.clear();
        const auto [ka, kb] = part_range(0, pos0, part, ks);
        flash_pass<T, C>(qv.row_block(b * n + r0, nr), cc.kb(b), cc.s(b), ka, kb, Bp, scale, key_mask{}, tb.s.data(), st,
                         tb.kw.data(), tb.vw.data());
      });
      if (ks > 1)
        tm.for_static(pitems, [&](index_t item) {
          const index_t b = item / ptiles, r0 = (item % ptiles) * Mt, nr = std::min(Mt, n - r0);
          softmax_state<T> parts[64];
          for (index_t p = 0; p < ks; ++p) parts[p] = state_in(partials + (item * ks + p) * slot, nr, D);
          merge_states(parts, ks, state.rows(b * n + r0, nr));
        });
    }

    for (index_t J = 0; J < nblocks; ++J) {
      const index_t J0 = J * Bk, nJ = std::min(Bk, n - J0), J1 = J0 + nJ;

      // (a0) a narrow cache: the block's k_b rows widened once for (a1) and (b).
      if constexpr (narrow_cache) {
        tm.for_static(batch * nJ, [&](index_t u) {
          const index_t b = u / nJ, i = u % nJ;
          widen_n<T>(cc.kb(b).row(pos0 + J0 + i), D, blocks + b * bstride + Bk * (Bk + 2) + i * D);
        });
      }

      // (a1) diagonal logits, the rows' final max, in-block probabilities, alpha and coef.
      const index_t parts1 = std::min(nJ, P);
      tm.for_static(batch * parts1, [&](index_t u) {
        const index_t b = u / parts1;
        const auto [ra, rb] = part_range(0, nJ, u % parts1, parts1);
        T* const p = blocks + b * bstride;
        T* const alpha = p + Bk * Bk;
        T* const coef = alpha + Bk;
        const index_t nk = nJ - 1;  // keys J0 .. J1 - 2 are the in-block past of some row
        if (nk > 0 && rb > ra)
          gemm_nt(qv.row_block(b * n + J0 + ra, rb - ra), block_kb(b, J0, nJ).row_block(0, nk),
                  matrix<T>(p + ra * Bk, rb - ra, nk, Bk), scale, T(0));
        if (pack_block && J1 < n) {  // this unit's share of the block's packed k_b panels, for (b)
          const auto [pa, pb] = part_range(0, gd::panels<T>(nJ), u % parts1, parts1);
          gd::pack_whole_b<T, gd::b_layout::nk>(block_kb(b, J0, nJ), bpacks + b * pstride, pa, pb);
        }
        for (index_t i = ra; i < rb; ++i) {
          const index_t r = b * n + J0 + i;
          T* pr = p + i * Bk;
          const T mo = state.m[r];
          const T mn = i > 0 ? std::max(mo, row_max(pr, i)) : mo;
          if (mn == neg_inf<T>) {  // no key at all: absolute position 0
            alpha[i] = T(0);
            coef[i] = T(0);
            continue;
          }
          const T a = mo == neg_inf<T> ? T(0) : std::exp(mo - mn);
          const T l = a * state.l[r] + (i > 0 ? exp_shifted(pr, i, mn) : T(0));
          alpha[i] = a;
          coef[i] = gamma[r] / l;
        }
      });

      // (a2) the in-block solve, column slices in parallel; writes s to the cache and to out.
      tm.for_static(batch * col_items, [&](index_t u) {
        const index_t b = u / col_items, c0 = (u % col_items) * CW, r = b * n + J0, cols = std::min(CW, D - c0);
        const T* p = blocks + b * bstride;
        const matrix<T> sJ = block_s(b, J0, nJ);
        const solve_slice<T> x{p,
                               Bk,
                               p + Bk * Bk,
                               p + Bk * Bk + Bk,
                               state.acc.row(r) + c0,
                               state.acc.ld,
                               f.row(r) + c0,
                               f.ld,
                               sJ.row(0) + c0,
                               sJ.ld,
                               out.row(r) + c0,
                               out.ld};
        feedback_detail::solve_columns<T, C>(x, nJ, cols);
        if (pack_block && J1 < n)  // the slice's columns of s, packed for (b): CW is a whole number of panels
          gd::pack_whole_b<T, gd::b_layout::kn>(cmatrix<T>(sJ), bpacks + b * pstride + kpstride, c0 / gd::blocking<T>::NR,
                                                gd::panels<T>(c0 + cols));
        if constexpr (narrow_cache) {  // the values are C's already: narrow is exact here
          for (index_t i = 0; i < nJ; ++i) {
            C* dst = cache.s(b).row(pos0 + J0 + i) + c0;
            const T* src = sJ.row(i) + c0;
            for (index_t k = 0; k < cols; ++k) dst[k] = sessa::narrow<C>(src[k]);
          }
        }
      });

      // (b) block J into every later row of the chunk.
      if (J1 < n) {
        const index_t left = n - J1, parts = P * ((left + P * Mt - 1) / (P * Mt));
        tm.for_static(batch * parts, [&](index_t u) {
          const index_t b = u / parts;
          const auto [ra, rb] = part_range(J1, n, u % parts, parts);
          const packed_tile<T> pt = pack_block ? packed_tile<T>{bpacks + b * pstride, bpacks + b * pstride + kpstride}
                                               : packed_tile<T>{};
          if (rb > ra)
            absorb_tile<T>(qv.row_block(b * n + ra, rb - ra), block_kb(b, J0, nJ), cmatrix<T>(block_s(b, J0, nJ)),
                           pos0 + J0, scale, key_mask{}, tb.s.data(), state.rows(b * n + ra, rb - ra), nullptr, nullptr,
                           {}, {}, 0, 0, pt);
        });
      }
    }
  });
}

/// Values of T that attention() and feedback() take from the scratch arena for a pass of n tokens per sequence
/// (batch sequences, a cache of `capacity` tokens stored as C) beyond the per-row figures the model plans for
/// (model/layer.hpp: kernel_row_values), at the tiles of `tp`: the attention's key and value tiles packed once for a
/// kv head (slot 3; at most every tile of the cache), and per sequence the feedback's diagonal block (p, alpha, coef),
/// with a narrow cache its widened k_b and s rows, and with many rows its k_b and s packed once (slot 2). The
/// memory plan's "kernel packed tiles" (model/layer.hpp), so a plan stays an upper bound whatever flash_params holds.
template <scalar T, class C>
index_t packed_tile_values(const layer_config& c, index_t batch, index_t n, index_t capacity,
                           const flash_tuning& tp = flash_params) noexcept {
  namespace gd = gemm_detail;
  constexpr index_t NR = gd::blocking<T>::NR;
  const index_t D = c.d_model, d = c.head_dim(), g = c.group_size();
  index_t values = 0;
  const index_t rows_max = std::min(n, std::max<index_t>(1, tp.query_rows / g)) * g;
  if (tp.pack_once && rows_max > gd::small_m_rows) {
    const index_t Bk = flash_detail::pass_tile<T>(rows_max, d, tp);
    values += (capacity + Bk - 1) / Bk * (gd::packed_b_values<T>(d, gd::round_up(Bk, NR)) + gd::packed_b_values<T>(Bk, d));
  }
  const index_t Bk = std::max<index_t>(1, tp.fb_block);
  index_t per_sequence = Bk * (Bk + 2) + (std::is_same_v<T, C> ? 0 : 2 * std::min(Bk, n) * D);
  if (tp.pack_once && n > gd::small_m_rows && 2 * D >= gd::blocking<T>::KC)
    per_sequence += gd::packed_b_values<T>(D, gd::round_up(Bk, NR)) + gd::packed_b_values<T>(Bk, D);
  return values + batch * per_sequence + static_cast<index_t>(64 / sizeof(T));  // + the cache-line rounding
}

/// Transposed feedback solve, kernels<reference>::feedback_transposed's contract: out = (I - Gamma A)^{-T} g over
/// the chunk's rows, backward in time, without a T x T matrix. The probabilities of row t are
/// alpha_{t,j} = exp(S_tj - m_t) / l_t with S = qb kb^T / sqrt D; the transposed solve needs them by column, so
/// it first forms every row's statistics (m_t, c_t = gamma_t / l_t; 0 for a row without past), then:
///   (1) statistics: row tiles of Mt rows against key tiles of their strict past (gemm_nt, online max and sum),
///       in parallel over row tiles;
///   for each block J of Bk rows, from the last back (every later row of the chunk is final and has been pushed):
///   (2) in-block weights w_ij = c_i exp(S_ij - m_i), j < i in J (gemm_nt, rows split over the threads);
///   (3) the in-block backward solve o_j += sum_{i > j in J} w_ij o_i, column slices in parallel;
///   (4) block J pushed into every earlier row j of the chunk: S^T = K_j Q_J^T (gemm_nt), the weights by
///       column statistics, o_j += W^T o_J (gemm_nn), earlier rows split evenly over the threads.
/// A cache of bfloat16 / float16 (C) is widened as its k_b rows are read.
/// Scratch: slots 1 (statistics) and 2 (diagonal blocks) of `scratch`. Up to max_threads threads.
template <scalar T, class C>
void feedback_transposed(const layer_config& c, cmatrix<T> qb, const T* gamma, cmatrix<T> g, cache_view<const C> cache,
                         index_t pos0, index_t n, matrix<T> out, scratch_arena<memory::host>& scratch,
                         int max_threads = num_threads()) {
  using namespace flash_detail;
  constexpr index_t W = static_cast<index_t>(xsimd::batch<T>::size);
  const index_t D = c.d_model, batch = cache.batch(), rows = batch * n;
  if (n <= 0 || batch <= 0) return;
  const flash_tuning tp = flash_params;
  const T scale = T(1) / std::sqrt(static_cast<T>(D));
  const index_t Bk = std::max<index_t>(1, tp.fb_block), Mt = std::max<index_t>(1, tp.fb_rows);
  const index_t Bp = std::max<index_t>(1, tp.key_tile), nblocks = (n + Bk - 1) / Bk;
  const int nt = threads_for(6.0 * static_cast<double>(D * batch * n) * (static_cast<double>(pos0) + 0.5 * static_cast<double>(n)), max_threads);
  T* const mrow = scratch.get<T>(1, 2 * rows);  // m (rows) | c (rows), row b * n + i
  T* const crow = mrow + rows;
  T* const blocks = scratch.get<T>(2, batch * Bk * Bk);
  const index_t ptiles = (n + Mt - 1) / Mt;
  constexpr index_t CW = 4 * W;
  const index_t col_items = (D + CW - 1) / CW;
  const bool alias = out.data == g.data && out.ld == g.ld;

  run_team(nt, [&](const team& tm) {
    thread_buffers<T>& tb = thread_scratch<T>();
    tm.guard([&] {
      tb.s.reserve(std::max(Mt * Bp, Mt * Bk));
      if constexpr (!std::is_same_v<T, C>) tb.kw.reserve(std::max({Mt, Bp, Bk}) * D);
    });
    const index_t P = tm.size();
    if (!alias) tm.for_static(rows, [&](index_t r) { std::copy_n(g.row(r), D, out.row(r)); });

    // (1) every row's statistics over its strict past [0, t).
    tm.for_dynamic(batch * ptiles, [&](index_t u) {
      const index_t b = u / ptiles, i0 = (u % ptiles) * Mt, nr = std::min(Mt, n - i0), r0 = b * n + i0;
      std::fill_n(mrow + r0, nr, neg_inf<T>);
      std::fill_n(crow + r0, nr, T(0));  // l while the pass runs
      const index_t kend = pos0 + i0 + nr - 1;  // the last row's strict past
      for (index_t j0 = 0; j0 < kend; j0 += Bp) {
        const index_t nk = std::min(Bp, kend - j0);
        const index_t first = std::max(i0, j0 - pos0 + 1);  // the first row with t > j0
        if (first >= i0 + nr) continue;
        const index_t m = i0 + nr - first;
        const matrix<T> sc(tb.s.data(), m, nk);
        gemm_nt(qb.row_block(b * n + first, m), rows_as<T>(cache.kb(b), j0, nk, tb.kw.data()), sc, scale, T(0));
        for (index_t k = 0; k < m; ++k) {
          const index_t r = b * n + first + k, e = std::min(nk, pos0 + first + k - j0);
          T* sr = sc.row(k);
          const T mx = row_max(sr, e);
          if (mx > mrow[r]) {
            if (mrow[r] != neg_inf<T>) crow[r] *= std::exp(mrow[r] - mx);
            mrow[r] = mx;
          }
          crow[r] += exp_shifted(sr, e, mrow[r]);
        }
      }
      for (index_t r = r0; r < r0 + nr; ++r) {
        crow[r] = crow[r] > T(0) ? gamma[r] / crow[r] : T(0);
        if (mrow[r] == neg_inf<T>) mrow[r] = T(0);  // no past: weight 0
      }
    });

    for (index_t J = nblocks - 1; J >= 0; --J) {
      const index_t J0 = J * Bk, nJ = std::min(Bk, n - J0);

      // (2) in-block weights.
      const index_t parts1 = std::min(nJ, P);
      tm.for_static(batch * parts1, [&](index_t u) {
        const index_t b = u / parts1;
        auto [ra, rb] = part_range(0, nJ, u % parts1, parts1);
        ra = std::max<index_t>(ra, 1);  // row 0 of the block has no in-block past
        if (rb <= ra) return;
        T* const w = blocks + b * Bk * Bk;
        gemm_nt(qb.row_block(b * n + J0 + ra, rb - ra), rows_as<T>(cache.kb(b), pos0 + J0, nJ - 1, tb.kw.data()),
                matrix<T>(w + ra * Bk, rb - ra, nJ - 1, Bk), scale, T(0));
        for (index_t i = ra; i < rb; ++i) {
          const index_t r = b * n + J0 + i;
          T* wr = w + i * Bk;
          exp_shifted(wr, i, mrow[r]);
          scale_row(wr, i, crow[r]);
        }
      });

      // (3) the in-block backward solve.
      tm.for_static(batch * col_items, [&](index_t u) {
        const index_t b = u / col_items, c0 = (u % col_items) * CW;
        feedback_detail::solve_block_transposed(blocks + b * Bk * Bk, Bk, out.row(b * n + J0) + c0, out.ld, nJ,
                                                std::min(CW, D - c0));
      });

      // (4) block J into every earlier row of the chunk.
      if (J0 > 0) {
        const index_t parts = P * ((J0 + P * Mt - 1) / (P * Mt));
        tm.for_static(batch * parts, [&](index_t u) {
          const index_t b = u / parts;
          const auto [ja, jb] = part_range(0, J0, u % parts, parts);
          if (jb <= ja) return;
          const matrix<T> sc(tb.s.data(), jb - ja, nJ);
          gemm_nt(rows_as<T>(cache.kb(b), pos0 + ja, jb - ja, tb.kw.data()), qb.row_block(b * n + J0, nJ), sc, scale,
                  T(0));
          for (index_t k = 0; k < jb - ja; ++k)
            feedback_detail::weights_from_stats(sc.row(k), nJ, mrow + b * n + J0, crow + b * n + J0);
          gemm_nn(cmatrix<T>(sc), cmatrix<T>(out.row_block(b * n + J0, nJ)), out.row_block(b * n + ja, jb - ja), T(1),
                  T(1));
        });
      }
    }
  });
}

}  // namespace sessa::backend::simd::inline SESSA_CPU_ABI
