// One model shared by many threads: the thread-safety contract of docs/API.md ("Thread safety"). A loaded layer
// or decoder is read-only, so any number of threads may run it at once, each with its own cache (and its own
// workspace and context, which a cache carries). Here every thread runs its own prompts through a stateless
// prefill, a prefill into a cache, token-by-token decode and chunked prefill, all threads at once and several
// times over, and must reproduce bit for bit what the same calls gave when run one after another beforehand.
//
// Built with ThreadSanitizer (SESSA_SANITIZE=thread; OpenMP off, the threads are these std::threads) the cases
// also show that the paths they run have no data race. In the OpenMP builds several user threads open the cpu
// backend's thread teams at the same time, each team sized by its own context.
#include <catch2/catch.hpp>

#include "support.hpp"

#include <atomic>
#include <chrono>
#include <cstring>
#include <exception>
#include <latch>
#include <span>
#include <thread>
#include <vector>

using namespace sessa;

namespace {

#if defined(SESSA_TEST_THRUST_OMP)
using shared_backends = std::tuple<backend::thrust_omp>;
#else
using shared_backends = std::tuple<backend::reference, backend::cpu>;
#endif

constexpr int n_threads = 6;
constexpr int rounds = 3;  // each thread runs its session this often, so sessions overlap in every phase

const layer_config shape{32, 4, 2, true, 0.999, 1e-5};  // GQA with RoPE: every kernel of the layer runs
const decoder_config dec_shape{shape, 41, 2, true};

/// Everything a session produced, in order, for a bitwise comparison.
template <class T>
struct transcript {
  std::vector<T> values;
  void add(const tensor<T>& t) { values.insert(values.end(), t.span().begin(), t.span().end()); }
};

template <class T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

/// Sequence i's shape: batch 1 or 2 and 10 to 25 tokens, so that threads sit in different phases at once.
index_t batch_of(int i) { return 1 + i % 2; }
index_t tokens_of(int i) { return 10 + 3 * i; }

/// x_t (batch, D): token t of every batch row of x (batch, n, D).
template <class T>
tensor<T> token_rows(const tensor<T>& x, index_t t) {
  tensor<T> xt({x.dim(0), x.dim(2)});
  const tensor<T> s = test::slice_tokens(x, t, 1);
  std::copy_n(s.data(), s.size(), xt.data());
  return xt;
}

/// Sequence i on a layer through its tensor forms: stateless prefill; then, on one cache, a prefill of a third
/// of the tokens, four decode steps and the rest in chunks of 3.
template <class L>
std::vector<typename L::scalar_type> layer_session(const L& layer, int i) {
  using T = typename L::scalar_type;
  const index_t batch = batch_of(i), n = tokens_of(i), p = n / 3;
  const tensor<T> x = test::random_tensor<T>({batch, n, shape.d_model}, 200 + static_cast<std::uint64_t>(i));
  transcript<T> out;
  out.add(layer.forward(x));
  auto cache = layer.init_cache(batch, n);
  out.add(layer.forward(test::slice_tokens(x, 0, p), cache));
  for (index_t t = p; t < p + 4; ++t) out.add(layer.decode_step(token_rows(x, t), cache));
  for (index_t t0 = p + 4; t0 < n; t0 += 3)
    out.add(layer.forward(test::slice_tokens(x, t0, std::min<index_t>(3, n - t0)), cache));
  return out.values;
}

/// Sequence i on a decoder: stateless prefill; then, on one cache, a prefill of a third of the tokens, four
/// decode steps and the rest in chunks of 3, the last chunk with logits_for::last. `threads`, when positive, is
/// the cache's own CPU thread count (cpu backend); the stateless prefill, whose cache the caller cannot reach
/// and which therefore follows the process-wide default, is then left out.
template <class M>
std::vector<typename M::scalar_type> decoder_session(const M& model, int i, int threads = 0) {
  using T = typename M::scalar_type;
  const index_t batch = batch_of(i), n = tokens_of(i), p = n / 3;
  const tensor<std::int64_t> tok =
      test::random_tokens(batch, n, dec_shape.vocab_size, 300 + static_cast<std::uint64_t>(i));
  transcript<T> out;
  if (threads == 0) out.add(model.forward(tok));
  auto cache = model.init_cache(batch, n);
  if constexpr (std::is_same_v<typename M::backend_type, backend::cpu>) cache.scratch.context.threads = threads;
  out.add(model.forward(test::slice_tokens(tok, 0, p), cache));
  for (index_t t = p; t < p + 4; ++t) {
    const tensor<std::int64_t> step = test::slice_tokens(tok, t, 1);  // (batch, 1): one id per batch row
    out.add(model.decode_step(std::span<const std::int64_t>(step.data(), static_cast<std::size_t>(batch)), cache));
  }
  for (index_t t0 = p + 4; t0 < n; t0 += 3) {
    const index_t c = std::min<index_t>(3, n - t0);
    out.add(model.forward(test::slice_tokens(tok, t0, c), cache, t0 + c == n ? logits_for::last : logits_for::all));
  }
  return out.values;
}

/// Runs session(i) for i in [0, n_threads) once each, one after another (the expected results), then on
/// n_threads threads at once, `rounds` times each, released together; every concurrent result must equal the
/// serial one bit for bit. Assertions stay on the calling thread (Catch2's are not thread-safe); an exception
/// in a worker is rethrown here. `during` runs over and over on the calling thread until the workers finish.
template <class Session, class During>
void check_concurrent(Session session, During during) {
  using result = decltype(session(0));
  std::vector<result> expected;
  for (int i = 0; i < n_threads; ++i) expected.push_back(session(i));

  std::vector<std::vector<result>> got(n_threads);
  std::vector<std::exception_ptr> errors(n_threads);
  std::latch start(n_threads + 1);
  std::atomic<int> running{n_threads};
  {
    std::vector<std::jthread> threads;
    for (int i = 0; i < n_threads; ++i)
      threads.emplace_back([&, i] {
        start.arrive_and_wait();
        try {
          for (int r = 0; r < rounds; ++r) got[i].push_back(session(i));
        } catch (...) {
          errors[i] = std::current_exception();
        }
        running.fetch_sub(1);
      });
    start.arrive_and_wait();
    while (running.load() > 0) during();
  }  // joined

  for (int i = 0; i < n_threads; ++i) {
    if (errors[i]) std::rethrow_exception(errors[i]);
    REQUIRE(got[i].size() == rounds);
    for (int r = 0; r < rounds; ++r) {
      CAPTURE(i, r);
      CHECK(bitwise_equal(got[i][r], expected[i]));
    }
  }
}

template <class Session>
void check_concurrent(Session session) {
  check_concurrent(session, [] { std::this_thread::sleep_for(std::chrono::milliseconds(1)); });
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("threads sharing one layer, each with its own cache, match serial runs bit for bit",
                        "[concurrency]", shared_backends) {
  using B = TestType;
  const test::host_model<layer<float, B>> L(shape, random_layer_weights<float>(shape, 7));
  check_concurrent([&](int i) { return layer_session(L, i); });
}

TEMPLATE_LIST_TEST_CASE("threads sharing one decoder, each with its own cache, match serial runs bit for bit",
                        "[concurrency]", shared_backends) {
  using B = TestType;
  const test::host_model<decoder<float, B>> M(dec_shape, random_decoder_weights<float>(dec_shape, 8));
  check_concurrent([&](int i) { return decoder_session(M, i); });
}

#if !defined(SESSA_TEST_DEVICE_SUITE)

TEST_CASE("threads running one model with their own CPU thread counts match serial runs bit for bit",
          "[concurrency][cpu]") {
  // Thread i's calls use 1 + i % 3 threads, set in its own contexts: a decoder cache's and, for the layer, a
  // workspace of its own (the core form). Meanwhile the test's thread keeps changing the process-wide default,
  // which contexts with their own count must not see. The thread count is part of what the serial run repeats:
  // split-K changes the order of a sum, so results are reproducible per count, not across counts.
  //
  // Tiny tiles and thresholds put these small shapes on the threaded, multi-tile and split-K paths (with
  // OpenMP); flash_params is set before any call and restored after the last, as its contract asks.
  const test::settings_guard guard;
  auto& tp = backend::simd::flash_params;
  tp.query_rows = 8;
  tp.key_tile = 4;
  tp.fb_block = 4;
  tp.fb_rows = 8;
  tp.min_split_keys = 2;
  tp.parallel_flops = 0;
  const auto threads_of = [](int i) { return 1 + i % 3; };
  int next_default = 0;
  const auto change_default = [&] {
    set_num_threads(1 + next_default++ % 3);
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  };

  SECTION("decoder") {
    const decoder<float, backend::cpu> M(dec_shape, random_decoder_weights<float>(dec_shape, 9));
    check_concurrent([&](int i) { return decoder_session(M, i, threads_of(i)); }, change_default);
  }
  SECTION("layer, core form on a workspace of each thread's own") {
    const layer<float, backend::cpu> L(shape, random_layer_weights<float>(shape, 10));
    const auto session = [&](int i) {
      const index_t batch = batch_of(i), n = tokens_of(i), D = shape.d_model;
      const tensor<float> x = test::random_tensor<float>({batch, n, D}, 400 + static_cast<std::uint64_t>(i));
      workspace<float, backend::cpu> ws;
      ws.context.threads = threads_of(i);
      auto cache = L.init_cache(batch, n);
      // Chunks of 1, 2, 3, ... tokens: a decode step, then chunked prefills of growing length.
      transcript<float> out;
      for (index_t t0 = 0, c = 1; t0 < n; t0 += c, ++c) {
        c = std::min(c, n - t0);
        const tensor<float> xc = test::slice_tokens(x, t0, c);
        tensor<float> yc(xc.shape());
        L.forward(xc.as_matrix(), batch, cache, ws, yc.as_matrix());
        out.add(yc);
      }
      return out.values;
    };
    check_concurrent(session, change_default);
  }
}

#endif  // !SESSA_TEST_DEVICE_SUITE
