// sessa/config.hpp: build-wide macros and feature detection.
//
// Every other header includes this one first. Nothing here depends on CUDA being present:
// SESSA_HOST_DEVICE expands to `__host__ __device__` only when a CUDA compiler is reading the file,
// so the same headers compile under g++ and nvcc.
#pragma once

#include <cstddef>
#include <cstdint>

#include "version.hpp"  // SESSA_VERSION_MAJOR / _MINOR / _PATCH / _STRING

#if defined(__CUDACC__)
#define SESSA_HOST_DEVICE __host__ __device__
#else
#define SESSA_HOST_DEVICE
#endif

// SESSA_BIT_CAST(T, x): std::bit_cast that nvcc also accepts in device code (std::bit_cast is a host-only
// constexpr function there).
#define SESSA_BIT_CAST(T, x) __builtin_bit_cast(T, x)

#if defined(_OPENMP)
#define SESSA_HAS_OPENMP 1
#else
#define SESSA_HAS_OPENMP 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define SESSA_RESTRICT __restrict__
#else
#define SESSA_RESTRICT
#endif

// SESSA_UNROLL(n): ask the host compiler to unroll the next loop n times. GCC and Clang read
// `#pragma GCC unroll`; nvcc's front end warns on it, so under nvcc (and other compilers) it is empty.
#define SESSA_PRAGMA_(x) _Pragma(#x)
#if (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define SESSA_UNROLL(n) SESSA_PRAGMA_(GCC unroll n)
#else
#define SESSA_UNROLL(n)
#endif

// SESSA_CPU_ABI: the name of an inline namespace around every function whose meaning depends on the target
// instruction set or on OpenMP (the cpu backend's kernels, their blocking constants and per-thread buffers, the
// thread helpers). Two translation units of one program built with different -m / -fopenmp flags then use
// different symbols, each self-consistent, instead of the linker picking one definition for both (which could
// pair an AVX2 packer with an AVX-512 kernel). Plain names, so the namespaces show in symbols and debuggers.
#if defined(__AVX512F__)
#define SESSA_ISA_ avx512
#elif defined(__AVX2__) && defined(__FMA__)
#define SESSA_ISA_ avx2_fma
#elif defined(__AVX2__)
#define SESSA_ISA_ avx2
#elif defined(__AVX__)
#define SESSA_ISA_ avx
#elif defined(__SSE4_2__)
#define SESSA_ISA_ sse4_2
#elif defined(__aarch64__) || defined(__ARM_NEON)
#define SESSA_ISA_ neon
#else
#define SESSA_ISA_ base
#endif
#define SESSA_CAT3_(a, b, c) a##b##c
#define SESSA_CAT3(a, b, c) SESSA_CAT3_(a, b, c)
#if !defined(SESSA_CPU_ABI)
#if defined(_OPENMP)
#define SESSA_CPU_ABI SESSA_CAT3(cpu_, SESSA_ISA_, _omp)
#else
#define SESSA_CPU_ABI SESSA_CAT3(cpu_, SESSA_ISA_, _seq)
#endif
#endif

namespace sessa {

/// Signed index type used for every extent and position (matches PyTorch's int64 shapes).
using index_t = std::int64_t;

}  // namespace sessa
