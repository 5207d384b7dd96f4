// sessa/analysis/influence.hpp: how far a token's influence reaches, measured exactly on any weights.
//
// The feedback branch is linear in its input f once the routing is fixed: with A the feedback attention
// (strictly lower triangular, rows summing to 1) and Gamma the gains, the solve is (I - Gamma A) s = f, so
//   d s_t / d f_j = [(I - Gamma A)^{-1}]_{t,j},
// the same number for every one of the D channels. feedback_system holds one sequence's routing (q_b, k_b,
// gamma) and answers with the backend's own kernels, never forming a T x T matrix:
//   columns(sources)  impulses at the source positions through the feedback solve (forward in time); D
//                     sources share one solve, one per channel;
//   rows(targets)     unit vectors at the target positions through the transposed solve (backward in time,
//                     kernels<B>::feedback_transposed): the influence of every position on one output.
// A layer's routing on its input comes from the layer's own projections (feedback_system(layer, x)).
//
// end_to_end_influence() measures the whole map instead, routing included: || d y_t / d x_j ||_F, the
// Frobenius norm of the (D, D) Jacobian block of a layer's (or a stack of layers') output at t with respect
// to its input at j, by central differences in the model's compute type (use a double policy): for a
// direction v, J v = (y(x + eps v) - y(x - eps v)) / (2 eps) + O(eps^2). Causality makes one pass give J v at
// every t >= j, and the caches make it cheaper still: the prefix [0, j) runs once, each perturbed pass only
// re-runs [j, n) from the truncated caches. probes = 0 uses the D unit vectors (the exact norm, 2 D passes
// per source); probes = K > 0 uses K random sign vectors (Hutchinson: E ||J v||^2 = ||J||_F^2, relative
// standard deviation of the squared norm at most sqrt(2 / K)), 2 K passes. docs/MEMORY.md has the accuracy.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../attention/variants.hpp"
#include "../backend/kernel_set.hpp"
#include "../backend/kernels.hpp"
#include "../concepts.hpp"
#include "../core/hparams.hpp"
#include "../core/numeric.hpp"
#include "../core/tensor.hpp"
#include "../error.hpp"
#include "../model/cache.hpp"
#include "../model/decoder.hpp"
#include "../model/init.hpp"
#include "../model/layer.hpp"
#include "../model/weights.hpp"

namespace sessa::analysis {

namespace detail {

/// Throws value_error unless every position lies in [0, n) and there is at least one.
inline void check_positions(std::span<const index_t> pos, index_t n, const char* what) {
  if (pos.empty()) throw value_error(std::string("no ") + what + " positions given");
  for (const index_t p : pos)
    if (p < 0 || p >= n)
      throw value_error(std::string(what) + " position " + std::to_string(p) + " is outside the sequence [0, " +
                        std::to_string(n) + ")");
}

/// x as an (n, D) host tensor: (n, D), or (1, n, D) (one sequence).
template <class T>
tensor<T> one_sequence(const tensor<T>& x, index_t D, const char* what) {
  const shape_t& s = x.shape();
  const bool two = s.size() == 2 && s[0] > 0 && s[1] == D;
  const bool three = s.size() == 3 && s[0] == 1 && s[1] > 0 && s[2] == D;
  if (!two && !three)
    throw shape_error(std::string(what) + " must have shape (tokens, " + std::to_string(D) + ") or (1, tokens, " +
                      std::to_string(D) + ") with tokens >= 1; got " + shape_string(s));
  return tensor<T>({s[s.size() - 2], D}, x.storage());
}

}  // namespace detail

/// The feedback routing of one sequence (q_b, k_b and the gains gamma of its n tokens) and the exact linear
/// map it defines, s = (I - Gamma A)^{-1} f, evaluated with backend B's feedback kernels. Not safe to use
/// from two threads at once (the solves share a cache and a context).
template <numeric P, backend_tag Backend = backend::default_cpu>
class feedback_system {
 public:
  using T = compute_t<P>;
  using space = space_of<Backend>;
  using kernels = backend::kernels<Backend>;

