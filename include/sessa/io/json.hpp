// sessa/io/json.hpp: a small, strict JSON parser and serializer (RFC 8259).
//
// safetensors headers are JSON, and so are configuration files. A weight file is untrusted input, so this
// parser accepts exactly the JSON grammar and nothing more: the whole input must be valid UTF-8 (no overlong
// forms, no UTF-8-encoded surrogates, nothing above U+10FFFF), strings may contain every escape including
// \uXXXX surrogate pairs (a lone surrogate is an error), numbers follow the grammar exactly (no leading
// zeros, no '+', no bare '.'), duplicate object keys are an error naming the key, nesting is limited (64
// levels by default) and only whitespace may follow the value. Every failure throws sessa::format_error
// with the byte offset and what was expected there. Objects keep their members in document order (a
// vector of pairs), so whatever walks them reports problems in a stable order.
//
// The serializer writes compact JSON (separators "," and ":"), optionally with every non-ASCII character
// escaped as \uXXXX the way Python's json.dumps does by default.
#pragma once

#include <charconv>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_set>
#include <utility>
#include <vector>

#include "../config.hpp"
#include "../error.hpp"

namespace sessa::io::json {

enum class kind { null, boolean, number, string, array, object };

inline std::string_view kind_name(kind k) noexcept {
  switch (k) {
    case kind::null: return "null";
    case kind::boolean: return "boolean";
    case kind::number: return "number";
    case kind::string: return "string";
    case kind::array: return "array";
    case kind::object: return "object";
  }
  return "?";
}

/// One JSON value. Numbers keep their source text as well as their double value, so an integer too large
/// for a double (or one that must not be a fraction) can be checked exactly.
class value {
 public:
  using array_type = std::vector<value>;
  using member = std::pair<std::string, value>;
  using object_type = std::vector<member>;  // document order; keys are unique

  value() noexcept = default;  // null
  value(std::nullptr_t) noexcept {}
  value(bool b) noexcept : kind_(kind::boolean), bool_(b) {}
  value(double d) : kind_(kind::number), number_(d) {
    if (!std::isfinite(d)) return;  // kept, but serialize() refuses it
    char buf[32];
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, d);
    text_.assign(buf, end);
  }
  template <std::integral I>
    requires(!std::same_as<I, bool>)
  value(I i) : kind_(kind::number), number_(static_cast<double>(i)) {
    char buf[24];
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, i);
    text_.assign(buf, end);
  }
  value(std::string s) noexcept : kind_(kind::string), text_(std::move(s)) {}
  value(std::string_view s) : kind_(kind::string), text_(s) {}
  value(const char* s) : kind_(kind::string), text_(s) {}
  value(array_type a) noexcept : kind_(kind::array), array_(std::move(a)) {}
  value(object_type o) noexcept : kind_(kind::object), object_(std::move(o)) {}

  kind type() const noexcept { return kind_; }
  bool is_null() const noexcept { return kind_ == kind::null; }
  bool is_bool() const noexcept { return kind_ == kind::boolean; }
  bool is_number() const noexcept { return kind_ == kind::number; }
  bool is_string() const noexcept { return kind_ == kind::string; }
  bool is_array() const noexcept { return kind_ == kind::array; }
  bool is_object() const noexcept { return kind_ == kind::object; }

  /// Typed access; format_error "JSON value at byte N is a <kind>, expected a <kind>" on a mismatch.
  bool as_bool() const { return expect(kind::boolean), bool_; }
  double as_number() const { return expect(kind::number), number_; }
  const std::string& as_string() const { return expect(kind::string), text_; }
  const array_type& as_array() const { return expect(kind::array), array_; }
  const object_type& as_object() const { return expect(kind::object), object_; }

  /// A number's text as written in the source (or as formatted when built from a C++ number).
  std::string_view number_text() const { return expect(kind::number), std::string_view(text_); }
  /// True for a number written without fraction or exponent ("12", "-3"; not "1.0" or "1e2").
  bool is_integer() const noexcept {
    return kind_ == kind::number && !text_.empty() && text_.find_first_of(".eE") == std::string::npos;
  }
  /// The exact value of an integer number that fits in int64; nullopt for anything else.
  std::optional<std::int64_t> as_int64() const noexcept {
    if (!is_integer()) return std::nullopt;
    std::int64_t out = 0;
    auto [p, ec] = std::from_chars(text_.data(), text_.data() + text_.size(), out);
    if (ec != std::errc{} || p != text_.data() + text_.size()) return std::nullopt;
    return out;
  }

  /// The member named `key` of an object, nullptr when absent or when this is not an object.
  const value* find(std::string_view key) const noexcept {
    if (kind_ != kind::object) return nullptr;
    for (const member& m : object_)
      if (m.first == key) return &m.second;
    return nullptr;
  }

  /// Byte offset of the value's first character in the parsed text (0 for values built in code).
  std::size_t offset() const noexcept { return offset_; }

 private:
  friend class parser;
  friend class reader;

  void expect(kind k) const {
    if (kind_ != k)
      throw format_error("JSON value at byte " + std::to_string(offset_) + " is " + article(kind_) + " " +
                         std::string(kind_name(kind_)) + ", expected " + article(k) + " " +
                         std::string(kind_name(k)));
  }
  static const char* article(kind k) noexcept { return k == kind::array || k == kind::object ? "an" : "a"; }

  kind kind_ = kind::null;
  bool bool_ = false;
  double number_ = 0;
  std::string text_;  // a string's contents, or a number's source text
  array_type array_;
  object_type object_;
  std::size_t offset_ = 0;
};

