// sessa/core/tensor.hpp: the three memory types every other file speaks in.
//
//   buffer<T>    64-byte aligned, contiguous storage of n elements (no shape). Weights, caches and scratch
//                are made of buffers. A buffer owns heap memory, or borrows caller memory (buffer::borrow:
//                an arena, a static array) and then never allocates: growing it past what it borrowed throws.
//   matrix<T>    a non-owning row-major 2-D view (rows, cols) with a leading dimension `ld` >= cols, so a
//                column block of a wider matrix (the `a` half of [a | z]) is a view without a copy.
//                matrix<const T> is the read-only form.
//   tensor<T>    an owning buffer with a shape of rank 1..4: what callers pass in and get back
//                ((B, T, D) activations, (B, T, V) logits). tensor::as_matrix() flattens the leading axes.
#pragma once

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../config.hpp"
#include "../error.hpp"

namespace sessa {

/// Alignment of every buffer: one cache line, which is also the widest SIMD register (AVX-512).
inline constexpr std::size_t buffer_alignment = 64;

/// Aligned storage for `size()` elements of a trivially copyable T, owned or borrowed. Copies are deep
/// (and owning).
template <class T>
class buffer {
  static_assert(std::is_trivially_copyable_v<T>, "sessa::buffer holds trivially copyable elements only");

 public:
  buffer() = default;
  /// A buffer over caller memory [p, p + n): never allocates and never frees.
  static buffer borrow(T* p, index_t n) noexcept {
    buffer b;
    b.data_ = p;
    b.size_ = b.capacity_ = n;
    b.owns_ = false;
    return b;
  }
  explicit buffer(index_t n) { allocate(n); }
  buffer(index_t n, T fill) : buffer(n) { std::fill_n(data_, n, fill); }
  buffer(std::span<const T> src) : buffer(static_cast<index_t>(src.size())) {
    if (!src.empty()) std::memcpy(data_, src.data(), src.size_bytes());
  }
  buffer(const buffer& o) : buffer(std::span<const T>(o.data_, static_cast<std::size_t>(o.size_))) {}
  buffer(buffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)),
        size_(std::exchange(o.size_, 0)),
        capacity_(std::exchange(o.capacity_, 0)),
        owns_(std::exchange(o.owns_, true)) {}
  buffer& operator=(buffer o) noexcept {
    swap(o);
    return *this;
  }
  ~buffer() { release(); }

  void swap(buffer& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    std::swap(capacity_, o.capacity_);
    std::swap(owns_, o.owns_);
  }

  /// Reallocates to exactly n elements (contents lost) unless the size already matches. A borrowed
  /// buffer only changes its size within what it borrowed.
  void resize(index_t n) {
    if (n == size_) return;
    if (!owns_) {
      if (n < 0 || n > capacity_)
        throw error("sessa::buffer: borrowed storage of " + std::to_string(capacity_) + " elements cannot hold " +
                    std::to_string(n));
      size_ = n;
      return;
    }
    release();
    allocate(n);
  }
  /// Grows to at least n elements (contents lost when it grows); never shrinks.
  void reserve(index_t n) {
    if (n > size_) resize(n);
  }
  void zero() {
    if (size_ > 0) std::memset(static_cast<void*>(data_), 0, static_cast<std::size_t>(size_) * sizeof(T));
  }

  T* data() noexcept { return data_; }
  const T* data() const noexcept { return data_; }
  index_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  bool owning() const noexcept { return owns_; }
  T& operator[](index_t i) noexcept { return data_[i]; }
  const T& operator[](index_t i) const noexcept { return data_[i]; }
  std::span<T> span() noexcept { return {data_, static_cast<std::size_t>(size_)}; }
  std::span<const T> span() const noexcept { return {data_, static_cast<std::size_t>(size_)}; }

 private:
  void allocate(index_t n) {
    if (n < 0) throw shape_error("sessa::buffer: negative size " + std::to_string(n));
    if (n == 0) return;
    const std::size_t bytes = static_cast<std::size_t>(n) * sizeof(T);
    const std::size_t rounded = (bytes + buffer_alignment - 1) / buffer_alignment * buffer_alignment;
    data_ = static_cast<T*>(::operator new(rounded, std::align_val_t{buffer_alignment}));
    size_ = capacity_ = n;
  }
  void release() noexcept {
    if (data_ && owns_) ::operator delete(static_cast<void*>(data_), std::align_val_t{buffer_alignment});
    data_ = nullptr;
    size_ = capacity_ = 0;
    owns_ = true;
  }