  /// Routing given explicitly, host tensors: qb (n, D), kb (n, D), gamma (n). c.d_model is D.
  feedback_system(const layer_config& c, const tensor<T>& qb, const tensor<T>& kb, const tensor<T>& gamma)
      : cfg_((c.check(), c)) {
    const index_t D = cfg_.d_model;
    if (qb.shape().size() != 2 || qb.shape()[0] <= 0 || qb.shape()[1] != D)
      throw shape_error("feedback_system: qb must have shape (tokens, " + std::to_string(D) + "); got " +
                        shape_string(qb.shape()));
    n_ = qb.shape()[0];
    if (kb.shape() != qb.shape())
      throw shape_error("feedback_system: kb must have qb's shape " + shape_string(qb.shape()) + "; got " +
                        shape_string(kb.shape()));
    if (gamma.size() != n_)
      throw shape_error("feedback_system: gamma must hold one gain per token (" + std::to_string(n_) + "); got " +
                        shape_string(gamma.shape()));
    for (index_t t = 0; t < n_; ++t)
      if (!(std::abs(static_cast<double>(gamma[t])) < 1.0))
        throw value_error("feedback_system: gain gamma_" + std::to_string(t) + " = " +
                          std::to_string(static_cast<double>(gamma[t])) + " is not in (-1, 1)");
    qb_ = to_space<space>(qb.storage());
    gamma_ = to_space<space>(gamma.storage());
    store_keys(to_space<space>(kb.storage()));
  }

  /// The routing layer l forms on its input x: (n, D) or (1, n, D), host. The layer's own projections
  /// (LayerNorm, W_in, GELU, proj_fb, the gain), run by its backend's kernels.
  template <attention_variant V>
  feedback_system(const layer<P, Backend, V>& l, const tensor<T>& x) : cfg_(l.config()) {
    using W = weight_t<P>;
    const index_t D = cfg_.d_model;
    const tensor<T> xs = detail::one_sequence(x, D, "feedback_system: the layer input x");
    n_ = xs.shape()[0];
    const auto w = l.weights();
    const auto p = params(w, w.mixer);
    const buffer<T, space> xd = to_space<space>(xs.storage());
    buffer<T, space> u(n_ * D), az(n_ * 2 * D), qbkb(n_ * 2 * D);
    gamma_ = buffer<T, space>(n_);
    auto& ctx = ctx_;
    kernels::layer_norm(ctx, cmatrix<T, space>(xd.data(), n_, D), p.ln_w, p.ln_b, static_cast<T>(cfg_.ln_eps),
                        matrix<T, space>(u.data(), n_, D));
    const matrix<T, space> azm(az.data(), n_, 2 * D);
    kernels::linear(ctx, cmatrix<T, space>(u.data(), n_, D), cmatrix<W, space>(p.in_w, 2 * D, D), p.in_b, azm, false);
    kernels::gelu(ctx, azm.col_block(0, D));
    const cmatrix<T, space> a = azm.col_block(0, D);
    const matrix<T, space> qk(qbkb.data(), n_, 2 * D);
    kernels::linear(ctx, a, cmatrix<W, space>(p.mixer.fb_w, 2 * D, D), p.mixer.fb_b, qk, false);
    kernels::linear(ctx, a, cmatrix<W, space>(p.mixer.gamma_ctx, 1, D), p.mixer.gamma_bias,
                    matrix<T, space>(gamma_.data(), n_, 1), false);
    kernels::gain(ctx, gamma_.data(), n_, static_cast<T>(cfg_.gamma_max));
    qb_ = buffer<T, space>(n_ * D);
    buffer<T, space> kb(n_ * D);
    kernels::copy(ctx, cmatrix<T, space>(qk.col_block(0, D)), matrix<T, space>(qb_.data(), n_, D));
    kernels::copy(ctx, cmatrix<T, space>(qk.col_block(D, D)), matrix<T, space>(kb.data(), n_, D));
    store_keys(kb);
  }

  const layer_config& config() const noexcept { return cfg_; }
  /// Tokens n of the sequence.
  index_t length() const noexcept { return n_; }
  /// The routing, on the host: q_b (n, D), k_b (n, D) (as the cache stores them), gamma (n).
  tensor<T> qb() const { return tensor<T>({n_, cfg_.d_model}, to_host(qb_)); }
  tensor<T> gamma() const { return tensor<T>({n_}, to_host(gamma_)); }

