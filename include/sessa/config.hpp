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

namespace sessa {

/// Signed index type used for every extent and position (matches PyTorch's int64 shapes).
using index_t = std::int64_t;

}  // namespace sessa
