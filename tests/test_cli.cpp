// The `sessa` command-line tool, run as a user would: it must reproduce every golden case (the project's
// and ../shared/golden) in all three modes and both precisions, and every error must be one line on
// stderr with exit status 1 (2 for usage errors) and no output file left behind.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <sessa/io/model_file.hpp>

#include "support.hpp"

namespace fs = std::filesystem;
using namespace sessa;

namespace {

struct result {
  int status;
  std::string out, err;
};

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// One folder per process: CTest runs the test cases of this file in parallel.
const fs::path scratch = fs::temp_directory_path() / ("sessa_test_cli." + std::to_string(::getpid()));

result cli(const std::string& args) {
  fs::create_directories(scratch);
  const std::string cmd = std::string("'") + SESSA_CLI_PATH + "' " + args + " > '" + (scratch / "stdout").string() +
                          "' 2> '" + (scratch / "stderr").string() + "'";
  const int raw = std::system(cmd.c_str());
  return {WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, slurp(scratch / "stdout"), slurp(scratch / "stderr")};
}

/// Exit `status`, exactly one line on stderr containing `needle`, and no file at `output` (if given).
void expect_failure(const std::string& args, int status, const std::string& needle, const fs::path& output = {}) {
  if (!output.empty()) fs::remove(output);
  const result r = cli(args);
  INFO("sessa " << args << "\nstderr: " << r.err);
  CHECK(r.status == status);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  CHECK(r.err.find(needle) != std::string::npos);
  if (!output.empty()) CHECK_FALSE(fs::exists(output));
}

std::vector<std::string> case_names(const fs::path& dir) {
  std::vector<std::string> out;
  if (!fs::is_directory(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string f = e.path().filename().string(), suffix = ".model.safetensors";
    if (f.size() > suffix.size() && f.compare(f.size() - suffix.size(), suffix.size(), suffix) == 0) {
      const std::string n = f.substr(0, f.size() - suffix.size());
      if (fs::exists(dir / (n + ".io.safetensors"))) out.push_back(n);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

void reproduce(const fs::path& dir) {
  const auto names = case_names(dir);
  for (const auto& n : names) {
    const fs::path model = dir / (n + ".model.safetensors"), io_file = dir / (n + ".io.safetensors");
    {  // cases longer than one pass (prefill_block) run in test_golden's [slow] case, not through the CLI
      const io::safetensors_file in = io::safetensors_file::load(io_file);
      const io::tensor_entry* e = in.find("x") ? in.find("x") : in.find("tokens");
      if (e && e->shape.size() >= 2 && e->shape[1] > prefill_block) continue;
    }
    const fs::path config = dir / (n + ".config.json"), out = scratch / (n + ".out.safetensors");
    const std::string config_arg = fs::exists(config) ? " --config '" + config.string() + "'" : "";
    const io::safetensors_file want = io::safetensors_file::load(io_file);
    const bool dec = want.find("logits") != nullptr;
    const std::string key = dec ? "logits" : "y";
    for (const std::string mode : {"prefill", "decode", "chunked:3"})
      for (const std::string precision : {"f32", "f64"})
        for (const std::string backend : {"cpu", "reference", "thrust_omp"}) {
          if (backend == "reference" && mode == "chunked:3") continue;
#if !defined(SESSA_CLI_HAS_THRUST_OMP)
          if (backend == "thrust_omp") continue;
#endif
          fs::remove(out);
          const result r = cli("run --model '" + model.string() + "' --input '" + io_file.string() + "' --output '" +
                               out.string() + "' --mode " + mode + " --precision " + precision + " --backend " +
                               backend + config_arg);
          INFO(n << " " << mode << " " << precision << " " << backend << ": " << r.err);
          REQUIRE(r.status == 0);
          const io::safetensors_file got = io::safetensors_file::load(out);
          CHECK(got.at(key).type == (precision == "f32" ? io::dtype::F32 : io::dtype::F64));
          const auto ref = want.read_as<double>(mode == "decode" ? key + "_decode" : key);
          const double err = test::max_rel_diff(got.read_as<double>(key), ref);
          INFO("max|diff| / max|ref| = " << err);
          CHECK(err <= (precision == "f32" ? 1e-4 : 1e-9));
        }
  }
}

/// A copy of `src` with the byte range [from, from + count) dropped (a truncated or damaged file).
fs::path damaged(const fs::path& src, const std::string& name, std::size_t keep) {
  std::string bytes = slurp(src);
  bytes.resize(std::min(bytes.size(), keep));
  const fs::path p = scratch / name;
  std::ofstream(p, std::ios::binary) << bytes;
  return p;
}

}  // namespace

TEST_CASE("the CLI reproduces the project's golden vectors in every mode", "[cli]") {
  REQUIRE(case_names(SESSA_TEST_DATA_DIR).size() >= 8);
  reproduce(SESSA_TEST_DATA_DIR);
}

TEST_CASE("the CLI reproduces ../shared/golden in every mode", "[cli]") {
  if (case_names(SESSA_SHARED_GOLDEN_DIR).empty()) {
    WARN("no shared golden vectors; skipped");
    return;
  }
  reproduce(SESSA_SHARED_GOLDEN_DIR);
}

TEST_CASE("sessa info describes a model", "[cli]") {
  const std::string model = std::string(SESSA_TEST_DATA_DIR) + "/decoder_v40_d32_l2_tied.model.safetensors";
  const result r = cli("info --model '" + model + "'");
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("arch            decoder") != std::string::npos);
  CHECK(r.out.find("parameters      " + std::to_string(parameter_count(decoder_config{{32, 4, 2, true, 0.999, 1e-5}, 40, 2, true}))) !=
        std::string::npos);
  // Cache per token per batch row: n_layers * (2 Hkv d + 2 D) = 2 * (2*16 + 64) = 192 values.
  CHECK(r.out.find("cache per token 192 values = 768 bytes (f32)") != std::string::npos);
  const result help = cli("--help");
  CHECK(help.status == 0);
  CHECK(help.out.find("usage: sessa") != std::string::npos);
}

TEST_CASE("CLI errors: one line, the right exit status, no output file", "[cli][errors]") {
  const std::string data = SESSA_TEST_DATA_DIR;
  const std::string layer = data + "/layer_d32_h4_kv2.model.safetensors", layer_io = data + "/layer_d32_h4_kv2.io.safetensors";
  const std::string dec = data + "/decoder_v40_d32_l2_tied.model.safetensors", dec_io = data + "/decoder_v40_d32_l2_tied.io.safetensors";
  const fs::path out = scratch / "never.safetensors";
  const std::string o = " --output '" + out.string() + "'";
  // Usage errors: exit 2.
  expect_failure("", 2, "no command given");
  expect_failure("frobnicate", 2, "unknown command 'frobnicate'");
  expect_failure("run --input x" + o, 2, "missing required option --model");
  expect_failure("run --model '" + layer + "' --input '" + layer_io + "'" + o + " --mode sideways", 2, "--mode must be", out);
  expect_failure("run --model '" + layer + "' --input '" + layer_io + "'" + o + " --mode chunked:0", 2, "--mode must be", out);
  expect_failure("run --model '" + layer + "' --input '" + layer_io + "'" + o + " --precision f16", 2, "unknown --precision 'f16'", out);
  expect_failure("run --model '" + layer + "' --input '" + layer_io + "'" + o + " --backend gpu", 2, "unknown --backend 'gpu'", out);
  expect_failure("run --model '" + layer + "' --input '" + layer_io + "'" + o + " --threads -1", 2, "--threads", out);
  // A backend this build does not contain: a usage error that says which build has it.
  expect_failure("run --model '" + layer + "' --input '" + layer_io + "'" + o + " --backend thrust_cuda", 2,
                 "this build has no thrust_cuda backend", out);
#if !defined(SESSA_CLI_HAS_THRUST_OMP)
  expect_failure("run --model '" + layer + "' --input '" + layer_io + "'" + o + " --backend thrust_omp", 2,
                 "this build has no thrust_omp backend", out);
#endif
  expect_failure("info --model '" + layer + "' --colour blue", 2, "unknown option --colour");
  expect_failure("info --model a --model b", 2, "given twice");
  // Errors: exit 1, naming the problem.
  expect_failure("info --model '" + (scratch / "nope.safetensors").string() + "'", 1, "nope.safetensors");
  expect_failure("run --model '" + damaged(layer, "trunc.safetensors", 2000).string() + "' --input '" + layer_io + "'" + o, 1,
                 "trunc.safetensors", out);
  expect_failure("run --model '" + damaged(layer, "short.safetensors", 5).string() + "' --input '" + layer_io + "'" + o, 1,
                 "short.safetensors", out);
  expect_failure("run --model '" + layer + "' --input '" + dec_io + "'" + o, 1, "no tensor 'x'", out);
  expect_failure("run --model '" + dec + "' --input '" + layer_io + "'" + o, 1, "no tensor 'tokens'", out);
  expect_failure("run --model '" + data + "/layer_d16_h1_norope.model.safetensors' --input '" + layer_io + "'" + o, 1,
                 "(batch, tokens, 16)", out);
  expect_failure("run --model '" + data + "/layer_d32_h4_kv2_bare.model.safetensors' --input '" + layer_io + "'" + o, 1,
                 "bare state dict", out);
  expect_failure("info --model '" + layer + "' --config '" + (scratch / "missing.json").string() + "'", 1, "missing.json");
  // A token outside the vocabulary (the decoder has 40 tokens; this one has 50).
  {
    io::safetensors_writer w;
    const std::vector<std::int64_t> tok = {1, 2, 49, 3};
    w.add<std::int64_t>("tokens", {1, 4}, tok);
    w.write(scratch / "bad_tokens.safetensors");
  }
  expect_failure("run --model '" + dec + "' --input '" + (scratch / "bad_tokens.safetensors").string() + "'" + o, 1,
                 "token id 49", out);
  // An output path that cannot be written.
  expect_failure("run --model '" + layer + "' --input '" + layer_io + "' --output '" + (scratch / "no/such/dir/o.safetensors").string() + "'",
                 1, "no/such/dir");
}

TEST_CASE("sessa generate: sampling options, stop strings, the --tokens alias and its errors", "[cli]") {
  const std::string model = std::string(SESSA_SOURCE_DIR) + "/examples/models/tiny_decoder.safetensors";
  const std::string base = "generate --model '" + model + "' --prompt 'THE SEA '";
  // Greedy by default; --tokens is --max-tokens' older name.
  const result a = cli(base + " --max-tokens 60"), b = cli(base + " --tokens 60 --temperature 0");
  INFO(a.err);
  REQUIRE(a.status == 0);
  REQUIRE(b.status == 0);
  CHECK(a.out == b.out);
  CHECK(a.out.size() == 8 + 60 + 1);
  CHECK(a.out.rfind("THE SEA ", 0) == 0);
  CHECK(a.err.find("60 tokens generated") != std::string::npos);
  CHECK(a.err.find("stop: max_tokens") != std::string::npos);
  // Sampling: the same seed gives the same text; another seed another text.
  const std::string sampled = base + " --max-tokens 80 --temperature 0.9 --top-k 30 --top-p 0.95 --min-p 0.01 --repeat-penalty 1.1";
  const result s1 = cli(sampled + " --seed 5"), s2 = cli(sampled + " --seed 5"), s3 = cli(sampled + " --seed 6");
  REQUIRE(s1.status == 0);
  CHECK(s1.out == s2.out);
  CHECK(s1.out != s3.out);
  CHECK(s1.out != a.out.substr(0, s1.out.size()));
  // Stop strings, repeatable: generation ends before the first one that appears.
  const std::string greedy_text = a.out.substr(8, 60);
  const std::string stop1 = greedy_text.substr(20, 4), stop2 = greedy_text.substr(30, 3);
  const result st = cli(base + " --max-tokens 60 --stop '" + stop2 + "' --stop '" + stop1 + "'");
  REQUIRE(st.status == 0);
  const std::size_t cut = std::min(greedy_text.find(stop1), greedy_text.find(stop2));
  CHECK(st.out == "THE SEA " + greedy_text.substr(0, cut) + "\n");
  CHECK(st.err.find("stop: stop_string") != std::string::npos);
  // Errors.
  expect_failure(base + " --tokens 5 --max-tokens 5", 2, "options --max-tokens and --tokens are the same");
  expect_failure(base + " --top-p 0", 2, "--top-p must be in (0, 1]");
  expect_failure(base + " --min-p 2", 2, "--min-p must be in [0, 1]");
  expect_failure(base + " --top-k -1", 2, "--top-k must be an integer");
  expect_failure(base + " --repeat-penalty 0", 2, "--repeat-penalty must be > 0");
  expect_failure(base + " --temperature -1", 2, "--temperature must be >= 0");
  expect_failure(base + " --stop ''", 2, "--stop must not be empty");
  expect_failure("generate --model '" + model + "' --prompt 'the 7 seas'", 1, "the character '7' at byte 4 is not in the model's vocabulary");
  expect_failure("generate --model '" + std::string(SESSA_TEST_DATA_DIR) + "/decoder_v40_d32_l2_tied.model.safetensors' --prompt 'A'",
                 1, "no tokenizer");
}

namespace {
/// The number after "key": in a one-line JSON object.
double json_number(const std::string& line, const std::string& key) {
  const auto at = line.find("\"" + key + "\": ");
  if (at == std::string::npos) return std::nan("");
  return std::strtod(line.c_str() + at + key.size() + 4, nullptr);
}
}  // namespace

TEST_CASE("sessa eval matches the float64 PyTorch reference (tools/eval_reference.py)", "[cli]") {
  const std::string data = SESSA_TEST_DATA_DIR;
  // The first verses of the shipped model's held-out text (tools/train_tiny.py); window 128, stride 96.
  const std::string want = slurp(data + "/eval_tiny.json");
  const std::string base = "eval --model '" + std::string(SESSA_SOURCE_DIR) + "/examples/models/tiny_decoder.safetensors' --text '" +
                           data + "/eval_text.txt'";
  for (const std::string precision : {"f32", "f64"})
    for (const std::string backend : {"cpu", "reference"}) {
      const result r = cli(base + " --window 128 --stride 96 --json --precision " + precision + " --backend " + backend);
      INFO(precision << " " << backend << ": " << r.err << r.out);
      REQUIRE(r.status == 0);
      CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
      const double got = json_number(r.out, "nats_per_token"), ref = json_number(want, "nats_per_token");
      CHECK(std::abs(got - ref) <= (precision == "f32" ? 2e-6 : 1e-12) * ref);
      CHECK(std::abs(json_number(r.out, "bits_per_byte") - json_number(want, "bits_per_byte")) <=
            (precision == "f32" ? 2e-6 : 1e-12) * json_number(want, "bits_per_byte"));
      CHECK(json_number(r.out, "tokens") == json_number(want, "tokens"));
      CHECK(json_number(r.out, "windows") == json_number(want, "windows"));
      CHECK(json_number(r.out, "tokens_per_s") > 0);
    }
  const result plain = cli(base);  // the default window: 512 tokens (the text has 1983), stride = window
  REQUIRE(plain.status == 0);
  CHECK(plain.out.find("tokens scored   1979 in 4 windows of 512, stride 512") != std::string::npos);
  // tools/eval_reference.py ... eval_text.txt 512 512: 1.2102501361377147 nats, 1979 tokens, 4 windows
  CHECK(plain.out.find("nats per token  1.21025") != std::string::npos);
  // Errors.
  expect_failure(base + " --window 10 --stride 11", 1, "a stride of 11 tokens skips tokens between windows of 10");
  expect_failure(base + " --window 1", 2, "--window must be an integer in [2,");
  expect_failure(base + " --json 1", 2, "unexpected argument '1'");
  {
    std::ofstream(scratch / "digit.txt") << "THE 7 seas";
    expect_failure("eval --model '" + std::string(SESSA_SOURCE_DIR) + "/examples/models/tiny_decoder.safetensors' --text '" +
                       (scratch / "digit.txt").string() + "'",
                   1, "digit.txt: tokenizer: the character '7' at byte 4 is not in the model's vocabulary");
    std::ofstream(scratch / "newline.txt") << "THE SEA\n";
    expect_failure("eval --model '" + std::string(SESSA_SOURCE_DIR) + "/examples/models/tiny_decoder.safetensors' --text '" +
                       (scratch / "newline.txt").string() + "'",
                   1, "the character '\\n' at byte 7");
  }
  expect_failure("eval --model '" + std::string(SESSA_SOURCE_DIR) + "/examples/models/tiny_decoder.safetensors' --text '" +
                     (scratch / "none.txt").string() + "'",
                 1, "none.txt: cannot open the text file");
}

TEST_CASE("sessa generate --save-state / --load-state: 50 + 50 tokens in two processes equal 100 in one", "[cli]") {
  const std::string model = std::string(SESSA_SOURCE_DIR) + "/examples/models/tiny_decoder.safetensors";
  const std::string sampling = " --temperature 0.9 --top-k 30 --repeat-penalty 1.05";
  const std::string state = (scratch / "chat.state.safetensors").string();
  const result whole = cli("generate --model '" + model + "' --prompt 'THE SEA ' --max-tokens 100 --seed 3" + sampling);
  const result part1 = cli("generate --model '" + model + "' --prompt 'THE SEA ' --max-tokens 50 --seed 3" + sampling +
                           " --save-state '" + state + "'");
  const result part2 = cli("generate --model '" + model + "' --max-tokens 50 --load-state '" + state + "'" + sampling);
  INFO(whole.err << part1.err << part2.err);
  REQUIRE(whole.status == 0);
  REQUIRE(part1.status == 0);
  REQUIRE(part2.status == 0);
  REQUIRE(part1.out.size() == 8 + 50 + 1);
  CHECK(part1.out.substr(0, 58) + part2.out == whole.out);
  // A prompt after a restored state is fed first, then generation continues.
  const result more = cli("generate --model '" + model + "' --max-tokens 10 --load-state '" + state + "' --prompt ' AND'" + sampling);
  REQUIRE(more.status == 0);
  CHECK(more.out.rfind(" AND", 0) == 0);
  expect_failure("generate --model '" + model + "' --max-tokens 5 --seed 1 --load-state '" + state + "'", 2,
                 "--seed with --load-state");
  expect_failure("generate --model '" + model + "' --max-tokens 5 --load-state '" + (scratch / "none.safetensors").string() + "'", 1,
                 "none.safetensors");
  expect_failure("generate --model '" + model + "' --max-tokens 5 --load-state '" + model + "'", 1,
                 "no tensor named 'tokens'");
}

TEST_CASE("sessa generate without --model runs the built-in model; --prompts runs a batch equal to solo runs",
          "[cli][batch]") {
  const std::string model = std::string(SESSA_SOURCE_DIR) + "/examples/models/tiny_decoder.safetensors";
  // The built-in model is the shipped file, byte for byte.
  const result with = cli("generate --model '" + model + "' --prompt 'THE ' --max-tokens 40");
  const result without = cli("generate --prompt 'THE ' --max-tokens 40");
  INFO(without.err);
  REQUIRE(without.status == 0);
  CHECK(without.out == with.out);
  const result info = cli("info");
  REQUIRE(info.status == 0);
  CHECK(info.out.rfind("file            the built-in model", 0) == 0);
  const std::string named = cli("info --model '" + model + "'").out;
  CHECK(info.out.substr(info.out.find('\n')) == named.substr(named.find('\n')));  // the same model

  // A batch of prompts of different lengths (a blank line and a CRLF line among them): row i equals the solo run
  // of prompt i with seed S + i, greedy and sampled.
  const std::vector<std::string> prompts = {"IN THE BEGINNING ", "AND ", "THE LORD SAID UNTO "};
  const fs::path file = scratch / "prompts.txt";
  std::ofstream(file, std::ios::binary) << prompts[0] << "\n\n" << prompts[1] << "\r\n" << prompts[2] << "\n";
  for (const std::string& opts :
       {std::string(" --max-tokens 30"), std::string(" --max-tokens 30 --temperature 0.8 --top-k 20 --seed 7")}) {
    const result batch = cli("generate --prompts '" + file.string() + "'" + opts);
    INFO(opts << "\n" << batch.err);
    REQUIRE(batch.status == 0);
    CHECK(batch.err.find("batch of 3 prompts") != std::string::npos);
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      std::string solo_opts = opts;
      if (opts.find("--seed 7") != std::string::npos) solo_opts.replace(solo_opts.find("--seed 7"), 8, "--seed " + std::to_string(7 + i));
      const result solo = cli("generate --prompt '" + prompts[i] + "'" + solo_opts);
      REQUIRE(solo.status == 0);
      const std::string line = "[" + std::to_string(i + 1) + "] " + solo.out;  // solo.out ends in '\n'
      INFO("row " << i + 1 << ": " << solo.out);
      CHECK(batch.out.find(line) != std::string::npos);
    }
    CHECK(std::count(batch.out.begin(), batch.out.end(), '\n') == 3);
  }
  // Errors.
  std::ofstream(scratch / "blank.txt") << "\n  \n";
  std::ofstream(scratch / "bad.txt") << "AND\nTHE ~\n";
  expect_failure("generate --prompts '" + (scratch / "blank.txt").string() + "'", 1, "no prompts (one per line");
  expect_failure("generate --prompts '" + (scratch / "bad.txt").string() + "'", 1, "bad.txt: prompt 2: ");
  expect_failure("generate --prompts '" + file.string() + "' --prompt 'AND'", 2, "--prompts generates a batch");
  expect_failure("generate --prompts '" + file.string() + "' --save-state x", 2, "--prompts generates a batch");
  expect_failure("generate --prompts '" + (scratch / "absent.txt").string() + "'", 1, "absent.txt: cannot open");
}

TEST_CASE("sessa profile: the uniform construction's exponent, the retrieval construction, models, plots, errors",
          "[cli][profile]") {
  // The criterion: gamma 0.8 over 20000 tokens, exponent within 0.02 of 0.2, and the SVG written.
  const fs::path svg = scratch / "uniform.svg";
  fs::remove(svg);
  const result u = cli("profile --construction uniform --gamma 0.8 --tokens 20000 --json --svg '" + svg.string() + "'");
  INFO(u.err);
  REQUIRE(u.status == 0);
  const io::json::value j = io::json::parse(u.out);
  CHECK(std::abs(j.find("exponent")->as_number() - 0.2) < 0.02);
  const io::json::value& fit = *j.find("fit");
  CHECK(fit.find("lag_min")->as_number() == 100);
  CHECK(fit.find("lag_max")->as_number() == 9999);
  CHECK(fit.find("r2")->as_number() > 0.999);
  const auto& curve = j.find("curve")->as_array();
  REQUIRE(curve.size() > 100);
  CHECK(curve.front().find("lag")->as_number() == 1);
  CHECK(curve.front().find("median")->as_number() == Approx(0.8));  // s_1 = gamma s_0
  CHECK(curve.back().find("lag")->as_number() == 19999);
  const std::string plot = slurp(svg);
  CHECK(plot.rfind("<svg", 0) == 0);
  CHECK(plot.find("fitted exponent 0.2") != std::string::npos);
  CHECK(plot.find("diffuse attention read") != std::string::npos);
  CHECK(plot.find("exponential, same half-life") != std::string::npos);

  // Retrieval: the marker's influence holds (CSV: lag, median, ...).
  const result r = cli("profile --construction retrieval");
  REQUIRE(r.status == 0);
  std::istringstream lines(r.out);
  std::string line;
  double at10 = 0, worst = 0;
  index_t rows = 0, last = 0;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#' || line.rfind("lag,", 0) == 0) continue;
    const index_t lag = std::stoll(line.substr(0, line.find(',')));
    const double med = std::stod(line.substr(line.find(',') + 1));
    if (lag == 10) at10 = med;
    if (lag >= 10 && at10 > 0) worst = std::max(worst, std::abs(med / at10 - 1));
    last = lag;
    ++rows;
  }
  CHECK(rows > 100);
  CHECK(last == 10000);
  CHECK(at10 == Approx(0.9).epsilon(1e-6));
  CHECK(worst < 0.05);
  CHECK(r.out.find("# exponent") != std::string::npos);

  // The shipped model on the held-out text, feedback solve of one layer and end to end.
  const std::string text = std::string(SESSA_TEST_DATA_DIR) + "/eval_text.txt";
  const result m = cli("profile --text '" + text + "' --tokens 600 --layer 2 --json");
  INFO(m.err);
  REQUIRE(m.status == 0);
  const io::json::value mj = io::json::parse(m.out);
  CHECK(std::isfinite(mj.find("exponent")->as_number()));
  CHECK(mj.find("sources")->as_array().size() == 8);
  CHECK(mj.find("measure")->as_string().find("layer 2") != std::string::npos);
  const result e = cli("profile --text '" + text + "' --tokens 200 --measure end-to-end --sources 0,50 --probes 2 --json");
  INFO(e.err);
  REQUIRE(e.status == 0);
  CHECK(io::json::parse(e.out).find("measure")->as_string().find("2 random sign probes") != std::string::npos);
  // A layer on its input file.
  const std::string data = SESSA_TEST_DATA_DIR;
  const result l = cli("profile --model '" + data + "/layer_d32_h4_kv2.model.safetensors' --input '" + data +
                       "/layer_d32_h4_kv2.io.safetensors' --sources 0,1,2 --fit 1:5");
  INFO(l.err);
  CHECK(l.status == 0);
  CHECK(l.out.find("over lags [1, 5]") != std::string::npos);

  // Errors.
  expect_failure("profile", 2, "profile needs --construction uniform|retrieval");
  expect_failure("profile --construction spiral", 2, "--construction must be uniform or retrieval");
  expect_failure("profile --construction uniform --gamma 1.5", 2, "--gamma must lie in (0, 1)");
  expect_failure("profile --construction uniform --measure end-to-end", 2, "needs a layer");
  expect_failure("profile --construction uniform --model x.safetensors", 2, "does not combine with --model");
  expect_failure("profile --construction uniform --marker 3", 2, "belong to the retrieval construction");
  expect_failure("profile --construction retrieval --gamma 0.5", 2, "--gamma is the uniform construction's gain");
  expect_failure("profile --construction uniform --probes 4", 2, "belong to --measure end-to-end");
  expect_failure("profile --construction uniform --tokens 1000 --fit 10:5000", 1, "reaches past the largest lag");
  expect_failure("profile --construction uniform --fit 10", 2, "--fit must be LO:HI");
  expect_failure("profile --construction uniform --sources 0,x", 2, "--sources must be a comma-separated list");
  expect_failure("profile --construction uniform --tokens 100 --sources 100", 1, "source position 100 is outside");
  expect_failure("profile --construction uniform --tokens 100 --sources 98", 1, "a profile needs at least 3");
  expect_failure("profile --text '" + text + "' --input x", 2, "--input is for a layer");
  expect_failure("profile --model '" + data + "/layer_d32_h4_kv2.model.safetensors' --text '" + text + "'", 2,
                 "--text is for a decoder");
  expect_failure("profile --text '" + text + "' --layer 3", 2, "--layer must be an integer in [0, 2]");
  expect_failure("profile --text '" + text + "' --measure end-to-end --layer 1", 2, "--measure end-to-end spans them all");
  expect_failure("profile --text /nonexistent/file.txt", 1, "cannot open the text file");
  const fs::path bad_svg = scratch / "no_such_dir" / "plot.svg";
  expect_failure("profile --construction uniform --tokens 1000 --svg '" + bad_svg.string() + "'", 1, "cannot open for writing");
}

TEST_CASE("sessa quantize: bf16 and f16 files that run, generate and evaluate with narrow weights, and its errors",
          "[cli]") {
  const std::string data = SESSA_TEST_DATA_DIR;
  const std::string shipped = std::string(SESSA_SOURCE_DIR) + "/examples/models/tiny_decoder.safetensors";
  // The first verses of the held-out text (the whole of it, kjv_heldout.txt, is in docs/PERFORMANCE.md's figures).
  const std::string text = " --text '" + data + "/eval_text.txt' --window 128 --stride 128 --json";
  const result base = cli("eval --model '" + shipped + "'" + text);
  REQUIRE(base.status == 0);
  const double bpb = json_number(base.out, "bits_per_byte");
  const std::string prompt = " --prompt 'And the LORD' --max-tokens 60";
  const result greedy = cli("generate --model '" + shipped + "'" + prompt);
  REQUIRE(greedy.status == 0);
  for (const std::string to : {"bf16", "f16"}) {
    const fs::path q = scratch / ("tiny_" + to + ".safetensors");
    fs::remove(q);
    const result r = cli("quantize --to " + to + " --out '" + q.string() + "'");  // the built-in model
    INFO(to << ": " << r.err << r.out);
    REQUIRE(r.status == 0);
    CHECK(r.out.find("54 tensors as " + to) != std::string::npos);
    const io::safetensors_file f = io::safetensors_file::load(q);
    for (const auto& e : f.entries()) CHECK(e.type == (to == "bf16" ? io::dtype::BF16 : io::dtype::F16));
    CHECK(f.metadata().at("sessa.weights") == to);
    CHECK(f.metadata().count("sessa.vocab") == 1);  // the tokenizer travels with the weights
    CHECK(fs::file_size(q) < fs::file_size(shipped) * 51 / 100);
    // Bits per byte within 0.5% of float32 (whole held-out text: bf16 +0.005%, f16 +0.0006%), narrow in memory
    // (--weights auto) and widened to float32 (--weights f32), on cpu and reference alike.
    for (const std::string extra : {"", " --weights f32"}) {
      const result e = cli("eval --model '" + q.string() + "'" + text + extra);
      INFO(extra << ": " << e.err);
      REQUIRE(e.status == 0);
      CHECK(std::abs(json_number(e.out, "bits_per_byte") - bpb) <= 5e-3 * bpb);
      CHECK(json_number(e.out, "bits_per_byte") != bpb);  // the rounding is really there
    }
    {  // the cpu kernels against the reference backend, both with the narrow weights
      const result c = cli("eval --model '" + q.string() + "'" + text);
      const result ref = cli("eval --model '" + q.string() + "'" + text + " --backend reference");
      REQUIRE(c.status == 0);
      REQUIRE(ref.status == 0);
      CHECK(std::abs(json_number(c.out, "nats_per_token") - json_number(ref.out, "nats_per_token")) <=
            2e-6 * json_number(ref.out, "nats_per_token"));
    }
    // The same greedy text as the float32 model on the demo prompt (the shipped model's margins are wide).
    const result g = cli("generate --model '" + q.string() + "'" + prompt);
    REQUIRE(g.status == 0);
    CHECK(g.out == greedy.out);
    // A narrow file quantized again to f32 holds exactly the narrow values, widened.
    const fs::path back = scratch / ("tiny_" + to + "_f32.safetensors");
    REQUIRE(cli("quantize --model '" + q.string() + "' --to f32 --out '" + back.string() + "'").status == 0);
    const io::safetensors_file fb = io::safetensors_file::load(back);
    for (const auto& e : f.entries()) CHECK(fb.read_as<double>(e.name) == f.read_as<double>(e.name));
  }
  // Errors: one line, no output file.
  const fs::path out = scratch / "q_err.safetensors";
  expect_failure("quantize --to q4 --out '" + out.string() + "'", 2,
                 "unknown --to 'q4' (choose bf16, f16, q8_0, f32 or f64)", out);
  expect_failure("quantize --to bf16", 2, "--out", out);
  expect_failure("quantize --model '" + damaged(shipped, "cut.safetensors", 5000).string() + "' --to bf16 --out '" +
                     out.string() + "'",
                 1, "cut.safetensors", out);
  expect_failure("eval --model '" + shipped + "'" + text + " --weights q4", 2, "unknown --weights 'q4'");
  expect_failure("eval --model '" + shipped + "'" + text + " --weights q8_0 --precision f64", 2,
                 "--weights q8_0 runs with --precision f32");
  expect_failure("eval --model '" + shipped + "'" + text + " --weights bf16 --precision f64", 2,
                 "--weights bf16 runs with --precision f32");
#if defined(SESSA_CLI_HAS_THRUST_OMP)
  expect_failure("eval --model '" + shipped + "'" + text + " --weights bf16 --backend thrust_omp", 2,
                 "--weights bf16 runs on the cpu and reference backends");
  expect_failure("eval --model '" + shipped + "'" + text + " --weights q8_0 --backend thrust_omp", 2,
                 "--weights q8_0 runs on the cpu and reference backends");
#endif
}

TEST_CASE("sessa quantize --to q8_0: int8 blocks with float16 scales that run, generate, evaluate and convert back",
          "[cli]") {
  const std::string data = SESSA_TEST_DATA_DIR;
  const std::string shipped = std::string(SESSA_SOURCE_DIR) + "/examples/models/tiny_decoder.safetensors";
  const std::string text = " --text '" + data + "/eval_text.txt' --window 128 --stride 128 --json";
  const result base = cli("eval --model '" + shipped + "'" + text);
  REQUIRE(base.status == 0);
  const double bpb = json_number(base.out, "bits_per_byte");
  const fs::path q = scratch / "tiny_q8_0.safetensors";
  fs::remove(q);
  const result r = cli("quantize --to q8_0 --out '" + q.string() + "'");
  INFO(r.err << r.out);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("tensors as q8_0") != std::string::npos);
  const io::safetensors_file f = io::safetensors_file::load(q);
  CHECK(f.metadata().at("sessa.weights") == "q8_0");
  CHECK(f.metadata().count("sessa.vocab") == 1);
  index_t matrices = 0;
  for (const auto& e : f.entries()) {
    const bool scale = e.name.size() > 6 && e.name.compare(e.name.size() - 6, 6, ".scale") == 0;
    if (e.type == io::dtype::I8) {
      ++matrices;
      REQUIRE(e.shape.size() == 2);
      const io::tensor_entry* s = f.find(e.name + ".scale");
      REQUIRE(s);
      CHECK(s->type == io::dtype::F16);
      CHECK(s->shape == shape_t{e.shape[0], (e.shape[1] + 31) / 32});
    } else {
      CHECK((scale || e.type == io::dtype::F32));
      CHECK((scale || e.shape.size() <= 1));  // only the vectors stay float
    }
  }
  CHECK(matrices == 3 * 8 + 1);  // per layer W_in, q, k, v, out_proj, proj_fb, gamma_ctx, W_out; the (tied) table
  CHECK(fs::file_size(q) < fs::file_size(shipped) * 30 / 100);
  // Bits per byte within 2% of float32 (the whole held-out text: +0.004%, docs/PERFORMANCE.md), q8_0 in memory
  // (auto), quantized while loading a float32 file (--weights q8_0: the same blocks, the same numbers), and widened
  // to float32 (--weights f32).
  const result e = cli("eval --model '" + q.string() + "'" + text);
  REQUIRE(e.status == 0);
  const double qbpb = json_number(e.out, "bits_per_byte");
  CHECK(std::abs(qbpb - bpb) <= 2e-2 * bpb);
  CHECK(qbpb != bpb);
  const result onload = cli("eval --model '" + shipped + "'" + text + " --weights q8_0");
  REQUIRE(onload.status == 0);
  CHECK(json_number(onload.out, "nats_per_token") == json_number(e.out, "nats_per_token"));
  const result wide = cli("eval --model '" + q.string() + "'" + text + " --weights f32");
  REQUIRE(wide.status == 0);
  CHECK(std::abs(json_number(wide.out, "nats_per_token") - json_number(e.out, "nats_per_token")) <=
        2e-6 * json_number(e.out, "nats_per_token"));
  const result ref = cli("eval --model '" + q.string() + "'" + text + " --backend reference");
  REQUIRE(ref.status == 0);
  CHECK(std::abs(json_number(ref.out, "nats_per_token") - json_number(e.out, "nats_per_token")) <=
        2e-6 * json_number(e.out, "nats_per_token"));
  // The same greedy text as float32 on the demo prompt.
  const std::string prompt = " --prompt 'And the LORD' --max-tokens 60";
  const result greedy = cli("generate --model '" + shipped + "'" + prompt);
  const result g = cli("generate --model '" + q.string() + "'" + prompt);
  REQUIRE(g.status == 0);
  CHECK(g.out == greedy.out);
  // Back to f32: every weight is d * q exactly; and to q8_0 again: the same blocks.
  const fs::path back = scratch / "tiny_q8_0_f32.safetensors", again = scratch / "tiny_q8_0_again.safetensors";
  REQUIRE(cli("quantize --model '" + q.string() + "' --to f32 --out '" + back.string() + "'").status == 0);
  REQUIRE(cli("quantize --model '" + back.string() + "' --to q8_0 --out '" + again.string() + "'").status == 0);
  const io::safetensors_file fb = io::safetensors_file::load(back), fa = io::safetensors_file::load(again);
  const std::vector<std::int32_t> qv = f.read_as<std::int32_t>("layers.1.W_in.weight");
  const std::vector<double> dv = f.read_as<double>("layers.1.W_in.weight.scale");
  const std::vector<double> wv = fb.read_as<double>("layers.1.W_in.weight");
  const index_t cols = f.find("layers.1.W_in.weight")->shape[1], nb = (cols + 31) / 32;
  index_t wrong = 0;
  for (std::size_t i = 0; i < wv.size(); ++i) {
    const index_t row = static_cast<index_t>(i) / cols, col = static_cast<index_t>(i) % cols;
    wrong += wv[i] != static_cast<double>(static_cast<float>(dv[static_cast<std::size_t>(row * nb + col / 32)]) *
                                          static_cast<float>(qv[i]));
  }
  CHECK(wrong == 0);
  for (const auto& t : f.entries()) {
    if (t.type == io::dtype::I8) CHECK(fa.read_as<std::int32_t>(t.name) == f.read_as<std::int32_t>(t.name));
    else CHECK(fa.read_as<double>(t.name) == f.read_as<double>(t.name));
  }
}