  /// s = (I - Gamma A)^{-1} f for f (n, D), host: the feedback solve.
  tensor<T> solve(const tensor<T>& f) const {
    const tensor<T> fs = of_length(f, "feedback_system::solve: f");
    const buffer<T, space> fd = to_space<space>(fs.storage());
    buffer<T, space> out(n_ * cfg_.d_model);
    kernels::feedback(ctx_, cfg_, qmat(), pointer<const T, space>(gamma_.data()), mat(fd), cache_.view(), 0, n_,
                      matrix<T, space>(out.data(), n_, cfg_.d_model));
    return tensor<T>({n_, cfg_.d_model}, to_host(out));
  }

  /// r = (I - Gamma A)^{-T} g for g (n, D), host: the transposed solve, backward in time.
  tensor<T> solve_transposed(const tensor<T>& g) const {
    const tensor<T> gs = of_length(g, "feedback_system::solve_transposed: g");
    const buffer<T, space> gd = to_space<space>(gs.storage());
    buffer<T, space> out(n_ * cfg_.d_model);
    kernels::feedback_transposed(ctx_, cfg_, qmat(), pointer<const T, space>(gamma_.data()), mat(gd),
                                 std::as_const(cache_).view(), 0, n_, matrix<T, space>(out.data(), n_, cfg_.d_model));
    return tensor<T>({n_, cfg_.d_model}, to_host(out));
  }

  /// (n, k): column c is d s_t / d f_{sources[c]} for every t (0 before the source, 1 at it).
  tensor<T> columns(std::span<const index_t> sources) const {
    detail::check_positions(sources, n_, "source");
    return unit_solves(sources, false);
  }

  /// (k, n): row r is d s_{targets[r]} / d f_j for every j (0 after the target, 1 at it).
  tensor<T> rows(std::span<const index_t> targets) const {
    detail::check_positions(targets, n_, "target");
    const tensor<T> cols = unit_solves(targets, true);  // (n, k)
    const index_t k = static_cast<index_t>(targets.size());
    tensor<T> r({k, n_});
    for (index_t c = 0; c < k; ++c)
      for (index_t j = 0; j < n_; ++j) r[c * n_ + j] = cols[j * k + c];
    return r;
  }

 private:
  /// v as (n, D): (n, D) or (1, n, D) with this system's n.
  tensor<T> of_length(const tensor<T>& v, const char* what) const {
    tensor<T> r = detail::one_sequence(v, cfg_.d_model, what);
    if (r.shape()[0] != n_)
      throw shape_error(std::string(what) + " has " + std::to_string(r.shape()[0]) + " tokens; the system has " +
                        std::to_string(n_));
    return r;
  }
  cmatrix<T, space> qmat() const { return cmatrix<T, space>(qb_.data(), n_, cfg_.d_model); }
  cmatrix<T, space> mat(const buffer<T, space>& b) const { return cmatrix<T, space>(b.data(), n_, cfg_.d_model); }

  /// k_b (n, D) into a cache of its own (forward keys and values zero: the feedback kernels do not read them).
  void store_keys(const buffer<T, space>& kb) {
    const index_t D = cfg_.d_model;
    cache_ = layer_cache<P, Backend>(cfg_, 1, n_);
    buffer<T, space> kv(n_ * 2 * cfg_.kv_dim());
    kv.zero();
    kernels::append_cache(ctx_, cfg_, cmatrix<T, space>(kv.data(), n_, 2 * cfg_.kv_dim()), mat(kb), cache_.view(), 0,
                          n_);
    cache_.advance(n_);
    (void)D;
  }

  /// Unit vectors at `pos` (position pos[c] in channel c % D, D of them per solve), solved forward (columns of
  /// the inverse) or transposed (its rows); result (n, k) with column c the answer for pos[c].
  tensor<T> unit_solves(std::span<const index_t> pos, bool transposed) const {
    const index_t D = cfg_.d_model, k = static_cast<index_t>(pos.size());
    tensor<T> result({n_, k}, T(0));
    for (index_t c0 = 0; c0 < k; c0 += D) {
      const index_t m = std::min(D, k - c0);
      tensor<T> e({n_, D}, T(0));
      for (index_t c = 0; c < m; ++c) e[pos[static_cast<std::size_t>(c0 + c)] * D + c] = T(1);
      const tensor<T> s = transposed ? solve_transposed(e) : solve(e);
      for (index_t t = 0; t < n_; ++t)
        for (index_t c = 0; c < m; ++c) result[t * k + c0 + c] = s[t * D + c];
    }
    return result;
  }

