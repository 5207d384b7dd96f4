// sessa/model/cache.hpp: per-sequence state of a layer (its cache), the view kernels see of it, and the
// scratch a forward pass uses.
//
// The cache of one layer holds, for every token seen and every batch row (SPEC.md "Recurrent form"):
//   k, v   forward-branch keys (after RoPE) and values   (batch, Hkv, capacity, d)
//   kb     feedback keys                                 (batch, capacity, D)
//   s      mixer outputs, which the feedback attends to  (batch, capacity, D)
// Per kv head the keys of one sequence are contiguous in time, so a decode step streams them.
// All batch rows share one length. The capacity is fixed when the cache is made; extending past it is a
// cache_error, and reset()/truncate() roll the sequence back (exact, since token t depends only on the past).
//
//   layer_cache<P, Backend>   owns the cache in the backend's memory space, values of cache_t<P> (the numeric
//                             policy's storage type), and the scratch of the calls made on it
//   cache_view<C, S>          what kernels receive: pointers into space S, the shape and the length, no ownership
//   workspace<T, Backend>     the scratch of a forward pass in compute type T, sized by rows = batch * chunk, and
//                             the backend's execution context (thread count or stream, and its scratch arena).
//                             It only grows, so after the first decode step no step allocates.
#pragma once

#include <array>
#include <string>

#include "../backend/kernels.hpp"
#include "../backend/tags.hpp"
#include "../concepts.hpp"
#include "../core/budget.hpp"
#include "../core/hparams.hpp"
#include "../core/tensor.hpp"

namespace sessa {

/// Scratch for one forward pass of `rows` = batch * chunk tokens, in compute type T and the memory space of
/// Backend, with Backend's execution context. Buffers only grow.
template <scalar T, backend_tag Backend = backend::default_cpu>
struct workspace {
  using backend_type = Backend;
  using space = space_of<Backend>;

  buffer<T, space> u;      // (rows, D)       LayerNorm output, later s * z
  buffer<T, space> az;     // (rows, 2D)      [a | z], a turned into GELU(a) in place
  buffer<T, space> q;      // (rows, D)       forward queries
  buffer<T, space> kv;     // (rows, 2*Hkv*d) new keys | values
  buffer<T, space> f;      // (rows, D)       forward branch before out_proj
  buffer<T, space> f2;     // (rows, D)       forward branch after out_proj
  buffer<T, space> qbkb;   // (rows, 2D)      feedback queries | keys
  buffer<T, space> gamma;  // (rows)          feedback gains
  buffer<T, space> s;      // (rows, D)       mixer output
  // Grown by layer_forward only when a call longer than prefill_block tokens has batch > 1 (model/layer.hpp).
  buffer<T, space> stage;  // (batch * prefill_block, D)  one block's rows of every sequence, gathered
  /// The backend's execution context: its settings (threads, stream) and its kernels' scratch arena.
  backend::context<Backend> context;

  /// The model buffers above, then `scores`: capacity values of T that a borrowed workspace lends to slot 0 of
  /// the context's scratch arena (the reference kernels' row of attention scores).
  static constexpr std::size_t n_buffers = 10;
  using sizes_t = std::array<index_t, n_buffers>;

  /// Elements each buffer needs for `rows` rows against a cache of `capacity` tokens, in member order.
  /// The one place these sizes are written down: reserve() and borrowed workspaces both use it.
  static constexpr sizes_t sizes(const layer_config& c, index_t rows, index_t capacity) noexcept {
    const index_t D = c.d_model;
    return {rows * D, rows * 2 * D, rows * D, rows * 2 * c.kv_dim(), rows * D,
            rows * D, rows * 2 * D, rows,     rows * D,              capacity};
  }
  /// Bytes of the buffers sizes() lists: what a pass of `rows` rows grows the workspace to.
  static std::uint64_t bytes(const layer_config& c, index_t rows, index_t capacity) noexcept {
    std::uint64_t n = 0;
    for (index_t e : sizes(c, rows, capacity)) n += static_cast<std::uint64_t>(e);
    return n * sizeof(T);
  }
  /// Elementwise maximum (a workspace shared by layers of different shapes).
  static constexpr sizes_t max(const sizes_t& a, const sizes_t& b) noexcept {
    sizes_t m{};
    for (std::size_t i = 0; i < n_buffers; ++i) m[i] = a[i] > b[i] ? a[i] : b[i];
    return m;
  }
  /// Total elements of a layout, each buffer rounded up to whole cache lines.
  static constexpr index_t total(const sizes_t& s) noexcept {
    index_t n = 0;
    for (index_t e : s) n += round_up(e);
    return n;
  }

