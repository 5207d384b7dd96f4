// sessa/io/safetensors.hpp: reading and writing safetensors files (SPEC.md "Weight files").
//
// A safetensors file is an 8-byte little-endian header length N, N bytes of JSON describing every tensor
// ({"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, "__metadata__": {...}}) and
// then the raw little-endian data section. Weight files come from elsewhere, so parse() trusts nothing:
// every rule of the format is checked (lengths, UTF-8, JSON, field names and types, dtypes, shapes, byte
// sizes with overflow checks, and that the tensors tile the data section exactly, with no hole, overlap
// or trailing byte) and the first violation throws sessa::format_error naming the file, the tensor and
// the problem. Failing to open or read a file is an io_error.
//
// read_as<T>() converts to the working type: float/double from F32, F64, F16 or BF16 (exact decoding,
// subnormals, infinities and NaNs included), int64/int32 from I64, I32 or I8 (range-checked). Data need not
// be aligned (a header length that is not a multiple of 8 is legal), so every load goes through memcpy.
//
// safetensors_writer writes what the Python reference (shared/reference/sessa_torch.py) writes, byte for
// byte: tensors sorted by name, data in that order, compact JSON with non-ASCII escaped, "__metadata__"
// last (its keys sorted here), the header padded with spaces to a multiple of 8. write() goes through a
// temporary file and a rename, so a failed write never leaves a file that looks valid.
#pragma once

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(_WIN32)
#include <process.h>
#else
#include <unistd.h>
#endif

#include "../config.hpp"
#include "../core/tensor.hpp"
#include "../error.hpp"
#include "../core/budget.hpp"
#include "json.hpp"

namespace sessa::io {

// ---------------------------------------------------------------------------------------------- dtypes

/// Every standard safetensors element type.
enum class dtype { BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, F8_E4M3, F8_E5M2 };

struct dtype_info {
  dtype type;
  std::string_view name;  // as written in the header
  std::size_t size;       // bytes per element
};

inline constexpr dtype_info dtype_table[] = {
    {dtype::BOOL, "BOOL", 1}, {dtype::U8, "U8", 1},     {dtype::I8, "I8", 1},           {dtype::I16, "I16", 2},
    {dtype::U16, "U16", 2},   {dtype::F16, "F16", 2},   {dtype::BF16, "BF16", 2},       {dtype::I32, "I32", 4},
    {dtype::U32, "U32", 4},   {dtype::F32, "F32", 4},   {dtype::F64, "F64", 8},         {dtype::I64, "I64", 8},
    {dtype::U64, "U64", 8},   {dtype::F8_E4M3, "F8_E4M3", 1}, {dtype::F8_E5M2, "F8_E5M2", 1},
};

inline std::string_view dtype_name(dtype t) {
  for (const dtype_info& d : dtype_table)
    if (d.type == t) return d.name;
  throw format_error("invalid sessa::io::dtype value " + std::to_string(static_cast<int>(t)));
}

inline std::size_t dtype_size(dtype t) {
  for (const dtype_info& d : dtype_table)
    if (d.type == t) return d.size;
  throw format_error("invalid sessa::io::dtype value " + std::to_string(static_cast<int>(t)));
}

/// The dtype written `name` in a header ("F32", "BF16", ...); nullopt for anything else.
inline std::optional<dtype> dtype_from_name(std::string_view name) noexcept {
  for (const dtype_info& d : dtype_table)
    if (d.name == name) return d.type;
  return std::nullopt;
}

/// Largest header the reader accepts (the reference implementation's limit).
inline constexpr std::uint64_t safetensors_max_header_bytes = std::uint64_t{100} << 20;  // 100 MiB
/// Most __metadata__ entries accepted (each costs a map node, far more than its few bytes of text).
inline constexpr std::size_t safetensors_max_metadata_entries = std::size_t{1} << 16;
/// Largest shape entry accepted: 2^53, the largest integer every JSON reader represents exactly.
inline constexpr std::uint64_t safetensors_max_extent = std::uint64_t{1} << 53;

// ---------------------------------------------------------------------------------------------- bits

/// Unaligned little-endian load of an unsigned integer.
template <class U>
U load_le(const std::byte* p) noexcept {
  static_assert(std::is_unsigned_v<U>);
  U v = 0;
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(&v, p, sizeof v);
  } else {
    for (std::size_t i = 0; i < sizeof(U); ++i) v |= static_cast<U>(std::to_integer<unsigned>(p[i])) << (8 * i);
  }
  return v;
}

