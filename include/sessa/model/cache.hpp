// sessa/model/cache.hpp: per-sequence state of a layer (its cache) and the scratch a forward pass uses.
//
// The cache of one layer holds, for every token seen and every batch row (SPEC.md "Recurrent form"):
//   k, v   forward-branch keys (after RoPE) and values   (batch, Hkv, capacity, d)
//   kb     feedback keys                                 (batch, capacity, D)
//   s      mixer outputs, which the feedback attends to  (batch, capacity, D)
// Per kv head the keys of one sequence are contiguous in time, so a decode step streams them.
// All batch rows share one length. The capacity is fixed when the cache is made; extending past it is a
// cache_error, and reset()/truncate() roll the sequence back (exact, since token t depends only on the past).
//
// workspace<T> is the scratch of a forward pass, sized by rows = batch * chunk. It only grows, so after the
// first decode step no step allocates.
#pragma once

#include <array>
#include <string>

#include "../concepts.hpp"
#include "../core/hparams.hpp"
#include "../core/tensor.hpp"

namespace sessa {

/// Scratch for one forward pass of `rows` = batch * chunk tokens. Buffers only grow.
template <scalar T>
struct workspace {
  buffer<T> u;       // (rows, D)      LayerNorm output, later s * z
  buffer<T> az;      // (rows, 2D)     [a | z], a turned into GELU(a) in place
  buffer<T> q;       // (rows, D)      forward queries
  buffer<T> kv;      // (rows, 2*Hkv*d) new keys | values
  buffer<T> f;       // (rows, D)      forward branch before out_proj
  buffer<T> f2;      // (rows, D)      forward branch after out_proj
  buffer<T> qbkb;    // (rows, 2D)     feedback queries | keys
  buffer<T> gamma;   // (rows)         feedback gains
  buffer<T> s;       // (rows, D)      mixer output
  buffer<T> scores;  // (capacity)     one row of attention scores (reference kernels)
  // Grown by the cpu backend's attention / feedback kernels when they run (backend/cpu/attention.hpp,
  // feedback.hpp); not reserved here, so the reference backend never allocates them.
  buffer<T> fb_state;  // (rows, D + 2)          feedback: online-softmax state per row, acc | m | l
  buffer<T> fb_block;  // (batch, Bk, Bk + 2)    feedback: probabilities of the diagonal block | alpha | coef
  buffer<T> partials;  // (parts, rows, dv + 2)  split-K partial softmax states, merged after the pass
  // Grown by layer_forward only when a call longer than prefill_block tokens has batch > 1 (model/layer.hpp).
  buffer<T> stage;     // (batch * prefill_block, D)  one block's rows of every sequence, gathered

  static constexpr std::size_t n_buffers = 10;
  using sizes_t = std::array<index_t, n_buffers>;

  /// Elements each buffer needs for `rows` rows against a cache of `capacity` tokens, in member order.
  /// The one place these sizes are written down: reserve() and borrowed workspaces both use it.
  static constexpr sizes_t sizes(const layer_config& c, index_t rows, index_t capacity) noexcept {
    const index_t D = c.d_model;
    return {rows * D, rows * 2 * D, rows * D, rows * 2 * c.kv_dim(), rows * D,
            rows * D, rows * 2 * D, rows,     rows * D,              capacity};
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
    buffer<T>* b[n_buffers] = {&u, &az, &q, &kv, &f, &f2, &qbkb, &gamma, &s, &scores};
    for (std::size_t i = 0; i < n_buffers; ++i) b[i]->reserve(need[i]);
  }

  /// A workspace over caller memory of total(layout) elements (64-byte aligned); it never allocates.
  static workspace borrow(T* storage, const sizes_t& layout) noexcept {
    workspace w;
    buffer<T>* b[n_buffers] = {&w.u, &w.az, &w.q, &w.kv, &w.f, &w.f2, &w.qbkb, &w.gamma, &w.s, &w.scores};
    for (std::size_t i = 0; i < n_buffers; ++i) {
      *b[i] = buffer<T>::borrow(storage, layout[i]);
      storage += round_up(layout[i]);
    }
    w.stage = buffer<T>::borrow(nullptr, 0);  // never grows: layer_forward reports a call that would need it
    return w;
  }

 private:
  static constexpr index_t round_up(index_t n) noexcept {
    constexpr index_t line = static_cast<index_t>(buffer_alignment / sizeof(T));
    return (n + line - 1) / line * line;
  }
};

template <scalar T>
class layer_cache {
 public:
  layer_cache() = default;
  layer_cache(const layer_config& c, index_t batch, index_t capacity)
      : batch_(batch), capacity_(capacity), n_kv_(c.n_kv_heads), d_(c.head_dim()), D_(c.d_model) {
    c.check();
    if (batch <= 0) throw cache_error("cache batch size must be positive, got " + std::to_string(batch));
    if (capacity <= 0) throw cache_error("cache capacity must be positive, got " + std::to_string(capacity));
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
  layer_cache(const layer_config& c, index_t batch, index_t capacity, T* storage) noexcept
      : batch_(batch), capacity_(capacity), n_kv_(c.n_kv_heads), d_(c.head_dim()), D_(c.d_model) {
    const index_t kv = batch * n_kv_ * capacity * d_, fb = batch * capacity * D_;
    k_ = buffer<T>::borrow(storage, kv);
    v_ = buffer<T>::borrow(storage + kv, kv);
    kb_ = buffer<T>::borrow(storage + 2 * kv, fb);
    s_ = buffer<T>::borrow(storage + 2 * kv + fb, fb);
  }

  index_t batch() const noexcept { return batch_; }
  index_t capacity() const noexcept { return capacity_; }
  index_t length() const noexcept { return length_; }
  index_t remaining() const noexcept { return capacity_ - length_; }
  index_t d_model() const noexcept { return D_; }
  index_t n_kv_heads() const noexcept { return n_kv_; }
  index_t head_dim() const noexcept { return d_; }
  /// Bytes held by the cache storage.
  index_t bytes() const noexcept { return (k_.size() + v_.size() + kb_.size() + s_.size()) * index_t(sizeof(T)); }

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
  /// holds nothing between calls, it only keeps its memory so steps after the first do not allocate.
  workspace<T> scratch;

  matrix<T> k(index_t b, index_t h) noexcept { return {k_.data() + ((b * n_kv_ + h) * capacity_) * d_, capacity_, d_}; }
  matrix<T> v(index_t b, index_t h) noexcept { return {v_.data() + ((b * n_kv_ + h) * capacity_) * d_, capacity_, d_}; }
  matrix<T> kb(index_t b) noexcept { return {kb_.data() + b * capacity_ * D_, capacity_, D_}; }
  matrix<T> s(index_t b) noexcept { return {s_.data() + b * capacity_ * D_, capacity_, D_}; }
  cmatrix<T> k(index_t b, index_t h) const noexcept { return const_cast<layer_cache*>(this)->k(b, h); }
  cmatrix<T> v(index_t b, index_t h) const noexcept { return const_cast<layer_cache*>(this)->v(b, h); }
  cmatrix<T> kb(index_t b) const noexcept { return const_cast<layer_cache*>(this)->kb(b); }
  cmatrix<T> s(index_t b) const noexcept { return const_cast<layer_cache*>(this)->s(b); }

 private:
  index_t batch_ = 0, capacity_ = 0, length_ = 0;
  index_t n_kv_ = 0, d_ = 0, D_ = 0;
  buffer<T> k_, v_;    // (batch, Hkv, capacity, d)
  buffer<T> kb_, s_;   // (batch, capacity, D)
};

}  // namespace sessa
