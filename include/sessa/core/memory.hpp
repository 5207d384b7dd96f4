// sessa/core/memory.hpp: memory spaces, and the pointer type that keeps host code out of device memory.
//
// A memory space says where the bytes of a buffer live and how they are allocated, cleared and copied
// (as Kokkos' memory spaces and Thrust's systems do). Every buffer, view, tensor, weight set and cache carries
// its backend's space in its type:
//
//   memory::host            ordinary host memory; host code reads and writes it directly
//   a device space          memory only kernels touch: the Thrust backends' spaces (backend/thrust/), CUDA's
//                           global memory (backend/cuda/). `host_accessible` is false.
//
// pointer<T, S> is T* for a host-accessible space and space_ptr<T, S> otherwise: a pointer that can be
// offset, compared and handed to a kernel but has no operator*, operator[] or operator->, so host code that
// dereferences device memory does not compile. This holds even for a space whose bytes sit in host memory
// (thrust_omp): the type, not the address, says who may touch them. raw(p) is the one explicit escape, for
// kernel code (it is what thrust::raw_pointer_cast is to thrust::device_ptr; unlike thrust::device_ptr, no
// implicit per-element copy is ever made).
//
// Data moves between spaces only through explicit calls: memory::copy_n here, and to_space / to_host /
// to_device for buffers, tensors and weights (core/tensor.hpp, model/weights.hpp).
#pragma once

#include <compare>
#include <concepts>
#include <cstddef>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <string_view>
#include <type_traits>
#include <vector>

#include "../config.hpp"

