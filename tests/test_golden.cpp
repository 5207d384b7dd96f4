// Golden vectors: outputs of the float64 PyTorch reference (tools/reference) stored in tests/data, and the
// vectors in ../shared/golden when that folder exists. Every case runs in float64 and float32, on every
// backend of test::all_combinations (the host backends; rebuilt for a device backend, that one), in the three
// forms (prefill, token-by-token decode, chunked prefill), against the stored
// float64 results: float64 within 1e-9 and float32 within 1e-4 of max|out|.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <set>

#include <sessa/io/model_file.hpp>

#include "support.hpp"

namespace fs = std::filesystem;
using namespace sessa;

namespace {

struct golden_case {
  std::string name;
  fs::path model, io, config;  // config: optional JSON sidecar for files without metadata
};

std::vector<golden_case> find_cases(const fs::path& dir) {
  std::vector<golden_case> out;
  if (!fs::is_directory(dir)) return out;
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string f = e.path().filename().string();
    const std::string suffix = ".model.safetensors";
    if (f.size() > suffix.size() && f.compare(f.size() - suffix.size(), suffix.size(), suffix) == 0)
      names.insert(f.substr(0, f.size() - suffix.size()));
  }
  for (const auto& n : names) {
    golden_case c{n, dir / (n + ".model.safetensors"), dir / (n + ".io.safetensors"), dir / (n + ".config.json")};
    if (fs::exists(c.io)) out.push_back(c);
  }
  return out;
}

/// Runs the model in the given form: chunk 0 = prefill, 1 = decode_step token by token, N = chunks of N.
template <class T, class B, class A>
tensor<T> run_case(const io::safetensors_file& mf, const io::model_info& info, const io::safetensors_file& in,
                   index_t chunk) {
  const A variant = io::detail::variant_from(info, mf.source(), A{});
  if (info.arch == io::model_arch::decoder) {
    const test::host_model<decoder<T, B, A>> M(info.config, io::read_decoder_weights<T>(mf, info.config), variant);
    const auto& e = in.at("tokens");
    const tensor<std::int64_t> tok(e.shape, std::span<const std::int64_t>(in.read_as<std::int64_t>("tokens")));
    const index_t Bn = tok.dim(0), Tn = tok.dim(1);
    if (chunk == 0) return M.forward(tok);
    auto cache = M.init_cache(Bn, Tn);
    tensor<T> out({Bn, Tn, info.config.vocab_size});
    for (index_t t0 = 0; t0 < Tn; t0 += chunk) {
      const index_t n = std::min(chunk, Tn - t0);
      const tensor<std::int64_t> part = test::slice_tokens(tok, t0, n);
      if (chunk == 1) {
        const tensor<T> step = M.decode_step(part.span(), cache);  // (B, V)
        test::put_tokens(out, tensor<T>({Bn, 1, info.config.vocab_size}, std::span<const T>(step.span())), t0);
      } else {
        test::put_tokens(out, M.forward(part, cache), t0);
      }
    }
    return out;
  }
  const test::host_model<layer<T, B, A>> L(info.config.layer, io::read_layer_weights<T>(mf, info.config.layer), variant);
  const auto& e = in.at("x");
  const tensor<T> x(e.shape, std::span<const T>(in.read_as<T>("x")));
  const index_t Bn = x.dim(0), Tn = x.dim(1), D = x.dim(2);
  if (chunk == 0) return L.forward(x);
  auto cache = L.init_cache(Bn, Tn);
  tensor<T> out(x.shape());
  for (index_t t0 = 0; t0 < Tn; t0 += chunk) {
    const index_t n = std::min(chunk, Tn - t0);
    const tensor<T> part = test::slice_tokens(x, t0, n);
    if (chunk == 1) {
      const tensor<T> step = L.decode_step(tensor<T>({Bn, D}, std::span<const T>(part.span())), cache);
      test::put_tokens(out, tensor<T>({Bn, 1, D}, std::span<const T>(step.span())), t0);
    } else {
      test::put_tokens(out, L.forward(part, cache), t0);
    }
  }
  return out;
}

