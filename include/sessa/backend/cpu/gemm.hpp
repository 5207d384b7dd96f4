// sessa/backend/cpu/gemm.hpp: dense matrix products for the CPU backend (xsimd).
//
// Why this file exists: a Sessa layer is GEMM-bound in prefill (18 D^2 FLOPs per token of projections plus
// the attention tiles) and bandwidth-bound in decode (every weight read once per step), so the CPU backend
// needs one place that does dense products at close to the machine's rate, without an external BLAS.
//
// Three entry points, all on row-major views (ld >= cols, unaligned data allowed):
//   gemm_nt(a (M,K), b (N,K), c (M,N), alpha, beta)   c = alpha a b^T + beta c      one thread
//   gemm_nn(a (M,K), b (K,N), c (M,N), alpha, beta)   c = alpha a b   + beta c      one thread
//   linear(x (M,K), w (N,K), bias, y (M,N), accumulate) y (+)= x w^T + bias          all threads
// beta == 0 ignores c's old contents (they may be NaN). The single-threaded forms are the tiles of flash
// attention and of the feedback solve (called from inside parallel regions); linear() is the projections.
//
// Design (GotoBLAS/BLIS):
//   * micro-kernel: an MR x NR register tile of C, NR = NV batches (NV = 2), MR = 14 with 32 vector registers
//     (AVX-512: 14x32 floats, 14x16 doubles), 6 otherwise (AVX2: 6x16 floats). Per k: NV aligned loads of
//     the packed B panel, MR broadcasts from the packed A block, MR*NV FMAs. alpha, beta and bias are fused
//     into the store; edge rows use a kernel compiled for that row count, edge columns store through a tile.
//   * blocking: for each NC (2048) block of columns, for each KC (512) slice of K: B (KC x NC) is packed
//     into k-major NR-wide panels (one panel, KC x NR = 64 KiB, is re-read from L1/L2 while the kernel walks
//     down an A block); for each MC (168) block of rows, A (MC x KC) is copied row-major with a stride padded
//     by one cache line (L2-resident). Row blocks and row tiles are near-equal (16 rows = 8 + 8, not 14 + 2).
//   * small M with a long K (decode: M <= 16, see use_dot): no packing; each R = 4 rows of w (8 when x has
//     one row) are streamed once (on the hardware prefetchers; q8_0: the next ones prefetched), for all rows of
//     x, as 4 x 4 (1 x 8) blocks of dot products along K, reduced across lanes with one shuffle tree per W
//     results. One row of x against short rows (K <= 8 W: a decode step's attention scores) runs as one loop
//     over blocks of W rows (dot_row_run), one full shuffle tree per block; rows up to 4 KiB long (K = 512
//     float: a decode step's k_b scores) are read one after the other, in memory order (dot_row_seq). From 8-16 rows of x (a batch's step;
//     float on AVX-512, use_panel) the panel path instead: x transposed once into a (K, 16) panel, each weight
//     broadcast into an FMA with its line (panel_dot).
//   * linear() splits the M x N tile space over OpenMP threads (each thread packs its own panels into
//     thread-local, 64-byte aligned buffers that grow once and are reused; the split minimizes padded work
//     plus packing); the dot path splits N. Inside an enclosing parallel region it runs on the calling thread.
// The kernels are written on xsimd::batch<T>, so AVX-512, AVX2 and SSE builds all work; only the
// transposing pack and the lane reduction have AVX-512/AVX intrinsic fast paths (scalar otherwise).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include <xsimd/xsimd.hpp>

#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

#include "../../concepts.hpp"
#include "../../core/tensor.hpp"
#include "parallel.hpp"
#include "widen.hpp"

namespace sessa::backend::simd::inline SESSA_CPU_ABI {  // see config.hpp

#define SESSA_STR2_(x) #x
#define SESSA_STR_(x) SESSA_STR2_(x)
/// The name of the inline namespace this translation unit's cpu kernels live in ("cpu_avx2_fma_omp", ...), from an
/// out-of-line function: a program whose units were built with different flags reports each unit's own.
[[gnu::noinline]] inline const char* cpu_abi() noexcept { return SESSA_STR_(SESSA_CPU_ABI); }
#undef SESSA_STR_
#undef SESSA_STR2_

/// Sum of the lanes of a batch, as a tree (log2 W dependent adds; a lane-by-lane chain is W of them, and the
/// softmax of every flash tile row ends in one of these). xsimd::hadd trips GCC 12's -Wmaybe-uninitialized on
/// AVX-512 doubles, hence the intrinsics.
template <class B>
inline typename B::value_type hsum(const B& v) {
  using T = typename B::value_type;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> && B::size == 16) return _mm512_reduce_add_ps(v);
  if constexpr (std::is_same_v<T, double> && B::size == 8) return _mm512_reduce_add_pd(v);
#endif
#if defined(__AVX__)
  if constexpr (std::is_same_v<T, float> && B::size == 8) {
    const __m256 x = v;
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    return _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)));
  }
  if constexpr (std::is_same_v<T, double> && B::size == 4) {
    const __m256d x = v;
    const __m128d r = _mm_add_pd(_mm256_castpd256_pd128(x), _mm256_extractf128_pd(x, 1));
    return _mm_cvtsd_f64(_mm_add_sd(r, _mm_unpackhi_pd(r, r)));
  }
#endif
  alignas(64) T lanes[B::size];
  v.store_aligned(lanes);
  T s = 0;
  for (std::size_t i = 0; i < B::size; ++i) s += lanes[i];
  return s;
}

/// Largest lane of a batch, as a tree like hsum.
template <class B>
inline typename B::value_type hmax(const B& v) {
  using T = typename B::value_type;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> && B::size == 16) return _mm512_reduce_max_ps(v);
  if constexpr (std::is_same_v<T, double> && B::size == 8) return _mm512_reduce_max_pd(v);
#endif
#if defined(__AVX__)
  if constexpr (std::is_same_v<T, float> && B::size == 8) {
    const __m256 x = v;
    __m128 r = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    r = _mm_max_ps(r, _mm_movehl_ps(r, r));
    return _mm_cvtss_f32(_mm_max_ss(r, _mm_movehdup_ps(r)));
  }
  if constexpr (std::is_same_v<T, double> && B::size == 4) {
    const __m256d x = v;
    const __m128d r = _mm_max_pd(_mm256_castpd256_pd128(x), _mm256_extractf128_pd(x, 1));
    return _mm_cvtsd_f64(_mm_max_sd(r, _mm_unpackhi_pd(r, r)));
  }
#endif
  alignas(64) T lanes[B::size];
  v.store_aligned(lanes);
  T m = lanes[0];
  for (std::size_t i = 1; i < B::size; ++i) m = std::max(m, lanes[i]);
  return m;
}