/// Unaligned little-endian store of an unsigned integer.
template <class U>
void store_le(std::byte* p, U v) noexcept {
  static_assert(std::is_unsigned_v<U>);
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(p, &v, sizeof v);
  } else {
    for (std::size_t i = 0; i < sizeof(U); ++i) p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xFF);
  }
}

/// IEEE binary16 bits to float, exactly (subnormals, signed zeros, infinities; NaN payloads kept).
inline float decode_f16(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1Fu;
  const std::uint32_t man = h & 0x3FFu;
  if (exp == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (man << 13));
  if (exp != 0) return std::bit_cast<float>(sign | ((exp + (127 - 15)) << 23) | (man << 13));
  const float mag = static_cast<float>(man) * 0x1p-24f;  // subnormal: man * 2^-24, exact
  return sign ? -mag : mag;
}

/// bfloat16 bits to float, exactly (bfloat16 is the top half of a float).
inline float decode_bf16(std::uint16_t b) noexcept { return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16); }

namespace detail {

/// Rounds x to nearest, ties to even, in a binary floating-point format with `e_bits` exponent bits and
/// `m_bits` fraction bits (IEEE layout, subnormals, infinities); returns the bit pattern. One rounding
/// straight from double, so there is no double rounding. NaN becomes the quiet NaN of x's sign.
inline std::uint32_t round_to_binary(double x, int e_bits, int m_bits) noexcept {
  const std::uint64_t bits = std::bit_cast<std::uint64_t>(x);
  const std::uint32_t sign = static_cast<std::uint32_t>(bits >> 63) << (e_bits + m_bits);
  const std::uint32_t exp_all = (1u << e_bits) - 1;  // infinity / NaN exponent
  const std::uint32_t inf = exp_all << m_bits;
  const int biased = static_cast<int>((bits >> 52) & 0x7FF);
  const std::uint64_t frac = bits & ((std::uint64_t{1} << 52) - 1);
  if (biased == 0x7FF) return sign | inf | (frac ? (1u << (m_bits - 1)) : 0u);
  if (biased == 0) return sign;  // zero; double subnormals (< 2^-1022) round to zero in a narrower format
  const int bias = (1 << (e_bits - 1)) - 1;
  const int te = biased - 1023 + bias;                        // target biased exponent (< 1: subnormal)
  const std::uint64_t sig = (std::uint64_t{1} << 52) | frac;  // 53-bit significand
  const int shift = 52 - m_bits + (te >= 1 ? 0 : 1 - te);
  if (shift >= 54) return sign;  // below half the smallest subnormal
  std::uint64_t q = sig >> shift;
  const std::uint64_t rem = sig & ((std::uint64_t{1} << shift) - 1);
  const std::uint64_t half = std::uint64_t{1} << (shift - 1);
  if (rem > half || (rem == half && (q & 1))) ++q;
  // q carries the implicit bit at 2^m_bits for normals, so adding (te - 1) << m_bits forms exponent and
  // fraction together, and a carry out of the fraction bumps the exponent (up to infinity).
  const std::uint64_t r = te >= 1 ? (static_cast<std::uint64_t>(te - 1) << m_bits) + q : q;
  if (r >= inf) return sign | inf;
  return sign | static_cast<std::uint32_t>(r);
}

}  // namespace detail

/// double to IEEE binary16 bits, round to nearest even (overflow to infinity, subnormals kept).
inline std::uint16_t encode_f16(double x) noexcept { return static_cast<std::uint16_t>(detail::round_to_binary(x, 5, 10)); }
/// double to bfloat16 bits, round to nearest even.
inline std::uint16_t encode_bf16(double x) noexcept { return static_cast<std::uint16_t>(detail::round_to_binary(x, 8, 7)); }
/// double to float, round to nearest even, never undefined (finite values beyond FLT_MAX become infinity).
inline float narrow_to_float(double x) noexcept { return std::bit_cast<float>(detail::round_to_binary(x, 8, 23)); }

// ---------------------------------------------------------------------------------------------- reader

