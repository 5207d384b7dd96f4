// sessa/backend/cpu/widen.hpp: loading narrow storage (bfloat16, float16) into compute-type SIMD registers.
//
// Why this file exists: with weights stored as bf16 or f16 a decode step streams half the bytes, and the widening
// must cost less than the bytes it saves, so it happens in registers, on the batch just loaded:
//   bf16 -> f32   zero-extend each 16-bit lane to 32 bits and shift it into the top half (bf16 is the top half of
//                 an IEEE float32, so this is exact): vpmovzxwd + vpslld (AVX-512 or AVX2)
//   f16  -> f32   vcvtph2ps (AVX-512F, or F16C beside AVX): exact, subnormals included
// Every other pairing (a double compute type, a target without these instructions) widens lane by lane through
// sessa::widen, the same conversion the reference backend does, so every path gives the same values.
//   q8_0 -> f32   sign-extend 8-bit lanes to 32 bits and convert (vpmovsxbd + vcvtdq2ps), times the block's scale
//                 (widened once per block and row): exact, since d * q fits float32's mantissa
// The instruction path is chosen at compile time from the target, as xsimd chooses its batch width.
#pragma once

#include <type_traits>

#include <xsimd/xsimd.hpp>

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

#include "../../config.hpp"
#include "../../core/numeric.hpp"
#include "../../core/quant.hpp"
#include "../../core/tensor.hpp"

namespace sessa::backend::simd::inline SESSA_CPU_ABI {  // see config.hpp

/// The widening path this translation unit compiled for storage S into compute type T: "in-register avx512",
/// "in-register avx2", "in-register f16c", "identity" (S == T) or "lane by lane".
template <class T, class S>
constexpr const char* widen_path() noexcept {
  constexpr std::size_t W = xsimd::batch<T>::size;
  if constexpr (std::is_same_v<T, S>) return "identity";
#if defined(__AVX512F__)
  else if constexpr (std::is_same_v<T, float> && W == 16 &&
                     (std::is_same_v<S, bfloat16> || std::is_same_v<S, float16>))
    return "in-register avx512";
  else if constexpr (std::is_same_v<T, float> && W == 16 && std::is_same_v<S, q8_0>)
    return "in-register avx512";
#endif
#if defined(__AVX2__)
  else if constexpr (std::is_same_v<T, float> && W == 8 && std::is_same_v<S, q8_0>) return "in-register avx2";
  else if constexpr (std::is_same_v<T, float> && W == 8 && std::is_same_v<S, bfloat16>) return "in-register avx2";
#endif
#if defined(__F16C__)
  else if constexpr (std::is_same_v<T, float> && W == 8 && std::is_same_v<S, float16>) return "in-register f16c";
#endif
  else return "lane by lane";
}

/// batch<T>::size values of storage type S at p (unaligned) widened to a batch of compute type T.
template <class T, class S>
inline xsimd::batch<T> load_widened(const S* p) noexcept {
  using batch = xsimd::batch<T>;
  constexpr std::size_t W = batch::size;
  if constexpr (std::is_same_v<T, S>) {
    return batch::load_unaligned(p);
  }
#if defined(__AVX512F__)
  // The zero-masked forms: GCC 12 warns about the unmasked ones, which start from an undefined register.
  else if constexpr (std::is_same_v<T, float> && W == 16 && std::is_same_v<S, bfloat16>) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return batch(_mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, _mm512_maskz_cvtepu16_epi32(0xFFFF, h), 16)));
  } else if constexpr (std::is_same_v<T, float> && W == 16 && std::is_same_v<S, float16>) {
    return batch(_mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
  }
#endif
#if defined(__AVX2__)
  else if constexpr (std::is_same_v<T, float> && W == 8 && std::is_same_v<S, bfloat16>) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return batch(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
  }
#endif
#if defined(__F16C__)
  else if constexpr (std::is_same_v<T, float> && W == 8 && std::is_same_v<S, float16>) {
    return batch(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
#endif
  else {
    alignas(64) T lanes[W];
    for (std::size_t i = 0; i < W; ++i) lanes[i] = widen<T>(p[i]);
    return batch::load_aligned(lanes);
  }
}

/// The bf16 pair path of the dot-product tiles (gemm.hpp): one load of 2W bf16 values (a whole register) gives two
/// float batches with one instruction each, no shuffle: the even elements shifted into the top half, the odd ones
/// masked in place. The activations they multiply are reordered the same way once per call (pair_order), so a
/// decode step streams bf16 weights at two cheap ops per 2W values instead of four.
template <class T, class S>
inline constexpr bool has_pair_path =
#if defined(__AVX512F__) || defined(__AVX2__)
    std::is_same_v<T, float> && std::is_same_v<S, bfloat16>;
#else
    false;
#endif

/// Even and odd elements of the 2W bf16 values at p, as floats: even.lane(i) = p[2i], odd.lane(i) = p[2i + 1].
/// OneLoad: the line is loaded once into a register (for tiles that are bound by loads); otherwise the compiler may
/// make it a memory operand of both the shift and the mask, two loads from L1 but one instruction fewer, which is
/// what a stream from memory wants (a decode step: fewer instructions per line in flight; one Zen 5 core streamed
/// bf16 weights at 28 GB/s with the one load, 30-31 without).
template <class T, class S, bool OneLoad = true>
inline void load_pairs(const S* p, xsimd::batch<T>& even, xsimd::batch<T>& odd) noexcept {
  static_assert(has_pair_path<T, S>, "load_pairs: bf16 -> float on AVX-512 or AVX2 only");
#if defined(__AVX512F__)
  if constexpr (xsimd::batch<T>::size == 16) {
    __m512i raw = _mm512_loadu_si512(static_cast<const void*>(p));
#if defined(__GNUC__)
    if constexpr (OneLoad) __asm__("" : "+v"(raw));
#endif
    even = xsimd::batch<T>(_mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, raw, 16)));
    odd = xsimd::batch<T>(_mm512_castsi512_ps(_mm512_maskz_and_epi32(0xFFFF, raw, _mm512_set1_epi32(-65536))));
    return;
  }
#endif
#if defined(__AVX2__)
  if constexpr (xsimd::batch<T>::size == 8) {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    even = xsimd::batch<T>(_mm256_castsi256_ps(_mm256_slli_epi32(raw, 16)));
    odd = xsimd::batch<T>(_mm256_castsi256_ps(_mm256_and_si256(raw, _mm256_set1_epi32(-65536))));
  }
#endif
}

