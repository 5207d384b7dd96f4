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
#include "attention.hpp"
#include "feedback.hpp"
#include "gemm.hpp"
#include "reference.hpp"

namespace sessa::backend {

template <>
struct kernels<cpu> : kernels<reference> {
  template <scalar T>
  static void linear(cmatrix<T> x, cmatrix<T> w, const T* bias, matrix<T> y, bool accumulate = false) {
    simd::linear(x, w, bias, y, accumulate);
  }

  /// Forward branch (flash style, attention.hpp); same contract as kernels<reference>::attention.
  template <scalar T, attention_variant A>
  static void attention(const A& variant, const layer_config& c, cmatrix<T> q, const layer_cache<T>& cache,
                        index_t pos0, index_t n, matrix<T> out, workspace<T>& ws) {
    simd::attention(variant, c, q, cache, pos0, n, out, ws);
  }

  /// Feedback solve (blocked, feedback.hpp); same contract as kernels<reference>::feedback.
  template <scalar T>
  static void feedback(const layer_config& c, cmatrix<T> qb, const T* gamma, cmatrix<T> f, layer_cache<T>& cache,
                       index_t pos0, index_t n, matrix<T> out, workspace<T>& ws) {
    simd::feedback(c, qb, gamma, f, cache, pos0, n, out, ws);
  }
};

}  // namespace sessa::backend