  T* data_ = nullptr;
  index_t size_ = 0;
  index_t capacity_ = 0;
  bool owns_ = true;
};

/// Non-owning row-major 2-D view: element (i, j) is data[i * ld + j].
template <class T>
struct matrix {
  T* data = nullptr;
  index_t rows = 0;
  index_t cols = 0;
  index_t ld = 0;  // leading dimension (elements between consecutive rows), >= cols

  constexpr matrix() = default;
  constexpr matrix(T* p, index_t r, index_t c) : data(p), rows(r), cols(c), ld(c) {}
  constexpr matrix(T* p, index_t r, index_t c, index_t l) : data(p), rows(r), cols(c), ld(l) {}
  /// A mutable view converts to a read-only one.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  constexpr matrix(const matrix<U>& o) : data(o.data), rows(o.rows), cols(o.cols), ld(o.ld) {}

  constexpr T& operator()(index_t i, index_t j) const noexcept { return data[i * ld + j]; }
  constexpr T* row(index_t i) const noexcept { return data + i * ld; }
  /// Rows [r0, r0 + n).
  constexpr matrix row_block(index_t r0, index_t n) const noexcept { return {data + r0 * ld, n, cols, ld}; }
  /// Columns [c0, c0 + n) of every row.
  constexpr matrix col_block(index_t c0, index_t n) const noexcept { return {data + c0, rows, n, ld}; }
  constexpr bool contiguous() const noexcept { return ld == cols || rows <= 1; }
};

template <class T>
using cmatrix = matrix<const T>;

/// Shape of a tensor, rank 1..4.
using shape_t = std::vector<index_t>;

inline std::string shape_string(const shape_t& s) {
  std::string out = "(";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  if (s.size() == 1) out += ",";
  return out + ")";
}

inline index_t shape_numel(const shape_t& s) {
  index_t n = 1;
  for (index_t e : s) n *= e;
  return n;
}

/// Owning dense tensor with a shape, row-major.
template <class T>
class tensor {
 public:
  tensor() = default;
  explicit tensor(shape_t shape) : shape_(std::move(shape)) {
    for (index_t e : shape_)
      if (e < 0) throw shape_error("sessa::tensor: negative extent in shape " + shape_string(shape_));
    buf_.resize(shape_numel(shape_));
  }
  tensor(shape_t shape, T fill) : tensor(std::move(shape)) { std::fill_n(buf_.data(), buf_.size(), fill); }
  tensor(shape_t shape, std::span<const T> values) : tensor(std::move(shape)) {
    if (static_cast<index_t>(values.size()) != buf_.size())
      throw shape_error("sessa::tensor: " + std::to_string(values.size()) + " values given for shape " +
                        shape_string(shape_));
    if (!values.empty()) std::memcpy(buf_.data(), values.data(), values.size_bytes());
  }

  const shape_t& shape() const noexcept { return shape_; }
  index_t rank() const noexcept { return static_cast<index_t>(shape_.size()); }
  index_t dim(index_t i) const { return shape_.at(static_cast<std::size_t>(i < 0 ? rank() + i : i)); }
  index_t size() const noexcept { return buf_.size(); }
  T* data() noexcept { return buf_.data(); }
  const T* data() const noexcept { return buf_.data(); }
  T& operator[](index_t i) noexcept { return buf_[i]; }
  const T& operator[](index_t i) const noexcept { return buf_[i]; }
  std::span<T> span() noexcept { return buf_.span(); }
  std::span<const T> span() const noexcept { return buf_.span(); }

  /// (prod(shape[:-1]), shape[-1]) view.
  matrix<T> as_matrix() noexcept {
    const index_t c = shape_.empty() ? 1 : shape_.back();
    return {buf_.data(), c ? size() / c : 0, c};
  }
  cmatrix<T> as_matrix() const noexcept {
    const index_t c = shape_.empty() ? 1 : shape_.back();
    return {buf_.data(), c ? size() / c : 0, c};
  }

 private:
  shape_t shape_;
  buffer<T> buf_;
};

}  // namespace sessa