// ---------------------------------------------------------------------------------------------- UTF-8

/// Where and why a byte sequence stops being valid UTF-8.
struct utf8_problem {
  std::size_t offset;  // of the first byte of the bad sequence
  std::string what;
};

/// Checks that `s` is well-formed UTF-8 (Unicode 15, table 3-7): no overlong encodings, no encoded
/// surrogates (U+D800..U+DFFF), nothing above U+10FFFF, no stray continuation bytes, no truncated sequences.
inline std::optional<utf8_problem> check_utf8(std::string_view s) {
  auto hex = [](unsigned b) {
    const char* d = "0123456789ABCDEF";
    return std::string("0x") + d[(b >> 4) & 15] + d[b & 15];
  };
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    const unsigned b0 = static_cast<unsigned char>(s[i]);
    if (b0 < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3;
      if (b0 == 0xE0) lo = 0xA0;  // below: overlong
      if (b0 == 0xED) hi = 0x9F;  // above: surrogates U+D800..U+DFFF
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4;
      if (b0 == 0xF0) lo = 0x90;  // below: overlong
      if (b0 == 0xF4) hi = 0x8F;  // above: beyond U+10FFFF
    } else if (b0 >= 0x80 && b0 <= 0xBF) {
      return utf8_problem{i, "unexpected UTF-8 continuation byte " + hex(b0)};
    } else if (b0 == 0xC0 || b0 == 0xC1) {
      return utf8_problem{i, "overlong UTF-8 encoding (lead byte " + hex(b0) + ")"};
    } else {
      return utf8_problem{i, "invalid UTF-8 byte " + hex(b0)};
    }
    if (i + 1 >= n) return utf8_problem{i, "truncated UTF-8 sequence at end of input"};
    const unsigned b1 = static_cast<unsigned char>(s[i + 1]);
    if (b1 < lo || b1 > hi) {
      if (b1 >= 0x80 && b1 <= 0xBF) {
        const char* why = b0 == 0xED              ? "UTF-8-encoded surrogate (U+D800..U+DFFF)"
                          : b0 == 0xF4            ? "UTF-8 sequence above U+10FFFF"
                                                  : "overlong UTF-8 encoding";
        return utf8_problem{i, std::string(why) + " starting " + hex(b0) + " " + hex(b1)};
      }
      return utf8_problem{i, "truncated UTF-8 sequence: " + hex(b0) + " followed by " + hex(b1)};
    }
    for (std::size_t k = 2; k < len; ++k) {
      if (i + k >= n) return utf8_problem{i, "truncated UTF-8 sequence at end of input"};
      const unsigned b = static_cast<unsigned char>(s[i + k]);
      if (b < 0x80 || b > 0xBF)
        return utf8_problem{i, "truncated UTF-8 sequence: " + hex(b0) + " followed by " + hex(b) + " at byte " +
                                   std::to_string(i + k)};
    }
    i += len;
  }
  return std::nullopt;
}