/// One tensor of a file, as its header describes it.
struct tensor_entry {
  std::string name;
  dtype type = dtype::F32;
  shape_t shape;           // () for a 0-d tensor, which has one element
  std::size_t offset = 0;  // of the first byte, relative to the start of the data section
  std::size_t nbytes = 0;  // numel(shape) * dtype_size(type)
};

/// A whole safetensors file in memory, validated.
class safetensors_file {
 public:
  safetensors_file() = default;  // no tensors, no metadata

  /// Reads and parses `path`: io_error when it cannot be opened or read, format_error when it is malformed.
  /// Every message starts with the path.
  static safetensors_file load(const std::filesystem::path& path);
  /// Parses a file's bytes; `source_name` starts every error message.
  static safetensors_file parse(std::vector<std::byte> bytes, std::string source_name);

  /// __metadata__ (empty when absent).
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  /// Every tensor, in header order.
  const std::vector<tensor_entry>& entries() const noexcept { return entries_; }
  /// The tensor called `name`, nullptr when absent.
  const tensor_entry* find(std::string_view name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &entries_[it->second];
  }
  /// The tensor called `name`; format_error "no tensor named 'x' in <file>" when absent.
  const tensor_entry& at(std::string_view name) const {
    if (const tensor_entry* e = find(name)) return *e;
    throw format_error("no tensor named '" + std::string(name) + "' in " + source_);
  }
  /// The tensor's bytes in the data section (unaligned, little-endian).
  std::span<const std::byte> raw(const tensor_entry& e) const {
    const std::size_t data_size = bytes_.size() - data_begin_;
    if (e.offset > data_size || e.nbytes > data_size - e.offset)
      fail("tensor '" + e.name + "' lies outside the data section (not an entry of this file?)");
    return {bytes_.data() + data_begin_ + e.offset, e.nbytes};
  }

  /// The tensor's elements converted to T, row-major. T is float or double (from F32, F64, F16, BF16) or
  /// std::int64_t or std::int32_t (from I64, I32, I8; range-checked when narrowing). Any other dtype is a
  /// format_error naming the tensor, its dtype and the dtypes accepted.
  template <class T>
  std::vector<T> read_as(std::string_view name) const;

  /// The name given to parse() (the path for load()).
  const std::string& source() const noexcept { return source_; }

 private:
  [[noreturn]] void fail(const std::string& msg) const { throw format_error(source_ + ": " + msg); }
  void parse_header();
  void parse_metadata(json::reader& r);
  void parse_entry(const std::string& name, json::reader& r, std::size_t data_size);
  void check_layout(std::size_t data_size) const;
  std::uint64_t non_negative_integer(json::reader& r, std::uint64_t max, const std::string& what) const;

  std::string source_;
  std::vector<std::byte> bytes_;  // the whole file
  std::size_t data_begin_ = 0;    // 8 + header length
  std::map<std::string, std::string> metadata_;
  std::vector<tensor_entry> entries_;
  std::map<std::string, std::size_t, std::less<>> index_;  // name -> position in entries_
};

inline safetensors_file safetensors_file::load(const std::filesystem::path& path) {
  const std::string where = path.string();
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(where.c_str(), "rb"), &std::fclose);
  if (!f) throw io_error(where + ": cannot open for reading: " + std::generic_category().message(errno));
  std::error_code size_ec;
  const auto hint = std::filesystem::file_size(path, size_ec);  // a hint only: the file may change
  if (!size_ec) memory_plan("reading " + where).add("the file's bytes", hint, 1).check();
  std::vector<std::byte> bytes(size_ec ? std::size_t{1} << 16 : static_cast<std::size_t>(hint) + 1);
  std::size_t used = 0;
  for (;;) {
    if (used == bytes.size()) bytes.resize(2 * bytes.size());
    const std::size_t got = std::fread(bytes.data() + used, 1, bytes.size() - used, f.get());
    used += got;
    if (got == 0) {
      if (std::ferror(f.get())) throw io_error(where + ": cannot read: " + std::generic_category().message(errno));
      break;
    }
  }
  bytes.resize(used);
  return parse(std::move(bytes), where);
}

inline safetensors_file safetensors_file::parse(std::vector<std::byte> bytes, std::string source_name) {
  safetensors_file f;
  f.source_ = std::move(source_name);
  f.bytes_ = std::move(bytes);
  f.parse_header();
  return f;
}