/// dst = src (n values) reordered for load_pairs: each block of 2W values becomes its W even-indexed values, then its
/// W odd-indexed ones; the n % 2W values after the last whole block keep their order.
template <class T>
inline void pair_order(const T* src, index_t n, T* dst) noexcept {
  constexpr index_t W = static_cast<index_t>(xsimd::batch<T>::size);
  index_t k = 0;
  for (; k + 2 * W <= n; k += 2 * W)
    for (index_t i = 0; i < W; ++i) {
      dst[k + i] = src[k + 2 * i];
      dst[k + W + i] = src[k + 2 * i + 1];
    }
  for (; k < n; ++k) dst[k] = src[k];
}

/// The scale of a q8_0 block as float (vcvtph2ps where F16C is compiled for).
inline float block_scale(const q8_0& b) noexcept {
#if defined(__F16C__)
  return _cvtsh_ss(b.d.bits);
#else
  return static_cast<float>(b.d);
#endif
}

/// The q8_0 weights q[0, W) of one block (W = batch<T>::size, q inside the block), converted to T (not scaled).
template <class T>
inline xsimd::batch<T> load_q8(const std::int8_t* q) noexcept {
  using batch = xsimd::batch<T>;
  constexpr std::size_t W = batch::size;
  if constexpr (false) {
  }
#if defined(__AVX512F__)
  else if constexpr (std::is_same_v<T, float> && W == 16) {
    return batch(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)))));
  }
#endif
#if defined(__AVX2__)
  else if constexpr (std::is_same_v<T, float> && W == 8) {
    return batch(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q)))));
  }
#endif
  else {
    alignas(64) T lanes[W];
    for (std::size_t i = 0; i < W; ++i) lanes[i] = static_cast<T>(q[i]);
    return batch::load_aligned(lanes);
  }
}

/// The weights [k, k + W) of a row of q8_0 blocks (k a multiple of W; W divides the block), dequantized to T.
template <class T>
inline xsimd::batch<T> load_dequantized(const q8_0* row, index_t k) noexcept {
  const q8_0& b = row[k / q8_0::block];
  return load_q8<T>(b.q + k % q8_0::block) * xsimd::batch<T>(static_cast<T>(block_scale(b)));
}

/// dst[0, n) = the weights [k0, k0 + n) of a q8_0 row (k0 a multiple of the block), dequantized to T.
template <class T>
inline void dequantize_n(const q8_0* row, index_t k0, index_t n, T* dst) noexcept {
  constexpr index_t W = static_cast<index_t>(xsimd::batch<T>::size);
  static_assert(q8_0::block % W == 0, "dequantize_n: the batch width must divide the q8_0 block");
  index_t i = 0;
  for (; i + W <= n; i += W) load_dequantized<T>(row, k0 + i).store_unaligned(dst + i);
  for (index_t rest = n - i, t = 0; t < rest; ++t) dst[i + t] = dequantize_at<T>(row, k0 + i + t);
}

/// dst[0, n) = the values src[0, n) widened to T.
template <class T, class S>
inline void widen_n(const S* src, index_t n, T* dst) noexcept {
  constexpr index_t W = static_cast<index_t>(xsimd::batch<T>::size);
  index_t i = 0;
  for (; i + W <= n; i += W) load_widened<T>(src + i).store_unaligned(dst + i);
  for (; i < n; ++i) dst[i] = widen<T>(src[i]);
}

}  // namespace sessa::backend::simd::inline SESSA_CPU_ABI