namespace sessa {

/// Alignment of every buffer: one cache line, which is also the widest SIMD register (AVX-512) and more than
/// any GPU vector load needs.
inline constexpr std::size_t buffer_alignment = 64;

/// True when a * b, for non-negative a and b, fits in index_t.
constexpr bool mul_fits(index_t a, index_t b) noexcept {
  return a >= 0 && b >= 0 && (a == 0 || b <= std::numeric_limits<index_t>::max() / a);
}

namespace memory {

/// Host memory: host-accessible, 64-byte aligned allocations from the global operator new.
struct host {
  static constexpr std::string_view name = "host";
  static constexpr bool host_accessible = true;
  static void* allocate(std::size_t bytes) { return ::operator new(bytes, std::align_val_t{buffer_alignment}); }
  static void deallocate(void* p, std::size_t /*bytes*/) noexcept {
    ::operator delete(p, std::align_val_t{buffer_alignment});
  }
  static void zero(void* p, std::size_t bytes) { std::memset(p, 0, bytes); }
  /// Copies inside the space, into it from host memory, and out of it into host memory.
  static void copy(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
  static void copy_from_host(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
  static void copy_to_host(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
};

}  // namespace memory

/// What a memory space provides (see memory::host). Allocation returns memory aligned to buffer_alignment.
template <class S>
concept memory_space = std::is_empty_v<S> && requires(void* p, const void* c, std::size_t n) {
  { S::name } -> std::convertible_to<std::string_view>;
  { S::host_accessible } -> std::convertible_to<bool>;
  { S::allocate(n) } -> std::same_as<void*>;
  S::deallocate(p, n);
  S::zero(p, n);
  S::copy(p, c, n);
  S::copy_from_host(p, c, n);
  S::copy_to_host(p, c, n);
};

/// True when host code may read and write memory of space S directly.
template <class S>
inline constexpr bool host_accessible_v = S::host_accessible;

/// A pointer into a memory space that host code cannot dereference. Kernels take the address with raw().
template <class T, class S>
class space_ptr {
 public:
  using element_type = T;
  using space = S;

  constexpr space_ptr() noexcept = default;
  constexpr space_ptr(std::nullptr_t) noexcept {}
  SESSA_HOST_DEVICE constexpr explicit space_ptr(T* p) noexcept : p_(p) {}
  /// A pointer to T converts to a pointer to const T.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  constexpr space_ptr(space_ptr<U, S> o) noexcept : p_(o.get()) {}

  /// The address, for kernel code only (see raw()).
  SESSA_HOST_DEVICE constexpr T* get() const noexcept { return p_; }
  constexpr explicit operator bool() const noexcept { return p_ != nullptr; }

  constexpr space_ptr& operator+=(index_t i) noexcept {
    p_ += i;
    return *this;
  }
  constexpr space_ptr& operator-=(index_t i) noexcept {
    p_ -= i;
    return *this;
  }
  friend constexpr space_ptr operator+(space_ptr p, index_t i) noexcept { return space_ptr(p.p_ + i); }
  friend constexpr space_ptr operator+(index_t i, space_ptr p) noexcept { return space_ptr(p.p_ + i); }
  friend constexpr space_ptr operator-(space_ptr p, index_t i) noexcept { return space_ptr(p.p_ - i); }
  friend constexpr index_t operator-(space_ptr a, space_ptr b) noexcept { return a.p_ - b.p_; }
  friend constexpr bool operator==(space_ptr a, space_ptr b) noexcept = default;
  friend constexpr bool operator==(space_ptr a, std::nullptr_t) noexcept { return a.p_ == nullptr; }
  friend constexpr auto operator<=>(space_ptr a, space_ptr b) noexcept { return std::compare_three_way{}(a.p_, b.p_); }

 private:
  T* p_ = nullptr;
};

/// The pointer type of space S: T* when host code may touch it, space_ptr<T, S> otherwise.
template <class T, class S>
using pointer = std::conditional_t<S::host_accessible, T*, space_ptr<T, S>>;

/// The address behind a pointer of any space. Host code calls it only to hand memory to a kernel.
template <class T>
SESSA_HOST_DEVICE constexpr T* raw(T* p) noexcept {
  return p;
}
template <class T, class S>
SESSA_HOST_DEVICE constexpr T* raw(space_ptr<T, S> p) noexcept {
  return p.get();
}

namespace memory {

/// The same address as a pointer to U (for byte arenas handing out typed regions).
template <class U, class S, class P>
constexpr pointer<U, S> pointer_cast(P p) noexcept {
  using V = std::remove_pointer_t<decltype(raw(p))>;
  if constexpr (std::is_const_v<V>) {
    static_assert(std::is_const_v<U>, "sessa::memory::pointer_cast: cannot cast const away");
  }
  return pointer<U, S>(reinterpret_cast<U*>(raw(p)));
}

/// The space of a pointer type: host for T*, S for space_ptr<T, S>.
template <class P>
struct space_of_pointer {
  using type = host;
};
template <class T, class S>
struct space_of_pointer<space_ptr<T, S>> {
  using type = S;
};

/// Copies n values from src to dst, each in the space its pointer type names, synchronously: within one
/// space, host to device, device to host, or between two device spaces through host memory.
template <class SrcPtr, class DstPtr>
void copy_n(SrcPtr src, index_t n, DstPtr dst) {
  using Src = typename space_of_pointer<SrcPtr>::type;
  using Dst = typename space_of_pointer<DstPtr>::type;
  using T = std::remove_const_t<std::remove_pointer_t<decltype(raw(src))>>;
  static_assert(std::is_same_v<T, std::remove_pointer_t<decltype(raw(dst))>>,
                "sessa::memory::copy_n: source and destination hold different types");
  static_assert(std::is_trivially_copyable_v<T>, "sessa::memory::copy_n copies trivially copyable values only");
  if (n <= 0) return;
  const std::size_t bytes = static_cast<std::size_t>(n) * sizeof(T);
  void* d = static_cast<void*>(raw(dst));
  const void* s = static_cast<const void*>(raw(src));
  if constexpr (std::is_same_v<Dst, Src>) {
    Dst::copy(d, s, bytes);
  } else if constexpr (std::is_same_v<Dst, host>) {
    Src::copy_to_host(d, s, bytes);
  } else if constexpr (std::is_same_v<Src, host>) {
    Dst::copy_from_host(d, s, bytes);
  } else {  // two different device spaces: through a host bounce buffer
    std::vector<std::byte> bounce(bytes);
    Src::copy_to_host(bounce.data(), s, bytes);
    Dst::copy_from_host(d, bounce.data(), bytes);
  }
}

}  // namespace memory

}  // namespace sessa