  layer_config cfg_;
  index_t n_ = 0;
  buffer<T, space> qb_, gamma_;
  mutable layer_cache<P, Backend> cache_;        // k_b of the sequence; the forward solve writes its s rows
  mutable backend::context<Backend> ctx_;
};

/// Options of end_to_end_influence.
struct finite_difference_options {
  index_t probes = 0;          // 0: the D unit directions (exact norm); K > 0: K random sign directions
  double epsilon = 1e-5;       // step of the central differences (per unit entry of a direction)
  std::uint64_t seed = 1;      // random directions
};

namespace detail {

/// || d y_t / d x_j ||_F for every source j and t, y = layers[L-1](...layers[0](x)), x (n, D) host.
/// Returns (k, n), row c for sources[c] (0 before the source).
template <class Layer>
tensor<double> stack_influence(std::span<const Layer* const> layers, const tensor<typename Layer::scalar_type>& x,
                               std::span<const index_t> sources, const finite_difference_options& o) {
  using T = typename Layer::scalar_type;
  using S = typename Layer::space;
  if (layers.empty()) throw value_error("end_to_end_influence: no layers");
  const index_t D = layers.front()->config().d_model, n = x.shape()[0];
  check_positions(sources, n, "source");
  if (o.probes < 0) throw value_error("end_to_end_influence: probes must be 0 (every direction) or positive, got " +
                                      std::to_string(o.probes));
  if (!(o.epsilon > 0.0) || !std::isfinite(o.epsilon))
    throw value_error("end_to_end_influence: epsilon must be positive and finite, got " + std::to_string(o.epsilon));
  std::vector<typename Layer::cache_type> caches;
  for (const Layer* l : layers) caches.push_back(l->init_cache(1, n));

  // Runs rows [j, n) of x (rows of xs) through the stack from caches holding [0, j); returns (n - j, D) host.
  auto run_from = [&](index_t j, const tensor<T>& xs) {
    tensor<T, S> h = to_space<S>(xs);
    for (std::size_t l = 0; l < layers.size(); ++l) {
      caches[l].truncate(j);
      h = layers[l]->forward(h, caches[l]);
    }
    return to_host(h);
  };
  (void)run_from(0, tensor<T>({1, n, D}, x.storage()));  // every cache holds the whole sequence

  const index_t k = static_cast<index_t>(sources.size());
  const index_t dirs = o.probes == 0 ? D : o.probes;
  const T eps = static_cast<T>(o.epsilon);
  random_stream rng(o.seed);
  tensor<double> result({k, n}, 0.0);
  std::vector<T> v(static_cast<std::size_t>(D));
  for (index_t c = 0; c < k; ++c) {
    const index_t j = sources[static_cast<std::size_t>(c)], m = n - j;
    std::vector<double> sq(static_cast<std::size_t>(m), 0.0);
    for (index_t dir = 0; dir < dirs; ++dir) {
      for (index_t e = 0; e < D; ++e)
        v[static_cast<std::size_t>(e)] = o.probes == 0 ? T(e == dir ? 1 : 0) : T((rng.next() >> 63) ? 1 : -1);
      tensor<T> plus({1, m, D}), minus({1, m, D});
      for (index_t r = 0; r < m; ++r)
        for (index_t e = 0; e < D; ++e) plus[r * D + e] = minus[r * D + e] = x[(j + r) * D + e];
      for (index_t e = 0; e < D; ++e) {
        plus[e] += eps * v[static_cast<std::size_t>(e)];
        minus[e] -= eps * v[static_cast<std::size_t>(e)];
      }
      const tensor<T> yp = run_from(j, plus), ym = run_from(j, minus);
      for (index_t r = 0; r < m; ++r) {
        double acc = 0;
        for (index_t e = 0; e < D; ++e) {
          const double dv = (static_cast<double>(yp[r * D + e]) - static_cast<double>(ym[r * D + e])) / (2.0 * o.epsilon);
          acc += dv * dv;
        }
        sq[static_cast<std::size_t>(r)] += acc;
      }
    }
    // Back to the unperturbed sequence: the next source's prefix must not hold this one's last perturbation.
    tensor<T> base({1, m, D});
    for (index_t i = 0; i < m * D; ++i) base[i] = x[j * D + i];
    (void)run_from(j, base);
    const double norm = o.probes == 0 ? 1.0 : 1.0 / static_cast<double>(o.probes);
    for (index_t r = 0; r < m; ++r) result[c * n + j + r] = std::sqrt(sq[static_cast<std::size_t>(r)] * norm);
  }
  return result;
}

}  // namespace detail

/// || d y_t / d x_j ||_F of a layer, x (n, D) or (1, n, D) host: (k, n), row c for sources[c].
template <numeric P, backend_tag Backend, attention_variant V>
tensor<double> end_to_end_influence(const layer<P, Backend, V>& l, const tensor<compute_t<P>>& x,
                                    std::span<const index_t> sources, const finite_difference_options& o = {}) {
  const layer<P, Backend, V>* one[] = {&l};
  return detail::stack_influence<layer<P, Backend, V>>(
      one, detail::one_sequence(x, l.config().d_model, "end_to_end_influence: x"), sources, o);
}

/// The hidden states of a decoder on one token sequence, host: the embeddings h_0 and, with `upto` = l, the
/// input of layer l (h_l; upto = 0 gives the embeddings). Token ids are checked.
template <class Decoder>
tensor<compute_t<typename Decoder::precision_type>> hidden_states(const Decoder& m, std::span<const std::int64_t> tokens,
                                                                   index_t upto = 0) {
  using T = compute_t<typename Decoder::precision_type>;
  using S = typename Decoder::space;
  const index_t D = m.config().layer.d_model, n = static_cast<index_t>(tokens.size());
  const index_t L = static_cast<index_t>(m.layers().size());
  if (n <= 0) throw value_error("hidden_states: no tokens");
  if (upto < 0 || upto > L)
    throw value_error("hidden_states: layer " + std::to_string(upto) + " is outside [0, " + std::to_string(L) + "]");
  const index_t V = m.config().vocab_size;
  for (index_t r = 0; r < n; ++r)
    if (tokens[static_cast<std::size_t>(r)] < 0 || tokens[static_cast<std::size_t>(r)] >= V)
      throw value_error("hidden_states: token " + std::to_string(tokens[static_cast<std::size_t>(r)]) +
                        " at position " + std::to_string(r) + " is outside the vocabulary [0, " + std::to_string(V) +
                        ")");
  const auto w = m.weights();
  const tensor<typename Decoder::weights_type::value_type> table = tensor<typename Decoder::weights_type::value_type>(
      {V, D}, to_host(w.embedding));
  tensor<T> h({1, n, D});
  for (index_t r = 0; r < n; ++r)
    for (index_t e = 0; e < D; ++e) h[r * D + e] = widen<T>(table[tokens[static_cast<std::size_t>(r)] * D + e]);
  for (index_t l = 0; l < upto; ++l) {
    auto& layer = m.layers()[static_cast<std::size_t>(l)];
    auto cache = layer.init_cache(1, n);
    h = to_host(layer.forward(to_space<S>(h), cache));
  }
  return tensor<T>({n, D}, h.storage());
}

/// || d h_L,t / d h_0,j ||_F of a decoder: the final hidden states (the last layer's output, before norm_f and
/// the head) against the embedding rows, on one token sequence; (k, n), row c for sources[c].
template <class Decoder>
tensor<double> end_to_end_influence(const Decoder& m, std::span<const std::int64_t> tokens,
                                    std::span<const index_t> sources, const finite_difference_options& o = {}) {
  using Layer = typename Decoder::layer_type;
  std::vector<const Layer*> ls;
  for (const auto& l : m.layers()) ls.push_back(&l);
  return detail::stack_influence<Layer>(std::span<const Layer* const>(ls), hidden_states(m, tokens, 0), sources, o);
}

}  // namespace sessa::analysis