  void reserve(const layer_config& c, index_t rows, index_t capacity) {
    const sizes_t need = sizes(c, rows, capacity);
    buffer<T, space>* b[n_buffers - 1] = {&u, &az, &q, &kv, &f, &f2, &qbkb, &gamma, &s};
    for (std::size_t i = 0; i + 1 < n_buffers; ++i) b[i]->reserve(need[i]);
  }

  /// Bytes held: the model buffers and the context's scratch arena.
  index_t bytes() const noexcept {
    const buffer<T, space>* b[] = {&u, &az, &q, &kv, &f, &f2, &qbkb, &gamma, &s, &stage};
    index_t n = 0;
    for (const auto* x : b) n += static_cast<index_t>(x->bytes());
    return n + context.scratch.bytes();
  }

  /// A workspace over caller memory of total(layout) elements of space Backend (64-byte aligned); its buffers
  /// never allocate. Kernels that grow scratch beyond slot 0 of the arena (the cpu backend's) still do, once.
  static workspace borrow(pointer<T, space> storage, const sizes_t& layout) {
    workspace w;
    buffer<T, space>* b[n_buffers - 1] = {&w.u, &w.az, &w.q, &w.kv, &w.f, &w.f2, &w.qbkb, &w.gamma, &w.s};
    for (std::size_t i = 0; i + 1 < n_buffers; ++i) {
      *b[i] = buffer<T, space>::borrow(storage, layout[i]);
      storage += round_up(layout[i]);
    }
    w.context.scratch.borrow(0, memory::pointer_cast<std::byte, space>(storage),
                             layout[n_buffers - 1] * static_cast<index_t>(sizeof(T)));
    w.stage = buffer<T, space>::borrow(nullptr, 0);  // never grows: layer_forward reports a call that would need it
    return w;
  }

 private:
  static constexpr index_t round_up(index_t n) noexcept {
    constexpr index_t line = static_cast<index_t>(buffer_alignment / sizeof(T));
    return (n + line - 1) / line * line;
  }
};

/// What a kernel sees of a layer's cache: pointers into memory space S, shape and length. C is the cache's
/// element type (const C for a read-only view). Row j of k(b, h) is the key of position j of sequence b, head h.
template <class C, class S = memory::host>
class cache_view {
 public:
  using value_type = C;
  using space = S;

  constexpr cache_view() = default;
  constexpr cache_view(pointer<C, S> k, pointer<C, S> v, pointer<C, S> kb, pointer<C, S> s, index_t batch,
                       index_t capacity, index_t length, index_t n_kv, index_t d, index_t D) noexcept
      : k_(k), v_(v), kb_(kb), s_(s), batch_(batch), capacity_(capacity), length_(length), n_kv_(n_kv), d_(d), D_(D) {}
  /// A mutable view converts to a read-only one.
  template <class U>
    requires(std::is_same_v<const U, C> && !std::is_same_v<U, C>)
  constexpr cache_view(const cache_view<U, S>& o) noexcept
      : cache_view(o.k_base(), o.v_base(), o.kb_base(), o.s_base(), o.batch(), o.capacity(), o.length(),
                   o.n_kv_heads(), o.head_dim(), o.d_model()) {}