namespace gemm_detail {

// ------------------------------------------------------------------------------------------- parameters

#if defined(__AVX512F__)
inline constexpr int vector_registers = 32;
#else
inline constexpr int vector_registers = 16;
#endif

/// Register tile and cache blocking for scalar T on the compiled-for target.
template <class T>
struct blocking {
  using batch = xsimd::batch<T>;
  static constexpr index_t W = static_cast<index_t>(batch::size);  // lanes per batch
  static constexpr int NV = 2;                                       // batches per row of the C tile
  static constexpr int MR = vector_registers >= 32 ? 14 : 6;         // rows of the C tile
  static constexpr index_t NR = NV * W;                              // columns of the C tile
  // KC: the K slice of one pass. Longer slices amortize the C tile's load/store; with 32 registers a packed
  // B panel (KC x NR) is 64 KiB and is read from L2 (measured best on Zen 5: KC 512 > 384 > 256), otherwise
  // the panel is kept to 16 KiB for L1.
  static constexpr index_t KC =
      std::clamp<index_t>(static_cast<index_t>((vector_registers >= 32 ? 65536 : 16384) / (NR * sizeof(T))), 64, 512);
  // Row stride of the packed A block: KC plus one cache line, so the MR rows fall into different L1 sets.
  static constexpr index_t LDA = KC + static_cast<index_t>(64 / sizeof(T));
  // model/layer.hpp's memory plan counts on a K slice of at least 256 values (the cpu feedback's packed q_b copy).
  static_assert(KC >= 256, "gemm_detail::blocking: a K slice under 256 values breaks kernel_row_values");
  // MC: the packed A block (MC x LDA) takes about 1/3 MiB of L2.
  static constexpr index_t MC = std::max<index_t>(1, 360 * 1024 / (LDA * static_cast<index_t>(sizeof(T)) * MR)) * MR;
  static constexpr index_t NC = 64 * NR;  // columns per packed B block (KC x NC lives in L2/L3)
  // Dot-product tiles of the small-M path: R rows of w by MB rows of x; R1 rows of w when x has one row.
  static constexpr int R = 4;
  static constexpr int MB = vector_registers >= 32 ? 4 : 2;
  static constexpr int R1 = vector_registers >= 32 ? 8 : 4;
};

/// Row stride of an a operand (M, K) that the packed GEMM reads in place (no copy): the packed A block's stride,
/// when K fits one K slice; 0 when K is longer (a is then packed slice by slice whatever its stride).
template <class T>
inline constexpr index_t packed_lda(index_t K) noexcept {
  return K <= blocking<T>::KC ? blocking<T>::LDA : 0;
}

/// Whether c (M, N) = a (M, K) b (N, K)^T takes the dot-product path (no packing, b streamed once) rather
/// than the packed GEMM: for few rows, when K is long enough to amortize the lane reductions (measured on
/// Zen 5: at K = 64 only M = 1 gains, at K = 512 up to M ~ 12, at K = 2048 all of M <= 16).
inline constexpr index_t small_m_rows = 16;
inline constexpr bool use_dot(index_t M, index_t K) {
  return M <= std::min<index_t>(small_m_rows, std::max<index_t>(1, K / 48));
}

inline constexpr index_t round_up(index_t n, index_t m) { return (n + m - 1) / m * m; }

/// What the store of a C tile does: c = alpha * acc + bias[j] + beta * c (beta == 0: c not read).
template <class T>
struct epilogue {
  T alpha;
  T beta;
  const T* bias;  // (N) or null
};

/// Per-thread pack buffers (64-byte aligned), grown on first use and then reused.
template <class T>
struct pack_space {
  buffer<T> a;  // (MC, LDA)
  buffer<T> b;  // (KC, NC) as NC/NR panels of (KC, NR)
};
template <class T>
inline pack_space<T>& thread_pack_space() {
  thread_local pack_space<T> space;
  return space;
}

// ------------------------------------------------------------------------ arch-specific fast paths

#if defined(__AVX512F__)
// GCC 12 flags the unmasked AVX-512 shuffles (they start from _mm512_undefined_*) under -Wuninitialized;
// the masked forms with a full mask compile to the same instructions without the warning.
inline __m512 unpacklo16(__m512 a, __m512 b) { return _mm512_mask_unpacklo_ps(a, 0xFFFF, a, b); }
inline __m512 unpackhi16(__m512 a, __m512 b) { return _mm512_mask_unpackhi_ps(a, 0xFFFF, a, b); }
template <int I>
inline __m512 shuffle16(__m512 a, __m512 b) { return _mm512_mask_shuffle_ps(a, 0xFFFF, a, b, I); }
template <int I>
inline __m512 shuffle_lanes16(__m512 a, __m512 b) { return _mm512_mask_shuffle_f32x4(a, 0xFFFF, a, b, I); }
inline __m512d unpacklo8(__m512d a, __m512d b) { return _mm512_mask_unpacklo_pd(a, 0xFF, a, b); }
inline __m512d unpackhi8(__m512d a, __m512d b) { return _mm512_mask_unpackhi_pd(a, 0xFF, a, b); }
template <int I>
inline __m512d shuffle8(__m512d a, __m512d b) { return _mm512_mask_shuffle_pd(a, 0xFF, a, b, I); }
template <int I>
inline __m512d shuffle_lanes8(__m512d a, __m512d b) { return _mm512_mask_shuffle_f64x2(a, 0xFF, a, b, I); }

/// In-register transpose of a 16 x 16 float block: r[i] row i in, column i out.
inline void transpose16x16(__m512 (&r)[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = unpacklo16(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = unpackhi16(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i + 0] = shuffle16<0x44>(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = shuffle16<0xEE>(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = shuffle16<0x44>(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = shuffle16<0xEE>(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j) {
      t[8 * i + j] = shuffle_lanes16<0x88>(r[8 * i + j], r[8 * i + 4 + j]);
      t[8 * i + 4 + j] = shuffle_lanes16<0xDD>(r[8 * i + j], r[8 * i + 4 + j]);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = shuffle_lanes16<0x88>(t[j], t[8 + j]);
    r[j + 8] = shuffle_lanes16<0xDD>(t[j], t[8 + j]);
  }
}

/// In-register transpose of an 8 x 8 double block.
inline void transpose8x8(__m512d (&r)[8]) {
  __m512d t[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = unpacklo8(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = unpackhi8(r[2 * i], r[2 * i + 1]);
  }
  __m512d u[8];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) {
      u[4 * i + j] = shuffle_lanes8<0x88>(t[4 * i + j], t[4 * i + 2 + j]);
      u[4 * i + 2 + j] = shuffle_lanes8<0xDD>(t[4 * i + j], t[4 * i + 2 + j]);
    }
  for (int j = 0; j < 4; ++j) {
    r[j] = shuffle_lanes8<0x88>(u[j], u[4 + j]);
    r[j + 4] = shuffle_lanes8<0xDD>(u[j], u[4 + j]);
  }
}
#elif defined(__AVX__)
/// In-register transpose of an 8 x 8 float block (AVX).
inline void transpose8x8(__m256 (&r)[8]) {
  __m256 t[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  __m256 s[8];
  for (int i = 0; i < 2; ++i) {
    s[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    s[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    s[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    s[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2f128_ps(s[j], s[4 + j], 0x20);
    r[j + 4] = _mm256_permute2f128_ps(s[j], s[4 + j], 0x31);
  }
}
/// In-register transpose of a 4 x 4 double block (AVX).
inline void transpose4x4(__m256d (&r)[4]) {
  const __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
  const __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
  r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
  r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
  r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
  r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}
#endif

/// Fast part of the transposing pack: dst (kc, NR) k-major from NR full rows src (NR, kc) with stride ld, widened
/// from storage type S to T. Returns how many leading k it packed (a multiple of the transpose block; 0 without a
/// fast path).
template <class T, class S = T>
inline index_t transpose_pack_fast(const S* src, index_t ld, index_t kc, T* dst) {
  [[maybe_unused]] constexpr index_t NR = blocking<T>::NR;
  index_t k0 = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> && blocking<T>::W == 16) {
    for (; k0 + 16 <= kc; k0 += 16)
      for (index_t g = 0; g < NR; g += 16) {
        __m512 r[16];
        for (int i = 0; i < 16; ++i) r[i] = load_widened<float>(src + (g + i) * ld + k0);
        transpose16x16(r);
        for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + (k0 + i) * NR + g, r[i]);
      }
  } else if constexpr (std::is_same_v<T, double> && std::is_same_v<S, double> && blocking<T>::W == 8) {
    for (; k0 + 8 <= kc; k0 += 8)
      for (index_t g = 0; g < NR; g += 8) {
        __m512d r[8];
        for (int i = 0; i < 8; ++i) r[i] = _mm512_loadu_pd(src + (g + i) * ld + k0);
        transpose8x8(r);
        for (int i = 0; i < 8; ++i) _mm512_storeu_pd(dst + (k0 + i) * NR + g, r[i]);
      }
  }
#elif defined(__AVX__)
  if constexpr (std::is_same_v<T, float> && blocking<T>::W == 8) {
    for (; k0 + 8 <= kc; k0 += 8)
      for (index_t g = 0; g < NR; g += 8) {
        __m256 r[8];
        for (int i = 0; i < 8; ++i) r[i] = load_widened<float>(src + (g + i) * ld + k0);
        transpose8x8(r);
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + (k0 + i) * NR + g, r[i]);
      }
  } else if constexpr (std::is_same_v<T, double> && std::is_same_v<S, double> && blocking<T>::W == 4) {
    for (; k0 + 4 <= kc; k0 += 4)
      for (index_t g = 0; g < NR; g += 4) {
        __m256d r[4];
        for (int i = 0; i < 4; ++i) r[i] = _mm256_loadu_pd(src + (g + i) * ld + k0);
        transpose4x4(r);
        for (int i = 0; i < 4; ++i) _mm256_storeu_pd(dst + (k0 + i) * NR + g, r[i]);
      }
  }
#else
  (void)src, (void)ld, (void)kc, (void)dst;
#endif
  return k0;
}

/// out[i] = sum of the lanes of v[i], for the W batches v[0..W).
template <class T>
inline void reduce_lanes(const xsimd::batch<T>* v, T* out) {
  using batch = xsimd::batch<T>;
  constexpr index_t W = static_cast<index_t>(batch::size);
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> && W == 16) {
    // Fold pairs of sources so each halving step keeps one partial per source: 30 shuffles, 15 adds.
    __m512 u[8], w[4], x[2];
    for (int i = 0; i < 8; ++i)
      u[i] = _mm512_add_ps(shuffle_lanes16<0x44>(v[2 * i], v[2 * i + 1]),
                           shuffle_lanes16<0xEE>(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; ++i)
      w[i] = _mm512_add_ps(shuffle_lanes16<0x88>(u[2 * i], u[2 * i + 1]),
                           shuffle_lanes16<0xDD>(u[2 * i], u[2 * i + 1]));
    for (int i = 0; i < 2; ++i)
      x[i] = _mm512_add_ps(shuffle16<0x44>(w[2 * i], w[2 * i + 1]), shuffle16<0xEE>(w[2 * i], w[2 * i + 1]));
    alignas(64) float y[16];
    _mm512_store_ps(y, _mm512_add_ps(shuffle16<0x88>(x[0], x[1]), shuffle16<0xDD>(x[0], x[1])));
    for (int l = 0; l < 4; ++l)
      for (int j = 0; j < 4; ++j) out[4 * j + l] = y[4 * l + j];  // lane 4l+j holds source 4j+l
    return;
  } else if constexpr (std::is_same_v<T, double> && W == 8) {
    __m512d u[4], w[2];
    for (int i = 0; i < 4; ++i)
      u[i] = _mm512_add_pd(shuffle_lanes8<0x44>(v[2 * i], v[2 * i + 1]), shuffle_lanes8<0xEE>(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 2; ++i)
      w[i] = _mm512_add_pd(shuffle_lanes8<0x88>(u[2 * i], u[2 * i + 1]), shuffle_lanes8<0xDD>(u[2 * i], u[2 * i + 1]));
    alignas(64) double y[8];
    _mm512_store_pd(y, _mm512_add_pd(shuffle8<0x00>(w[0], w[1]), shuffle8<0xFF>(w[0], w[1])));
    for (int l = 0; l < 4; ++l)
      for (int j = 0; j < 2; ++j) out[4 * j + l] = y[2 * l + j];  // lane 2l+j holds source 4j+l
    return;
  }
#endif
  for (index_t i = 0; i < W; ++i) out[i] = hsum(v[i]);
}

/// Returns v, pinned in a register: GCC otherwise re-reads operands that are used several times from
/// memory as FMA memory operands, which makes the dot-product tiles bound by loads rather than by FMAs.
template <class B>
inline B in_register(B v) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  typename B::register_type r = v;
  __asm__("" : "+v"(r));
  return B(r);
#else
  return v;
#endif
}

// -------------------------------------------------------------------------------------------- packing

/// dst (mc, LDA) <- src (mc, kc) with stride ld: a row-major copy with the padded stride.
template <class T>
inline void pack_a(const T* src, index_t ld, index_t mc, index_t kc, T* dst) {
  for (index_t i = 0; i < mc; ++i)
    std::memcpy(dst + i * blocking<T>::LDA, src + i * ld, static_cast<std::size_t>(kc) * sizeof(T));
}

/// dst (kc, NR) k-major panel <- the nr <= NR rows src (nr, kc) of b (N, K), stride ld, widened from storage type S;
/// columns >= nr zero. (A narrow b is widened here, once per panel, so the micro-kernel runs at the float rate.)
template <class T, class S = T>
inline void pack_b_nk(const S* src, index_t ld, index_t nr, index_t kc, T* dst) {
  constexpr index_t NR = blocking<T>::NR;
  const index_t k0 = nr == NR ? transpose_pack_fast<T, S>(src, ld, kc, dst) : 0;
  for (index_t k = k0; k < kc; ++k) {
    T* d = dst + k * NR;
    for (index_t j = 0; j < nr; ++j) d[j] = widen<T>(src[j * ld + k]);
    for (index_t j = nr; j < NR; ++j) d[j] = T(0);
  }
}

/// dst (kc, NR) panel <- src (kc, nr) columns of b (K, N), stride ld, widened from storage type S; columns >= nr
/// zero.
template <class T, class S = T>
inline void pack_b_kn(const S* src, index_t ld, index_t nr, index_t kc, T* dst) {
  using P = blocking<T>;
  if (nr == P::NR) {
    for (index_t k = 0; k < kc; ++k)
      for (int v = 0; v < P::NV; ++v) load_widened<T>(src + k * ld + v * P::W).store_unaligned(dst + k * P::NR + v * P::W);
    return;
  }
  for (index_t k = 0; k < kc; ++k) {
    T* d = dst + k * P::NR;
    for (index_t j = 0; j < nr; ++j) d[j] = widen<T>(src[k * ld + j]);
    for (index_t j = nr; j < P::NR; ++j) d[j] = T(0);
  }
}

// ---------------------------------------------------------------------------------------- micro-kernel

/// Stores the C tile acc (MR, NV batches) into c (MR, nr) through the epilogue.
template <class T, int MR, int NV>
inline void store_tile(const xsimd::batch<T> (&acc)[MR][NV], T* c, index_t ldc, index_t nr, const epilogue<T>& ep) {
  using batch = xsimd::batch<T>;
  constexpr index_t W = static_cast<index_t>(batch::size);
  constexpr index_t NR = NV * W;
  if (nr == NR) {
    const batch alpha(ep.alpha), beta(ep.beta);
    const bool scale = ep.alpha != T(1);
SESSA_UNROLL(16)
    for (int i = 0; i < MR; ++i)
SESSA_UNROLL(4)
      for (int v = 0; v < NV; ++v) {
        T* p = c + i * ldc + v * W;
        batch r = acc[i][v];
        if (scale) r *= alpha;
        if (ep.bias) r += batch::load_unaligned(ep.bias + v * W);
        if (ep.beta == T(1))
          r += batch::load_unaligned(p);
        else if (ep.beta != T(0))
          r = xsimd::fma(beta, batch::load_unaligned(p), r);
        r.store_unaligned(p);
      }
    return;
  }
  alignas(64) T tile[MR * NR];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v].store_aligned(tile + i * NR + v * W);
  for (int i = 0; i < MR; ++i) {
    T* p = c + i * ldc;
    for (index_t j = 0; j < nr; ++j) {
      T r = ep.alpha * tile[i * NR + j];
      if (ep.bias) r += ep.bias[j];
      if (ep.beta != T(0)) r += ep.beta * p[j];
      p[j] = r;
    }
  }
}

/// c (MR, nr) = epilogue(a (MR, kc; row stride LDA) * b (kc, NR; row stride ldb)): the register tile.
template <class T, int MR, int NV, index_t LDA>
inline void micro_kernel(index_t kc, const T* SESSA_RESTRICT a, const T* SESSA_RESTRICT b, index_t ldb, T* c,
                         index_t ldc, index_t nr, const epilogue<T>& ep) {
  using batch = xsimd::batch<T>;
  constexpr index_t W = static_cast<index_t>(batch::size);
  batch acc[MR][NV];
SESSA_UNROLL(16)
  for (int i = 0; i < MR; ++i)
SESSA_UNROLL(4)
    for (int v = 0; v < NV; ++v) acc[i][v] = batch(T(0));
  for (index_t k = 0; k < kc; ++k) {
    batch bv[NV];
SESSA_UNROLL(4)
    for (int v = 0; v < NV; ++v) bv[v] = batch::load_unaligned(b + v * W);
SESSA_UNROLL(16)
    for (int i = 0; i < MR; ++i) {
      const batch ai(a[i * LDA]);
SESSA_UNROLL(4)
      for (int v = 0; v < NV; ++v) acc[i][v] = xsimd::fma(ai, bv[v], acc[i][v]);
    }
    a += 1;
    b += ldb;
  }
  store_tile<T, MR, NV>(acc, c, ldc, nr, ep);
}

template <class T>
using kernel_fn = void (*)(index_t, const T*, const T*, index_t, T*, index_t, index_t, const epilogue<T>&);

template <class T, int... I>
constexpr std::array<kernel_fn<T>, sizeof...(I)> make_kernels(std::integer_sequence<int, I...>) {
  return {&micro_kernel<T, I + 1, blocking<T>::NV, blocking<T>::LDA>...};
}
/// kernels_by_rows<T>[m - 1] is the micro-kernel for an m-row tile (m = 1..MR).
template <class T>
inline constexpr std::array<kernel_fn<T>, blocking<T>::MR> kernels_by_rows =
    make_kernels<T>(std::make_integer_sequence<int, blocking<T>::MR>{});

// ------------------------------------------------------------------------------------------ drivers

/// c (M, N) = beta * c + bias: the products of an empty K.
template <class T>
inline void scale_output(matrix<T> c, T beta, const T* bias) {
  for (index_t i = 0; i < c.rows; ++i) {
    T* p = c.row(i);
    for (index_t j = 0; j < c.cols; ++j) p[j] = (beta == T(0) ? T(0) : beta * p[j]) + (bias ? bias[j] : T(0));
  }
}

enum class b_layout { nk, kn };  // b is (N, K) and enters transposed / b is (K, N)

/// pack_b_nk for q8_0 rows: the nr rows' weights [pc, pc + kc) (pc a multiple of the block) dequantized into a
/// per-thread (nr, kc) scratch, then packed. src: the first row's blocks, ld blocks apart.
template <class T>
inline void pack_b_nk_dequantized(const q8_0* src, index_t ld, index_t pc, index_t nr, index_t kc, T* dst) {
  thread_local buffer<T> rows;
  rows.reserve(nr * kc);
  for (index_t j = 0; j < nr; ++j) dequantize_n<T>(src + j * ld, pc, kc, rows.data() + j * kc);
  pack_b_nk<T, T>(rows.data(), kc, nr, kc, dst);
}

/// Values of a (K, N) operand packed whole (pack_whole_b): K slice by K slice, round_up(N, NR) x kc values each.
template <class T>
inline constexpr index_t packed_b_values(index_t K, index_t N) noexcept {
  return round_up(N, blocking<T>::NR) * K;
}

/// Panels [p0, p1) (NR columns each, every K slice) of the operand b of c = a op(b), packed whole, widened from S:
/// b is (N, K) in layout nk, (K, N) in layout kn. The panel of columns [jr, jr + NR) in the slice of K starting at pc
/// (length kc) sits at dst + round_up(N, NR) pc + jr kc, where gemm_blocked reads it when handed dst as `packed`.
/// One operand can thus be packed once (in parallel, panel by panel) for many products with different a.
template <class T, b_layout L, class S = T>
inline void pack_whole_b(cmatrix<S> b, T* dst, index_t p0, index_t p1) {
  static_assert(!is_block_quantized<S>, "pack_whole_b: q8_0 operands are packed by gemm_blocked itself");
  using P = blocking<T>;
  constexpr bool kn = L == b_layout::kn;
  const index_t N = kn ? b.cols : b.rows, K = kn ? b.rows : b.cols, Np = round_up(N, P::NR);
  for (index_t p = p0; p < p1; ++p) {
    const index_t jr = p * P::NR, nr = std::min(P::NR, N - jr);
    for (index_t pc = 0; pc < K; pc += P::KC) {
      const index_t kc = std::min(P::KC, K - pc);
      T* d = dst + Np * pc + jr * kc;
      if constexpr (kn)
        pack_b_kn<T, S>(b.row(pc) + jr, b.ld, nr, kc, d);
      else
        pack_b_nk<T, S>(b.row(jr) + pc, b.ld, nr, kc, d);
    }
  }
}

/// Panels of NR columns in an operand of N columns (pack_whole_b's unit of work).
template <class T>
inline constexpr index_t panels(index_t N) noexcept {
  return (N + blocking<T>::NR - 1) / blocking<T>::NR;
}

/// c (M, N) = alpha a (M, K) op(b) + bias + beta c on the calling thread: the packed, blocked GEMM. b may be stored
/// narrower than T (layout nk only): its panels are widened as they are packed. With `packed` (pack_whole_b of b,
/// K = a.cols and N = c.cols), b is not read and nothing of it is packed again.
template <class T, b_layout L, class S = T>
inline void gemm_blocked(cmatrix<T> a, cmatrix<S> b, matrix<T> c, T alpha, T beta, const T* bias,
                         const T* packed = nullptr) {
  static_assert(L == b_layout::nk || std::is_same_v<S, T>, "gemm_blocked: a narrow b is supported in layout nk");
  using P = blocking<T>;
  static_assert(!is_block_quantized<S> || P::KC % q8_0::block == 0, "gemm_blocked: K slices must hold whole blocks");
  const index_t M = c.rows, N = c.cols, K = a.cols;
  if (M == 0 || N == 0) return;
  if (K == 0) return scale_output(c, beta, bias);
  pack_space<T>& space = thread_pack_space<T>();
  space.a.reserve(std::min(M, P::MC) * P::LDA);
  if (!packed) space.b.reserve(std::min(P::KC, K) * round_up(std::min(N, P::NC), P::NR));
  T* abuf = space.a.data();
  T* const bspace = space.b.data();
  const T* bbuf = bspace;  // the K slice's panels: packed here, or the caller's
  // (K, N) operands with a single row tile use B in place (no reuse to pay for a pack); edges still pack.
  constexpr bool kn = L == b_layout::kn;
  const bool b_in_place = kn && M <= P::MR && !packed;
  // An a already in the packed layout (row stride LDA, one K slice: packed_lda) is read in place. The flash tiles
  // keep their query rows and probabilities that way, so a tile's products copy nothing of a.
  const bool a_in_place = a.ld == P::LDA && K <= P::KC;
  const auto& kernels = kernels_by_rows<T>;
  const index_t m_blocks = (M + P::MC - 1) / P::MC;  // near-equal row blocks of at most MC rows
  for (index_t jc = 0; jc < N; jc += P::NC) {
    const index_t nc = std::min(P::NC, N - jc);
    for (index_t pc = 0; pc < K; pc += P::KC) {
      const index_t kc = std::min(P::KC, K - pc);
      if (packed)
        bbuf = packed + round_up(N, P::NR) * pc + jc * kc;
      else if (!b_in_place)
        for (index_t jr = 0; jr < nc; jr += P::NR) {
          const index_t nr = std::min(P::NR, nc - jr);
          if constexpr (kn)
            pack_b_kn(b.row(pc) + jc + jr, b.ld, nr, kc, bspace + jr * kc);
          else if constexpr (is_block_quantized<S>)
            pack_b_nk_dequantized<T>(b.row(jc + jr), b.ld, pc, nr, kc, bspace + jr * kc);
          else
            pack_b_nk<T, S>(b.row(jc + jr) + pc, b.ld, nr, kc, bspace + jr * kc);
        }
      const epilogue<T> ep = pc == 0 ? epilogue<T>{alpha, beta, bias ? bias + jc : nullptr}
                                     : epilogue<T>{alpha, T(1), nullptr};
      for (index_t ib = 0; ib < m_blocks; ++ib) {
        const index_t ic = M * ib / m_blocks, mc = M * (ib + 1) / m_blocks - ic;
        const index_t tiles = (mc + P::MR - 1) / P::MR;  // near-equal row tiles: 16 rows = 8 + 8, not 14 + 2
        const T* ap = abuf;
        if (a_in_place)
          ap = a.row(ic);
        else
          pack_a(a.row(ic) + pc, a.ld, mc, kc, abuf);
        for (index_t jr = 0; jr < nc; jr += P::NR) {
          const index_t nr = std::min(P::NR, nc - jr);
          epilogue<T> e = ep;
          if (e.bias) e.bias += jr;
          const T* bp = bbuf + jr * kc;
          index_t ldb = P::NR;
          if constexpr (kn) {
            if (b_in_place) {
              if (nr == P::NR) {
                bp = b.row(pc) + jc + jr;
                ldb = b.ld;
              } else {
                pack_b_kn(b.row(pc) + jc + jr, b.ld, nr, kc, bspace);
                bp = bspace;
              }
            }
          }
          T* cp = c.row(ic) + jc + jr;
          for (index_t t = 0; t < tiles; ++t) {
            const index_t ir = mc * t / tiles, mr = mc * (t + 1) / tiles - ir;
            kernels[static_cast<std::size_t>(mr - 1)](kc, ap + ir * P::LDA, bp, ldb, cp + ir * c.ld, c.ld, nr, e);
          }
        }
      }
    }
  }
}

/// One dot product's epilogue, alpha s + bias[j] + beta *p (*p read only when beta != 0), with its fused operations
/// spelled out so that every dot path (dot_tile, dot_row_run) rounds the same way whatever the compiler contracts.
template <class T>
inline T finish_dot(const epilogue<T>& ep, T s, index_t j, const T* p) {
  T v = ep.bias ? std::fma(ep.alpha, s, ep.bias[j]) : ep.alpha * s;
  if (ep.beta != T(0)) v = std::fma(ep.beta, *p, v);
  return v;
}

/// Whether a dot-product tile prefetches: only for q8_0 weights, whose rows of 34-byte blocks it prefetches once per
/// block in pf (gemm_dot passes the next block of rows; without it one Zen 5 core streamed q8_0 at 13.6 GB/s against
/// 16.3-17.3). Weights stored as T, bf16 or f16 stream faster on the hardware prefetchers alone: `gemm_bench --shape
/// 1,16384,4096 --threads 1`, builds alternated three times, float32 19.8-21.4 -> 24.5-26.5 GB/s (the next block
/// prefetched before), bf16 16.5-18.3 -> 20.7-22.7 and f16 16.8-17.8 -> 21.1-23.9 (1 KiB ahead in their own rows
/// before), 4 rows of x likewise or better; the 6-layer D = 4096 stack's decode read 0.89-0.94 -> 1.00-1.02 of the
/// paired stream with float32 weights and 0.84-0.87 -> 0.91-0.97 with bf16 (2 threads).
template <class T, class S>
inline constexpr bool dot_prefetches = is_block_quantized<S>;

/// y (MB, R) = epilogue(x (MB, K) w (R, K)^T): MB x R dot products along K in registers, reduced across
/// lanes at the end (one shuffle tree per W results) plus a scalar K tail. pf (R rows, stride ldw) is prefetched
/// along the way where dot_prefetches. w is stored as S (T, or a narrower type widened in registers as it is
/// loaded, widen.hpp). With bf16 weights (has_pair_path) x arrives in pair order (widen.hpp: pair_order) and
/// whole blocks of 2W weights go through load_pairs.
template <class T, class S, int MB, int R>
inline void dot_tile(const T* SESSA_RESTRICT x, index_t ldx, const S* SESSA_RESTRICT w, index_t ldw, index_t K,
                     const S* pf, T* y, index_t ldy, const epilogue<T>& ep) {
  using batch = xsimd::batch<T>;
  constexpr index_t W = static_cast<index_t>(batch::size);
  constexpr int n = MB * R;
  constexpr int groups = static_cast<int>((n + W - 1) / W);
  batch acc[groups * W];
SESSA_UNROLL(32)
  for (int i = 0; i < groups * W; ++i) acc[i] = batch(T(0));
  // Prefetch addresses as integers: the distance may run past the end of w, where a pointer may not point.
  const std::uintptr_t pf0 = reinterpret_cast<std::uintptr_t>(pf);
  const std::uintptr_t pf_ld = static_cast<std::uintptr_t>(ldw) * sizeof(S);
  [[maybe_unused]] const auto prefetch = [&](index_t offset) {  // offset: in elements of S along each row
#if defined(__GNUC__)
    if constexpr (!dot_prefetches<T, S>) return;
    const std::uintptr_t at = pf0 + static_cast<std::uintptr_t>(offset) * sizeof(S);
SESSA_UNROLL(8)
    for (int r = 0; r < R; ++r) __builtin_prefetch(reinterpret_cast<const void*>(at + static_cast<std::uintptr_t>(r) * pf_ld), 0, 3);
#endif
  };
  index_t k = 0;
  if constexpr (has_pair_path<T, S>) {
    for (; k + 2 * W <= K; k += 2 * W) {
      batch we[R], wo[R];
SESSA_UNROLL(8)
      for (int r = 0; r < R; ++r) {
        load_pairs<T, S, (MB > 1)>(w + r * ldw + k, we[r], wo[r]);
        we[r] = in_register(we[r]);
        wo[r] = in_register(wo[r]);
      }
      prefetch(k);
SESSA_UNROLL(8)
      for (int m = 0; m < MB; ++m) {
        const batch xe = in_register(batch::load_unaligned(x + m * ldx + k));
        const batch xo = in_register(batch::load_unaligned(x + m * ldx + k + W));
SESSA_UNROLL(8)
        for (int r = 0; r < R; ++r) acc[m * R + r] = xsimd::fma(xo, wo[r], xsimd::fma(xe, we[r], acc[m * R + r]));
      }
    }
  }
  if constexpr (is_block_quantized<S>) {
    // q8_0: per whole block, each row's scale once, then the block's W-wide slices dequantized and multiplied.
    constexpr index_t B = S::block;
    static_assert(B % W == 0, "dot_tile: the batch width must divide the q8_0 block");
    for (; k + B <= K; k += B) {
      const index_t blk = k / B;
      batch d[R];
SESSA_UNROLL(8)
      for (int r = 0; r < R; ++r) d[r] = batch(static_cast<T>(block_scale(w[r * ldw + blk])));
      prefetch(blk);
SESSA_UNROLL(4)
      for (index_t i = 0; i < B; i += W) {
        batch wv[R];
SESSA_UNROLL(8)
        for (int r = 0; r < R; ++r) wv[r] = in_register(load_q8<T>(w[r * ldw + blk].q + i) * d[r]);
SESSA_UNROLL(8)
        for (int m = 0; m < MB; ++m) {
          const batch xv = in_register(batch::load_unaligned(x + m * ldx + k + i));
SESSA_UNROLL(8)
          for (int r = 0; r < R; ++r) acc[m * R + r] = xsimd::fma(xv, wv[r], acc[m * R + r]);
        }
      }
    }
  }
  if constexpr (!is_block_quantized<S>) {
    for (; k + W <= K; k += W) {
      batch wv[R];
SESSA_UNROLL(8)
      for (int r = 0; r < R; ++r) {
        // One row of x uses each w once: a load folded into its FMA is one instruction fewer per line, so more
        // lines in flight (one Zen 5 core: float32 weights at 29 -> 32.5 GB/s). More rows re-use it: pinned.
        if constexpr (MB == 1)
          wv[r] = load_widened<T>(w + r * ldw + k);
        else
          wv[r] = in_register(load_widened<T>(w + r * ldw + k));
      }
      prefetch(k);
SESSA_UNROLL(8)
      for (int m = 0; m < MB; ++m) {
        const batch xv = in_register(batch::load_unaligned(x + m * ldx + k));
SESSA_UNROLL(8)
        for (int r = 0; r < R; ++r) acc[m * R + r] = xsimd::fma(xv, wv[r], acc[m * R + r]);
      }
    }
  }
  alignas(64) T sums[groups * W];
  for (int g = 0; g < groups; ++g) reduce_lanes<T>(acc + g * W, sums + g * W);
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) {
      T s = sums[m * R + r];
      for (index_t kk = k; kk < K; ++kk) s += x[m * ldx + kk] * weight_at<T>(w + r * ldw, kk);
      T* p = y + m * ldy + r;
      *p = finish_dot(ep, s, r, p);
    }
}

template <class T, class S>
using dot_fn = void (*)(const T*, index_t, const S*, index_t, index_t, const S*, T*, index_t, const epilogue<T>&);

template <class T, class S, int MB, int... R>
constexpr std::array<dot_fn<T, S>, sizeof...(R)> make_dot_row(std::integer_sequence<int, R...>) {
  return {&dot_tile<T, S, MB, R + 1>...};
}
template <class T, class S, int... MB>
constexpr std::array<std::array<dot_fn<T, S>, blocking<T>::R>, sizeof...(MB)> make_dots(
    std::integer_sequence<int, MB...>) {
  return {make_dot_row<T, S, MB + 1>(std::make_integer_sequence<int, blocking<T>::R>{})...};
}
/// dot_tiles<T, S>[mb - 1][r - 1] is the dot-product tile for mb rows of x and r rows of w (stored as S);
/// dot_row_tiles<T, S>[r - 1] the one for a single row of x and r <= R1 rows of w.
template <class T, class S>
inline constexpr std::array<std::array<dot_fn<T, S>, blocking<T>::R>, blocking<T>::MB> dot_tiles =
    make_dots<T, S>(std::make_integer_sequence<int, blocking<T>::MB>{});
template <class T, class S>
inline constexpr std::array<dot_fn<T, S>, blocking<T>::R1> dot_row_tiles =
    make_dot_row<T, S, 1>(std::make_integer_sequence<int, blocking<T>::R1>{});

/// The short rows of dot_row_run: K of at most short_row_batches batches (a decode step's attention scores, one
/// head's query against its keys, d = 64 or 128), prefetched short_row_prefetch_bytes ahead (whole blocks of W rows).
inline constexpr index_t short_row_batches = 8;
inline constexpr index_t short_row_prefetch_bytes = 4096;

/// y (1, N0) = epilogue(x (1, K) w (N0, K)^T) for the first N0 = N - N % W rows of w and a short K (a multiple of W,
/// at most short_row_batches W): one call for all of them, each block of W rows reduced by one full reduce_lanes tree,
/// the block short_row_prefetch_bytes ahead prefetched at its start. Per 2 KiB of keys the R1-row tiles spent an
/// indirect call, the zeroing of W accumulators for R1 sums, half a lane tree and the epilogue's branches, and
/// prefetched only the next block: one Zen 5 core streamed d = 64 keys at 0.65 of its read rate through them,
/// ~0.95 through this loop. Same FMA order along K, same lane tree and epilogue as dot_tile: the same bits.
/// x in pair order when has_pair_path (gemm_dot). Returns N0.
template <class T, class S>
inline index_t dot_row_run(const T* SESSA_RESTRICT x, const S* SESSA_RESTRICT w, index_t ldw, index_t N, index_t K,
                           T* SESSA_RESTRICT y, const epilogue<T>& ep) {
  using batch = xsimd::batch<T>;
  constexpr index_t W = static_cast<index_t>(batch::size);
  const index_t N0 = N - N % W;
  const index_t block_bytes = W * K * static_cast<index_t>(sizeof(S));
  const index_t ahead = W * std::max<index_t>(1, (short_row_prefetch_bytes + block_bytes - 1) / block_bytes);
  const index_t row_bytes = K * static_cast<index_t>(sizeof(S));
  for (index_t j = 0; j < N0; j += W) {
    const S* wj = w + j * ldw;
#if defined(__GNUC__)
    if (j + ahead + W <= N)
      for (index_t r = 0; r < W; ++r) {
        const char* row = reinterpret_cast<const char*>(wj + (ahead + r) * ldw);
        for (index_t o = 0; o < row_bytes; o += 64) __builtin_prefetch(row + o, 0, 3);
      }
#endif
    batch acc[W];
SESSA_UNROLL(16)
    for (index_t r = 0; r < W; ++r) acc[r] = batch(T(0));
    index_t k = 0;
    if constexpr (has_pair_path<T, S>) {
      for (; k + 2 * W <= K; k += 2 * W) {
        const batch xe = in_register(batch::load_unaligned(x + k));
        const batch xo = in_register(batch::load_unaligned(x + k + W));
SESSA_UNROLL(16)
        for (index_t r = 0; r < W; ++r) {
          batch we, wo;
          load_pairs<T, S, false>(wj + r * ldw + k, we, wo);
          acc[r] = xsimd::fma(xo, in_register(wo), xsimd::fma(xe, in_register(we), acc[r]));
        }
      }
    }
    for (; k + W <= K; k += W) {
      const batch xv = in_register(batch::load_unaligned(x + k));
SESSA_UNROLL(16)
      for (index_t r = 0; r < W; ++r) acc[r] = xsimd::fma(xv, load_widened<T>(wj + r * ldw + k), acc[r]);
    }
    alignas(64) T sums[W];
    reduce_lanes<T>(acc, sums);
    for (index_t r = 0; r < W; ++r) y[j + r] = finish_dot(ep, sums[r], j + r, y + j + r);
  }
  return N0;
}

/// Rows of w up to seq_row_bytes long (K * sizeof(S)) against one row of x go through dot_row_seq.
inline constexpr index_t seq_row_bytes = 4096;

/// y (1, N0) = epilogue(x (1, K) w (N0, K)^T) for the first N0 = N - N % W rows of w, K a multiple of W, the rows of
/// each block of W read one after the other, each from its start to its end: the weights are read in memory order,
/// one stream, where the 8-row tiles walk 8 rows side by side, 8 short streams that each start cold. Rows of up to
/// seq_row_bytes (a decode step's k_b scores, D = 512: 2 KiB of float, 1 KiB of bf16; the projections of a D = 512
/// model) stream faster this way; longer rows stream better side by side (one row's chain of FMAs along K then
/// holds the loads back). One Zen 5 core, `gemm_bench --shape 1,N,K --threads 1`, tiles -> this loop, GB/s: float32
/// K = 512 12.6-13.9 -> 20.6-22.7, 1024 18.8-21.1 -> 22.3-23.4, 2048 21.7-21.9 -> 22.1-23.4, 4096 22.6-23.7 ->
/// 15.3-23.4; bf16 512 8.5-9.4 -> 18.6-19.0, 1024 11.4-13.0 -> 19.5-19.8, 2048 17.0-18.0 -> 20.9-21.1, 4096
/// 19.0-20.3 -> 16.9-21.0. Same FMA order along K, same lane tree and epilogue as dot_tile: the same bits. x in pair
/// order when has_pair_path (gemm_dot). Returns N0.
template <class T, class S>
inline index_t dot_row_seq(const T* SESSA_RESTRICT x, const S* SESSA_RESTRICT w, index_t ldw, index_t N, index_t K,
                           T* SESSA_RESTRICT y, const epilogue<T>& ep) {
  using batch = xsimd::batch<T>;
  constexpr index_t W = static_cast<index_t>(batch::size);
  const index_t N0 = N - N % W;
  for (index_t j = 0; j < N0; j += W) {
    batch acc[W];
SESSA_UNROLL(16)
    for (index_t r = 0; r < W; ++r) {
      const S* wr = w + (j + r) * ldw;
      batch a(T(0));
      index_t k = 0;
      if constexpr (has_pair_path<T, S>) {
        for (; k + 2 * W <= K; k += 2 * W) {
          batch we, wo;
          load_pairs<T, S, false>(wr + k, we, wo);
          const batch xe = batch::load_unaligned(x + k), xo = batch::load_unaligned(x + k + W);
          a = xsimd::fma(xo, in_register(wo), xsimd::fma(xe, in_register(we), a));
        }
      }
      for (; k + W <= K; k += W) a = xsimd::fma(batch::load_unaligned(x + k), load_widened<T>(wr + k), a);
      acc[r] = a;
    }
    alignas(64) T sums[W];
    reduce_lanes<T>(acc, sums);
    for (index_t r = 0; r < W; ++r) y[j + r] = finish_dot(ep, sums[r], j + r, y + j + r);
  }
  return N0;
}

/// Several rows of x (a batch's decode step): the dot tiles' 4 x 4 products re-read the rows of x from L2 for every
/// block of w, four loads per sixteen FMAs, and ran float32 weights at a third of the GEMM rate with 16 rows. The
/// panel path turns the product around: x is transposed once per call into a (K, W) panel (the batch rows in the
/// lanes, lanes past M zero), and each tile of panel_rows rows of w multiplies it with one broadcast weight per FMA:
/// one load of the panel per panel_rows FMAs, no lane reductions, every weight read once from memory. Whole tiles of
/// float weights are read in place (panel_tile_in_place), whole tiles of bf16 weights widened in registers
/// (panel_tile_bf16); f16 weights, and a last tile of fewer rows, are widened or copied panel_chunk values at a time
/// into an L1 block that the packed GEMM's micro-kernel reads as its broadcast operand (panel_tile_widened). Rows are
/// prefetched panel_prefetch_bytes ahead. Sums run along K (bf16: even and odd weights apart), so a row's results
/// agree with the same row through the dot tiles within rounding, not to the bit.
/// Where it runs (use_panel): float compute on AVX-512 with float, bf16 or f16 weights, from panel_min_rows rows of
/// x to W. Its time hardly depends on M (the lanes past M are computed too), so with few rows the dot tiles are as
/// fast; q8_0 weights stay on the dot tiles. Measured on Zen 5, `gemm_bench --shape M,4096,4096 --threads 2`
/// (docs/PERFORMANCE.md), GFLOP/s before -> after: float32 weights 16 rows 145-151 -> 236-300, 12 rows 78-137 ->
/// 186-233, 10 rows 114-138 -> 167-184, 8 rows 116-119 -> 143-155, 6 rows 95-99 -> 101-112 (not taken); bf16 16
/// rows 130-202 -> 327-331, 12 rows 226-241 -> 253-268, 8 rows 203-210 -> 166-171 (not taken); f16 16 rows
/// 231-233 -> 263-267, 12 rows slower (220-231 -> 122-189).
template <class S>
inline constexpr index_t panel_min_rows = std::is_same_v<S, float> ? 8 : std::is_same_v<S, bfloat16> ? 12 : 16;
inline constexpr int panel_rows = 8;            // rows of w per tile (8 measured ahead of 14: fewer streams)
inline constexpr index_t panel_chunk = 64;      // values of each row per copy (a multiple of every batch width)
inline constexpr index_t panel_prefetch_bytes = 1024;
template <class T, class S>
inline constexpr bool has_panel_path = vector_registers >= 32 && std::is_same_v<T, float> && blocking<T>::W == 16 &&
                                       (std::is_same_v<S, float> || std::is_same_v<S, float16> ||
                                        std::is_same_v<S, bfloat16>);
template <class T, class S>
inline constexpr bool use_panel(index_t M) noexcept {
  return has_panel_path<T, S> && M >= panel_min_rows<S> && M <= blocking<T>::W;
}

/// Prefetches the MR rows of a tile (row stride ld bytes) at byte offset `at` + panel_prefetch_bytes. Addresses
/// are computed as integers: the distance may run past the end of w, where a pointer may not point.
template <int MR>
inline void prefetch_tile_rows([[maybe_unused]] const void* w, [[maybe_unused]] index_t ld,
                               [[maybe_unused]] index_t at) noexcept {
#if defined(__GNUC__)
  const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(w) + panel_prefetch_bytes + static_cast<std::uintptr_t>(at);
SESSA_UNROLL(16)
  for (int r = 0; r < MR; ++r)
    __builtin_prefetch(reinterpret_cast<const void*>(base + static_cast<std::uintptr_t>(r) * static_cast<std::uintptr_t>(ld)), 0, 3);
#endif
}

/// tile (MR, W) = w (MR rows, stride ldw, stored as T) against the panel (K, W), reading w in place: each weight
/// broadcast from its row into an FMA with the panel's line, the rows prefetched panel_prefetch_bytes ahead once
/// per cache line. (Without the copy into L1 one Zen 5 core ran 16 rows of float32 weights 15% faster.)
template <class T, int MR>
inline void panel_tile_in_place(const T* SESSA_RESTRICT w, index_t ldw, const T* SESSA_RESTRICT panel, index_t K,
                                T* SESSA_RESTRICT tile) {
  using batch = xsimd::batch<T>;
  constexpr index_t W = static_cast<index_t>(batch::size), line = static_cast<index_t>(64 / sizeof(T));
  batch acc[MR];
SESSA_UNROLL(16)
  for (int r = 0; r < MR; ++r) acc[r] = batch(T(0));
  const auto step = [&](index_t k) {
    const batch xv = batch::load_aligned(panel + k * W);
SESSA_UNROLL(16)
    for (int r = 0; r < MR; ++r) acc[r] = xsimd::fma(batch(w[r * ldw + k]), xv, acc[r]);
  };
  index_t k = 0;
  for (; k + line <= K; k += line) {
    prefetch_tile_rows<MR>(w, ldw * static_cast<index_t>(sizeof(T)), k * static_cast<index_t>(sizeof(T)));
SESSA_UNROLL(16)
    for (index_t kk = k; kk < k + line; ++kk) step(kk);
  }
  for (; k < K; ++k) step(k);
SESSA_UNROLL(16)
  for (int r = 0; r < MR; ++r) acc[r].store_aligned(tile + r * W);
}

/// tile (MR, 16) = w (MR rows, stride ldw, bf16) against the float panel (K, 16), widening in registers: each pair of
/// weights is one 32-bit broadcast, shifted into the even weight and masked into the odd one (bf16 is the top half
/// of a float), two FMAs with the panel's lines k and k + 1 into separate even and odd sums; an odd K ends with one
/// widened weight. The rows are prefetched panel_prefetch_bytes ahead once per cache line. (Against the dot tiles,
/// which widen in registers too but re-read x, one Zen 5 core ran 16 x 4096 x 4096 at 167-181 GFLOP/s instead of
/// 117; the copy into L1 of panel_tile_widened gained nothing.)
template <int MR>
inline void panel_tile_bf16(const bfloat16* SESSA_RESTRICT w, index_t ldw, const float* SESSA_RESTRICT panel,
                            index_t K, float* SESSA_RESTRICT tile) {
#if defined(__AVX512F__)
  constexpr index_t W = 16, line = 32;  // lanes of the panel; bf16 values per cache line
  __m512 even[MR], odd[MR];
SESSA_UNROLL(16)
  for (int r = 0; r < MR; ++r) even[r] = odd[r] = _mm512_setzero_ps();
  const __m512i high = _mm512_set1_epi32(-65536);
  const auto pair = [&](index_t k) {
    const __m512 xe = _mm512_load_ps(panel + k * W), xo = _mm512_load_ps(panel + (k + 1) * W);
SESSA_UNROLL(16)
    for (int r = 0; r < MR; ++r) {
      std::int32_t two;  // weights k (low half) and k + 1 (high half) of row r
      std::memcpy(&two, w + r * ldw + k, sizeof two);
      const __m512i p = _mm512_set1_epi32(two);
      even[r] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, p, 16)), xe, even[r]);
      odd[r] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_maskz_and_epi32(0xFFFF, p, high)), xo, odd[r]);
    }
  };
  index_t k = 0;
  for (; k + line <= K; k += line) {
    prefetch_tile_rows<MR>(w, ldw * static_cast<index_t>(sizeof(bfloat16)), k * static_cast<index_t>(sizeof(bfloat16)));
SESSA_UNROLL(16)
    for (index_t kk = k; kk < k + line; kk += 2) pair(kk);
  }
  for (; k + 2 <= K; k += 2) pair(k);
  if (k < K) {  // odd K: the last weight of each row alone
    const __m512 xe = _mm512_load_ps(panel + k * W);
SESSA_UNROLL(16)
    for (int r = 0; r < MR; ++r) even[r] = _mm512_fmadd_ps(_mm512_set1_ps(static_cast<float>(w[r * ldw + k])), xe, even[r]);
  }
SESSA_UNROLL(16)
  for (int r = 0; r < MR; ++r) _mm512_store_ps(tile + r * W, _mm512_add_ps(even[r], odd[r]));
#else
  (void)w, (void)ldw, (void)panel, (void)K, (void)tile;
  static_assert(MR < 0, "panel_tile_bf16: AVX-512 only (has_panel_path)");
#endif
}

/// tile (MR, W) = the nr <= MR rows of w (stride ldw, stored as S) against the panel (K, W), through an L1 block
/// rows (MR, lda): panel_chunk values of each row copied or widened into it, then the micro-kernel; rows past nr
/// are zeros.
template <class T, class S, int MR, index_t LDA>
inline void panel_tile_widened(const S* w, index_t ldw, index_t nr, const T* panel, index_t K, T* rows, T* tile) {
  constexpr index_t W = blocking<T>::W;
  for (index_t k0 = 0; k0 < K; k0 += panel_chunk) {
    const index_t kc = std::min(panel_chunk, K - k0);
    for (index_t r = 0; r < MR; ++r) {
      T* dst = rows + r * LDA;
      if (r >= nr) {  // past the last row of w: zeros, whose sums are never stored
        std::fill_n(dst, kc, T(0));
        continue;
      }
      const S* src = w + r * ldw + k0;
#if defined(__GNUC__)
      const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(src) + panel_prefetch_bytes;  // as in prefetch_tile_rows
      for (std::uintptr_t o = 0; o < static_cast<std::uintptr_t>(kc) * sizeof(S); o += 64)
        __builtin_prefetch(reinterpret_cast<const void*>(at + o), 0, 3);
#endif
      widen_n<T, S>(src, kc, dst);
    }
    micro_kernel<T, MR, 1, LDA>(kc, rows, panel + k0 * W, W, tile, W, W,
                                epilogue<T>{T(1), k0 == 0 ? T(0) : T(1), nullptr});
  }
}

/// y (M, N) = epilogue(x (M, K) w (N, K)^T) through the panel path (use_panel<T, S>(M)): whole tiles of float
/// weights read in place, the others through the L1 block.
template <class T, class S>
inline void panel_dot(cmatrix<T> x, cmatrix<S> w, matrix<T> y, const epilogue<T>& ep) {
  constexpr index_t L = blocking<T>::W, LDA = panel_chunk + static_cast<index_t>(64 / sizeof(T));
  constexpr int MR = panel_rows;
  const index_t M = y.rows, N = y.cols, K = x.cols;
  thread_local buffer<T> space;
  space.reserve(K * L + MR * LDA);
  T* const panel = space.data();  // (K, L)
  T* const rows = panel + K * L;  // (MR, LDA)
  for (index_t k = 0; k < K; ++k)
    for (index_t m = 0; m < L; ++m) panel[k * L + m] = m < M ? x.row(m)[k] : T(0);
  alignas(64) T tile[MR * L];  // row r: w row j + r against every row of x
  for (index_t j = 0; j < N; j += MR) {
    const index_t nr = std::min<index_t>(MR, N - j);
    bool in_place = false;
    if constexpr (std::is_same_v<S, T>) {
      in_place = nr == MR;
      if (in_place) panel_tile_in_place<T, MR>(w.row(j), w.ld, panel, K, tile);
    } else if constexpr (std::is_same_v<S, bfloat16>) {
      in_place = nr == MR;
      if (in_place) panel_tile_bf16<MR>(w.row(j), w.ld, panel, K, tile);
    }
    if (!in_place) panel_tile_widened<T, S, MR, LDA>(w.row(j), w.ld, nr, panel, K, rows, tile);
    for (index_t r = 0; r < nr; ++r)
      for (index_t m = 0; m < M; ++m) {
        T* p = y.row(m) + j + r;
        *p = finish_dot(ep, tile[r * L + m], j + r, p);
      }
  }
}

/// y (M, N) = epilogue(x (M, K) w (N, K)^T) on the calling thread with dot-product tiles (no packing):
/// each R-row block of w is streamed from memory once, then re-read from cache for the other rows of x.
/// (Cutting K into L1-sized chunks measured slower: it breaks the long sequential streams of w.)
template <class T, class S = T>
inline void gemm_dot(cmatrix<T> x, cmatrix<S> w, matrix<T> y, const epilogue<T>& ep) {
  using P = blocking<T>;
  const index_t M = y.rows, N = y.cols, K = x.cols;
  const index_t R = M == 1 ? P::R1 : P::R;  // rows of w per block
  if constexpr (has_panel_path<T, S>)
    if (use_panel<T, S>(M)) return panel_dot<T, S>(x, w, y, ep);
  if constexpr (has_pair_path<T, S>) {
    if (K >= 2 * P::W) {  // x in pair order, once per call and thread (M K values against N K weights)
      thread_local buffer<T> xp;
      xp.reserve(M * K);
      for (index_t m = 0; m < M; ++m) pair_order(x.row(m), K, xp.data() + m * K);
      x = cmatrix<T>(xp.data(), M, K, K);
    }
  }
  index_t j0 = 0;
  if constexpr (!is_block_quantized<S>) {
    if (M == 1 && K > 0 && K % P::W == 0 && K <= short_row_batches * P::W)
      j0 = dot_row_run<T, S>(x.row(0), w.data, w.ld, N, K, y.row(0), ep);
    else if (M == 1 && K > 0 && K % P::W == 0 && K * static_cast<index_t>(sizeof(S)) <= seq_row_bytes)
      j0 = dot_row_seq<T, S>(x.row(0), w.data, w.ld, N, K, y.row(0), ep);
  }
  for (index_t j = j0; j < N; j += R) {
    const index_t r = std::min<index_t>(R, N - j);
    epilogue<T> e = ep;
    if (e.bias) e.bias += j;
    // With q8_0 weights (dot_prefetches) the first row tile prefetches the next r rows of w when there are that
    // many; the others re-read. (The tiles of other weights ignore it.)
    const S* next = dot_prefetches<T, S> && N - (j + r) >= r ? w.row(j + r) : w.row(j);
    if (M == 1) {
      dot_row_tiles<T, S>[static_cast<std::size_t>(r - 1)](x.row(0), x.ld, w.row(j), w.ld, K, next, y.row(0) + j,
                                                          y.ld, e);
      continue;
    }
    for (index_t m = 0; m < M; m += P::MB) {
      const index_t mb = std::min<index_t>(P::MB, M - m);
      dot_tiles<T, S>[static_cast<std::size_t>(mb - 1)][static_cast<std::size_t>(r - 1)](
          x.row(m), x.ld, w.row(j), w.ld, K, m == 0 ? next : w.row(j), y.row(m) + j, y.ld, e);
    }
  }
}

/// [begin, end) of part `i` of `parts` near-equal shares of `units` units of `unit` elements (clipped to n).
inline std::pair<index_t, index_t> share(index_t n, index_t unit, int parts, int i) {
  const index_t units = (n + unit - 1) / unit;
  const index_t b = units * i / parts, e = units * (i + 1) / parts;
  return {std::min(n, b * unit), std::min(n, e * unit)};
}

/// Threads for a product of `flops` FLOPs that reads `bytes` of weights, at most `max_threads`: 1 inside a
/// parallel region or when a fork would not pay (under ~4 MFLOP and under 256 KiB; a decode step streams its
/// weights, so the bytes alone justify both threads' share of the memory bandwidth).
inline int threads_for(double flops, double bytes, int max_threads) {
#if SESSA_HAS_OPENMP
  if (omp_in_parallel() || (flops < 4.0e6 && bytes < 262144.0)) return 1;
  return std::max(1, max_threads);
#else
  (void)flops, (void)bytes, (void)max_threads;
  return 1;
#endif
}

/// Rows of the thread grid (tm x tn = nt) for y (M, N) = x (M, K) w (N, K)^T: the split with the least
/// estimated time per thread, in cycles: its padded MACs at 2 FMAs of W lanes per cycle, plus about 1/4
/// cycle per element packed (each thread packs its own columns of w and rows of x).
inline int grid_rows(index_t M, index_t N, index_t K, index_t mr, index_t nr, index_t lanes, int nt) {
  int best = 1;
  double best_cost = 0;
  for (int tm = 1; tm <= nt; ++tm) {
    if (nt % tm) continue;
    const int tn = nt / tm;
    const auto rows = static_cast<double>(((M + mr - 1) / mr + tm - 1) / tm * mr);
    const auto cols = static_cast<double>(((N + nr - 1) / nr + tn - 1) / tn * nr);
    const auto k = static_cast<double>(K);
    const double cost = rows * cols * k / (2.0 * static_cast<double>(lanes)) + (rows + cols) * k / 4.0;
    if (tm == 1 || cost <= best_cost) {
      best = tm;
      best_cost = cost;
    }
  }
  return best;
}

}  // namespace gemm_detail

