// Fuzz target: the JSON parser and serializer (io/json.hpp) and the configuration reader on top of it
// (io::parse_config_json, what the CLI's --config reads and io::read_config_json wraps).
//
// Properties checked on every input the parser accepts: every value's offset points at its first character;
// an integer's as_int64 and its double agree; find() returns the member; serialize() writes JSON that parses
// back to the same serialization, and its ASCII-only form is pure ASCII and parses back to the same value.
// On every configuration parse_config_json accepts: it passes check(), and written as a model file's metadata
// (config_metadata, plus sessa.attention / sessa.window as the reference writer adds them) it reads back through
// read_model_info as the same configuration. Rejections must be sessa::error subclasses whose message starts
// with where the text came from.
#include <sessa/io/json.hpp>
#include <sessa/io/model_file.hpp>
#include <sessa/io/safetensors.hpp>

#include <cmath>
#include <string>
#include <string_view>

#include "fuzz_support.hpp"

namespace {

namespace io = sessa::io;
namespace json = sessa::io::json;
using sessa::fuzz::starts_with;

/// Checks one parsed value and its children against the text they were parsed from.
void check_value(const json::value& v, std::string_view text, int depth = 0) {
  SESSA_FUZZ_CHECK(depth <= 64 && v.offset() < text.size());
  const char first = text[v.offset()];
  switch (v.type()) {
    case json::kind::null: SESSA_FUZZ_CHECK(first == 'n'); break;
    case json::kind::boolean: SESSA_FUZZ_CHECK(first == (v.as_bool() ? 't' : 'f')); break;
    case json::kind::string: SESSA_FUZZ_CHECK(first == '"'); break;
    case json::kind::number: {
      SESSA_FUZZ_CHECK(first == '-' || (first >= '0' && first <= '9'));
      SESSA_FUZZ_CHECK(std::isfinite(v.as_number()));
      SESSA_FUZZ_CHECK(starts_with(text.substr(v.offset()), v.number_text()));
      // Both conversions round the same decimal integer to nearest, so they agree.
      if (const auto i = v.as_int64()) SESSA_FUZZ_CHECK(v.is_integer() && static_cast<double>(*i) == v.as_number());
      break;
    }
    case json::kind::array:
      SESSA_FUZZ_CHECK(first == '[');
      for (const json::value& e : v.as_array()) check_value(e, text, depth + 1);
      break;
    case json::kind::object:
      SESSA_FUZZ_CHECK(first == '{');
      for (const auto& [k, e] : v.as_object()) {
        SESSA_FUZZ_CHECK(v.find(k) == &e);  // keys are unique, so find() lands on this member
        check_value(e, text, depth + 1);
      }
      break;
  }
}

void check_json(std::string_view text) {
  json::value v;
  try {
    v = json::parse(text);
  } catch (const sessa::format_error& e) {
    SESSA_FUZZ_CHECK(starts_with(e.what(), "JSON: at byte "));
    return;
  }
  check_value(v, text);
  // The serializer's output must be JSON this parser accepts (a throw here escapes: it is a finding).
  const std::string compact = json::serialize(v);
  SESSA_FUZZ_CHECK(json::serialize(json::parse(compact)) == compact);
  const std::string ascii = json::serialize(v, /*ascii_only=*/true);
  for (char c : ascii) SESSA_FUZZ_CHECK(static_cast<unsigned char>(c) < 0x80);
  SESSA_FUZZ_CHECK(json::serialize(json::parse(ascii)) == compact);
}

void check_config(std::string_view text) {
  const std::string src = "fuzz.json";
  io::model_info info;
  try {
    info = io::parse_config_json(text, src);
  } catch (const sessa::error& e) {
    SESSA_FUZZ_CHECK(starts_with(e.what(), src + ": "));
    return;
  }
  const bool decoder = info.arch == io::model_arch::decoder;
  if (decoder) info.config.check();  // a throw here escapes: an accepted configuration must be valid
  else info.config.layer.check();
  SESSA_FUZZ_CHECK(info.attention == "causal" || (info.attention == "sliding_window" && info.window >= 1));

  // The same configuration as a model file's metadata, read back the way load_layer / load_decoder read it.
  io::safetensors_writer out;
  for (const auto& [k, v] : decoder ? io::config_metadata(info.config) : io::config_metadata(info.config.layer))
    out.set_metadata(k, v);
  if (info.attention == "sliding_window") {
    out.set_metadata("sessa.attention", "sliding_window");
    out.set_metadata("sessa.window", std::to_string(info.window));
  }
  const io::model_info back = io::read_model_info(io::safetensors_file::parse(out.serialize(), "metadata"));
  SESSA_FUZZ_CHECK(io::describe(back) == io::describe(info));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text = sessa::fuzz::text_of(data, size);
  check_json(text);
  check_config(text);
  return 0;
}
