// sessa/core/numeric.hpp: the numeric policy of a model: its compute type and its storage type.
//
//   compute type   what activations, accumulations and every tensor a caller sees are held in: float or double
//   storage type   what the weights and the cache are stored in: the compute type itself (exact), or a narrower
//                  format, bfloat16 or float16 (IEEE binary16), that kernels widen to the compute type on load;
//                  for weights also q8_0, int8 blocks of 32 with a float16 scale each (core/quant.hpp)
//
// A model's first template parameter is its numeric policy P: a scalar (`float`, `double`: weights and cache in
// that type, exact) or `precision<Compute, Weight, Cache = vector_storage_t<Weight>>` (`precision<float, bfloat16>`:
// bf16 weights and cache, float arithmetic; `precision<float, bfloat16, float>`: bf16 weights, float32 cache;
// `precision<float, q8_0>`: q8_0 matrices, float32 vectors and cache). compute_t<P>, weight_t<P> and cache_t<P> read
// it; the model code is written against those names only (and vector_storage_t<weight_t<P>> for biases and norms),
// so a storage format is a storage type and the kernels that read it, not a change to the model. A backend that has
// no kernel for a storage type fails to compile with a message naming the kernel (backend/kernel_set.hpp).
#pragma once

#include <concepts>
#include <cstdint>
#include <string_view>
#include <type_traits>

#include "../config.hpp"

namespace sessa {

/// bfloat16: the top 16 bits of an IEEE float32. Conversion from float rounds to nearest even (NaN stays NaN).
struct bfloat16 {
  std::uint16_t bits = 0;

  constexpr bfloat16() = default;
  SESSA_HOST_DEVICE constexpr explicit bfloat16(float f) noexcept : bits(from_float(f)) {}
  SESSA_HOST_DEVICE constexpr explicit bfloat16(double d) noexcept : bits(from_float(static_cast<float>(d))) {}
  SESSA_HOST_DEVICE constexpr explicit operator float() const noexcept {
    return SESSA_BIT_CAST(float, static_cast<std::uint32_t>(bits) << 16);
  }
  SESSA_HOST_DEVICE constexpr explicit operator double() const noexcept { return static_cast<double>(float(*this)); }
  static constexpr bfloat16 from_bits(std::uint16_t b) noexcept {
    bfloat16 x;
    x.bits = b;
    return x;
  }
  friend constexpr bool operator==(bfloat16 a, bfloat16 b) noexcept = default;

 private:
  SESSA_HOST_DEVICE static constexpr std::uint16_t from_float(float f) noexcept {
    const std::uint32_t u = SESSA_BIT_CAST(std::uint32_t, f);
    if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu) != 0)
      return static_cast<std::uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
    const std::uint32_t rounding = 0x7FFFu + ((u >> 16) & 1u);
    return static_cast<std::uint16_t>((u + rounding) >> 16);
  }
};

/// IEEE 754 binary16, named float16 (CUDA's headers own the name `half`). Conversion from float rounds to
/// nearest even, with subnormals, infinities and NaN.
struct float16 {
  std::uint16_t bits = 0;

  constexpr float16() = default;
  SESSA_HOST_DEVICE constexpr explicit float16(float f) noexcept : bits(from_float(f)) {}
  SESSA_HOST_DEVICE constexpr explicit float16(double d) noexcept : bits(from_float(static_cast<float>(d))) {}
  SESSA_HOST_DEVICE constexpr explicit operator float() const noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
    const std::uint32_t exp = (bits >> 10) & 0x1Fu, man = bits & 0x3FFu;
    if (exp == 0x1F) return SESSA_BIT_CAST(float, sign | 0x7F800000u | (man << 13));  // inf, NaN
    if (exp != 0) return SESSA_BIT_CAST(float, sign | ((exp + 112u) << 23) | (man << 13));
    // zero or subnormal: man * 2^-24, exact in float
    const float m = static_cast<float>(man) * 5.9604644775390625e-8f;
    return sign ? -m : m;
  }
  SESSA_HOST_DEVICE constexpr explicit operator double() const noexcept { return static_cast<double>(float(*this)); }
  static constexpr float16 from_bits(std::uint16_t b) noexcept {
    float16 x;
    x.bits = b;
    return x;
  }
  friend constexpr bool operator==(float16 a, float16 b) noexcept = default;

 private:
  SESSA_HOST_DEVICE static constexpr std::uint16_t from_float(float f) noexcept {
    const std::uint32_t u = SESSA_BIT_CAST(std::uint32_t, f);
    const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
    const std::uint32_t a = u & 0x7FFFFFFFu;
    if (a >= 0x7F800000u) return static_cast<std::uint16_t>(sign | (a > 0x7F800000u ? 0x7E00u : 0x7C00u));
    if (a >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // rounds to >= 65520: infinity
    if (a < 0x38800000u) {  // below the smallest normal half (2^-14): a subnormal or zero
      if (a < 0x33000000u) return sign;  // at most half the smallest subnormal (2^-25): rounds to zero
      const std::uint32_t e = a >> 23, m = (a & 0x007FFFFFu) | 0x00800000u;
      const std::uint32_t shift = 126u - e;  // value = m * 2^(e - 150); units of 2^-24: m >> (126 - e)
      std::uint32_t q = m >> shift;
      const std::uint32_t rem = m & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
      if (rem > halfway || (rem == halfway && (q & 1u))) ++q;
      return static_cast<std::uint16_t>(sign | q);
    }
    // normal: rebias the exponent (127 -> 15), round the mantissa from 23 to 10 bits
    std::uint32_t h = ((a >> 13) - (112u << 10));
    const std::uint32_t rem = a & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // may carry into the exponent: still correct
    return static_cast<std::uint16_t>(sign | h);
  }
};