inline void safetensors_file::parse_header() {
  const std::size_t size = bytes_.size();
  if (size < 8)
    fail("file is " + std::to_string(size) + " bytes, shorter than 8 bytes (the header length field)");
  const std::uint64_t n = load_le<std::uint64_t>(bytes_.data());
  if (n == 0) fail("header length is 0");
  if (n > safetensors_max_header_bytes)
    fail("header length " + std::to_string(n) + " exceeds the limit of 100 MiB (" +
         std::to_string(safetensors_max_header_bytes) + " bytes)");
  if (n > size - 8)
    fail("header length " + std::to_string(n) + " exceeds the " + std::to_string(size - 8) +
         " bytes after the length field (file truncated?)");
  data_begin_ = 8 + static_cast<std::size_t>(n);
  const std::size_t data_size = size - data_begin_;

  const std::string_view text(reinterpret_cast<const char*>(bytes_.data() + 8), static_cast<std::size_t>(n));
  const std::string context = source_ + ": header";
  // Read against the schema as it streams by: only the entries are built, so memory stays a small multiple of
  // the header's size whatever it holds (a generic JSON tree of millions of shape extents would not).
  json::reader r(text, {.context = context, .base_offset = 8, .max_depth = 64});
  if (r.next_kind() != json::kind::object)
    fail("header is not a JSON object (it is " + std::string(json::kind_name(r.next_kind())) + ")");
  r.enter_object();
  bool seen_metadata = false;
  for (std::string name; r.next_member(name);) {
    if (name == "__metadata__" ? std::exchange(seen_metadata, true) : index_.count(name) > 0)
      r.fail_here("duplicate key '" + name + "' in object");
    if (name == "__metadata__") parse_metadata(r);
    else parse_entry(name, r, data_size);
  }
  r.finish();
  check_layout(data_size);
}

inline void safetensors_file::parse_metadata(json::reader& r) {
  if (r.next_kind() != json::kind::object)
    fail("__metadata__ must be an object of strings, got " + std::string(json::kind_name(r.next_kind())));
  r.enter_object();
  for (std::string k; r.next_member(k);) {
    if (r.next_kind() != json::kind::string)
      fail("__metadata__ value of '" + k + "' must be a string, got " + std::string(json::kind_name(r.next_kind())));
    if (metadata_.size() >= safetensors_max_metadata_entries)
      fail("__metadata__ has more than " + std::to_string(safetensors_max_metadata_entries) + " entries");
    if (metadata_.count(k)) r.fail_here("duplicate key '" + k + "' in object");
    metadata_.emplace(std::move(k), r.read_string());
  }
}

inline std::uint64_t safetensors_file::non_negative_integer(json::reader& r, std::uint64_t max,
                                                            const std::string& what) const {
  if (r.next_kind() != json::kind::number)
    fail(what + " must be a non-negative integer, got " + std::string(json::kind_name(r.next_kind())));
  const json::value v = r.read_number();
  const std::string text(v.number_text());
  if (!v.is_integer()) fail(what + " = " + text + " is not an integer");
  const std::optional<std::int64_t> i = v.as_int64();
  if (i && *i < 0) fail(what + " = " + text + " is negative");
  if (!i && text.front() == '-') fail(what + " = " + text + " is negative");
  if (!i || static_cast<std::uint64_t>(*i) > max)
    fail(what + " = " + text + " is too large (the limit is " + std::to_string(max) + ")");
  return static_cast<std::uint64_t>(*i);
}