/// Appends code point `cp` (<= U+10FFFF, not a surrogate) as UTF-8.
inline void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// ---------------------------------------------------------------------------------------------- parsing

struct parse_options {
  std::string_view context = "JSON";  // first words of every error message (e.g. "model.safetensors: header")
  std::size_t base_offset = 0;        // added to every offset reported (where the text sits in a larger file)
  int max_depth = 64;                 // deepest nesting of arrays and objects accepted
};

/// The recursive-descent parser behind json::parse(). One instance parses one text.
class parser {
 public:
  parser(std::string_view text, const parse_options& opt) : s_(text), opt_(opt) {}

  value parse_document() {
    if (auto bad = check_utf8(s_)) fail_at(bad->offset, "input is not valid UTF-8: " + bad->what);
    skip_ws();
    value v = parse_value(0);
    skip_ws();
    if (pos_ != s_.size()) fail("expected end of input after the JSON value (only whitespace may follow)");
    return v;
  }

 protected:
  [[noreturn]] void fail_at(std::size_t at, const std::string& msg) const {
    throw format_error(std::string(opt_.context) + ": at byte " + std::to_string(opt_.base_offset + at) + ": " +
                       msg);
  }
  /// "expected X, got Y" at the current position.
  [[noreturn]] void fail(const std::string& expected) const { fail_at(pos_, expected + ", got " + here()); }

  std::string here() const {
    if (pos_ >= s_.size()) return "end of input";
    const unsigned char c = static_cast<unsigned char>(s_[pos_]);
    if (c >= 0x20 && c < 0x7F) return std::string("'") + static_cast<char>(c) + "'";
    const char* d = "0123456789ABCDEF";
    return std::string("byte 0x") + d[c >> 4] + d[c & 15];
  }

