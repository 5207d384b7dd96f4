// sessa/backend/cpu/simd.hpp: the fast CPU backend, kernels<cpu>.
//
// kernels<cpu> derives from kernels<reference> and overrides the kernels that carry the work:
//   linear      packed, cache-blocked GEMM on xsimd micro-kernels, OpenMP over output tiles (gemm.hpp)
//   attention   flash-style forward branch: query tiles against key tiles, online softmax (attention.hpp)
//   feedback    the blocked feedback solve with partial online-softmax states (feedback.hpp)
//   layer_norm, gelu, multiply, rope   O(T D), vectorized and threaded over rows (elementwise.hpp)
// The rest (gain: T values) is the reference's.
#pragma once

#include "../../concepts.hpp"
#include "../../core/tensor.hpp"
#include "../kernels.hpp"
#include "../tags.hpp"
#include "attention.hpp"
#include "elementwise.hpp"
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

  template <scalar T>
  static void layer_norm(cmatrix<T> x, const T* g, const T* b, T eps, matrix<T> y) {
    simd::layer_norm(x, g, b, eps, y);
  }
  template <scalar T>
  static void gelu(matrix<T> x) {
    simd::gelu(x);
  }
  template <scalar T>
  static void multiply(cmatrix<T> a, cmatrix<T> b, matrix<T> out) {
    simd::multiply(a, b, out);
  }
  template <scalar T>
  static void rope(matrix<T> x, index_t d, index_t pos0, index_t n, const float* inv_freq) {
    simd::rope(x, d, pos0, n, inv_freq);
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
