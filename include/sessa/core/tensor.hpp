// sessa/core/tensor.hpp: the memory types every other file speaks in, each in a memory space S
// (core/memory.hpp; memory::host unless a device backend says otherwise).
//
//   buffer<T, S>         64-byte aligned, contiguous storage of n elements (no shape). Weights, caches and
//                        scratch are made of buffers. A buffer owns memory of its space, or borrows caller
//                        memory (buffer::borrow: an arena, a static array) and then never allocates: growing it
//                        past what it borrowed throws.
//   matrix<T, S>         a non-owning row-major 2-D view (rows, cols) with a leading dimension `ld` >= cols, so
//                        a column block of a wider matrix (the `a` half of [a | z]) is a view without a copy.
//                        matrix<const T, S> (cmatrix) is the read-only form.
//   tensor<T, S>         an owning buffer with a shape of rank 1..4: what callers pass in and get back
//                        ((B, T, D) activations, (B, T, V) logits). tensor::as_matrix() flattens the leading axes.
//   scratch_arena<S>     a few growable byte slots that a backend's kernels carve their scratch from.
//
// Element access from host code (operator[], operator(), span()) exists only for host-accessible spaces; in a
// device space those members are absent, so a host loop over device memory fails to compile. to_space<S>(x),
// to_host(x) and to_device<S>(x) copy buffers and tensors between spaces; nothing else does.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../config.hpp"
#include "../error.hpp"
#include "memory.hpp"

namespace sessa {

/// Aligned storage for `size()` elements of a trivially copyable T in memory space S, owned or borrowed.
/// Copies are deep (and owning).
template <class T, class S = memory::host>
class buffer {
  static_assert(std::is_trivially_copyable_v<T>, "sessa::buffer holds trivially copyable elements only");
  static_assert(memory_space<S>, "sessa::buffer: S must be a memory space (core/memory.hpp)");

 public:
  using value_type = T;
  using space = S;
  using pointer_type = pointer<T, S>;
  using const_pointer_type = pointer<const T, S>;

  buffer() = default;
  /// A buffer over caller memory [p, p + n) of space S: never allocates and never frees.
  static buffer borrow(pointer_type p, index_t n) noexcept {
    buffer b;
    b.data_ = raw(p);
    b.size_ = b.capacity_ = n;
    b.owns_ = false;
    return b;
  }
  explicit buffer(index_t n) { allocate(n); }
  buffer(index_t n, T fill)
    requires(S::host_accessible)
      : buffer(n) {
    std::fill_n(data_, n, fill);
  }
  buffer(std::span<const T> src)
    requires(S::host_accessible)
      : buffer(static_cast<index_t>(src.size())) {
    if (!src.empty()) std::memcpy(data_, src.data(), src.size_bytes());
  }
  buffer(const buffer& o) : buffer(o.size_) {
    if (size_ > 0) S::copy(data_, o.data_, bytes());
  }
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
  /// Sets every element's bytes to zero.
  void zero() {
    if (size_ > 0) S::zero(static_cast<void*>(data_), bytes());
  }

  pointer_type data() noexcept { return pointer_type(data_); }
  const_pointer_type data() const noexcept { return const_pointer_type(data_); }
  index_t size() const noexcept { return size_; }
  std::size_t bytes() const noexcept { return static_cast<std::size_t>(size_) * sizeof(T); }
  bool empty() const noexcept { return size_ == 0; }
  bool owning() const noexcept { return owns_; }

  // Host access: only where host code may touch the space.
  T& operator[](index_t i) noexcept
    requires(S::host_accessible)
  {
    return data_[i];
  }
  const T& operator[](index_t i) const noexcept
    requires(S::host_accessible)
  {
    return data_[i];
  }
  std::span<T> span() noexcept
    requires(S::host_accessible)
  {
    return {data_, static_cast<std::size_t>(size_)};
  }
  std::span<const T> span() const noexcept
    requires(S::host_accessible)
  {
    return {data_, static_cast<std::size_t>(size_)};
  }

 private:
  void allocate(index_t n) {
    if (n < 0) throw shape_error("sessa::buffer: negative size " + std::to_string(n));
    if (n == 0) return;
    if (!mul_fits(n, static_cast<index_t>(sizeof(T))) || n * static_cast<index_t>(sizeof(T)) >
                                                          std::numeric_limits<index_t>::max() - 64)
      throw shape_error("sessa::buffer: " + std::to_string(n) + " elements of " + std::to_string(sizeof(T)) +
                        " bytes do not fit in memory's address range");
    const std::size_t bytes = static_cast<std::size_t>(n) * sizeof(T);
    const std::size_t rounded = (bytes + buffer_alignment - 1) / buffer_alignment * buffer_alignment;
    data_ = static_cast<T*>(S::allocate(rounded));
    size_ = capacity_ = n;
  }
  void release() noexcept {
    if (data_ && owns_) S::deallocate(static_cast<void*>(data_), static_cast<std::size_t>(capacity_) * sizeof(T));
    data_ = nullptr;
    size_ = capacity_ = 0;
    owns_ = true;
  }

