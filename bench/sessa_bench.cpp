// sessa-bench: how fast one Sessa layer runs, judged by the machine's own limits measured in the same run.
//
// Why this exists: SPEC.md's cost model says a prefill is ~18 T D^2 + 4 T^2 D FLOPs of mostly GEMM-shaped
// work and a decode step must read the weights and the whole cache; so a prefill should be judged against
// the machine's sgemm rate and a decode step against its streaming bandwidth (BASELINES.md). This tool times
// both on one layer with random weights and prints ONE JSON OBJECT PER LINE, each with the yardstick it is
// judged by (bench/yardstick.hpp), so that ratios taken in one run survive machine drift and load.
// Every timed configuration is first validated against backend::reference on a small shape (llm.c habit):
// a backend that gets the numbers wrong is never timed.
//
//   sessa-bench prefill   --T 4096 [common options] [--chunk N]
//   sessa-bench decode    --context 4096 --steps 64 [common options] [--fill random|prefill] [--chunk N]
//   sessa-bench generate  --context 512 --steps 32 --layers 4 --vocab 256 [common options]   (--batch: rows)
//   sessa-bench yardstick [--threads N] [--repeat 3]
// common options: --D 512 --H 8 --Hkv 8 --batch 1 --backend cpu|reference --threads N --precision f32|f64
//                 --repeat 3 --warmup 1 --seed 1 --yardstick quick|full|off
//
// Timing: one warm-up run (--warmup), then the best of --repeat runs. Prefill reuses one cache (reset between
// runs) and one workspace, as a serving loop would. Decode starts from a cache of `context` tokens, filled with
// random values (default; the cost of a step does not depend on the values) or by a real prefill, and times
// `steps` consecutive steps (the context grows by one per step; the cache is truncated back between runs).
// Decode pairs the streaming yardstick with each timed run (one read of a 1 GiB stream_probe, then one untimed
// step so the caches hold what they held before, then the run):
// fraction_of_bandwidth_bound is the median over runs of the run's read rate over its own stream read, since
// a shared machine's bandwidth moves within seconds (stream_gbps: the median stream; _min / _max the spread).
// With --batch > 1 a step also does batch times the FLOPs on nearly the same bytes, so it can be bound by the FMA
// rate instead: the in-run sgemm (sgemm_gflops, after the timed runs) gives compute_bound_seconds_per_token, and
// fraction_of_roofline is the larger of the two bounds over the measured step (without a compute figure, at batch 1
// or without OpenBLAS, the streaming bound alone: ideal_seconds_per_token over the step, null without a stream).
// Memory: peak_rss_bytes is the process high-water mark (getrusage) taken right after the timed runs, before
// the yardsticks allocate their own buffers (except decode's probe, allocated first and so in both figures);
// it includes the binary, the runtime and the weights (rss_baseline_bytes is the resident size just before the
// activations and cache were allocated).
// model_bytes is what the work needs by construction: input, output, cache and workspace buffers.
// Errors: one line on stderr; exit 1 (2 for usage errors).
#include "../tools/common/backends.hpp"  // sessa.hpp and the Thrust backends this build has

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <limits>
#include <map>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "yardstick.hpp"
#if defined(SESSA_WITH_THRUST_CUDA)
#include "device_yardstick.hpp"
#endif

#include "../tools/common/options.hpp"

namespace {

using namespace sessa;
using sessa_bench::clock_type;
using sessa_bench::seconds_since;

constexpr const char* usage_text =
    "usage: sessa-bench <command> [options]   (one JSON object per line on stdout)\n"
    "\n"
    "commands:\n"
    "  prefill    --T N [--chunk N]\n"
    "             time a prefill of N tokens through one layer with random weights\n"
    "  decode     --context N [--steps 64] [--fill random|prefill] [--chunk N]\n"
    "             time decode steps on a cache that already holds N tokens\n"
    "  generate   [--context 512] [--steps 32] [--layers 4] [--vocab 256]\n"
    "             --batch sessions of a decoder (prompts of context*(i+1)/batch tokens) generating --steps\n"
    "             tokens each: generate_batch against the same sessions one after another\n"
    "  feedback   --T N\n"
    "             time the feedback solve and its transpose (the influence tools' backward solve) alone\n"
    "             on one random routing of N tokens, FLOPs 2 T^2 D each\n"
    "  yardstick  the machine's figures: OpenBLAS sgemm GFLOP/s (n = 2048, 4096) and streaming read GB/s\n"
    "             (sgemm: the best of the autodetected kernel family and the AVX-512 / AVX2 ones this CPU runs,\n"
    "             each measured in a child `sessa-bench sgemm-probe` with OPENBLAS_CORETYPE set)\n"
    "\n"
    "options (prefill, decode, generate, feedback):\n"
    "  --D 512 --H 8 --Hkv 8       layer shape (d_model, heads, key/value heads)\n"
    "  --batch 1                   sequences per call\n"
    "  --backend NAME              kernels to time (validated against reference first): cpu, reference,\n"
    "                              thrust_omp (when built), thrust_cuda (in sessa-bench-cuda)\n"
    "  --precision f32|f64         compute type\n"
    "  --storage same|bf16|f16     weights and cache stored as the compute type (same) or narrower\n"
    "  --weights same|bf16|f16|q8_0  the weights' storage alone (default: --storage); q8_0: int8 blocks\n"
    "                              of 32 with a float16 scale (f32 compute; cpu and reference)\n"
    "  --cache same|bf16|f16       the cache's storage alone (default: --storage); with f32 compute:\n"
    "                              f32 weights with a bf16 / f16 cache, q8_0 weights with a bf16 cache\n"
    "  --layers 1                  (prefill, decode) a stack of N layers, each with its own weights and\n"
    "                              cache, so the weights can exceed any cache of the machine\n"
    "  --threads N                 OpenMP threads for the layer, OpenBLAS threads for the yardstick\n"
    "  --repeat 3 --warmup 1       best of --repeat timed runs after --warmup untimed ones\n"
    "  --yardstick quick|full|off  in-run machine figure: quick = sgemm n=2048 / 1 GiB read, full adds n=4096\n"
    "  --seed 1                    weights and inputs\n"
    "  --rope true|false           RoPE on the forward branch (default true)\n";

using sessa::tools::usage_error;

using sessa::tools::options;

/// One JSON object on one line, fields in insertion order; non-finite numbers become null.
class json_line {
 public:
  json_line& str(const char* k, const std::string& v) {
    std::string e;
    for (char c : v) {
      if (c == '"' || c == '\\') e += '\\';
      if (static_cast<unsigned char>(c) >= 0x20) e += c;
    }
    return raw(k, "\"" + e + "\"");
  }
  json_line& num(const char* k, double v, int digits = 6) {
    if (!std::isfinite(v)) return raw(k, "null");
    char b[64];
    std::snprintf(b, sizeof b, "%.*g", digits, v);
    return raw(k, b);
  }
  json_line& integer(const char* k, long long v) { return raw(k, std::to_string(v)); }
  json_line& boolean(const char* k, bool v) { return raw(k, v ? "true" : "false"); }
  json_line& null(const char* k) { return raw(k, "null"); }
  void print() const {
    std::printf("{%s}\n", s_.c_str());
    std::fflush(stdout);
  }