template <class T, class B>
void check_case(const golden_case& c) {
  const io::safetensors_file mf = io::safetensors_file::load(c.model);
  const io::safetensors_file in = io::safetensors_file::load(c.io);
  const io::model_info info = io::has_config_metadata(mf) ? io::read_model_info(mf) : io::read_config_json(c.config);
  const bool dec = info.arch == io::model_arch::decoder;
  const std::string out_name = dec ? "logits" : "y";
  const std::vector<double> want = in.read_as<double>(out_name);
  const std::vector<double> want_decode = in.read_as<double>(out_name + "_decode");
  struct form {
    const char* name;
    index_t chunk;
    const std::vector<double>* want;
  };
  for (const form& f : {form{"prefill", 0, &want}, form{"decode", 1, &want_decode}, form{"chunked:3", 3, &want},
                        form{"chunked:7", 7, &want}}) {
    tensor<T> got = info.attention == "sliding_window"
                        ? run_case<T, B, attention::sliding_window>(mf, info, in, f.chunk)
                        : run_case<T, B, attention::causal>(mf, info, in, f.chunk);
    const double err = test::max_rel_diff(got.span(), *f.want);
    INFO(c.name << " " << f.name << " " << B::name << (std::is_same_v<T, float> ? " float32" : " float64")
                << ": max|diff| / max|ref| = " << err);
    CHECK(err <= test::tolerance<T>());
  }
}

/// Cases longer than one pass of a layer (prefill_block tokens): seconds on the reference backend in Release,
/// many minutes unoptimized, so they carry the tag [slow].
bool is_long(const golden_case& c) {
  const io::safetensors_file in = io::safetensors_file::load(c.io);
  for (const char* k : {"x", "tokens"})
    if (const io::tensor_entry* e = in.find(k)) return e->shape.size() >= 2 && e->shape[1] > prefill_block;
  return false;
}

std::vector<golden_case> cases_in(const fs::path& dir, bool long_ones) {
  std::vector<golden_case> out;
  for (const auto& c : find_cases(dir))
    if (is_long(c) == long_ones) out.push_back(c);
  return out;
}

/// ../shared/golden must be there in CI (CI=true): a missing folder there is a failure, not a skip.
bool shared_golden_required() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::string(ci) == "true";
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("project golden vectors (tests/data)", "[golden]", test::all_combinations) {
  using T = typename TestType::first_type;
  using B = typename TestType::second_type;
  const auto cases = cases_in(SESSA_TEST_DATA_DIR, false);
  REQUIRE(cases.size() >= 12);  // the committed vectors must be found
  for (const auto& c : cases) {
    SECTION(c.name) { check_case<T, B>(c); }
  }
}

TEMPLATE_LIST_TEST_CASE("project golden vectors longer than prefill_block (tests/data)", "[golden][slow]",
                        test::all_combinations) {
  using T = typename TestType::first_type;
  using B = typename TestType::second_type;
  const auto cases = cases_in(SESSA_TEST_DATA_DIR, true);
  REQUIRE(cases.size() >= 1);
  for (const auto& c : cases) {
    SECTION(c.name) { check_case<T, B>(c); }
  }
}

TEMPLATE_LIST_TEST_CASE("shared golden vectors (../shared/golden)", "[golden]", test::all_combinations) {
  using T = typename TestType::first_type;
  using B = typename TestType::second_type;
  const auto cases = find_cases(SESSA_SHARED_GOLDEN_DIR);
  if (cases.empty()) {
    if (shared_golden_required()) FAIL("CI=true but there are no shared golden vectors at " SESSA_SHARED_GOLDEN_DIR);
    WARN("no shared golden vectors at " SESSA_SHARED_GOLDEN_DIR "; skipped (outside CI)");
    return;
  }
  for (const auto& c : cases) {
    SECTION(c.name) { check_case<T, B>(c); }
  }
}