TEST_CASE("sessa embed: q8_0 blocks and narrow bit patterns in the header, and its errors", "[cli]") {
  const std::string shipped = std::string(SESSA_SOURCE_DIR) + "/examples/models/tiny_decoder.safetensors";
  const fs::path hq = scratch / "tiny_q8_model.hpp", hf = scratch / "tiny_f32_model.hpp";
  REQUIRE(cli("embed --model '" + shipped + "' --name tiny --dtype q8_0 --out '" + hq.string() + "'").status == 0);
  REQUIRE(cli("embed --model '" + shipped + "' --name tiny --out '" + hf.string() + "'").status == 0);
  const std::string q = slurp(hq);
  CHECK(q.find("using policy = sessa::precision<float, sessa::q8_0, float>;") != std::string::npos);
  CHECK(q.find("inline constexpr sessa::q8_0 layers_0_W_in_weight[896] = {") != std::string::npos);  // 224 rows x 4
  CHECK(q.find("inline constexpr float layers_0_W_in_bias[224]") != std::string::npos);  // vectors stay float
  CHECK(q.size() < slurp(hf).size());
  // A file already in q8_0 embeds its own blocks: the same header.
  const fs::path qfile = scratch / "embed_q8.safetensors", hq2 = scratch / "tiny_q8_again_model.hpp";
  REQUIRE(cli("quantize --to q8_0 --out '" + qfile.string() + "'").status == 0);
  REQUIRE(cli("embed --model '" + qfile.string() + "' --name tiny --dtype q8_0 --out '" + hq2.string() + "'").status == 0);
  const std::string q2 = slurp(hq2);
  CHECK(q2.substr(q2.find("using layer")) == q.substr(q.find("using layer")));  // all but the source line

  const fs::path out = scratch / "embed_err.hpp";
  expect_failure("embed --model '" + shipped + "' --name tiny --dtype q4 --out '" + out.string() + "'", 2,
                 "unknown --dtype 'q4' (choose f32, bf16, f16 or q8_0)", out);
  // Values a storage type cannot hold are refused by parameter name.
  const decoder_config dc{{32, 2, 2, false, 0.99, 1e-5}, 16, 1, true};
  decoder_weights<float> w = random_decoder_weights<float>(dc, 3);
  w.layers[0].out_w.data()[5] = 1.0e5f;  // beyond float16's 65504
  const fs::path big = scratch / "big_weight.safetensors";
  io::save_model(big, dc, w);
  expect_failure("embed --model '" + big.string() + "' --name big --dtype f16 --out '" + out.string() + "'", 1,
                 "layers.0.W_out.weight", out);
  w.layers[0].out_w.data()[5] = 1.0e7f;  // a q8_0 scale beyond float16's range
  io::save_model(big, dc, w);
  expect_failure("embed --model '" + big.string() + "' --name big --dtype q8_0 --out '" + out.string() + "'", 1,
                 "layers.0.W_out.weight", out);
  expect_failure("quantize --model '" + big.string() + "' --to q8_0 --out '" + out.string() + "'", 1, "q8_0's range",
                 out);
}
