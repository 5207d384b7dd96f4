// sessa/core/quant.hpp: block-quantized weight storage: q8_0, int8 weights in blocks of 32 with a scale each.
//
// Why this file exists: decode streams every weight once per token, so its speed is bytes over bandwidth. q8_0
// keeps a Linear weight (out, in) as rows of blocks along the input dimension: 32 signed 8-bit values q and one
// float16 scale d per block (34 bytes for 32 weights, 1.0625 bytes per weight against 4 for float32), the value
// of weight i of a block being d * q[i]. Quantization is symmetric: d = max|w| / 127 over the block (rounded to
// float16), q = round(w / d) clamped to [-127, 127]; an all-zero block has d = 0. A row whose length is not a
// multiple of 32 ends in a partial block whose unused values are 0, so every shape quantizes.
//
// Only matrices are quantized: biases, norms and the gate's scalar stay float32 (vector_storage_t). The kernels
// (backend/cpu/widen.hpp, gemm.hpp) dequantize a block in registers as they stream it and accumulate in the compute
// type; d * q is exact in float32 (an 11-bit by 8-bit product), so they compute the same products as a float32
// matrix holding the dequantized values.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include "../error.hpp"
#include "numeric.hpp"
#include "tensor.hpp"

namespace sessa {

/// Weight k of a q8_0 row (k counted in weights from the row's start), widened to T.
template <class T>
SESSA_HOST_DEVICE constexpr T dequantize_at(const q8_0* row, index_t k) noexcept {
  const q8_0& b = row[k / q8_0::block];
  return static_cast<T>(static_cast<float>(b.d) * static_cast<float>(b.q[k % q8_0::block]));
}

/// Weight k of a row stored as S (a scalar storage type, or q8_0 blocks), widened to T: what every kernel that reads
/// weights one at a time (the reference backend, the vector kernels' tails) reads.
template <class T, class S>
SESSA_HOST_DEVICE constexpr T weight_at(const S* row, index_t k) noexcept {
  if constexpr (is_block_quantized<S>) return dequantize_at<T>(row, k);
  else return widen<T>(row[k]);
}

/// Quantizes one row of n finite values into storage_cols<q8_0>(n) blocks (the last one padded with zeros).
/// Throws value_error naming `what` for a non-finite value or one whose block scale exceeds float16's range
/// (|w| > 65504 * 127).
template <class T>
void quantize_row_q8_0(const T* src, index_t n, q8_0* dst, const std::string& what = "a weight") {
  for (index_t b0 = 0, blk = 0; b0 < n; b0 += q8_0::block, ++blk) {
    const index_t len = n - b0 < q8_0::block ? n - b0 : q8_0::block;
    double amax = 0;
    for (index_t i = 0; i < len; ++i) {
      const double v = static_cast<double>(src[b0 + i]);
      if (!std::isfinite(v))
        throw value_error(what + " has a non-finite value at column " + std::to_string(b0 + i) +
                          ": q8_0 quantization needs finite weights");
      amax = std::fabs(v) > amax ? std::fabs(v) : amax;
    }
    q8_0 out{};
    out.d = float16(static_cast<float>(amax / 127.0));
    const double d = static_cast<double>(static_cast<float>(out.d));
    if (!std::isfinite(d))
      throw value_error(what + " has a block (columns " + std::to_string(b0) + ".." + std::to_string(b0 + len - 1) +
                        ") with max |w| = " + std::to_string(amax) +
                        ", beyond q8_0's range (its scale must fit float16: |w| <= 65504 * 127)");
    if (d > 0)
      for (index_t i = 0; i < len; ++i) {
        double q = std::nearbyint(static_cast<double>(src[b0 + i]) / d);
        q = q > 127 ? 127 : (q < -127 ? -127 : q);
        out.q[i] = static_cast<std::int8_t>(q);
      }
    dst[blk] = out;
  }
}

/// The n weights of a q8_0 row, widened to T.
template <class T>
void dequantize_row_q8_0(const q8_0* src, index_t n, T* dst) noexcept {
  for (index_t k = 0; k < n; ++k) dst[k] = dequantize_at<T>(src, k);
}

/// Checks the blocks of a q8_0 row of n weights loaded from outside: every scale finite and non-negative, the
/// padding of a partial last block zero, no q of -128. Throws value_error naming `what`.
inline void check_row_q8_0(const q8_0* row, index_t n, const std::string& what) {
  const index_t blocks = storage_cols<q8_0>(n);
  for (index_t b = 0; b < blocks; ++b) {
    const float d = static_cast<float>(row[b].d);
    if (!(d >= 0.0f) || !std::isfinite(d))
      throw value_error(what + ": block " + std::to_string(b) + " has scale " + std::to_string(d) +
                        " (a q8_0 scale must be finite and >= 0)");
    const index_t used = n - b * q8_0::block < q8_0::block ? n - b * q8_0::block : q8_0::block;
    for (index_t i = 0; i < q8_0::block; ++i) {
      if (row[b].q[i] == -128)
        throw value_error(what + ": block " + std::to_string(b) + " holds -128 (q8_0 values lie in [-127, 127])");
      if (i >= used && row[b].q[i] != 0)
        throw value_error(what + ": the padding of its last block (columns past " + std::to_string(n) +
                          ") is not zero");
    }
  }
}

}  // namespace sessa