inline void safetensors_file::parse_entry(const std::string& name, json::reader& r, std::size_t data_size) {
  if (name.empty()) fail("a tensor has an empty name");
  const std::string t = "tensor '" + name + "'";
  if (r.next_kind() != json::kind::object)
    fail(t + ": entry must be an object, got " + std::string(json::kind_name(r.next_kind())));
  r.enter_object();
  std::optional<dtype> type;
  std::optional<shape_t> shape;
  std::optional<std::pair<std::uint64_t, std::uint64_t>> range;
  const std::uint64_t limit = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  for (std::string k; r.next_member(k);) {
    if ((k == "dtype" && type) || (k == "shape" && shape) || (k == "data_offsets" && range))
      r.fail_here("duplicate key '" + k + "' in object");
    if (k == "dtype") {
      if (r.next_kind() != json::kind::string)
        fail(t + ": 'dtype' must be a string, got " + std::string(json::kind_name(r.next_kind())));
      const std::string d = r.read_string();
      type = dtype_from_name(d);
      if (!type) fail(t + ": unknown dtype '" + d + "'");
    } else if (k == "shape") {
      if (r.next_kind() != json::kind::array)
        fail(t + ": 'shape' must be an array of non-negative integers, got " +
             std::string(json::kind_name(r.next_kind())));
      r.enter_array();
      shape.emplace();
      while (r.next_element())
        shape->push_back(static_cast<index_t>(non_negative_integer(
            r, safetensors_max_extent, t + ": shape[" + std::to_string(shape->size()) + "]")));
    } else if (k == "data_offsets") {
      const auto two = [&](const std::string& got) {
        fail(t + ": 'data_offsets' must be an array of two non-negative integers [begin, end], got " + got);
      };
      if (r.next_kind() != json::kind::array) two(std::string(json::kind_name(r.next_kind())));
      r.enter_array();
      std::uint64_t v[2] = {0, 0};
      std::size_t count = 0;
      for (; r.next_element(); ++count) {
        if (count == 2) two("an array of more than 2");
        v[count] = non_negative_integer(r, limit, t + ": data_offsets[" + std::to_string(count) + "]");
      }
      if (count != 2) two("an array of " + std::to_string(count));
      range.emplace(v[0], v[1]);
    } else {
      fail(t + ": unexpected field '" + k + "' (a tensor has exactly dtype, shape and data_offsets)");
    }
  }
  if (!type) fail(t + ": missing field 'dtype'");
  if (!shape) fail(t + ": missing field 'shape'");
  if (!range) fail(t + ": missing field 'data_offsets'");
  const auto [begin, end] = *range;
  const std::string offsets = "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "]";
  if (begin > end) fail(t + ": " + offsets + " has begin > end");

  // numel and byte size, overflow-checked from left to right (an overflowing prefix is an error even when
  // a later extent is 0, so shape_numel() on the result can never overflow either)
  const std::uint64_t max_numel = static_cast<std::uint64_t>(std::numeric_limits<index_t>::max());
  std::uint64_t numel = 1;
  for (index_t e : *shape) {
    const auto ue = static_cast<std::uint64_t>(e);
    if (ue != 0 && numel > max_numel / ue) fail(t + ": shape " + shape_string(*shape) + " has too many elements (overflow)");
    numel *= ue;
  }
  const std::uint64_t esize = dtype_size(*type);
  if (numel > std::numeric_limits<std::uint64_t>::max() / esize)
    fail(t + ": byte size of " + std::string(dtype_name(*type)) + " " + shape_string(*shape) + " overflows");
  const std::uint64_t nbytes = numel * esize;
  if (nbytes != end - begin)
    fail(t + ": " + std::string(dtype_name(*type)) + " " + shape_string(*shape) + " needs " + std::to_string(nbytes) +
         " bytes but " + offsets + " span " + std::to_string(end - begin));
  if (end > data_size)
    fail(t + ": " + offsets + " run past the end of the data section (" + std::to_string(data_size) + " bytes)");

  index_.emplace(name, entries_.size());
  entries_.push_back({name, *type, std::move(*shape), static_cast<std::size_t>(begin), static_cast<std::size_t>(nbytes)});
}

/// The tensors, sorted by their first byte, must tile the data section: the first starts at 0, each starts
/// where the previous one ended, the last ends at the end of the file.
inline void safetensors_file::check_layout(std::size_t data_size) const {
  std::vector<std::size_t> order(entries_.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    const tensor_entry &x = entries_[a], &y = entries_[b];
    return x.offset != y.offset ? x.offset < y.offset : x.nbytes < y.nbytes;
  });
  auto range = [](const tensor_entry& e) {
    return "[" + std::to_string(e.offset) + ", " + std::to_string(e.offset + e.nbytes) + ")";
  };
  auto bytes = [](std::size_t n) { return std::to_string(n) + (n == 1 ? " byte" : " bytes"); };
  std::size_t at = 0;
  const tensor_entry* prev = nullptr;
  for (std::size_t i : order) {
    const tensor_entry& e = entries_[i];
    if (e.offset < at)
      fail("tensors '" + prev->name + "' " + range(*prev) + " and '" + e.name + "' " + range(e) +
           " overlap in the data section");
    if (e.offset > at) {
      if (!prev)
        fail("hole of " + bytes(e.offset) + " at the start of the data section: the first tensor '" +
             e.name + "' starts at " + std::to_string(e.offset) + ", not 0");
      fail("hole of " + bytes(e.offset - at) + " in the data section between tensor '" + prev->name +
           "' (ends at " + std::to_string(at) + ") and tensor '" + e.name + "' (starts at " + std::to_string(e.offset) +
           ")");
    }
    at = e.offset + e.nbytes;
    prev = &e;
  }
  if (at != data_size) {
    if (!prev) fail("data section has " + bytes(data_size) + " but the header lists no tensors");
    fail(bytes(data_size - at) + " of trailing data in the data section after the last tensor '" + prev->name +
         "' (ends at " + std::to_string(at) + " of " + std::to_string(data_size) + ")");
  }
}