/// A value of storage type S widened to compute type T (and back, rounded), in any kernel.
template <class T, class S>
SESSA_HOST_DEVICE constexpr T widen(S s) noexcept {
  if constexpr (std::is_same_v<T, S>) return s;
  else return static_cast<T>(static_cast<float>(s));
}
template <class S, class T>
SESSA_HOST_DEVICE constexpr S narrow(T x) noexcept {
  if constexpr (std::is_same_v<T, S>) return x;
  else if constexpr (std::is_floating_point_v<S>) return static_cast<S>(x);
  else return S(static_cast<float>(x));
}

/// One q8_0 block: 32 weights as int8 with one float16 scale (the weights are d * q[i]).
struct q8_0 {
  static constexpr index_t block = 32;  // weights per block, along a row (the input dimension)
  float16 d{};
  std::int8_t q[32]{};
  friend bool operator==(const q8_0&, const q8_0&) = default;
};
static_assert(sizeof(q8_0) == 34 && alignof(q8_0) == 2, "q8_0 is 34 bytes, packed: a 2-byte scale, 32 int8");

/// Whether S is a block-quantized storage type (each stored element holds S::block weights).
template <class S>
inline constexpr bool is_block_quantized = std::is_same_v<S, q8_0>;

/// What the vector parameters (biases, norms) of a model whose matrices are stored as S are stored as: S itself,
/// except for a block-quantized S (float32: they are a tiny share of the bytes and feed every output directly).
template <class S>
struct vector_storage {
  using type = S;
};
template <>
struct vector_storage<q8_0> {
  using type = float;
};
template <class S>
using vector_storage_t = typename vector_storage<S>::type;

/// Elements of storage type S that hold one row of `cols` weights: cols, or its blocks for a quantized S.
template <class S>
constexpr index_t storage_cols(index_t cols) noexcept {
  if constexpr (is_block_quantized<S>) return (cols + S::block - 1) / S::block;
  else return cols;
}

/// Bytes of storage type S per weight (for bandwidth models): 34 / 32 for q8_0.
template <class S>
constexpr double bytes_per_weight() noexcept {
  if constexpr (is_block_quantized<S>) return static_cast<double>(sizeof(S)) / static_cast<double>(S::block);
  else return static_cast<double>(sizeof(S));
}

/// A storage format a model can keep its weights and cache in.
template <class S>
concept storage_type = std::same_as<S, float> || std::same_as<S, double> || std::same_as<S, bfloat16> ||
                       std::same_as<S, float16>;

/// A storage format a model can keep its weights in: a storage_type, or q8_0 blocks (its matrices; the vectors in
/// vector_storage_t, float32).
template <class S>
concept weight_storage_type = storage_type<S> || std::same_as<S, q8_0>;

/// Compute type Compute (float or double) with the weights stored as Weight and the cache as Cache (by default
/// the weights' type): precision<float, bfloat16> keeps both in bf16, precision<float, bfloat16, float> only the
/// weights (what decode streams most at short contexts), with an exact float32 cache.
template <class Compute, class Weight, class Cache = vector_storage_t<Weight>>
struct precision {
  static_assert(std::same_as<Compute, float> || std::same_as<Compute, double>,
                "sessa::precision<Compute, Weight, Cache>: Compute must be float or double");
  static_assert(weight_storage_type<Weight>, "sessa::precision<Compute, Weight, Cache>: Weight must be float, "
                                             "double, sessa::bfloat16, sessa::float16 or sessa::q8_0");
  static_assert(storage_type<Cache>, "sessa::precision<Compute, Weight, Cache>: Cache must be float, double, "
                                     "sessa::bfloat16 or sessa::float16");
  using compute = Compute;
  using weight = Weight;
  using cache = Cache;
};

template <class P>
struct precision_traits {  // a scalar: everything in that type
  using compute = P;
  using weight = P;
  using cache = P;
};
template <class C, class W, class K>
struct precision_traits<precision<C, W, K>> {
  using compute = C;
  using weight = W;
  using cache = K;
};

template <class P>
using compute_t = typename precision_traits<P>::compute;
template <class P>
using weight_t = typename precision_traits<P>::weight;
template <class P>
using cache_t = typename precision_traits<P>::cache;

/// Name of a storage type, for messages and file metadata.
template <class S>
constexpr std::string_view storage_name() noexcept {
  if constexpr (std::is_same_v<S, float>) return "f32";
  else if constexpr (std::is_same_v<S, double>) return "f64";
  else if constexpr (std::is_same_v<S, bfloat16>) return "bf16";
  else if constexpr (std::is_same_v<S, q8_0>) return "q8_0";
  else return "f16";
}

}  // namespace sessa