  T* data_ = nullptr;
  index_t size_ = 0;
  index_t capacity_ = 0;
  bool owns_ = true;
};

/// A copy of b in memory space Dst (the same space: a deep copy).
template <class Dst, class T, class Src>
buffer<T, Dst> to_space(const buffer<T, Src>& b) {
  buffer<T, Dst> out(b.size());
  memory::copy_n(b.data(), b.size(), out.data());
  return out;
}
/// A host copy of b.
template <class T, class S>
buffer<T, memory::host> to_host(const buffer<T, S>& b) {
  return to_space<memory::host>(b);
}

/// Non-owning row-major 2-D view: element (i, j) is data[i * ld + j], in memory space S.
template <class T, class S = memory::host>
struct matrix {
  using value_type = T;
  using space = S;
  using pointer_type = pointer<T, S>;

  pointer_type data{};
  index_t rows = 0;
  index_t cols = 0;
  index_t ld = 0;  // leading dimension (elements between consecutive rows), >= cols

  constexpr matrix() = default;
  constexpr matrix(pointer_type p, index_t r, index_t c) : data(p), rows(r), cols(c), ld(c) {}
  constexpr matrix(pointer_type p, index_t r, index_t c, index_t l) : data(p), rows(r), cols(c), ld(l) {}
  /// A mutable view converts to a read-only one.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  constexpr matrix(const matrix<U, S>& o) : data(o.data), rows(o.rows), cols(o.cols), ld(o.ld) {}

  /// Element (i, j): host-accessible spaces only.
  constexpr T& operator()(index_t i, index_t j) const noexcept
    requires(S::host_accessible)
  {
    return data[i * ld + j];
  }
  constexpr pointer_type row(index_t i) const noexcept { return data + i * ld; }
  /// Rows [r0, r0 + n).
  constexpr matrix row_block(index_t r0, index_t n) const noexcept { return {data + r0 * ld, n, cols, ld}; }
  /// Columns [c0, c0 + n) of every row.
  constexpr matrix col_block(index_t c0, index_t n) const noexcept { return {data + c0, rows, n, ld}; }
  constexpr bool contiguous() const noexcept { return ld == cols || rows <= 1; }
};

template <class T, class S = memory::host>
using cmatrix = matrix<const T, S>;

/// Shape of a tensor, rank 1..4.
using shape_t = std::vector<index_t>;

inline std::string shape_string(const shape_t& s) {
  std::string out = "(";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  if (s.size() == 1) out += ",";
  return out + ")";
}

/// The element count of a shape; shape_error when it does not fit in index_t (a negative extent counts as 0
/// here; tensor rejects it by name).
inline index_t shape_numel(const shape_t& s) {
  index_t n = 1;
  for (index_t e : s) {
    if (!mul_fits(n, e < 0 ? 0 : e)) throw shape_error("shape " + shape_string(s) + " has too many elements");
    n *= e < 0 ? 0 : e;
  }
  return n;
}

/// Owning dense tensor with a shape, row-major, in memory space S.
template <class T, class S = memory::host>
class tensor {
 public:
  using value_type = T;
  using space = S;

  tensor() = default;
  explicit tensor(shape_t shape) : shape_(std::move(shape)) {
    for (index_t e : shape_)
      if (e < 0) throw shape_error("sessa::tensor: negative extent in shape " + shape_string(shape_));
    buf_.resize(shape_numel(shape_));
  }
  tensor(shape_t shape, T fill)
    requires(S::host_accessible)
      : tensor(std::move(shape)) {
    std::fill_n(buf_.data(), buf_.size(), fill);
  }
  tensor(shape_t shape, std::span<const T> values)
    requires(S::host_accessible)
      : tensor(std::move(shape)) {
    if (static_cast<index_t>(values.size()) != buf_.size())
      throw shape_error("sessa::tensor: " + std::to_string(values.size()) + " values given for shape " +
                        shape_string(shape_));
    if (!values.empty()) std::memcpy(buf_.data(), values.data(), values.size_bytes());
  }
  /// A tensor of the given shape holding a buffer of exactly shape_numel(shape) values.
  tensor(shape_t shape, buffer<T, S> values) : shape_(std::move(shape)), buf_(std::move(values)) {
    if (buf_.size() != shape_numel(shape_))
      throw shape_error("sessa::tensor: a buffer of " + std::to_string(buf_.size()) + " values given for shape " +
                        shape_string(shape_));
  }