 private:
  json_line& raw(const char* k, const std::string& v) {
    if (!s_.empty()) s_ += ',';
    s_ += '"';
    s_ += k;
    s_ += "\":";
    s_ += v;
    return *this;
  }
  std::string s_;
};

constexpr double nan_v = std::numeric_limits<double>::quiet_NaN();

/// Options shared by prefill and decode.
struct common {
  layer_config cfg;
  index_t batch = 1;
  std::string backend, precision, weights, cache, yardstick;
  index_t layers = 1;  // prefill / decode: layers in the stack
  int threads = 1;
  int repeat = 3, warmup = 1;
  std::uint64_t seed = 1;
};

const std::vector<std::string> common_names = {"D",       "H",       "Hkv",    "batch", "backend", "precision",
                                               "storage", "weights", "cache",  "threads", "repeat", "warmup",
                                               "seed",    "yardstick", "rope"};

common parse_common(const options& o) {
  common c;
  c.cfg.d_model = o.integer("D", 512, 1, 1 << 16);
  c.cfg.n_heads = o.integer("H", 8, 1, 1 << 16);
  c.cfg.n_kv_heads = o.integer("Hkv", c.cfg.n_heads, 1, 1 << 16);
  c.cfg.use_rope = o.word("rope", "true", {"true", "false"}) == "true";
  c.cfg.check();
  c.batch = o.integer("batch", 1, 1, 1 << 16);
  c.backend = o.get("backend").value_or("cpu");
  sessa::tools::require_backend(c.backend);  // a name this build lacks fails here, before any work
  c.precision = o.word("precision", "f32", {"f32", "f64"});
  const std::string storage = o.word("storage", "same", {"same", "bf16", "f16"});
  c.weights = o.word("weights", storage, {"same", "f32", "f64", "bf16", "f16", "q8_0"});
  c.cache = o.word("cache", storage, {"same", "f32", "f64", "bf16", "f16"});
  for (std::string* s : {&c.weights, &c.cache}) {
    if (*s == c.precision) *s = "same";
    else if (*s == "f32" || *s == "f64")
      throw usage_error("storage " + *s + " with --precision " + c.precision + ": a wider or other exact type than "
                        "the compute type is not a storage format (use same, bf16 or f16)");
  }
  c.yardstick = o.word("yardstick", "quick", {"quick", "full", "off"});
  c.layers = o.integer("layers", 1, 1, 4096);
  c.repeat = static_cast<int>(o.integer("repeat", 3, 1, 1000));
  c.warmup = static_cast<int>(o.integer("warmup", 1, 0, 1000));
  c.seed = static_cast<std::uint64_t>(o.integer("seed", 1, 0, std::numeric_limits<long long>::max()));
  sessa::tools::apply_threads(o.integer("threads", 0, 0, 1024), "sessa-bench");
  c.threads = num_threads();
  sessa_bench::set_blas_threads(c.threads);
  return c;
}

/// Calls f.template operator()<P, Backend>() for the runtime choice of precision, storage and backend; P is
/// the numeric policy (float, double, precision<T, bfloat16 / float16> for narrow weights and cache, and for float
/// compute precision<float, bfloat16 / float16, float> for narrow weights alone). A backend without kernels for the
/// storage is a usage error.
template <class F>
void dispatch(const common& c, F&& f) {
  auto with_backend = [&]<class P>() {
    sessa::tools::with_backend(c.backend, [&]<class B>() {
      if constexpr (backend::kernel_set<B, P>) f.template operator()<P, B>();
      else
        throw usage_error("backend " + c.backend + " has no kernels for --weights " + c.weights + " --cache " +
                          c.cache + " (q8_0 weights run on the cpu and reference backends)");
    });
  };
  auto with_storage = [&]<class T>() {
    const std::string& w = c.weights;
    if (w == c.cache) {
      if (w == "bf16") return with_backend.template operator()<sessa::precision<T, sessa::bfloat16>>();
      if (w == "f16") return with_backend.template operator()<sessa::precision<T, sessa::float16>>();
      return with_backend.template operator()<T>();
    }
    if constexpr (std::is_same_v<T, float>) {
      if (c.cache == "same" && w == "bf16") return with_backend.template operator()<sessa::precision<T, sessa::bfloat16, T>>();
      if (c.cache == "same" && w == "f16") return with_backend.template operator()<sessa::precision<T, sessa::float16, T>>();
      if (c.cache == "same" && w == "q8_0") return with_backend.template operator()<sessa::precision<T, sessa::q8_0, T>>();
      if (w == "same" && c.cache == "bf16") return with_backend.template operator()<sessa::precision<T, T, sessa::bfloat16>>();
      if (w == "same" && c.cache == "f16") return with_backend.template operator()<sessa::precision<T, T, sessa::float16>>();
      if (w == "q8_0" && c.cache == "bf16") return with_backend.template operator()<sessa::precision<T, sessa::q8_0, sessa::bfloat16>>();
    }
    throw usage_error("--weights " + w + " --cache " + c.cache + " with --precision " + c.precision +
                      " is not built into sessa-bench (it has: weights and cache alike; for f32 compute also bf16, f16 "
                      "or q8_0 weights with an f32 cache, f32 weights with a bf16 or f16 cache, and q8_0 weights with "
                      "a bf16 cache)");
  };
  if (c.precision == "f32") with_storage.template operator()<float>();
  else with_storage.template operator()<double>();
}

/// True for the backends that run on a CUDA device (their yardsticks are the GPU's, bench/device_yardstick.hpp).
template <class B>
constexpr bool on_gpu() {
#if defined(SESSA_WITH_THRUST_CUDA)
  return std::is_same_v<B, backend::cuda> || std::is_same_v<B, backend::thrust_cuda>;
#else
  return false;
#endif
}

/// Adds the GPU's in-run limits to a prefill (bf16 GEMM rate) or decode (copy bandwidth) line of a CUDA backend.
template <class B>
void add_gpu_yardstick(json_line& j, const common& c, double flops_per_s, double bytes_per_step, double per_step) {
#if defined(SESSA_WITH_THRUST_CUDA)
  if constexpr (on_gpu<B>()) {
    j.str("gpu", sessa_bench::gpu::device_name());
    if (c.yardstick == "off") return;
    if (flops_per_s > 0) {
      const double tf = sessa_bench::gpu::bf16_gemm_tflops(c.yardstick == "full" ? 16384 : 8192, 5);
      j.num("tflops", flops_per_s * 1e-12, 5).num("gpu_bf16_gemm_tflops", tf, 5).num("fraction_of_gpu_gemm",
                                                                                      flops_per_s * 1e-12 / tf, 4);
    } else {
      const double gbps = sessa_bench::gpu::copy_gbps(std::size_t{2} << 30, 5);  // 2 GiB each way
      const double ideal = bytes_per_step / (gbps * 1e9);
      j.num("gpu_copy_gbps", gbps, 5).str("gpu_copy_counts", "read+write")
          .num("gpu_ideal_seconds_per_token", ideal).num("fraction_of_copy_bound", ideal / per_step, 4);
    }
  }
#endif
  (void)j, (void)c, (void)flops_per_s, (void)bytes_per_step, (void)per_step;
}

/// Waits for the work a backend's context has queued (device backends run asynchronously); nothing on the host.
template <class B>
void synchronize(backend::context<B>& ctx) {
#if defined(SESSA_WITH_THRUST_CUDA)
  if constexpr (std::is_same_v<B, backend::cuda> || std::is_same_v<B, backend::thrust_cuda>)
    gpu::check(cudaStreamSynchronize(ctx.stream), "cudaStreamSynchronize");
#endif
  (void)ctx;
}

/// Fills p[0, n) with uniform values of unit variance (a fixed stream per seed).
template <storage_type T>
void fill_random(T* p, index_t n, std::uint64_t seed) {
  random_stream rng(seed * 0x9E3779B97F4A7C15ull + 17);
  for (index_t i = 0; i < n; ++i) p[i] = narrow<T>(static_cast<float>((rng.uniform() * 2.0 - 1.0) * 1.7320508));
}

/// The same values at p[0, n) in memory space S (through a host copy when S is a device space).
template <storage_type T, class S>
void fill_random(space_ptr<T, S> p, index_t n, std::uint64_t seed) {
  buffer<T> h(n);
  fill_random(h.data(), n, seed);
  memory::copy_n(h.data(), n, p);
}

/// Element i of a buffer of any space, read on the host.
template <scalar T, class S>
T element(const buffer<T, S>& b, index_t i) {
  T v{};
  memory::copy_n(b.data() + i, 1, &v);
  return v;
}

/// Refuses work whose buffers would not fit in physical memory (better than the OOM killer).
void check_fits(double bytes, const char* what) {
  const double phys = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGESIZE));
  if (phys > 0 && bytes > 0.9 * phys) {
    char b[200];
    std::snprintf(b, sizeof b, "%s needs about %.2f GiB of buffers, more than this machine's %.2f GiB of memory", what,
                  bytes / 1073741824.0, phys / 1073741824.0);
    throw value_error(b);
  }
}

