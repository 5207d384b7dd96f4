// Compile-time-shaped decoders (model/embedded.hpp): zero heap allocations across a prefill and many
// decode steps (the global allocation functions of this executable are replaced by counting ones), logits
// bit-identical to the runtime-shaped path on the same backend, layers of different shapes and attention
// variants composed in one decoder, and the errors a static decoder reports.
#include <catch2/catch.hpp>

#include <atomic>
#include <cstdlib>
#include <new>

#include <sessa/io/model_file.hpp>

#include "support.hpp"
#include "tiny_model.hpp"  // generated at build time by `sessa embed` from examples/models/tiny_decoder.safetensors

// ---------------------------------------------------------------- counting allocation functions
namespace {
std::atomic<long> allocations{0};
void* counted(std::size_t n, std::size_t align) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  void* p = align > alignof(std::max_align_t) ? std::aligned_alloc(align, (n + align - 1) / align * align)
                                               : std::malloc(n ? n : 1);
  if (!p) throw std::bad_alloc();
  return p;
}
}  // namespace

// A replacement allocator pairs the global operator new with std::free on purpose: once GCC inlines a replaced
// operator delete into a caller, it would report free() on memory from operator new.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(std::size_t n) { return counted(n, 0); }
void* operator new[](std::size_t n) { return counted(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) { return counted(n, static_cast<std::size_t>(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return counted(n, static_cast<std::size_t>(a)); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try { return counted(n, 0); } catch (...) { return nullptr; }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

using namespace sessa;

namespace {

sessa::embedded::static_state<float, tiny::spec, /*Capacity=*/300, /*Batch=*/1, /*MaxChunk=*/16> tiny_state;
constexpr tiny::model tiny_model(tiny::params);

std::vector<std::int64_t> encode(const char* text) {
  std::vector<std::int64_t> t;
  for (const char* c = text; *c; ++c) t.push_back(std::strchr(tiny::vocab, *c) - tiny::vocab);
  return t;
}

}  // namespace

TEST_CASE("a static decoder runs a prefill and 250 decode steps without touching the heap", "[embedded]") {
  const std::vector<std::int64_t> prompt = encode("And the LORD said unto Moses, ");  // made before counting
  float logits_store[tiny::spec::vocab_size];
  const matrix<float> logits(logits_store, 1, tiny::spec::vocab_size);
  tiny_state.reset();

  const long before = allocations.load();
  tiny_model.forward(std::span<const std::int64_t>(prompt), tiny_state, logits, logits_for::last);
  std::int64_t next = 0;
  for (int i = 0; i < 250; ++i) {
    next = 0;
    for (std::int64_t v = 1; v < tiny::spec::vocab_size; ++v)
      if (logits_store[v] > logits_store[next]) next = v;
    tiny_model.decode_step(std::span<const std::int64_t>(&next, 1), tiny_state, logits);
  }
  const long during = allocations.load() - before;

  CHECK(during == 0);
  CHECK(tiny_state.length() == static_cast<index_t>(prompt.size()) + 250);
  // The counter is live: the runtime-shaped path does allocate.
  const long before_runtime = allocations.load();
  { const std::vector<int> v(10); (void)v; }
  CHECK(allocations.load() > before_runtime);
}

TEST_CASE("on backend::cpu a static decoder allocates only while warming its per-thread scratch", "[embedded]") {
  // backend::cpu keeps grow-once pack and tile buffers per thread (gemm.hpp, attention.hpp). The first
  // sequence sizes them; every later sequence of the same shapes runs without touching the heap.
  static embedded::static_state<float, tiny::spec, 300, 1, 16, backend::cpu> st;
  constexpr embedded::static_decoder<float, tiny::spec, backend::cpu> model(tiny::params);
  const std::vector<std::int64_t> prompt = encode("And the LORD said unto Moses, ");
  float logits_store[tiny::spec::vocab_size];
  const matrix<float> logits(logits_store, 1, tiny::spec::vocab_size);
  const auto sequence = [&] {
    st.reset();
    model.forward(std::span<const std::int64_t>(prompt), st, logits, logits_for::last);
    for (std::int64_t i = 0; i < 250; ++i) {
      const std::int64_t tok = (i * 11) % tiny::spec::vocab_size;
      model.decode_step(std::span<const std::int64_t>(&tok, 1), st, logits);
    }
  };
  sequence();  // warm-up
  const long before = allocations.load();
  sequence();
  CHECK(allocations.load() - before == 0);
}

TEST_CASE("the embedded model's logits are bit-identical to the runtime-loaded model's", "[embedded]") {
  const auto runtime = io::load_decoder<float, backend::reference, std::remove_const_t<tiny::layer::variant_type>>(
      std::string(SESSA_TEST_DATA_DIR) + "/../../examples/models/tiny_decoder.safetensors");
  // Longer than MaxChunk (16) and than the shipped model's attention window (64).
  const std::vector<std::int64_t> prompt =
      encode("In the beginning God created the heaven and the earth. And the earth was without form, and void;");
  const index_t P = static_cast<index_t>(prompt.size()), V = tiny::spec::vocab_size;

  // Prefill, every row of logits (the static decoder runs it in chunks of 16).
  const tensor<float> want = runtime.forward(tensor<std::int64_t>({1, P}, std::span<const std::int64_t>(prompt)));
  std::vector<float> got(static_cast<std::size_t>(P * V));
  tiny_state.reset();
  tiny_model.forward(std::span<const std::int64_t>(prompt), tiny_state, matrix<float>(got.data(), P, V));
  CHECK(std::equal(got.begin(), got.end(), want.data()));

  // Decode steps after the prefill.
  auto cache = runtime.init_cache(1, P + 20);
  runtime.forward(tensor<std::int64_t>({1, P}, std::span<const std::int64_t>(prompt)), cache, logits_for::last);
  std::vector<float> step(static_cast<std::size_t>(V));
  bool identical = true;
  for (std::int64_t t = 0; t < 20; ++t) {
    const std::int64_t tok = (t * 7) % V;
    const tensor<float> w = runtime.decode_step(std::span<const std::int64_t>(&tok, 1), cache);
    tiny_model.decode_step(std::span<const std::int64_t>(&tok, 1), tiny_state, matrix<float>(step.data(), 1, V));
    identical = identical && std::equal(step.begin(), step.end(), w.data());
  }
  CHECK(identical);
}

namespace {
// Two different layers in one decoder: GQA with RoPE and the full causal softmax, then MQA without
// RoPE, a weaker gain and a sliding window of 5.
using layer_a = embedded::layer_spec<32, 4, 2, true, 0.999, 1e-5>;
using layer_b = embedded::layer_spec<32, 8, 1, false, 0.5, 1e-5, attention::sliding_window{5}>;
using mixed_spec = embedded::decoder_spec<23, false, layer_a, layer_b>;
}  // namespace

TEMPLATE_TEST_CASE("layers of different shapes and variants compose into one decoder", "[embedded]", float, double,
                   (precision<float, bfloat16, float>), (precision<float, q8_0, float>)) {
  using P = TestType;
  using T = compute_t<P>;
  using W = weight_t<P>;
  const auto wa = random_layer_weights<W>(layer_a::config, 1);
  const auto wb = random_layer_weights<W>(layer_b::config, 2);
  const decoder_config shell{layer_a::config, 23, 1, false};
  const auto outer = random_decoder_weights<W>(shell, 3);  // embedding, norm_f, lm_head
  embedded::decoder_params<W, mixed_spec> p;
  p.embedding = outer.embedding.data();
  p.layers = {params(wa, wa.mixer), params(wb, wb.mixer)};
  p.norm_w = outer.norm_w.data();
  p.norm_b = outer.norm_b.data();
  p.head = outer.head.data();
  const embedded::static_decoder<P, mixed_spec> model(p);
  static embedded::static_state<P, mixed_spec, 64, 2, 8> st;
  st.reset();

  // The same composition by hand from runtime-shaped layers.
  const layer<P, backend::reference> la(layer_a::config, wa);
  const layer<P, backend::reference, attention::sliding_window> lb(layer_b::config, wb, attention::sliding_window{5});
  const tensor<std::int64_t> tok = test::random_tokens(2, 30, 23, 4);
  tensor<T> h({2, 30, 32});
  backend::context<backend::reference> ctx;
  backend::kernels<backend::reference>::embed(ctx, weight_matrix<W, memory::host>(outer.embedding.data(), 23, 32),
                                              tok.data(), h.as_matrix());
  h = lb.forward(la.forward(h));
  tensor<T> want({60, 23});
  std::vector<T> scratch(60 * 32);
  decoder_head<backend::reference, P>(ctx, outer.norm_w.data(), outer.norm_b.data(), static_cast<T>(1e-5),
                                      outer.head.data(), cmatrix<T>(h.as_matrix()), 2, logits_for::all, scratch.data(),
                                      want.as_matrix());

  tensor<T> got({60, 23});
  model.forward(tok.span(), st, got.as_matrix());  // chunks of 8
  const double diff = test::max_rel_diff(got.span(), want.span());
  INFO("max|diff| / max|ref| = " << diff);
  CHECK(diff <= (std::is_same_v<T, float> ? 1e-6 : 1e-14));

  // The cpu backend on the same read-only weights (narrow ones widened in registers).
  const embedded::static_decoder<P, mixed_spec, backend::cpu> fast(p);
  static embedded::static_state<P, mixed_spec, 64, 2, 8, backend::cpu> st_cpu;
  st_cpu.reset();
  tensor<T> got_cpu({60, 23});
  fast.forward(tok.span(), st_cpu, got_cpu.as_matrix());
  CHECK(test::max_rel_diff(got_cpu.span(), want.span()) <= (std::is_same_v<T, float> ? 2e-5 : 1e-12));
}

TEST_CASE("a static decoder reports bad tokens, a full state and a wrong logits view", "[embedded][errors]") {
  float store[2 * tiny::spec::vocab_size];
  const matrix<float> logits(store, 1, tiny::spec::vocab_size);
  tiny_state.reset();
  const std::int64_t bad = tiny::spec::vocab_size;
  const std::string V = std::to_string(tiny::spec::vocab_size);
  CHECK_THROWS_WITH(tiny_model.decode_step(std::span<const std::int64_t>(&bad, 1), tiny_state, logits),
                    Catch::Contains("token id " + V) && Catch::Contains("[0, " + V + ")"));
  const std::vector<std::int64_t> two = {1, 2};
  CHECK_THROWS_WITH(tiny_model.forward(std::span<const std::int64_t>(two), tiny_state, logits),
                    Catch::Contains("logits view is (1, " + V + "), expected (2, " + V + ")"));
  std::vector<std::int64_t> many(301, 1);
  CHECK_THROWS_WITH(tiny_model.forward(std::span<const std::int64_t>(many), tiny_state, logits, logits_for::last),
                    Catch::Contains("cache full: capacity 300"));
  CHECK(tiny_state.length() == 0);
  CHECK_THROWS_AS(tiny_state.truncate(5), cache_error);
}