  bool at_end() const noexcept { return pos_ >= s_.size(); }
  char peek() const noexcept { return at_end() ? '\0' : s_[pos_]; }
  static bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }

  void skip_ws() noexcept {
    while (!at_end() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }

  value parse_value(int depth) {
    const std::size_t start = pos_;
    value v;
    switch (peek()) {
      case '{': v = parse_object(depth + 1); break;
      case '[': v = parse_array(depth + 1); break;
      case '"':
        v.kind_ = kind::string;
        v.text_ = parse_string();
        break;
      case 't': v = parse_literal("true", value(true)); break;
      case 'f': v = parse_literal("false", value(false)); break;
      case 'n': v = parse_literal("null", value()); break;
      default:
        if (at_end()) fail("expected a JSON value");
        if (peek() != '-' && peek() != '+' && peek() != '.' && !is_digit(peek()))
          fail("expected a JSON value (object, array, string, number, true, false or null)");
        v = parse_number();
    }
    v.offset_ = opt_.base_offset + start;
    return v;
  }

  value parse_literal(std::string_view word, value v) {
    if (s_.substr(pos_, word.size()) != word) fail("expected '" + std::string(word) + "'");
    pos_ += word.size();
    return v;
  }

  void enter(int depth) const {
    if (depth > opt_.max_depth)
      fail_at(pos_, "nesting deeper than " + std::to_string(opt_.max_depth) + " levels of arrays and objects");
  }

  value parse_object(int depth) {
    enter(depth);
    ++pos_;  // '{'
    value::object_type members;
    std::unordered_set<std::string> seen;
    skip_ws();
    if (peek() == '}') {
      ++pos_;
      return value(std::move(members));
    }
    for (;;) {
      if (peek() != '"') fail(members.empty() ? "expected '\"' to start an object key or '}'"
                                              : "expected '\"' to start an object key after ','");
      const std::size_t key_at = pos_;
      std::string key = parse_string();
      if (!seen.insert(key).second) fail_at(key_at, "duplicate key '" + key + "' in object");
      skip_ws();
      if (peek() != ':') fail("expected ':' after object key '" + key + "'");
      ++pos_;
      skip_ws();
      value v = parse_value(depth);
      members.emplace_back(std::move(key), std::move(v));
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        skip_ws();
        continue;
      }
      if (peek() == '}') {
        ++pos_;
        return value(std::move(members));
      }
      fail("expected ',' or '}' after object member");
    }
  }

  value parse_array(int depth) {
    enter(depth);
    ++pos_;  // '['
    value::array_type items;
    skip_ws();
    if (peek() == ']') {
      ++pos_;
      return value(std::move(items));
    }
    for (;;) {
      if (peek() == ']') fail("expected a JSON value after ','");
      items.push_back(parse_value(depth));
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        skip_ws();
        continue;
      }
      if (peek() == ']') {
        ++pos_;
        return value(std::move(items));
      }
      fail("expected ',' or ']' after array element");
    }
  }

  /// Four hex digits after "\u"; pos_ is on the first.
  std::uint32_t parse_hex4() {
    std::uint32_t cp = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = peek();
      std::uint32_t d = 0;
      if (c >= '0' && c <= '9') d = static_cast<std::uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f') d = static_cast<std::uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') d = static_cast<std::uint32_t>(c - 'A' + 10);
      else fail("expected 4 hex digits after \\u");
      cp = cp * 16 + d;
      ++pos_;
    }
    return cp;
  }

  std::string parse_string() {
    const std::size_t start = pos_;
    ++pos_;  // '"'
    std::string out;
    for (;;) {
      if (at_end()) fail_at(start, "unterminated string");
      const char c = s_[pos_];
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (static_cast<unsigned char>(c) < 0x20) {
        const char* d = "0123456789ABCDEF";
        fail_at(pos_, std::string("control character U+00") + d[(c >> 4) & 15] + d[c & 15] +
                          " must be escaped inside a string");
      }
      if (c != '\\') {  // the input is valid UTF-8, so bytes copy through
        out += c;
        ++pos_;
        continue;
      }
      const std::size_t esc_at = pos_;
      ++pos_;
      switch (peek()) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          ++pos_;
          std::uint32_t cp = parse_hex4();
          if (cp >= 0xDC00 && cp <= 0xDFFF)
            fail_at(esc_at, "lone low surrogate \\u" + hex4(cp) + " (a low surrogate must follow a high one)");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (s_.substr(pos_, 2) != "\\u")
              fail_at(esc_at, "high surrogate \\u" + hex4(cp) + " is not followed by a low surrogate \\uDC00-\\uDFFF");
            pos_ += 2;
            const std::uint32_t lo = parse_hex4();
            if (lo < 0xDC00 || lo > 0xDFFF)
              fail_at(esc_at, "high surrogate \\u" + hex4(cp) + " is followed by \\u" + hex4(lo) +
                                  ", not by a low surrogate \\uDC00-\\uDFFF");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          append_utf8(out, cp);
          continue;  // pos_ is already past the escape
        }
        default: fail("expected an escape character (one of \" \\ / b f n r t u) after '\\'");
      }
      ++pos_;
    }
  }

  static std::string hex4(std::uint32_t cp) {
    const char* d = "0123456789ABCDEF";
    return {d[(cp >> 12) & 15], d[(cp >> 8) & 15], d[(cp >> 4) & 15], d[cp & 15]};
  }

  /// number = -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
  value parse_number() {
    const std::size_t start = pos_;
    if (peek() == '+') fail("expected a JSON value (a number may not start with '+')");
    if (peek() == '.') fail("expected a JSON value (a number needs a digit before '.')");
    if (peek() == '-') ++pos_;
    if (!is_digit(peek())) fail("expected a digit after '-'");
    if (peek() == '0') {
      ++pos_;
      if (is_digit(peek())) fail_at(pos_ - 1, "leading zeros are not allowed in numbers");
    } else {
      while (is_digit(peek())) ++pos_;
    }
    if (peek() == '.') {
      ++pos_;
      if (!is_digit(peek())) fail("expected a digit after the decimal point");
      while (is_digit(peek())) ++pos_;
    }
    if (peek() == 'e' || peek() == 'E') {
      ++pos_;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (!is_digit(peek())) fail("expected a digit in the exponent");
      while (is_digit(peek())) ++pos_;
    }
    const std::string_view text = s_.substr(start, pos_ - start);
    value v;
    v.kind_ = kind::number;
    v.text_ = std::string(text);
    auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v.number_);
    if (ec == std::errc::result_out_of_range)
      fail_at(start, "number " + std::string(text) + " is out of the range of a double");
    if (ec != std::errc{} || p != text.data() + text.size()) fail_at(start, "malformed number " + std::string(text));
    return v;
  }

  std::string_view s_;
  parse_options opt_;
  std::size_t pos_ = 0;
};