/// Prefill FLOPs per SPEC.md's cost model for `T` tokens of `batch` rows (projections with the k/v term scaled
/// by Hkv/H, out_proj only when H > 1; causal forward attention and feedback 2 T^2 D each).
double prefill_flops(const layer_config& c, index_t T, index_t batch) {
  const double D = static_cast<double>(c.d_model), kv = static_cast<double>(c.kv_dim()), t = static_cast<double>(T);
  const double proj = (4 + 2 + 4 + 2) * D * D + 2 * 2 * kv * D + (c.has_out_proj() ? 2 * D * D : 0.0);
  return static_cast<double>(batch) * (t * proj + 4.0 * t * t * D);
}

/// Decode-step FLOPs at cache length `t` (before the step): projections + 8 (t + 1/2) D attention and feedback.
double decode_flops(const layer_config& c, double t, index_t batch) {
  const double D = static_cast<double>(c.d_model), kv = static_cast<double>(c.kv_dim());
  const double proj = (4 + 2 + 4 + 2) * D * D + 2 * 2 * kv * D + (c.has_out_proj() ? 2 * D * D : 0.0);
  return static_cast<double>(batch) * (proj + 8.0 * (t + 0.5) * D);
}

/// Runs x -> y through `L` over [0, T) in chunks of `chunk` (0: all at once). Chunk [t0, t0 + n) of every batch
/// row occupies rows [batch t0, batch (t0 + n)) of x and y, batch-major inside, as layer::forward expects.
template <class Layer, class XP, class YP>
void run_prefill(const Layer& L, XP x, YP y, index_t batch, index_t Tn, index_t chunk,
                 typename Layer::cache_type& cache, typename Layer::workspace_type& ws) {
  using T = typename Layer::scalar_type;
  using S = typename Layer::space;
  const index_t D = L.config().d_model, c = chunk == 0 ? Tn : chunk;
  for (index_t t0 = 0; t0 < Tn; t0 += c) {
    const index_t n = std::min(c, Tn - t0);
    L.forward(cmatrix<T, S>(x + batch * t0 * D, batch * n, D), batch, cache, ws,
              matrix<T, S>(y + batch * t0 * D, batch * n, D));
  }
}