template <class T>
std::vector<T> safetensors_file::read_as(std::string_view name) const {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, std::int64_t> ||
                    std::is_same_v<T, std::int32_t>,
                "safetensors_file::read_as<T>: T must be float, double, std::int64_t or std::int32_t");
  const tensor_entry& e = at(name);
  const std::span<const std::byte> r = raw(e);
  const std::byte* p = r.data();
  const std::size_t n = e.nbytes / dtype_size(e.type);  // numel
  std::vector<T> out(n);
  auto reject = [&](const char* target, const char* accepted) {
    fail("tensor '" + e.name + "' has dtype " + std::string(dtype_name(e.type)) + ", which cannot be read as " +
         target + " (accepted: " + accepted + ")");
  };
  constexpr bool little = std::endian::native == std::endian::little;

  if constexpr (std::is_floating_point_v<T>) {
    const char* target = std::is_same_v<T, float> ? "float" : "double";
    switch (e.type) {
      case dtype::F32:
        if constexpr (little && std::is_same_v<T, float>) {
          if (n) std::memcpy(out.data(), p, e.nbytes);
        } else {
          for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<T>(std::bit_cast<float>(load_le<std::uint32_t>(p + 4 * i)));
        }
        break;
      case dtype::F64:
        if constexpr (little && std::is_same_v<T, double>) {
          if (n) std::memcpy(out.data(), p, e.nbytes);
        } else if constexpr (std::is_same_v<T, double>) {
          for (std::size_t i = 0; i < n; ++i) out[i] = std::bit_cast<double>(load_le<std::uint64_t>(p + 8 * i));
        } else {
          for (std::size_t i = 0; i < n; ++i) out[i] = narrow_to_float(std::bit_cast<double>(load_le<std::uint64_t>(p + 8 * i)));
        }
        break;
      case dtype::F16:
        for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<T>(decode_f16(load_le<std::uint16_t>(p + 2 * i)));
        break;
      case dtype::BF16:
        for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<T>(decode_bf16(load_le<std::uint16_t>(p + 2 * i)));
        break;
      default: reject(target, "F32, F64, F16, BF16");
    }
  } else {
    const char* target = std::is_same_v<T, std::int64_t> ? "int64" : "int32";
    switch (e.type) {
      case dtype::I64:
        for (std::size_t i = 0; i < n; ++i) {
          const auto v = static_cast<std::int64_t>(load_le<std::uint64_t>(p + 8 * i));
          if constexpr (std::is_same_v<T, std::int32_t>) {
            if (v < std::numeric_limits<std::int32_t>::min() || v > std::numeric_limits<std::int32_t>::max())
              fail("tensor '" + e.name + "' element " + std::to_string(i) + " = " + std::to_string(v) +
                   " does not fit in int32");
          }
          out[i] = static_cast<T>(v);
        }
        break;
      case dtype::I32:
        for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<T>(static_cast<std::int32_t>(load_le<std::uint32_t>(p + 4 * i)));
        break;
      case dtype::I8:
        for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<T>(static_cast<std::int8_t>(std::to_integer<std::uint8_t>(p[i])));
        break;
      default: reject(target, "I64, I32, I8");
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------- writer

/// Collects tensors and metadata, then writes one safetensors file. Every problem that would make the file
/// malformed (an empty, reserved, duplicate or non-UTF-8 name, a byte count that does not match the shape)
/// is a format_error at the call that causes it.
class safetensors_writer {
 public:
  /// Tensors added so far.
  std::size_t size() const noexcept { return tensors_.size(); }

  /// Sets (or replaces) one __metadata__ entry.
  void set_metadata(std::string key, std::string value) {
    for (const std::string* s : {&key, &value})
      if (auto bad = json::check_utf8(*s))
        throw format_error("safetensors_writer: metadata '" + key + "' is not valid UTF-8: " + bad->what);
    metadata_[std::move(key)] = std::move(value);
  }

  /// Adds raw little-endian bytes; data.size() must be numel(shape) * dtype_size(type).
  void add(std::string name, dtype type, shape_t shape, std::span<const std::byte> data) {
    const std::size_t nbytes = check_new(name, type, shape);
    if (data.size() != nbytes)
      throw format_error("safetensors_writer: tensor '" + name + "': " + std::string(dtype_name(type)) + " " +
                         shape_string(shape) + " needs " + std::to_string(nbytes) + " bytes, got " +
                         std::to_string(data.size()));
    tensors_.emplace(std::move(name), item{type, std::move(shape), std::vector<std::byte>(data.begin(), data.end())});
  }

  /// Adds values of a C++ type as the matching dtype: float F32, double F64, int32 I32, int64 I64.
  template <class T>
  void add(std::string name, shape_t shape, std::span<const T> values);

  /// Adds double values written as `type` (F32, F64, F16 or BF16), rounded to nearest even.
  void add_converted(std::string name, dtype type, shape_t shape, std::span<const double> values) {
    if (type != dtype::F32 && type != dtype::F64 && type != dtype::F16 && type != dtype::BF16)
      throw format_error("safetensors_writer: tensor '" + name + "': cannot convert to dtype " +
                         std::string(dtype_name(type)) + " (accepted: F32, F64, F16, BF16)");
    const std::size_t nbytes = check_new(name, type, shape);
    check_count(name, shape, nbytes / dtype_size(type), values.size());
    std::vector<std::byte> data(nbytes);
    std::byte* p = data.data();
    for (std::size_t i = 0; i < values.size(); ++i) {
      const double x = values[i];
      switch (type) {
        case dtype::F32: store_le(p + 4 * i, std::bit_cast<std::uint32_t>(narrow_to_float(x))); break;
        case dtype::F64: store_le(p + 8 * i, std::bit_cast<std::uint64_t>(x)); break;
        case dtype::F16: store_le(p + 2 * i, encode_f16(x)); break;
        default: store_le(p + 2 * i, encode_bf16(x)); break;
      }
    }
    tensors_.emplace(std::move(name), item{type, std::move(shape), std::move(data)});
  }

  /// The whole file: length, header JSON (tensors sorted by name, then "__metadata__" when non-empty,
  /// padded with spaces to a multiple of 8), data in name order.
  std::vector<std::byte> serialize() const {
    json::value::object_type header;
    std::uint64_t off = 0;
    for (const auto& [name, it] : tensors_) {
      json::value::array_type shape(it.shape.begin(), it.shape.end());
      const std::uint64_t end = off + it.data.size();
      header.emplace_back(name, json::value::object_type{
                                    {"dtype", json::value(dtype_name(it.type))},
                                    {"shape", json::value(std::move(shape))},
                                    {"data_offsets", json::value(json::value::array_type{off, end})},
                                });
      off = end;
    }
    if (!metadata_.empty()) {
      json::value::object_type meta;
      for (const auto& [k, v] : metadata_) meta.emplace_back(k, json::value(v));
      header.emplace_back("__metadata__", json::value(std::move(meta)));
    }
    std::string text = json::serialize(json::value(std::move(header)), /*ascii_only=*/true);
    text.append((8 - text.size() % 8) % 8, ' ');

    std::vector<std::byte> out(8 + text.size() + off);
    store_le(out.data(), static_cast<std::uint64_t>(text.size()));
    std::memcpy(out.data() + 8, text.data(), text.size());
    std::byte* p = out.data() + 8 + text.size();
    for (const auto& [name, it] : tensors_) {
      if (!it.data.empty()) std::memcpy(p, it.data.data(), it.data.size());
      p += it.data.size();
    }
    return out;
  }

  /// Writes the file to `path + ".tmp-<pid>"`, then renames it over `path`; io_error naming the path on
  /// failure, with the temporary removed.
  void write(const std::filesystem::path& path) const {
    const std::vector<std::byte> bytes = serialize();
    const std::string where = path.string();
#if defined(_WIN32)
    const long pid = static_cast<long>(_getpid());
#else
    const long pid = static_cast<long>(::getpid());
#endif
    std::filesystem::path tmp = path;
    tmp += ".tmp-" + std::to_string(pid);
    std::FILE* f = std::fopen(tmp.string().c_str(), "wb");
    if (!f)
      throw io_error(where + ": cannot create temporary file '" + tmp.string() +
                     "': " + std::generic_category().message(errno));
    bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
    int err = ok ? 0 : errno;
    if (std::fflush(f) != 0 && ok) ok = false, err = errno;
    if (std::fclose(f) != 0 && ok) ok = false, err = errno;
    std::error_code ec;
    if (!ok) {
      std::filesystem::remove(tmp, ec);
      throw io_error(where + ": cannot write '" + tmp.string() + "': " + std::generic_category().message(err));
    }
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
      std::error_code ignored;
      std::filesystem::remove(tmp, ignored);
      throw io_error(where + ": cannot rename '" + tmp.string() + "' into place: " + ec.message());
    }
  }

 private:
  struct item {
    dtype type;
    shape_t shape;
    std::vector<std::byte> data;  // little-endian, numel(shape) * dtype_size(type) bytes
  };

  /// Checks a new tensor's name and shape; returns its byte size.
  std::size_t check_new(const std::string& name, dtype type, const shape_t& shape) const {
    const std::string t = "safetensors_writer: tensor '" + name + "'";
    if (name.empty()) throw format_error("safetensors_writer: empty tensor name");
    if (name == "__metadata__") throw format_error(t + ": the name is reserved for metadata");
    if (auto bad = json::check_utf8(name)) throw format_error(t + ": name is not valid UTF-8: " + bad->what);
    if (tensors_.count(name)) throw format_error(t + " was already added");
    const std::uint64_t max_numel = static_cast<std::uint64_t>(std::numeric_limits<index_t>::max());
    std::uint64_t numel = 1;
    for (index_t e : shape) {
      if (e < 0 || static_cast<std::uint64_t>(e) > safetensors_max_extent)
        throw format_error(t + ": shape " + shape_string(shape) + " has an extent outside [0, 2^53]");
      const auto ue = static_cast<std::uint64_t>(e);
      if (ue != 0 && numel > max_numel / ue) throw format_error(t + ": shape " + shape_string(shape) + " is too large");
      numel *= ue;
    }
    const std::uint64_t esize = dtype_size(type);
    if (numel > std::numeric_limits<std::size_t>::max() / esize)
      throw format_error(t + ": shape " + shape_string(shape) + " is too large");
    return static_cast<std::size_t>(numel * esize);
  }

  static void check_count(const std::string& name, const shape_t& shape, std::size_t numel, std::size_t got) {
    if (numel != got)
      throw format_error("safetensors_writer: tensor '" + name + "': shape " + shape_string(shape) + " needs " +
                         std::to_string(numel) + " values, got " + std::to_string(got));
  }

  std::map<std::string, std::string> metadata_;
  std::map<std::string, item> tensors_;  // by name: header order and data order
};

template <class T>
void safetensors_writer::add(std::string name, shape_t shape, std::span<const T> values) {
  using U = std::conditional_t<sizeof(T) == 8, std::uint64_t, std::uint32_t>;
  constexpr dtype type = std::is_same_v<T, float>          ? dtype::F32
                         : std::is_same_v<T, double>       ? dtype::F64
                         : std::is_same_v<T, std::int32_t> ? dtype::I32
                                                           : dtype::I64;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, std::int32_t> ||
                    std::is_same_v<T, std::int64_t>,
                "safetensors_writer::add<T>: T must be float, double, std::int32_t or std::int64_t");
  const std::size_t nbytes = check_new(name, type, shape);
  check_count(name, shape, nbytes / sizeof(T), values.size());
  std::vector<std::byte> data(nbytes);
  for (std::size_t i = 0; i < values.size(); ++i) store_le(data.data() + sizeof(T) * i, std::bit_cast<U>(values[i]));
  tensors_.emplace(std::move(name), item{type, std::move(shape), std::move(data)});
}

}  // namespace sessa::io