/// Parses one JSON document; throws format_error "<context>: at byte N: <what was expected>, got <what was there>".
inline value parse(std::string_view text, const parse_options& opt = {}) { return parser(text, opt).parse_document(); }

/// A pull reader over one JSON document, for callers that know the structure they expect (a schema) and keep
/// only what they need: nothing is built but the strings and numbers asked for, so memory does not grow with
/// the size of the input the way a value tree does (a tree costs about 100 bytes per value, so a few bytes of
/// hostile input per value could cost 50 times the input). The grammar, the UTF-8 check, the depth limit and
/// the error messages are the parser's; duplicate keys are for the caller to detect (it knows which it keeps).
///
///   json::reader r(text, opt);
///   r.enter_object();
///   for (std::string key; r.next_member(key);) { if (r.next_kind() != json::kind::string) r.fail_here("..."); ... }
///   r.finish();
class reader : private parser {
 public:
  /// Checks the whole input is valid UTF-8 and moves to the document's value.
  reader(std::string_view text, const parse_options& opt) : parser(text, opt) {
    if (auto bad = check_utf8(s_)) fail_at(bad->offset, "input is not valid UTF-8: " + bad->what);
    skip_ws();
  }

  /// The kind of the value at the cursor, which is not consumed; format_error when no value starts there.
  kind next_kind() const {
    switch (peek()) {
      case '{': return kind::object;
      case '[': return kind::array;
      case '"': return kind::string;
      case 't':
      case 'f': return kind::boolean;
      case 'n': return kind::null;
      default:
        if (at_end()) fail("expected a JSON value");
        if (peek() != '-' && !is_digit(peek()))
          fail("expected a JSON value (object, array, string, number, true, false or null)");
        return kind::number;
    }
  }
  /// Byte offset of the cursor (plus parse_options::base_offset), as error messages report it.
  std::size_t offset() const noexcept { return opt_.base_offset + pos_; }
  /// format_error "<context>: at byte N: <msg>" at the cursor.
  [[noreturn]] void fail_here(const std::string& msg) const { fail_at(pos_, msg); }

  /// Consumes '{'; then next_member() walks the members.
  void enter_object() { enter('{', "expected '{'"); }
  /// Reads the next member's key and the ':' after it and returns true, or consumes the closing '}' and
  /// returns false. The member's value must then be read (or entered) before the next call.
  bool next_member(std::string& key) {
    if (!next('}', "expected ',' or '}' after object member")) return false;
    if (peek() != '"') fail(first_at_ ? "expected '\"' to start an object key or '}'"
                                      : "expected '\"' to start an object key after ','");
    key = parse_string();
    skip_ws();
    if (peek() != ':') fail("expected ':' after object key '" + key + "'");
    ++pos_;
    skip_ws();
    return true;
  }
  /// Consumes '['; then next_element() walks the elements.
  void enter_array() { enter('[', "expected '['"); }
  /// True when another element follows (the cursor is on it), false after consuming the closing ']'.
  bool next_element() {
    if (!next(']', "expected ',' or ']' after array element")) return false;
    if (peek() == ']') fail("expected a JSON value after ','");
    return true;
  }

  std::string read_string() {
    if (peek() != '"') fail("expected a string");
    std::string v = parse_string();
    skip_ws();
    return v;
  }
  /// A number, with its source text (value::number_text, is_integer, as_int64).
  value read_number() {
    const std::size_t start = pos_;
    if (next_kind() != kind::number) fail("expected a number");
    value v = parse_number();
    v.offset_ = opt_.base_offset + start;
    skip_ws();
    return v;
  }
  /// Any value as a tree (for parts of a document that are small by the schema).
  value read_value() {
    value v = parse_value(static_cast<int>(open_.size()));
    skip_ws();
    return v;
  }
  /// Only whitespace may follow the document's value.
  void finish() const {
    if (!open_.empty() || pos_ != s_.size())
      fail("expected end of input after the JSON value (only whitespace may follow)");
  }