/// max |a - b| / max |b| (SPEC.md's bar: relative to the largest output).
template <scalar T>
double max_rel_diff(const T* a, const T* b, index_t n) {
  double diff = 0, scale = 0;
  for (index_t i = 0; i < n; ++i) {
    const double d = std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    diff = std::isnan(d) ? std::numeric_limits<double>::infinity() : std::max(diff, d);
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

/// The validation bar of a backend against the reference running the same numeric policy: SPEC.md's bars for
/// exact storage; with narrow storage on cuda, whose tensor cores also round the activations to the storage type,
/// the bar of tests/test_thrust.cpp; with a bf16 / f16 cache in float, a few units in the cache type's last place
/// (a value the two summation orders round to different sides of a boundary differs by one: tests/test_storage.cpp).
template <class P, class B>
constexpr double tolerance() {
  using T = compute_t<P>;
  double bar = std::is_same_v<T, float> ? 1e-4 : 1e-9;
  if constexpr (std::is_same_v<T, float> && std::is_same_v<cache_t<P>, sessa::bfloat16>) bar = std::max(bar, 3e-2);
  if constexpr (std::is_same_v<T, float> && std::is_same_v<cache_t<P>, sessa::float16>) bar = std::max(bar, 4e-3);
#if defined(SESSA_WITH_THRUST_CUDA)
  if constexpr (std::is_same_v<B, backend::cuda> && std::is_same_v<T, float> && !std::is_same_v<weight_t<P>, float>)
    bar = std::max(bar, std::is_same_v<weight_t<P>, sessa::bfloat16> ? 3e-2 : 5e-3);
#endif
  return bar;
}

/// Validation: `Tp` prefill tokens (in the chunk pattern to be timed), then `steps` decode steps, on Backend and on
/// backend::reference with the same weights and inputs. Throws unless they agree within tolerance<T>().
template <numeric P, backend_tag Backend>
double validate(const common& c, index_t Tp, index_t chunk, index_t steps) {
  using T = compute_t<P>;
  const layer_config& cfg = c.cfg;
  const index_t D = cfg.d_model, B = c.batch, total = Tp + steps;
  const layer<P, Backend> fast(cfg, random_layer_weights<weight_t<P>>(cfg, c.seed));
  const layer<P, backend::reference> ref(cfg, random_layer_weights<weight_t<P>>(cfg, c.seed));
  buffer<T> x(B * total * D), y_fast(B * total * D), y_ref(B * total * D);  // (total chunks of (B, ., D))
  fill_random(x.data(), x.size(), c.seed + 1);
  auto run = [&](const auto& L, buffer<T>& y_host) {
    using S = typename std::remove_cvref_t<decltype(L)>::space;
    const buffer<T, S> xs = to_space<S>(x);
    buffer<T, S> y(y_host.size());
    auto cache = L.init_cache(B, total);
    typename std::remove_cvref_t<decltype(L)>::workspace_type ws;
    run_prefill(L, xs.data(), y.data(), B, Tp, chunk, cache, ws);
    for (index_t i = 0; i < steps; ++i) {
      const index_t r0 = B * (Tp + i);
      L.forward(cmatrix<T, S>(xs.data() + r0 * D, B, D), B, cache, ws, matrix<T, S>(y.data() + r0 * D, B, D));
    }
    y_host = to_host(y);
  };
  run(fast, y_fast);
  run(ref, y_ref);
  const double rel = max_rel_diff(y_fast.data(), y_ref.data(), y_fast.size());
  if (!(rel < tolerance<P, Backend>())) {
    char b[256];
    std::snprintf(b, sizeof b,
                  "validation failed: backend %s differs from reference by %.3g relative to max|y| (bar %.0e) on "
                  "%lld prefill tokens + %lld decode steps",
                  std::string(Backend::name).c_str(), rel, tolerance<P, Backend>(), static_cast<long long>(Tp),
                  static_cast<long long>(steps));
    throw value_error(b);
  }
  return rel;
}

void add_common(json_line& j, const common& c) {
  j.integer("D", c.cfg.d_model)
      .integer("H", c.cfg.n_heads)
      .integer("Hkv", c.cfg.n_kv_heads)
      .integer("batch", c.batch)
      .str("backend", c.backend)
      .integer("threads", c.threads)
      .str("precision", c.precision)
      .str("weights", c.weights == "same" ? c.precision : c.weights)
      .str("cache", c.cache == "same" ? c.precision : c.cache)
      .integer("layers", c.layers);
}

/// In-run sgemm figure: n = 2048 (quick) or the best of n = 2048 and 4096 (full); NaN when off or no OpenBLAS.
/// This program, run as `sessa-bench sgemm-probe` (the child processes of best_sgemm).
std::string self_probe() {
  char path[4096];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
  if (n <= 0) return "false";
  return "'" + std::string(path, static_cast<std::size_t>(n)) + "' sgemm-probe";
}

/// In-run sgemm figure: n = 2048 (quick) or the best of n = 2048 and 4096 (full), with OpenBLAS's best kernel
/// family for this CPU (yardstick.hpp: best_sgemm); NaN when off or without OpenBLAS.
sessa_bench::sgemm_figure inrun_sgemm_figure(const common& c) {
  if (c.yardstick == "off") return {};
  sessa_bench::sgemm_figure g = sessa_bench::best_sgemm(2048, 3, c.threads, self_probe());
  if (c.yardstick == "full") {
    const sessa_bench::sgemm_figure g4 = sessa_bench::best_sgemm(4096, 3, c.threads, self_probe());
    if (g4.gflops > g.gflops) g = g4;
  }
  return g;
}

double inrun_sgemm(const common& c) { return inrun_sgemm_figure(c).gflops; }

constexpr std::size_t stream_bytes = std::size_t{1} << 30;  // 1 GiB: far beyond any cache

/// The --layers stack: c.layers layers of c.cfg, layer l with random weights from seed c.seed + l (layer 0 is the
/// layer validate() checked).
template <numeric P, backend_tag B>
std::vector<layer<P, B>> make_stack(const common& c) {
  std::vector<layer<P, B>> stack;
  stack.reserve(static_cast<std::size_t>(c.layers));
  for (index_t l = 0; l < c.layers; ++l)
    stack.emplace_back(c.cfg, random_layer_weights<weight_t<P>>(c.cfg, c.seed + static_cast<std::uint64_t>(l)));
  return stack;
}

int cmd_prefill(const options& o) {
  const common c = parse_common(o);
  const index_t Tn = o.integer("T", std::nullopt, 1, 1 << 24);
  const index_t chunk = o.integer("chunk", 0, 0, 1 << 24);
  dispatch(c, [&]<class P, class B>() {
    using T = compute_t<P>;
    const layer_config& cfg = c.cfg;
    const index_t D = cfg.d_model, rows = c.batch * Tn;
    const index_t tv = std::min<index_t>(Tn, 64);
    const double rel = std::is_same_v<B, backend::reference>
                           ? nan_v
                           : validate<P, B>(c, tv, chunk == 0 ? 0 : std::min<index_t>(chunk, 24), 0);
    const index_t step_rows = c.batch * (chunk == 0 ? Tn : std::min(chunk, Tn));
    const double estimate =
        static_cast<double>(sizeof(T)) *
            (2.0 * rows * D + workspace<T, B>::total(workspace<T, B>::sizes(cfg, step_rows, Tn)) +
             2.0 * step_rows * (D + 2)) +
        static_cast<double>(c.layers) *
            (static_cast<double>(sizeof(cache_t<P>)) * layer_cache<P, B>::storage_size(cfg, c.batch, Tn) +
             static_cast<double>(parameter_bytes<weight_t<P>>(cfg)));
    check_fits(estimate, "this prefill");

    const auto stack = make_stack<P, B>(c);
    const std::int64_t rss_base = sessa_bench::current_rss_bytes();
    using S = space_of<B>;
    buffer<T, S> x(rows * D), y(rows * D);  // (rows, D) each, chunk-major then batch-major
    fill_random(x.data(), x.size(), c.seed + 2);
    std::vector<typename layer<P, B>::cache_type> caches;
    for (const auto& L : stack) caches.push_back(L.init_cache(c.batch, Tn));
    typename layer<P, B>::workspace_type ws;
    // The stack's activations between layers: layer l < last writes tmp[l % 2], the last writes y.
    buffer<T, S> tmp[2] = {buffer<T, S>(c.layers > 1 ? rows * D : 0), buffer<T, S>(c.layers > 2 ? rows * D : 0)};
    auto once = [&] {
      for (index_t l = 0; l < c.layers; ++l) {  // layer by layer over the whole sequence
        auto& cache = caches[static_cast<std::size_t>(l)];
        cache.reset();
        const pointer<const T, S> in = l == 0 ? x.data() : tmp[(l - 1) % 2].data();
        const pointer<T, S> out = l == c.layers - 1 ? y.data() : tmp[l % 2].data();
        run_prefill(stack[static_cast<std::size_t>(l)], in, out, c.batch, Tn, chunk, cache, ws);
      }
      synchronize<B>(ws.context);
    };
    for (int i = 0; i < c.warmup; ++i) once();
    double best = std::numeric_limits<double>::infinity();
    for (int r = 0; r < c.repeat; ++r) {
      const auto t0 = clock_type::now();
      once();
      best = std::min(best, seconds_since(t0));
    }
    if (!std::isfinite(static_cast<double>(element(y, y.size() - 1))))
      throw value_error("the prefill produced a non-finite output");
    const std::int64_t rss_peak = sessa_bench::peak_rss_bytes();
    index_t cache_bytes = 0;
    for (const auto& cache : caches) cache_bytes += cache.bytes();
    const index_t model_bytes =
        (2 * rows * D + tmp[0].size() + tmp[1].size()) * static_cast<index_t>(sizeof(T)) + cache_bytes + ws.bytes();
    sessa_bench::settle();
    const sessa_bench::sgemm_figure yard = on_gpu<B>() ? sessa_bench::sgemm_figure{} : inrun_sgemm_figure(c);
    const double sgemm = yard.gflops;
    const double flops = static_cast<double>(c.layers) * prefill_flops(cfg, Tn, c.batch), gflops = flops / best * 1e-9;

    json_line j;
    j.str("work", "prefill").integer("T", Tn);
    add_common(j, c);
    j.integer("chunk", chunk)
        .integer("repeat", c.repeat)
        .num("seconds", best)
        .num("tokens_per_s", static_cast<double>(rows) / best)
        .num("gflop", flops * 1e-9)
        .num("gflops", gflops, 5)
        .num("sgemm_gflops", sgemm, 5)
        .str("sgemm_core", yard.core)
        .num("fraction_of_sgemm", gflops / sgemm, 4)
        .num("validated_max_rel_diff", rel, 3)
        .num("validated_T", std::isnan(rel) ? nan_v : static_cast<double>(tv))
        .integer("peak_rss_bytes", rss_peak)
        .integer("rss_baseline_bytes", rss_base)
        .integer("model_bytes", model_bytes)
        .integer("cache_bytes", cache_bytes)
        .integer("weight_bytes", c.layers * static_cast<index_t>(parameter_bytes<weight_t<P>>(cfg)));
    add_gpu_yardstick<B>(j, c, flops / best, 0, 0);
    j.str("version", SESSA_VERSION_STRING).print();
  });
  return 0;
}

/// The feedback solve and its transpose (kernels<B>::feedback, feedback_transposed) on one random routing of
/// T tokens, each timed alone; FLOPs 2 T^2 D (logits and weighted sums), the transpose doing an extra pass for
/// its row statistics.
int cmd_feedback(const options& o) {
  const common c = parse_common(o);
  const index_t Tn = o.integer("T", std::nullopt, 2, 1 << 20);
  dispatch(c, [&]<class P, class B>() {
    using T = compute_t<P>;
    using S = space_of<B>;
    using K = backend::kernels<B>;
    const layer_config& cfg = c.cfg;
    const index_t D = cfg.d_model, rows = c.batch * Tn, kv = cfg.kv_dim();
    const double estimate = static_cast<double>(sizeof(T)) *
                            (4.0 * rows * D + rows * 2.0 * kv + layer_cache<P, B>::storage_size(cfg, c.batch, Tn));
    check_fits(estimate, "this feedback solve");
    buffer<T, S> qb(rows * D), kb(rows * D), kvz(rows * 2 * kv), f(rows * D), out(rows * D), gam(rows);
    fill_random(qb.data(), qb.size(), c.seed + 1);
    fill_random(kb.data(), kb.size(), c.seed + 2);
    fill_random(f.data(), f.size(), c.seed + 3);
    kvz.zero();
    {
      std::vector<T> g(static_cast<std::size_t>(rows), static_cast<T>(0.9));
      gam = to_space<S>(buffer<T>(g));
    }
    layer_cache<P, B> cache(cfg, c.batch, Tn);
    backend::context<B> ctx;
    K::append_cache(ctx, cfg, cmatrix<T, S>(kvz.data(), rows, 2 * kv), cmatrix<T, S>(kb.data(), rows, D), cache.view(), 0, Tn);
    auto best_of = [&](auto&& fn) {
      for (int i = 0; i < c.warmup; ++i) fn(), synchronize<B>(ctx);
      double best = std::numeric_limits<double>::infinity();
      for (int r = 0; r < c.repeat; ++r) {
        const auto t0 = clock_type::now();
        fn();
        synchronize<B>(ctx);
        best = std::min(best, seconds_since(t0));
      }
      return best;
    };
    const double fwd = best_of([&] {
      K::feedback(ctx, cfg, cmatrix<T, S>(qb.data(), rows, D), pointer<const T, S>(gam.data()),
                  cmatrix<T, S>(f.data(), rows, D), cache.view(), 0, Tn, matrix<T, S>(out.data(), rows, D));
    });
    const double bwd = best_of([&] {
      K::feedback_transposed(ctx, cfg, cmatrix<T, S>(qb.data(), rows, D), pointer<const T, S>(gam.data()),
                             cmatrix<T, S>(f.data(), rows, D), std::as_const(cache).view(), 0, Tn,
                             matrix<T, S>(out.data(), rows, D));
    });
    if (!std::isfinite(static_cast<double>(element(out, out.size() - 1))))
      throw value_error("the transposed solve produced a non-finite output");
    sessa_bench::settle();
    const double sgemm = on_gpu<B>() ? nan_v : inrun_sgemm(c);
    const double flops = 2.0 * static_cast<double>(Tn) * static_cast<double>(Tn) * static_cast<double>(D) *
                         static_cast<double>(c.batch);
    json_line j;
    j.str("work", "feedback").integer("T", Tn);
    add_common(j, c);
    j.integer("repeat", c.repeat)
        .num("seconds_feedback", fwd)
        .num("seconds_transposed", bwd)
        .num("transposed_over_feedback", bwd / fwd, 4)
        .num("gflop", flops * 1e-9)
        .num("gflops_feedback", flops / fwd * 1e-9, 5)
        .num("gflops_transposed", flops / bwd * 1e-9, 5)
        .num("sgemm_gflops", sgemm, 5)
        .num("feedback_fraction_of_sgemm", flops / fwd * 1e-9 / sgemm, 4)
        .num("transposed_fraction_of_sgemm", flops / bwd * 1e-9 / sgemm, 4);
    j.str("version", SESSA_VERSION_STRING).print();
  });
  return 0;
}

int cmd_decode(const options& o) {
  const common c = parse_common(o);
  const index_t context = o.integer("context", std::nullopt, 0, 1 << 24);
  const index_t steps = o.integer("steps", 64, 1, 1 << 20);
  const index_t chunk = o.integer("chunk", 0, 0, 1 << 24);
  const std::string fill = o.word("fill", "random", {"random", "prefill"});
  dispatch(c, [&]<class P, class B>() {
    using T = compute_t<P>;
    const layer_config& cfg = c.cfg;
    const index_t D = cfg.d_model, kv = cfg.kv_dim(), capacity = context + steps;
    const bool paired = c.yardstick != "off" && !on_gpu<B>();  // a stream read beside each timed run (below)
    const double rel = std::is_same_v<B, backend::reference> ? nan_v : validate<P, B>(c, 24, 0, 8);
    const index_t fill_rows = fill == "prefill" ? c.batch * (chunk == 0 ? context : std::min(chunk, context)) : c.batch;
    const double estimate =
        static_cast<double>(sizeof(T)) *
            ((fill == "prefill" ? 2.0 * c.batch * context * D : 0.0) +
             workspace<T, B>::total(workspace<T, B>::sizes(cfg, std::max<index_t>(fill_rows, 1), capacity))) +
        static_cast<double>(c.layers) *
            (static_cast<double>(sizeof(cache_t<P>)) * layer_cache<P, B>::storage_size(cfg, c.batch, capacity) +
             static_cast<double>(parameter_bytes<weight_t<P>>(cfg))) +
        (paired ? static_cast<double>(stream_bytes) : 0.0);
    check_fits(estimate, "this decode run");

    using S = space_of<B>;
    // The streaming yardstick, read once before each timed repetition (stream_probe): each repetition's rate is
    // judged against the bandwidth of the same moment. Placed before the baseline, so the RSS figures both
    // count its buffer and their difference does not.
    std::optional<sessa_bench::stream_probe> probe;
    if (paired) probe.emplace(stream_bytes);
    const auto stack = make_stack<P, B>(c);
    const std::int64_t rss_base = sessa_bench::current_rss_bytes();
    std::vector<typename layer<P, B>::cache_type> caches;
    for (const auto& L : stack) caches.push_back(L.init_cache(c.batch, capacity));
    typename layer<P, B>::workspace_type ws;
    if (context > 0 && fill == "prefill") {
      buffer<T, S> x(c.batch * context * D), y(c.batch * context * D);  // (batch * context, D), freed after
      fill_random(x.data(), x.size(), c.seed + 2);
      for (index_t l = 0; l < c.layers; ++l) {  // layer l reads layer l - 1's output
        run_prefill(stack[static_cast<std::size_t>(l)], x.data(), y.data(), c.batch, context, chunk,
                    caches[static_cast<std::size_t>(l)], ws);
        std::swap(x, y);
      }
    } else if (context > 0) {
      // What a prefill leaves behind, with random values: k, v (after RoPE), k_b and s of `context` tokens.
      std::uint64_t s = c.seed + 3;
      for (auto& cache : caches) {
        for (index_t b = 0; b < c.batch; ++b) {
          for (index_t h = 0; h < cfg.n_kv_heads; ++h) {
            fill_random(cache.k(b, h).data, context * cfg.head_dim(), ++s);
            fill_random(cache.v(b, h).data, context * cfg.head_dim(), ++s);
          }
          fill_random(cache.kb(b).data, context * D, ++s);
          fill_random(cache.s(b).data, context * D, ++s);
        }
        cache.advance(context);
      }
    }
    buffer<T, S> xt(c.batch * D), yt(c.batch * D), mid(c.batch * D);  // (batch, D) one token per batch row
    fill_random(xt.data(), xt.size(), c.seed + 4);
    auto run = [&](index_t n) {
      for (auto& cache : caches) cache.truncate(context);
      for (index_t i = 0; i < n; ++i)
        for (index_t l = 0; l < c.layers; ++l) {  // layer 0 reads xt, the last writes yt, the others mid in place
          const bool last = l == c.layers - 1;
          stack[static_cast<std::size_t>(l)].forward(cmatrix<T, S>(l == 0 ? xt.data() : mid.data(), c.batch, D),
                                                     c.batch, caches[static_cast<std::size_t>(l)], ws,
                                                     matrix<T, S>(last ? yt.data() : mid.data(), c.batch, D));
        }
      synchronize<B>(ws.context);
    };
    for (int i = 0; i < c.warmup; ++i) run(std::min<index_t>(steps, 4));
    double best = std::numeric_limits<double>::infinity();
    std::vector<double> streams, seconds;  // per repetition
    for (int r = 0; r < c.repeat; ++r) {
      if (probe) {
        streams.push_back(probe->read_gbps());
        run(1);  // untimed: the read evicted what the previous run left in the caches; warm them as before
      }
      const auto t0 = clock_type::now();
      run(steps);
      seconds.push_back(seconds_since(t0));
      best = std::min(best, seconds.back());
    }
    if (!std::isfinite(static_cast<double>(element(yt, 0)))) throw value_error("the decode step produced a non-finite output");
    const std::int64_t rss_peak = sessa_bench::peak_rss_bytes();
    index_t cache_bytes = 0;
    for (const auto& cache : caches) cache_bytes += cache.bytes();
    const index_t model_bytes = 3 * c.batch * D * static_cast<index_t>(sizeof(T)) + cache_bytes + ws.bytes();
    probe.reset();
    sessa_bench::settle();

    // Bytes a step must read, averaged over the timed steps (cache length L = context + i before step i):
    // the weights once, then per batch row k and v of L + 1 tokens (the new one included), k_b and s of L.
    const double elt = static_cast<double>(sizeof(cache_t<P>));  // bytes per cached value
    const double weights = static_cast<double>(c.layers) * static_cast<double>(parameter_bytes<weight_t<P>>(cfg));
    const double t_mean = static_cast<double>(context) + 0.5 * static_cast<double>(steps - 1);
    const double bytes = weights + static_cast<double>(c.layers) * static_cast<double>(c.batch) * elt *
                                       (2.0 * kv * (t_mean + 1) + 2.0 * D * t_mean);
    const double per_step = best / static_cast<double>(steps);
    // Each repetition's read rate over the stream read just before it; the median of those pairs is the fraction,
    // the median stream the bandwidth the ideal time is computed from (NaN without the yardstick).
    std::vector<double> fractions;
    for (std::size_t r = 0; r < streams.size(); ++r)
      fractions.push_back(bytes * static_cast<double>(steps) / seconds[r] * 1e-9 / streams[r]);
    auto median = [](std::vector<double> v) {
      if (v.empty()) return nan_v;
      std::sort(v.begin(), v.end());
      const std::size_t m = v.size() / 2;
      return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
    };
    const double stream = median(streams), fraction = median(fractions);
    const double ideal = bytes / (stream * 1e9);
    // A batch's step does batch times the FLOPs on nearly the same bytes, so from some batch on it is bound by the
    // FMA rate, not the stream: the in-run sgemm rate stands for that rate (the roofline's other side; CPU, batch > 1).
    const double flops_per_step = static_cast<double>(c.layers) * decode_flops(cfg, t_mean, c.batch);
    const sessa_bench::sgemm_figure yard =
        paired && c.batch > 1 ? inrun_sgemm_figure(c) : sessa_bench::sgemm_figure{};
    const double compute_bound = flops_per_step / (yard.gflops * 1e9);

    json_line j;
    j.str("work", "decode").integer("context", context).integer("steps", steps);
    add_common(j, c);
    j.str("fill", fill)
        .integer("repeat", c.repeat)
        .num("seconds", best)
        .num("seconds_per_token", per_step)
        .num("ms_per_token", per_step * 1e3)
        .num("tokens_per_s", static_cast<double>(c.batch) / per_step)
        .num("gflops", flops_per_step / per_step * 1e-9, 5)
        .num("bytes_per_step", bytes, 8)
        .num("bytes_per_token", bytes / static_cast<double>(c.batch), 8)
        .num("gbps", bytes / per_step * 1e-9, 5)
        .num("stream_gbps", stream, 5)
        .num("stream_gbps_min", streams.empty() ? nan_v : *std::min_element(streams.begin(), streams.end()), 5)
        .num("stream_gbps_max", streams.empty() ? nan_v : *std::max_element(streams.begin(), streams.end()), 5)
        .num("ideal_seconds_per_token", ideal)
        .num("fraction_of_bandwidth_bound", fraction, 4)
        .num("fraction_min", fractions.empty() ? nan_v : *std::min_element(fractions.begin(), fractions.end()), 4)
        .num("fraction_max", fractions.empty() ? nan_v : *std::max_element(fractions.begin(), fractions.end()), 4)
        .num("time_over_ideal", 1.0 / fraction, 4)
        .num("sgemm_gflops", yard.gflops, 5)
        .str("sgemm_core", yard.core)
        .num("compute_bound_seconds_per_token", compute_bound)
        .num("fraction_of_roofline", std::max(ideal, compute_bound) / per_step, 4)
        .num("validated_max_rel_diff", rel, 3)
        .integer("peak_rss_bytes", rss_peak)
        .integer("rss_baseline_bytes", rss_base)
        .integer("model_bytes", model_bytes)
        .integer("cache_bytes", cache_bytes)
        .integer("weight_bytes", c.layers * static_cast<index_t>(parameter_bytes<weight_t<P>>(cfg)));
    add_gpu_yardstick<B>(j, c, 0, bytes, per_step);
    j.str("version", SESSA_VERSION_STRING).print();
  });
  return 0;
}

/// Batched generation against the same sessions one after another: a decoder of --layers layers with random
/// weights, --batch sessions whose prompts have different lengths (row i: context * (i + 1) / batch tokens), each
/// generating --steps tokens greedily. The batch (generate_batch: one ragged step per token for all rows, weights
/// read once) and the solo runs (each session alone) are timed in the same run; prompts are fed outside the timing.
/// Every row's tokens are compared with its solo run's (rows_equal_solo).
int cmd_generate(const options& o) {
  common c = parse_common(o);
  const index_t context = o.integer("context", 512, 1, 1 << 22);
  const index_t steps = o.integer("steps", 32, 1, 1 << 16);
  const index_t n_layers = c.layers = o.integer("layers", 4, 1, 1024);
  const index_t vocab = o.integer("vocab", 256, 2, 1 << 22);
  dispatch(c, [&]<class P, class B>() {
    using M = decoder<P, B>;
    const decoder_config dcfg{c.cfg, vocab, n_layers, true};
    const index_t rows = c.batch;
    std::vector<index_t> plen(static_cast<std::size_t>(rows));
    double cache_bytes = 0;
    for (index_t i = 0; i < rows; ++i) {
      plen[static_cast<std::size_t>(i)] = std::max<index_t>(1, context * (i + 1) / rows);
      cache_bytes += static_cast<double>(layer_cache<P, B>::storage_size(c.cfg, 1, plen[static_cast<std::size_t>(i)] + steps)) *
                     static_cast<double>(n_layers) * sizeof(cache_t<P>);
    }
    check_fits(cache_bytes * 2, "this generate run");
    const M model(dcfg, random_decoder_weights<weight_t<P>>(dcfg, c.seed));
    std::vector<std::vector<std::int64_t>> prompts;
    for (index_t i = 0; i < rows; ++i) {
      std::vector<std::int64_t> p(static_cast<std::size_t>(plen[static_cast<std::size_t>(i)]));
      std::uint64_t x = c.seed * 0x9E3779B97F4A7C15ull + static_cast<std::uint64_t>(i);
      for (auto& t : p) {
        x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
        t = static_cast<std::int64_t>((x * 0x2545F4914F6CDD1Dull >> 33) % static_cast<std::uint64_t>(vocab));
      }
      prompts.push_back(std::move(p));
    }
    const auto fresh = [&] {
      std::vector<session<M>> ss;
      ss.reserve(static_cast<std::size_t>(rows));
      for (index_t i = 0; i < rows; ++i) {
        ss.emplace_back(model, plen[static_cast<std::size_t>(i)] + steps, sampler::from({.temperature = 0.0}));
        ss.back().feed(prompts[static_cast<std::size_t>(i)]);
      }
      return ss;
    };
    const stop_criteria stop{.max_tokens = steps};
    std::vector<std::vector<std::int64_t>> batch_tokens, solo_tokens;
    const auto run_batch = [&] {
      auto ss = fresh();
      std::vector<session<M>*> ptrs;
      for (auto& x : ss) ptrs.push_back(&x);
      const auto t0 = clock_type::now();
      const auto r = generate_batch<M>(ptrs, stop);
      const double t = seconds_since(t0);
      batch_tokens.clear();
      for (const auto& x : r) batch_tokens.push_back(x.tokens);
      return t;
    };
    const auto run_solo = [&] {
      auto ss = fresh();
      const auto t0 = clock_type::now();
      solo_tokens.clear();
      for (auto& x : ss) solo_tokens.push_back(x.generate(stop).tokens);
      return seconds_since(t0);
    };
    for (int i = 0; i < c.warmup; ++i) run_batch(), run_solo();
    double tb = std::numeric_limits<double>::infinity(), ts = tb;
    for (int r = 0; r < c.repeat; ++r) {
      tb = std::min(tb, run_batch());
      ts = std::min(ts, run_solo());
    }
    index_t equal = 0;
    for (index_t i = 0; i < rows; ++i) equal += batch_tokens[static_cast<std::size_t>(i)] == solo_tokens[static_cast<std::size_t>(i)];
    sessa_bench::settle();
    const double stream = c.yardstick == "off" || on_gpu<B>() ? nan_v : sessa_bench::stream_read_gbps(stream_bytes, 5);
    // Bytes the batch must read per step: the weights once, and every row's cache (its mean length over the run).
    const double weights = static_cast<double>(parameter_bytes<weight_t<P>>(dcfg));
    double cache_read = 0;
    for (index_t i = 0; i < rows; ++i)
      cache_read += static_cast<double>(n_layers) * sizeof(cache_t<P>) *
                    static_cast<double>(c.cfg.cache_values_per_token()) *
                    (static_cast<double>(plen[static_cast<std::size_t>(i)]) + 0.5 * static_cast<double>(steps));
    const double per_step = tb / static_cast<double>(steps);
    const double ideal = (weights + cache_read) / (stream * 1e9);
    json_line j;
    j.str("work", "generate").integer("context", context).integer("steps", steps).integer("vocab", vocab);
    add_common(j, c);
    j.integer("repeat", c.repeat)
        .num("batch_seconds", tb)
        .num("solo_seconds", ts)
        .num("batch_tokens_per_s", static_cast<double>(rows * steps) / tb)
        .num("solo_tokens_per_s", static_cast<double>(rows * steps) / ts)
        .num("batch_over_solo", ts / tb, 4)
        .num("bytes_per_batch_step", weights + cache_read, 8)
        .num("stream_gbps", stream, 5)
        .num("fraction_of_bandwidth_bound", ideal / per_step, 4)
        .integer("rows_equal_solo", equal)
        .integer("weight_bytes", static_cast<long long>(weights))
        .str("version", SESSA_VERSION_STRING)
        .print();
  });
  return 0;
}

/// One sgemm figure with the kernel family this process's OpenBLAS runs (OPENBLAS_CORETYPE as given): the child
/// of best_sgemm.
int cmd_sgemm_probe(const options& o) {
  const int n = static_cast<int>(o.integer("n", 2048, 64, 16384));
  const int threads = static_cast<int>(o.integer("threads", 1, 1, 1024));
  const int repeat = static_cast<int>(o.integer("repeat", 3, 1, 100));
  const double g = sessa_bench::sgemm_gflops(n, repeat, threads);
  if (!std::isfinite(g)) return 1;
  std::printf("{\"sgemm_gflops\":%.6g,\"openblas_corename\":\"%s\"}\n", g, sessa_bench::openblas_corename().c_str());
  return 0;
}

int cmd_yardstick(const options& o) {
  const long long threads = o.integer("threads", 0, 0, 1024);
  if (threads > 0) set_num_threads(static_cast<int>(threads));
  const int n_threads = num_threads();
  const int repeat = static_cast<int>(o.integer("repeat", 3, 1, 1000));
  sessa_bench::set_blas_threads(n_threads);
  const std::string autodetected = sessa_bench::openblas_corename();
  const sessa_bench::sgemm_figure f2048 = sessa_bench::best_sgemm(2048, repeat, n_threads, self_probe());
  const sessa_bench::sgemm_figure f4096 = sessa_bench::best_sgemm(4096, repeat, n_threads, self_probe());
  const double g2048 = f2048.gflops, g4096 = f4096.gflops;
  const double stream = sessa_bench::stream_read_gbps(stream_bytes, 5);
  json_line j;
  j.str("work", "yardstick")
      .integer("threads", n_threads)
      .num("sgemm_gflops", std::max(g2048, g4096), 5)
      .num("sgemm_gflops_n2048", g2048, 5)
      .num("sgemm_gflops_n4096", g4096, 5)
      .num("stream_gbps", stream, 5)
      .integer("stream_bytes", static_cast<long long>(stream_bytes))
      .boolean("openblas", sessa_bench::have_openblas())
      .str("openblas_corename", g4096 > g2048 ? f4096.core : f2048.core)
      .str("openblas_autodetected", autodetected)
      .boolean("openmp", SESSA_HAS_OPENMP != 0)
      .str("version", SESSA_VERSION_STRING)
      .print();
  return 0;
}

std::vector<std::string> with_common(std::vector<std::string> extra) {
  extra.insert(extra.end(), common_names.begin(), common_names.end());
  return extra;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2) throw usage_error("missing command (prefill, decode, generate or yardstick)");
    const std::string cmd = argv[1];
    if (cmd == "--help" || cmd == "-h" || cmd == "help") {
      std::fputs(usage_text, stdout);
      return 0;
    }
    if (cmd == "prefill") return cmd_prefill(options(argc, argv, 2, with_common({"T", "chunk", "layers"})));
    if (cmd == "decode") return cmd_decode(options(argc, argv, 2, with_common({"context", "steps", "chunk", "fill", "layers"})));
    if (cmd == "generate")
      return cmd_generate(options(argc, argv, 2, with_common({"context", "steps", "vocab", "layers"})));
    if (cmd == "feedback") return cmd_feedback(options(argc, argv, 2, with_common({"T"})));
    if (cmd == "yardstick") return cmd_yardstick(options(argc, argv, 2, {"threads", "repeat"}));
    if (cmd == "sgemm-probe") return cmd_sgemm_probe(options(argc, argv, 2, {"n", "threads", "repeat"}));
    throw usage_error("unknown command '" + cmd + "' (prefill, decode, generate, feedback or yardstick)");
  } catch (const usage_error& e) {
    std::fprintf(stderr, "sessa-bench: %s (sessa-bench --help for usage)\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "sessa-bench: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sessa-bench: %s\n", e.what());
    return 1;
  }
}
