// sessa/backend/cuda/blas.cuh: the dense projections of backend::cuda on cuBLASLt.
//
// Why this file exists: the projections are 18·T·D² of a layer's FLOPs; cuBLASLt runs them at the GPU's
// matrix rate. The library's matrices are row-major; y (M, N) = x (M, K) w (N, K)^T is, read column-major,
// y^T (N, M) = w (N, K) · x^T, so cuBLASLt gets A = w stored column-major (K, N) with op T, B = x stored
// column-major (K, M) with op N, and D = y stored column-major (N, M); every leading dimension is the view's.
//
// Exactness: float runs with CUBLAS_COMPUTE_32F and double with CUBLAS_COMPUTE_64F, so no TF32 and no reduced
// precision ever enters an exact path. Narrow storage (bfloat16 / float16 weights with float activations) runs
// the tensor cores: the activations are rounded to the weights' type into scratch, the product accumulates in
// float (CUBLAS_COMPUTE_32F) and is written as float.
//
// One blas_handle per context (created on first use): the cuBLASLt handle, the algorithm chosen for each
// problem shape (the heuristic runs once per shape, so decode steps skip it), and failures raised as
// backend_error naming the call and cuBLAS's status.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>

#include "../../config.hpp"
#include "../../core/numeric.hpp"
#include "../../error.hpp"
#include "memory.cuh"

namespace sessa::gpu {

/// Throws backend_error("cuBLASLt: `what` failed: <status>") unless s is CUBLAS_STATUS_SUCCESS.
inline void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw backend_error(std::string("cuBLASLt: ") + what + " failed: " + cublasGetStatusName(s) + ": " +
                        cublasGetStatusString(s));
}

template <class T>
constexpr cudaDataType_t data_type() {
  if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
  else if constexpr (std::is_same_v<T, double>) return CUDA_R_64F;
  else if constexpr (std::is_same_v<T, bfloat16>) return CUDA_R_16BF;
  else return CUDA_R_16F;
}

/// The largest power of two (at most 256) that divides both the address and the row stride in bytes: what
/// cuBLASLt's heuristic may assume about a matrix's alignment.
inline std::uint32_t alignment_of(const void* p, std::int64_t ld_bytes) {
  std::uint64_t a = reinterpret_cast<std::uintptr_t>(p) | static_cast<std::uint64_t>(ld_bytes) | 256u;
  return static_cast<std::uint32_t>(a & (~a + 1));  // lowest set bit
}

/// A cuBLASLt handle and the algorithms chosen so far, one per problem shape.
class blas_handle {
 public:
  blas_handle() { check(cublasLtCreate(&h_), "cublasLtCreate"); }
  ~blas_handle() {
    for (auto& [k, p] : plans_) p.release();
    (void)cublasLtDestroy(h_);
  }
  blas_handle(const blas_handle&) = delete;
  blas_handle& operator=(const blas_handle&) = delete;

  /// D (column-major N x M, ldd) = alpha op(A) op(B) + beta D, op(A) = A^T with A column-major (K x N, lda),
  /// op(B) = B with B column-major (K x M, ldb): the library's y = x w^T. In: A, B of type In; out: D of type Out.
  template <class In, class Out>
  void gemm_tn(std::int64_t N, std::int64_t M, std::int64_t K, const In* A, std::int64_t lda, const In* B,
               std::int64_t ldb, Out* D, std::int64_t ldd, Out beta, void* workspace, std::size_t workspace_bytes,
               cudaStream_t stream) {
    constexpr bool f64 = std::is_same_v<Out, double>;
    using scale_t = std::conditional_t<f64, double, float>;
    const scale_t alpha = 1, b = static_cast<scale_t>(beta);
    const key k{data_type<In>(), data_type<Out>(), N, M, K, lda, ldb, ldd,
                alignment_of(A, lda * static_cast<std::int64_t>(sizeof(In))),
                alignment_of(B, ldb * static_cast<std::int64_t>(sizeof(In))),
                alignment_of(D, ldd * static_cast<std::int64_t>(sizeof(Out))), workspace_bytes, beta != Out(0)};
    plan& p = find(k, f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F, f64 ? CUDA_R_64F : CUDA_R_32F);
    check(cublasLtMatmul(h_, p.desc, &alpha, A, p.a, B, p.b, &b, D, p.d, D, p.d, &p.algo, workspace, workspace_bytes,
                         stream),
          "cublasLtMatmul");
  }

 private:
  using key = std::tuple<cudaDataType_t, cudaDataType_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                         std::int64_t, std::int64_t, std::uint32_t, std::uint32_t, std::uint32_t, std::size_t, bool>;
  struct plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
    void release() noexcept {
      if (a) (void)cublasLtMatrixLayoutDestroy(a);
      if (b) (void)cublasLtMatrixLayoutDestroy(b);
      if (d) (void)cublasLtMatrixLayoutDestroy(d);
      if (desc) (void)cublasLtMatmulDescDestroy(desc);
      a = b = d = nullptr;
      desc = nullptr;
    }
  };

  plan& find(const key& k, cublasComputeType_t compute, cudaDataType_t scale) {
    const std::lock_guard<std::mutex> lock(mu_);
    if (auto it = plans_.find(k); it != plans_.end()) return it->second;
    const auto [in_t, out_t, N, M, K, lda, ldb, ldd, align_a, align_b, align_d, ws, with_beta] = k;
    (void)with_beta;
    plan p;
    try {
      check(cublasLtMatmulDescCreate(&p.desc, compute, scale), "cublasLtMatmulDescCreate");
      const cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
      check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof opT), "set TRANSA");
      check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof opN), "set TRANSB");
      check(cublasLtMatrixLayoutCreate(&p.a, in_t, static_cast<std::uint64_t>(K), static_cast<std::uint64_t>(N), lda),
            "cublasLtMatrixLayoutCreate (A)");
      check(cublasLtMatrixLayoutCreate(&p.b, in_t, static_cast<std::uint64_t>(K), static_cast<std::uint64_t>(M), ldb),
            "cublasLtMatrixLayoutCreate (B)");
      check(cublasLtMatrixLayoutCreate(&p.d, out_t, static_cast<std::uint64_t>(N), static_cast<std::uint64_t>(M), ldd),
            "cublasLtMatrixLayoutCreate (D)");
      cublasLtMatmulPreference_t pref = nullptr;
      check(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
      const std::uint64_t ws64 = ws;
      cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws64,
                                                              sizeof ws64);
      if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof align_a);
      if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof align_b);
      if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d, sizeof align_d);
      if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d, sizeof align_d);
      cublasLtMatmulHeuristicResult_t result{};
      int found = 0;
      if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulAlgoGetHeuristic(h_, p.desc, p.a, p.b, p.d, p.d, pref, 1, &result, &found);
      (void)cublasLtMatmulPreferenceDestroy(pref);
      check(s, "cublasLtMatmulAlgoGetHeuristic");
      if (found < 1)
        throw backend_error("cuBLASLt: no algorithm for a " + std::to_string(M) + " x " + std::to_string(N) + " x " +
                            std::to_string(K) + " product of these types and alignments");
      p.algo = result.algo;
    } catch (...) {
      p.release();
      throw;
    }
    return plans_.emplace(k, p).first->second;
  }

  cublasLtHandle_t h_ = nullptr;
  std::mutex mu_;
  std::map<key, plan> plans_;
};

}  // namespace sessa::gpu