 private:
  void enter(char open, const char* expected) {
    if (peek() != open) fail(expected);
    parser::enter(static_cast<int>(open_.size()) + 1);
    ++pos_;
    skip_ws();
    open_.push_back(true);
  }
  /// Before an element or member: false (consuming `close`) at the end of the container; consumes the ','
  /// between elements.
  bool next(char close, const char* expected_after) {
    if (open_.empty()) fail("expected end of input (no object or array is open)");
    first_at_ = open_.back();
    if (peek() == close) {
      ++pos_;
      skip_ws();
      open_.pop_back();
      return false;
    }
    if (!first_at_) {
      if (peek() != ',') fail(expected_after);
      ++pos_;
      skip_ws();
    }
    open_.back() = false;
    return true;
  }

  std::vector<bool> open_;  // one entry per open container: true until its first element has been read
  bool first_at_ = true;    // the last next() call was before a container's first element
};

// ---------------------------------------------------------------------------------------------- writing

/// Appends `s` as a JSON string literal. Escapes '"', '\\' and control characters; with ascii_only every
/// character outside printable ASCII becomes \uXXXX (surrogate pairs above U+FFFF), as Python's json.dumps
/// does. `s` must be valid UTF-8 when ascii_only is set (format_error otherwise).
inline void append_quoted(std::string& out, std::string_view s, bool ascii_only = false) {
  const char* d = "0123456789abcdef";
  auto u_escape = [&](std::uint32_t cp) {
    out += "\\u";
    out += {d[(cp >> 12) & 15], d[(cp >> 8) & 15], d[(cp >> 4) & 15], d[cp & 15]};
  };
  if (ascii_only)
    if (auto bad = check_utf8(s))
      throw format_error("cannot write JSON string: " + bad->what + " at byte " + std::to_string(bad->offset));
  out += '"';
  for (std::size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    switch (c) {
      case '"': out += "\\\""; continue;
      case '\\': out += "\\\\"; continue;
      case '\b': out += "\\b"; continue;
      case '\f': out += "\\f"; continue;
      case '\n': out += "\\n"; continue;
      case '\r': out += "\\r"; continue;
      case '\t': out += "\\t"; continue;
      default: break;
    }
    if (c < 0x20 || (ascii_only && c == 0x7F)) {
      u_escape(c);
    } else if (c < 0x80 || !ascii_only) {
      out += static_cast<char>(c);
    } else {  // decode one (already validated) UTF-8 sequence
      const std::size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
      std::uint32_t cp = c & (len == 2 ? 0x1Fu : len == 3 ? 0x0Fu : 0x07u);
      for (std::size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3Fu);
      i += len - 1;
      if (cp >= 0x10000) {
        cp -= 0x10000;
        u_escape(0xD800 + (cp >> 10));
        u_escape(0xDC00 + (cp & 0x3FF));
      } else {
        u_escape(cp);
      }
    }
  }
  out += '"';
}

inline std::string quote(std::string_view s, bool ascii_only = false) {
  std::string out;
  append_quoted(out, s, ascii_only);
  return out;
}

/// Appends `v` as compact JSON. Non-finite numbers cannot be written (format_error).
inline void append_json(std::string& out, const value& v, bool ascii_only = false) {
  switch (v.type()) {
    case kind::null: out += "null"; return;
    case kind::boolean: out += v.as_bool() ? "true" : "false"; return;
    case kind::number:
      if (v.number_text().empty()) throw format_error("cannot write a non-finite number as JSON");
      out += v.number_text();
      return;
    case kind::string: append_quoted(out, v.as_string(), ascii_only); return;
    case kind::array: {
      out += '[';
      bool first = true;
      for (const value& e : v.as_array()) {
        if (!first) out += ',';
        first = false;
        append_json(out, e, ascii_only);
      }
      out += ']';
      return;
    }
    case kind::object: {
      out += '{';
      bool first = true;
      for (const auto& [k, e] : v.as_object()) {
        if (!first) out += ',';
        first = false;
        append_quoted(out, k, ascii_only);
        out += ':';
        append_json(out, e, ascii_only);
      }
      out += '}';
      return;
    }
  }
}

inline std::string serialize(const value& v, bool ascii_only = false) {
  std::string out;
  append_json(out, v, ascii_only);
  return out;
}

}  // namespace sessa::io::json