  const shape_t& shape() const noexcept { return shape_; }
  index_t rank() const noexcept { return static_cast<index_t>(shape_.size()); }
  index_t dim(index_t i) const { return shape_.at(static_cast<std::size_t>(i < 0 ? rank() + i : i)); }
  index_t size() const noexcept { return buf_.size(); }
  pointer<T, S> data() noexcept { return buf_.data(); }
  pointer<const T, S> data() const noexcept { return buf_.data(); }
  const buffer<T, S>& storage() const noexcept { return buf_; }

  T& operator[](index_t i) noexcept
    requires(S::host_accessible)
  {
    return buf_[i];
  }
  const T& operator[](index_t i) const noexcept
    requires(S::host_accessible)
  {
    return buf_[i];
  }
  std::span<T> span() noexcept
    requires(S::host_accessible)
  {
    return buf_.span();
  }
  std::span<const T> span() const noexcept
    requires(S::host_accessible)
  {
    return buf_.span();
  }

  /// (prod(shape[:-1]), shape[-1]) view.
  matrix<T, S> as_matrix() noexcept {
    const index_t c = shape_.empty() ? 1 : shape_.back();
    return {buf_.data(), c ? size() / c : 0, c};
  }
  cmatrix<T, S> as_matrix() const noexcept {
    const index_t c = shape_.empty() ? 1 : shape_.back();
    return {buf_.data(), c ? size() / c : 0, c};
  }

 private:
  shape_t shape_;
  buffer<T, S> buf_;
};

/// A copy of t in memory space Dst.
template <class Dst, class T, class Src>
tensor<T, Dst> to_space(const tensor<T, Src>& t) {
  return tensor<T, Dst>(t.shape(), to_space<Dst>(t.storage()));
}
/// A host copy of t (read results of a device backend with this).
template <class T, class S>
tensor<T, memory::host> to_host(const tensor<T, S>& t) {
  return to_space<memory::host>(t);
}
/// A copy of the host tensor t in device space Dst (the input of a device backend).
template <class Dst, class T>
tensor<T, Dst> to_device(const tensor<T, memory::host>& t) {
  return to_space<Dst>(t);
}

/// Scratch of a backend's kernels: `slots` growable byte regions of space S. A kernel asks for slot i as n
/// values of T (get<T>(i, n)); a slot grows when asked for more than it holds (contents lost) and otherwise keeps
/// its memory, so calls after the first allocate nothing. A slot over borrowed memory never grows: asking it
/// for more throws. Which slot holds what is the backend's business (slot 0 is the one a borrowed workspace
/// provides, model/cache.hpp).
template <class S = memory::host>
class scratch_arena {
 public:
  static constexpr int slots = 4;

  template <class T>
  pointer<T, S> get(int i, index_t n) {
    buffer<std::byte, S>& b = slot_[check(i)];
    const index_t need = n * static_cast<index_t>(sizeof(T));
    if (b.size() < need) {
      if (!b.owning())
        throw error("sessa::scratch_arena: slot " + std::to_string(i) + " borrows " + std::to_string(b.size()) +
                    " bytes, a kernel needs " + std::to_string(need));
      b.resize(need);
    }
    return memory::pointer_cast<T, S>(b.data());
  }
  /// Slot i over caller memory of `bytes` bytes (aligned to buffer_alignment).
  void borrow(int i, pointer<std::byte, S> p, index_t bytes) {
    slot_[check(i)] = buffer<std::byte, S>::borrow(p, bytes);
  }
  /// Where slot i starts now (tests check that repeated calls do not move it).
  pointer<const std::byte, S> where(int i) const { return slot_[check(i)].data(); }
  /// Bytes held by all slots.
  index_t bytes() const noexcept {
    index_t n = 0;
    for (const auto& b : slot_) n += b.size();
    return n;
  }

 private:
  static std::size_t check(int i) {
    if (i < 0 || i >= slots)
      throw error("sessa::scratch_arena: slot " + std::to_string(i) + " does not exist (0.." +
                  std::to_string(slots - 1) + ")");
    return static_cast<std::size_t>(i);
  }
  buffer<std::byte, S> slot_[slots];
};

}  // namespace sessa
