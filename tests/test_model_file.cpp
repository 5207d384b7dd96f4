// Loading models from safetensors files: round trips through the writer, configuration from metadata or
// from the caller (bare state dicts), the public modules' buffers, and every way a file can fail to
// describe the model: missing, unexpected and mis-shaped tensors, bad metadata, wrong architecture,
// conflicting configurations, bad rope_inv_freq, bad masks, bad JSON configurations.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <functional>

#include <unistd.h>

#include <sessa/io/model_file.hpp>

#include "support.hpp"

namespace fs = std::filesystem;
using namespace sessa;
using io::dtype;

namespace {

const layer_config cfg{32, 4, 2, true, 0.999, 1e-5};

fs::path temp_path(const std::string& name) {
  // One folder per process: CTest runs the test cases of this file in parallel.
  const fs::path dir = fs::temp_directory_path() / ("sessa_test_model_file." + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir / name;
}

/// Options for writing a deliberately altered layer file.
struct alter {
  bool metadata = true;
  std::map<std::string, std::string> meta_override;  // value "" removes the key
  std::string skip;                                  // parameter left out
  std::string reshape;                               // parameter written with a wrong shape
  std::function<void(io::safetensors_writer&)> extra;
};

fs::path write_layer(const std::string& file, const layer_weights<float>& w, const alter& a = {}) {
  io::safetensors_writer out;
  if (a.metadata) {
    auto meta = io::config_metadata(cfg);
    for (const auto& [k, v] : a.meta_override) {
      if (v.empty()) meta.erase(k);
      else meta[k] = v;
    }
    for (const auto& [k, v] : meta) out.set_metadata(k, v);
  }
  for_each_parameter(cfg, w, [&](const std::string& name, const shape_t& s, const buffer<float>& b) {
    if (name == a.skip) return;
    shape_t shape = s;
    if (name == a.reshape) shape = {shape_numel(s)};
    out.add<float>(name, shape, b.span());
  });
  if (a.extra) a.extra(out);
  const fs::path p = temp_path(file);
  out.write(p);
  return p;
}

/// The loaders with the template arguments these tests use (keeps commas out of Catch's macros).
template <class... A>
auto load_ref(A&&... a) {
  return io::load_layer<float, backend::reference>(std::forward<A>(a)...);
}
template <class... A>
auto load_dec(A&&... a) {
  return io::load_decoder<float, backend::reference>(std::forward<A>(a)...);
}
alter without_metadata() {
  alter a;
  a.metadata = false;
  return a;
}
alter skipping(std::string name) {
  alter a;
  a.skip = std::move(name);
  return a;
}
alter reshaping(std::string name) {
  alter a;
  a.reshape = std::move(name);
  return a;
}

}  // namespace

TEST_CASE("a saved layer loads back and computes the same numbers", "[io]") {
  const auto w = random_layer_weights<float>(cfg, 3);
  const fs::path p = temp_path("roundtrip.safetensors");
  io::save_model(p, cfg, w);
  const auto loaded = load_ref(p);
  const layer<float, backend::reference> direct(cfg, w);
  const tensor<float> x = test::random_tensor<float>({2, 9, 32}, 4);
  CHECK(test::max_rel_diff(loaded.forward(x).span(), direct.forward(x).span()) == 0.0);
  // Double precision from F32 storage, and F64 / BF16 storage.
  const auto loaded64 = io::load_layer<double, backend::reference>(p);
  CHECK(loaded64.config().d_model == 32);
  io::save_model(temp_path("roundtrip_bf16.safetensors"), cfg, w, dtype::BF16);
  const auto f = io::safetensors_file::load(temp_path("roundtrip_bf16.safetensors"));
  CHECK(f.at("W_in.weight").type == dtype::BF16);
  CHECK_NOTHROW(load_ref(f));
}

TEST_CASE("a saved decoder loads back, tied and untied", "[io]") {
  for (bool tied : {true, false}) {
    const decoder_config dc{cfg, 30, 2, tied};
    const auto w = random_decoder_weights<float>(dc, 8);
    const fs::path p = temp_path("decoder.safetensors");
    io::save_model(p, dc, w);
    const io::safetensors_file f = io::safetensors_file::load(p);
    CHECK((f.find("lm_head.weight") == nullptr) == tied);
    const io::model_info info = io::read_model_info(f);
    CHECK(info.arch == io::model_arch::decoder);
    CHECK(info.config.n_layers == 2);
    CHECK(info.config.tie_embeddings == tied);
    const auto M = load_dec(f);
    const decoder<float, backend::reference> direct(dc, w);
    const tensor<std::int64_t> tok = test::random_tokens(1, 12, 30, 1);
    CHECK(test::max_rel_diff(M.forward(tok).span(), direct.forward(tok).span()) == 0.0);
  }
}

TEST_CASE("a bare state dict loads when the caller gives the configuration", "[io]") {
  const auto w = random_layer_weights<float>(cfg, 3);
  const fs::path p = write_layer("bare.safetensors", w, without_metadata());
  const auto f = io::safetensors_file::load(p);
  CHECK_FALSE(io::has_config_metadata(f));
  CHECK_THROWS_WITH(load_ref(f),
                    Catch::Contains("no sessa.* configuration") && Catch::Contains("bare state dict"));
  CHECK_NOTHROW(load_ref(f, cfg));
  // A configuration that disagrees with the tensors is reported as a shape mismatch.
  layer_config wrong = cfg;
  wrong.n_kv_heads = 4;
  CHECK_THROWS_WITH(load_ref(f, wrong),
                    Catch::Contains("mis-shaped") && Catch::Contains("mixer.k_proj.weight is (16, 32), expected (32, 32)"));
  // With metadata present, a conflicting configuration from the caller is refused.
  const fs::path pm = write_layer("meta.safetensors", w);
  CHECK_THROWS_WITH(load_ref(pm, wrong), Catch::Contains("differs from the file"));
  CHECK_NOTHROW(load_ref(pm, cfg));
}

TEST_CASE("missing, unexpected and mis-shaped tensors are all listed by name", "[io][errors]") {
  const auto w = random_layer_weights<float>(cfg, 3);
  CHECK_THROWS_WITH(load_ref(write_layer("m.safetensors", w, skipping("mixer.q_proj.bias"))),
                    Catch::Contains("missing: mixer.q_proj.bias"));
  CHECK_THROWS_WITH(load_ref(write_layer("r.safetensors", w, reshaping("W_in.weight"))),
                    Catch::Contains("mis-shaped: W_in.weight is (2048,), expected (64, 32)"));
  alter extra;
  extra.extra = [](io::safetensors_writer& o) {
    const std::vector<float> v(3, 1.0f);
    o.add<float>("mixer.bogus", {3}, v);
  };
  CHECK_THROWS_WITH(load_ref(write_layer("u.safetensors", w, extra)),
                    Catch::Contains("unexpected: mixer.bogus"));
  // All three at once, in one message.
  alter all = extra;
  all.skip = "ln.bias";
  all.reshape = "W_out.weight";
  CHECK_THROWS_WITH(load_ref(write_layer("a.safetensors", w, all)),
                    Catch::Contains("missing: ln.bias") && Catch::Contains("unexpected: mixer.bogus") &&
                        Catch::Contains("mis-shaped: W_out.weight is (1024,), expected (32, 32)"));
  // An integer tensor where a parameter belongs.
  alter ints;
  ints.skip = "ln.weight";
  ints.extra = [](io::safetensors_writer& o) {
    const std::vector<std::int32_t> v(32, 1);
    o.add<std::int32_t>("ln.weight", {32}, v);
  };
  CHECK_THROWS_WITH(load_ref(write_layer("i.safetensors", w, ints)),
                    Catch::Contains("ln.weight") && Catch::Contains("I32"));
}

TEST_CASE("bad metadata is named", "[io][errors]") {
  const auto w = random_layer_weights<float>(cfg, 3);
  auto load_with = [&](std::map<std::string, std::string> m) {
    alter a;
    a.meta_override = std::move(m);
    return [p = write_layer("meta_bad.safetensors", w, a)] { load_ref(p); };
  };
  CHECK_THROWS_WITH(load_with({{"sessa.d_model", "3x2"}})(), Catch::Contains("'sessa.d_model' = '3x2' is not an integer"));
  CHECK_THROWS_WITH(load_with({{"sessa.n_heads", ""}})(), Catch::Contains("metadata key 'sessa.n_heads' is missing"));
  CHECK_THROWS_WITH(load_with({{"sessa.use_rope", "yes"}})(), Catch::Contains("'sessa.use_rope' = 'yes'"));
  CHECK_THROWS_WITH(load_with({{"sessa.gamma_max", "1.5"}})(), Catch::Contains("gamma_max must lie in (0, 1), got 1.5"));
  CHECK_THROWS_WITH(load_with({{"sessa.gamma_max", "nan"}})(), Catch::Contains("not a finite number"));
  CHECK_THROWS_WITH(load_with({{"sessa.n_kv_heads", "3"}})(), Catch::Contains("n_kv_heads (3)"));
  CHECK_THROWS_WITH(load_with({{"sessa.arch", "encoder"}})(), Catch::Contains("'encoder' is neither"));
  CHECK_THROWS_WITH(load_with({{"sessa.arch", "decoder"}})(), Catch::Contains("sessa.vocab_size"));
  CHECK_THROWS_WITH(load_with({{"sessa.attention", "linear"}})(), Catch::Contains("'linear'"));
  CHECK_THROWS_WITH(load_with({{"sessa.attention", "sliding_window"}, {"sessa.window", "8"}})(),
                    Catch::Contains("declares attention 'sliding_window'") && Catch::Contains("'causal'"));
  // A decoder file given to load_layer, and the other way round.
  const decoder_config dc{cfg, 30, 1, true};
  io::save_model(temp_path("dec1.safetensors"), dc, random_decoder_weights<float>(dc, 1));
  CHECK_THROWS_WITH(load_ref(temp_path("dec1.safetensors")),
                    Catch::Contains("holds a decoder"));
  CHECK_THROWS_WITH(load_dec(write_layer("lay.safetensors", w)),
                    Catch::Contains("holds a layer"));
}

TEST_CASE("the public modules' buffers are accepted and rope_inv_freq is checked", "[io]") {
  auto w = random_layer_weights<float>(cfg, 3);
  std::vector<float> freq = rope::inv_freq(cfg.head_dim());
  alter a;
  a.extra = [&](io::safetensors_writer& o) {
    o.add<float>("mixer.rope_inv_freq", {static_cast<index_t>(freq.size())}, freq);
    std::vector<std::byte> mask(16 * 16, std::byte{0});
    o.add("mixer.causal_mask_f_full", dtype::BOOL, {16, 16}, mask);
    o.add("mixer.causal_mask_fb_full", dtype::BOOL, {16, 16}, mask);
  };
  CHECK_NOTHROW(load_ref(write_layer("buf.safetensors", w, a)));
  // A value one ulp away (as torch's float32 pow can give) is accepted and its bits are used.
  freq[1] = std::nextafter(freq[1], 1.0f);
  const auto L = load_ref(write_layer("buf1.safetensors", w, a));
  CHECK(L.get_mixer().weights().rope_inv_freq[1] == freq[1]);
  freq[1] = 0.5f;
  CHECK_THROWS_WITH(load_ref(write_layer("buf2.safetensors", w, a)),
                    Catch::Contains("mixer.rope_inv_freq[1]"));
  freq = rope::inv_freq(cfg.head_dim());
  freq.push_back(1.0f);
  CHECK_THROWS_WITH(load_ref(write_layer("buf3.safetensors", w, a)),
                    Catch::Contains("mixer.rope_inv_freq is (5,), expected (4,)"));
  alter m;
  m.extra = [](io::safetensors_writer& o) {
    const std::vector<float> v(16, 1.0f);
    o.add<float>("mixer.causal_mask_f_full", {4, 4}, v);
  };
  CHECK_THROWS_WITH(load_ref(write_layer("mask.safetensors", w, m)),
                    Catch::Contains("causal_mask_f_full must be a square BOOL matrix"));
}

TEST_CASE("JSON configurations for bare state dicts", "[io][errors]") {
  // A configuration is small: a huge text is refused before a JSON tree (about 100 bytes per value) is built.
  std::string huge = R"({"d_model": 32, "n_heads": 4, "pad": [0)";
  while (huge.size() < io::max_config_json_bytes) huge += ",0";
  huge += "]}";
  CHECK_THROWS_WITH(io::parse_config_json(huge, "big.json"),
                    Catch::Contains("big.json: the configuration is") && Catch::Contains("over the limit of 65536 bytes"));
  const io::model_info ok = io::parse_config_json(R"({"d_model": 32, "n_heads": 4, "n_kv_heads": 2})", "c.json");
  CHECK(ok.arch == io::model_arch::layer);
  CHECK(ok.config.layer.gamma_max == 0.999);
  CHECK(ok.config.layer.use_rope);
  const io::model_info dec = io::parse_config_json(
      R"({"arch": "decoder", "d_model": 32, "n_heads": 4, "vocab_size": 9, "n_layers": 3, "tie_embeddings": false})", "d.json");
  CHECK(dec.config.n_layers == 3);
  CHECK(dec.config.layer.n_kv_heads == 4);
  CHECK_THROWS_WITH(io::parse_config_json(R"({"d_model": 32})", "c.json"), Catch::Contains("'n_heads' is missing"));
  CHECK_THROWS_WITH(io::parse_config_json(R"({"d_model": 32, "n_heads": 4, "heads": 2})", "c.json"),
                    Catch::Contains("unknown configuration key 'heads'"));
  CHECK_THROWS_WITH(io::parse_config_json(R"({"d_model": 32.5, "n_heads": 4})", "c.json"),
                    Catch::Contains("'d_model' must be an integer"));
  CHECK_THROWS_WITH(io::parse_config_json(R"({"d_model": 32, "n_heads": 4, "use_rope": "yes"})", "c.json"),
                    Catch::Contains("'use_rope' must be true or false"));
  CHECK_THROWS_WITH(io::parse_config_json(R"({"d_model": 30, "n_heads": 4})", "c.json"),
                    Catch::Contains("c.json") && Catch::Contains("d_model (30)"));
  CHECK_THROWS_WITH(io::parse_config_json(R"({"d_model": 32,)", "c.json"), Catch::Contains("c.json"));
  CHECK_THROWS_WITH(io::parse_config_json("[1]", "c.json"), Catch::Contains("must be a JSON object"));
  CHECK_THROWS_AS(io::read_config_json(temp_path("does_not_exist.json")), io_error);
}

TEST_CASE("weights that are not finite are refused at load, by name and index", "[io][errors]") {
  const auto clean = random_layer_weights<float>(cfg, 21);
  for (const float bad : {std::nanf(""), INFINITY, -INFINITY}) {
    auto w = clean;
    w.mixer.v_w[7] = bad;
    const fs::path p = write_layer("nonfinite.safetensors", w);
    CHECK_THROWS_WITH(load_ref(p), Catch::Contains("mixer.v_proj.weight[7] is") &&
                                       Catch::Contains("(weights must be finite)"));
  }
  // A finite value of the file that the storage type cannot hold: a double beyond float's range, a float
  // beyond float16's.
  io::safetensors_writer out;
  for (const auto& [k, v] : io::config_metadata(cfg)) out.set_metadata(k, v);
  for_each_parameter(cfg, clean, [&](const std::string& name, const shape_t& s, const buffer<float>& b) {
    std::vector<double> v(b.span().begin(), b.span().end());
    if (name == "W_in.weight") v[3] = 1e300;
    out.add_converted(name, dtype::F64, s, v);
  });
  const fs::path p = temp_path("overflow.safetensors");
  out.write(p);
  CHECK_THROWS_WITH(load_ref(p), Catch::Contains("W_in.weight[3] = 1e+300 overflows the storage type f32"));
  CHECK_NOTHROW(io::load_layer<double, backend::reference>(p));
  auto w = clean;
  w.in_w[5] = 70000.0f;
  const fs::path p16 = write_layer("overflow16.safetensors", w);
  CHECK_NOTHROW(load_ref(p16));
  CHECK_THROWS_WITH((io::load_layer<precision<float, float16>, backend::reference>(p16)),
                    Catch::Contains("W_in.weight[5] = 70000 overflows the storage type f16"));
}