/// c (M, N) = alpha * a (M, K) * b (N, K)^T + beta * c. beta == 0 ignores c's old contents (even NaN).
template <scalar T>
void gemm_nt(cmatrix<T> a, cmatrix<T> b, matrix<T> c, T alpha, T beta) {
  using namespace gemm_detail;
  if (c.rows == 0 || c.cols == 0) return;
  if (use_dot(c.rows, a.cols))
    gemm_dot(a, b, c, epilogue<T>{alpha, beta, nullptr});
  else
    gemm_blocked<T, b_layout::nk>(a, b, c, alpha, beta, nullptr);
}

/// c (M, N) = alpha * a (M, K) * b (K, N) + beta * c. beta == 0 ignores c's old contents.
template <scalar T>
void gemm_nn(cmatrix<T> a, cmatrix<T> b, matrix<T> c, T alpha, T beta) {
  gemm_detail::gemm_blocked<T, gemm_detail::b_layout::kn>(a, b, c, alpha, beta, nullptr);
}

/// y (M, N) = x (M, K) * w (N, K)^T + bias (N; may be null); with accumulate, y += instead. Up to
/// max_threads threads (the calling thread alone inside a parallel region). w and bias may be stored narrower
/// than T (bfloat16, float16: storage type S): the decode path widens w in registers as it streams it, the
/// packed GEMM as it packs each panel, so accumulation is in T either way.
template <scalar T, class S = T>
void linear(cmatrix<T> x, cmatrix<S> w, std::type_identity_t<const vector_storage_t<S>*> bias_s, matrix<T> y,
            bool accumulate, int max_threads = num_threads()) {
  using namespace gemm_detail;
  const index_t M = x.rows, N = w.rows, K = x.cols;
  if constexpr (is_block_quantized<S>)
    if (w.cols != storage_cols<S>(K))
      throw shape_error("linear: a q8_0 weight matrix for K = " + std::to_string(K) + " holds " +
                        std::to_string(storage_cols<S>(K)) + " blocks per row, not " + std::to_string(w.cols));
  if (M == 0 || N == 0) return;
  const T* bias = nullptr;
  if constexpr (std::is_same_v<vector_storage_t<S>, T>) {
    bias = bias_s;
  } else if (bias_s) {  // the epilogue adds a bias of T: widen it once per call
    thread_local buffer<T> wide;
    wide.reserve(N);
    widen_n(bias_s, N, wide.data());
    bias = wide.data();
  }
  const T beta = accumulate ? T(1) : T(0);
  const double weights = static_cast<double>(N) * static_cast<double>(K);
  const int nt = threads_for(2.0 * static_cast<double>(M) * weights, weights * bytes_per_weight<S>(), max_threads);

  if (use_dot(M, K)) {
    // Decode: bandwidth-bound; threads split the rows of w.
    const epilogue<T> ep{T(1), beta, bias};
    if (nt == 1) return gemm_dot<T, S>(x, w, y, ep);
#if SESSA_HAS_OPENMP
    detail::region_errors errors;  // nothing thrown may leave the region (parallel.hpp)
#pragma omp parallel num_threads(nt)
    errors.run([&] {
      const index_t rows = M == 1 ? blocking<T>::R1 : use_panel<T, S>(M) ? panel_rows : blocking<T>::R;
      const auto [j0, j1] = share(N, rows, omp_get_num_threads(), omp_get_thread_num());
      if (j1 > j0)
        gemm_dot<T, S>(x, w.row_block(j0, j1 - j0), y.col_block(j0, j1 - j0),
                       epilogue<T>{T(1), beta, bias ? bias + j0 : nullptr});
    });
    errors.rethrow_if_failed();
#endif
    return;
  }

  if (nt == 1) return gemm_blocked<T, b_layout::nk, S>(x, w, y, T(1), beta, bias);
#if SESSA_HAS_OPENMP
  detail::region_errors errors;  // a pack buffer grows inside the region: see parallel.hpp
#pragma omp parallel num_threads(nt)
  errors.run([&] {
    const int n = omp_get_num_threads(), t = omp_get_thread_num();
    const int tm = grid_rows(M, N, K, blocking<T>::MR, blocking<T>::NR, blocking<T>::W, n), tn = n / tm;
    const auto [m0, m1] = share(M, blocking<T>::MR, tm, t / tn);
    const auto [n0, n1] = share(N, blocking<T>::NR, tn, t % tn);
    if (m1 > m0 && n1 > n0)
      gemm_blocked<T, b_layout::nk, S>(x.row_block(m0, m1 - m0), w.row_block(n0, n1 - n0),
                                    y.row_block(m0, m1 - m0).col_block(n0, n1 - n0), T(1), beta,
                                    bias ? bias + n0 : nullptr);
  });
  errors.rethrow_if_failed();
#endif
}

}  // namespace sessa::backend::simd::inline SESSA_CPU_ABI