  constexpr index_t batch() const noexcept { return batch_; }
  constexpr index_t capacity() const noexcept { return capacity_; }
  /// Tokens held before the call that received this view.
  constexpr index_t length() const noexcept { return length_; }
  constexpr index_t n_kv_heads() const noexcept { return n_kv_; }
  constexpr index_t head_dim() const noexcept { return d_; }
  constexpr index_t d_model() const noexcept { return D_; }

  /// (capacity, d) keys / values of sequence b, kv head h; (capacity, D) feedback keys / outputs of sequence b.
  constexpr matrix<C, S> k(index_t b, index_t h) const noexcept { return {k_ + ((b * n_kv_ + h) * capacity_) * d_, capacity_, d_}; }
  constexpr matrix<C, S> v(index_t b, index_t h) const noexcept { return {v_ + ((b * n_kv_ + h) * capacity_) * d_, capacity_, d_}; }
  constexpr matrix<C, S> kb(index_t b) const noexcept { return {kb_ + b * capacity_ * D_, capacity_, D_}; }
  constexpr matrix<C, S> s(index_t b) const noexcept { return {s_ + b * capacity_ * D_, capacity_, D_}; }
  /// Base pointers: k and v (batch, Hkv, capacity, d), kb and s (batch, capacity, D).
  constexpr pointer<C, S> k_base() const noexcept { return k_; }
  constexpr pointer<C, S> v_base() const noexcept { return v_; }
  constexpr pointer<C, S> kb_base() const noexcept { return kb_; }
  constexpr pointer<C, S> s_base() const noexcept { return s_; }

 private:
  pointer<C, S> k_{}, v_{}, kb_{}, s_{};
  index_t batch_ = 0, capacity_ = 0, length_ = 0;
  index_t n_kv_ = 0, d_ = 0, D_ = 0;
};

/// The cache of one layer for numeric policy P on Backend: values of cache_t<P> in the backend's memory space.
template <numeric P, backend_tag Backend = backend::default_cpu>
class layer_cache {
 public:
  using value_type = cache_t<P>;
  using backend_type = Backend;
  using space = space_of<Backend>;
  using view_type = cache_view<value_type, space>;
  using const_view_type = cache_view<const value_type, space>;

  layer_cache() = default;
  layer_cache(const layer_config& c, index_t batch, index_t capacity)
      : batch_(batch), capacity_(capacity), n_kv_(c.n_kv_heads), d_(c.head_dim()), D_(c.d_model) {
    c.check();
    if (batch <= 0) throw cache_error("cache batch size must be positive, got " + std::to_string(batch));
    if (capacity <= 0) throw cache_error("cache capacity must be positive, got " + std::to_string(capacity));
    if (!mul_fits(batch, capacity) || !mul_fits(batch * capacity, c.cache_values_per_token()) ||
        !mul_fits(batch * capacity * c.cache_values_per_token(), static_cast<index_t>(sizeof(value_type))))
      throw cache_error("a cache of batch " + std::to_string(batch) + " and capacity " + std::to_string(capacity) +
                        " tokens does not fit in memory's address range");
    memory_plan("a layer cache of batch " + std::to_string(batch) + " and capacity " + std::to_string(capacity) +
                " tokens")
        .add("keys, values, feedback keys and states", static_cast<std::uint64_t>(storage_size(c, batch, capacity)),
             sizeof(value_type))
        .check();
    k_.resize(batch * n_kv_ * capacity * d_);
    v_.resize(batch * n_kv_ * capacity * d_);
    kb_.resize(batch * capacity * D_);
    s_.resize(batch * capacity * D_);
  }

  /// Elements a cache needs: batch * capacity * (2 Hkv d + 2 D).
  static constexpr index_t storage_size(const layer_config& c, index_t batch, index_t capacity) noexcept {
    return batch * capacity * c.cache_values_per_token();
  }

