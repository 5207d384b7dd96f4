// sessa/generate/tokenizer.hpp: text to token ids and back.
//
// Two vocabularies, both without merges:
//   - characters: the vocabulary of a `sessa.vocab` file entry, one token per Unicode character (UTF-8 code
//     point) in token order;
//   - bytes: 256 tokens, token i is the byte i; any text (any UTF-8, any bytes) goes in and comes back out.
// Text a vocabulary cannot encode, and ids outside it, are value_errors naming the offset or the id.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "../error.hpp"

namespace sessa {

namespace detail {
/// The length of the UTF-8 sequence starting at s[i] (1 to 4), or 0 when the bytes there are not valid UTF-8
/// (bad lead byte, truncated, bad continuation, overlong, surrogate or above U+10FFFF).
inline std::size_t utf8_sequence(std::string_view s, std::size_t i) noexcept {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  std::size_t n;
  std::uint32_t cp;
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) n = 2, cp = c & 0x1Fu;
  else if ((c & 0xF0) == 0xE0) n = 3, cp = c & 0x0Fu;
  else if ((c & 0xF8) == 0xF0) n = 4, cp = c & 0x07u;
  else return 0;
  if (i + n > s.size()) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b(i + k) & 0x3Fu);
  }
  const std::uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

/// How many bytes at the end of s are the start of a UTF-8 sequence that is still incomplete (0 to 3).
inline std::size_t utf8_incomplete_tail(std::string_view s) noexcept {
  for (std::size_t back = 1; back <= 3 && back <= s.size(); ++back) {
    const unsigned char c = static_cast<unsigned char>(s[s.size() - back]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back
    std::size_t need = c >= 0xF0 && c < 0xF8 ? 4 : c >= 0xE0 && c < 0xF0 ? 3 : c >= 0xC0 && c < 0xE0 ? 2 : 1;
    return need > back ? back : 0;
  }
  return 0;
}
}  // namespace detail

class tokenizer {
 public:
  enum class kind { characters, bytes };

  /// 256 byte tokens.
  static tokenizer bytes() {
    tokenizer t;
    t.kind_ = kind::bytes;
    t.pieces_.reserve(256);
    for (int i = 0; i < 256; ++i) t.pieces_.emplace_back(1, static_cast<char>(i));
    return t;
  }

  /// One token per character of `vocab` (UTF-8), in order. Throws value_error on invalid UTF-8, an empty
  /// vocabulary or a character listed twice.
  static tokenizer characters(std::string_view vocab) {
    tokenizer t;
    t.kind_ = kind::characters;
    if (vocab.empty()) throw value_error("tokenizer: an empty character vocabulary");
    for (std::size_t i = 0; i < vocab.size();) {
      const std::size_t n = detail::utf8_sequence(vocab, i);
      if (n == 0) throw value_error("tokenizer: the character vocabulary is not valid UTF-8 at byte " + std::to_string(i));
      std::string piece(vocab.substr(i, n));
      if (!t.ids_.emplace(piece, static_cast<std::int64_t>(t.pieces_.size())).second)
        throw value_error("tokenizer: the character vocabulary lists '" + piece + "' twice");
      t.pieces_.push_back(std::move(piece));
      i += n;
    }
    return t;
  }

  /// The tokenizer a model file declares: `sessa.vocab` (characters) or `sessa.tokenizer` = "bytes"; its
  /// size must be the model's vocab_size. Throws format_error naming `source` otherwise.
  static tokenizer from_metadata(const std::map<std::string, std::string>& meta, std::int64_t vocab_size,
                                 const std::string& source) {
    const auto chars = meta.find("sessa.vocab");
    const auto kind_it = meta.find("sessa.tokenizer");
    tokenizer t;
    if (kind_it != meta.end() && kind_it->second != "characters") {
      if (kind_it->second != "bytes")
        throw format_error(source + ": metadata 'sessa.tokenizer' is '" + kind_it->second +
                           "' (this library knows 'characters' and 'bytes')");
      t = bytes();
    } else if (chars != meta.end()) {
      try {
        t = characters(chars->second);
      } catch (const value_error& e) {
        throw format_error(source + ": metadata 'sessa.vocab': " + e.what());
      }
    } else {
      throw format_error(source + ": no tokenizer (metadata 'sessa.vocab' with the characters, or 'sessa.tokenizer' = "
                         "\"bytes\")");
    }
    if (t.size() != vocab_size)
      throw format_error(source + ": the tokenizer has " + std::to_string(t.size()) + " tokens but vocab_size is " +
                         std::to_string(vocab_size));
    return t;
  }

  kind type() const noexcept { return kind_; }
  std::int64_t size() const noexcept { return static_cast<std::int64_t>(pieces_.size()); }

  /// Token ids of `text`. Characters: throws value_error naming the first character (and its byte offset) the
  /// vocabulary lacks, or invalid UTF-8.
  std::vector<std::int64_t> encode(std::string_view text) const {
    std::vector<std::int64_t> out;
    out.reserve(text.size());
    if (kind_ == kind::bytes) {
      for (char c : text) out.push_back(static_cast<unsigned char>(c));
      return out;
    }
    for (std::size_t i = 0; i < text.size();) {
      const std::size_t n = detail::utf8_sequence(text, i);
      if (n == 0) throw value_error("tokenizer: the text is not valid UTF-8 at byte " + std::to_string(i));
      const std::string piece(text.substr(i, n));
      const auto it = ids_.find(piece);
      if (it == ids_.end())
        throw value_error("tokenizer: the character '" + printable(piece) + "' at byte " + std::to_string(i) +
                          " is not in the model's vocabulary");
      out.push_back(it->second);
      i += n;
    }
    return out;
  }

  /// The text of one token; throws value_error for an id outside the vocabulary.
  const std::string& piece(std::int64_t id) const {
    if (id < 0 || id >= size())
      throw value_error("tokenizer: token id " + std::to_string(id) + " is outside the vocabulary (" +
                        std::to_string(size()) + " tokens)");
    return pieces_[static_cast<std::size_t>(id)];
  }

  /// The text of a sequence of tokens (bytes: the bytes as they are, which may end inside a UTF-8 character).
  std::string decode(std::span<const std::int64_t> ids) const {
    std::string out;
    for (auto id : ids) out += piece(id);
    return out;
  }

  /// The vocabulary as one string in token order (characters: what `sessa.vocab` holds).
  std::string vocabulary() const {
    std::string out;
    for (const auto& p : pieces_) out += p;
    return out;
  }

 private:
  tokenizer() = default;
  /// A character as an error message shows it: control characters escaped (\n, \t, \xNN).
  static std::string printable(const std::string& c) {
    if (c.size() != 1) return c;
    const unsigned char b = static_cast<unsigned char>(c[0]);
    if (b == '\n') return "\\n";
    if (b == '\t') return "\\t";
    if (b == '\r') return "\\r";
    if (b >= 0x20 && b != 0x7F) return c;
    const char* hex = "0123456789abcdef";
    return std::string("\\x") + hex[b >> 4] + hex[b & 15];
  }
  kind kind_ = kind::bytes;
  std::vector<std::string> pieces_;
  std::unordered_map<std::string, std::int64_t> ids_;
};

}  // namespace sessa