  /// A cache over caller memory of storage_size(c, batch, capacity) elements: it never allocates.
  /// The configuration must already be checked (compile-time-shaped models check it statically).
  layer_cache(const layer_config& c, index_t batch, index_t capacity, pointer<value_type, space> storage) noexcept
      : batch_(batch), capacity_(capacity), n_kv_(c.n_kv_heads), d_(c.head_dim()), D_(c.d_model) {
    const index_t kv = batch * n_kv_ * capacity * d_, fb = batch * capacity * D_;
    k_ = buffer<value_type, space>::borrow(storage, kv);
    v_ = buffer<value_type, space>::borrow(storage + kv, kv);
    kb_ = buffer<value_type, space>::borrow(storage + 2 * kv, fb);
    s_ = buffer<value_type, space>::borrow(storage + 2 * kv + fb, fb);
  }

  index_t batch() const noexcept { return batch_; }
  index_t capacity() const noexcept { return capacity_; }
  index_t length() const noexcept { return length_; }
  index_t remaining() const noexcept { return capacity_ - length_; }
  index_t d_model() const noexcept { return D_; }
  index_t n_kv_heads() const noexcept { return n_kv_; }
  index_t head_dim() const noexcept { return d_; }
  /// Bytes held by the cache storage.
  index_t bytes() const noexcept {
    return (k_.size() + v_.size() + kb_.size() + s_.size()) * index_t(sizeof(value_type));
  }

  /// Forgets every token (keeps the storage).
  void reset() noexcept { length_ = 0; }
  /// Keeps the first n tokens.
  void truncate(index_t n) {
    if (n < 0 || n > length_)
      throw cache_error("cannot truncate a cache of length " + std::to_string(length_) + " to " + std::to_string(n) +
                        " tokens");
    length_ = n;
  }

  /// Throws cache_error unless `batch` rows of `n_new` more tokens fit.
  void require(index_t batch, index_t n_new) const {
    if (capacity_ == 0) throw cache_error("the cache was never initialized (capacity 0); call init_cache first");
    if (batch != batch_)
      throw cache_error("input has batch " + std::to_string(batch) + " but the cache was made for batch " +
                        std::to_string(batch_));
    if (n_new > capacity_ - length_)
      throw cache_error("cache full: capacity " + std::to_string(capacity_) + " tokens, " + std::to_string(length_) +
                        " held, " + std::to_string(n_new) + " more requested");
  }
  /// Commits n appended tokens (called by the mixer after it wrote them).
  void advance(index_t n) noexcept { length_ += n; }

  /// Scratch used by the tensor-level forward()/decode_step() of a layer on this cache. Not state: it
  /// holds nothing between calls, it only keeps its memory so steps after the first do not allocate. Its
  /// context is where those calls take their settings from (scratch.context.threads, a stream).
  workspace<compute_t<P>, Backend> scratch;

  /// The views kernels receive.
  view_type view() noexcept {
    return {k_.data(), v_.data(), kb_.data(), s_.data(), batch_, capacity_, length_, n_kv_, d_, D_};
  }
  const_view_type view() const noexcept {
    return {k_.data(), v_.data(), kb_.data(), s_.data(), batch_, capacity_, length_, n_kv_, d_, D_};
  }
  matrix<value_type, space> k(index_t b, index_t h) noexcept { return view().k(b, h); }
  matrix<value_type, space> v(index_t b, index_t h) noexcept { return view().v(b, h); }
  matrix<value_type, space> kb(index_t b) noexcept { return view().kb(b); }
  matrix<value_type, space> s(index_t b) noexcept { return view().s(b); }
  cmatrix<value_type, space> k(index_t b, index_t h) const noexcept { return view().k(b, h); }
  cmatrix<value_type, space> v(index_t b, index_t h) const noexcept { return view().v(b, h); }
  cmatrix<value_type, space> kb(index_t b) const noexcept { return view().kb(b); }
  cmatrix<value_type, space> s(index_t b) const noexcept { return view().s(b); }

 private:
  index_t batch_ = 0, capacity_ = 0, length_ = 0;
  index_t n_kv_ = 0, d_ = 0, D_ = 0;
  buffer<value_type, space> k_, v_;   // (batch, Hkv, capacity, d)
  buffer<value_type, space> kb_, s_;  // (batch, capacity, D)
};

}  // namespace sessa
