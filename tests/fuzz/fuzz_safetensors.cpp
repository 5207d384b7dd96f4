// Fuzz target: safetensors_file::parse, which every weight file and every CLI input file goes through first,
// then every accessor a caller reads data with (entries, find, at, raw, read_as<T> for each T, metadata) and
// the writer on what was read.
//
// Beyond "no crash", it checks what parse() promises about a file it accepts: every tensor's byte count is
// numel(shape) * dtype size, raw() returns exactly the input's bytes at the tensor's offset, the tensors tile
// the data section (SPEC.md), the float, double, int64 and int32 reads of one tensor agree with each other, and
// the writer turns the parsed file into a file that parses back to the same tensors and metadata. A rejection
// must be a format_error whose message starts with the file's name. Accepted or not, parsing must take heap
// in proportion to the input (SPEC.md's header limit is 100 MiB, so a parser that spends 50 bytes per byte of
// header could be made to take gigabytes): at most 32 bytes per input byte plus 64 KiB.
#include <sessa/io/safetensors.hpp>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "fuzz_support.hpp"

namespace {

namespace io = sessa::io;
using sessa::fuzz::starts_with;

const std::string source = "fuzz.safetensors";

/// t.read_as<T>(e.name): the tensor's numel values, or nullopt when it throws the documented format_error
/// (a dtype that does not convert to T, an int64 outside int32).
template <class T>
std::optional<std::vector<T>> read(const io::safetensors_file& f, const io::tensor_entry& e, std::size_t numel) {
  try {
    std::vector<T> v = f.read_as<T>(e.name);
    SESSA_FUZZ_CHECK(v.size() == numel);
    return v;
  } catch (const sessa::format_error& err) {
    SESSA_FUZZ_CHECK(starts_with(err.what(), source));
    return std::nullopt;
  }
}

/// The same number read through two paths: equal, or both NaN with the same sign.
bool same(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b) && std::signbit(a) == std::signbit(b);
  return a == b && std::signbit(a) == std::signbit(b);
}

void check_reads(const io::safetensors_file& f, const io::tensor_entry& e, std::size_t numel) {
  const auto as_float = read<float>(f, e, numel);
  const auto as_double = read<double>(f, e, numel);
  const auto as_i64 = read<std::int64_t>(f, e, numel);
  const auto as_i32 = read<std::int32_t>(f, e, numel);
  const bool floating = e.type == io::dtype::F32 || e.type == io::dtype::F64 || e.type == io::dtype::F16 ||
                        e.type == io::dtype::BF16;
  const bool integral = e.type == io::dtype::I64 || e.type == io::dtype::I32;
  SESSA_FUZZ_CHECK(as_float.has_value() == floating && as_double.has_value() == floating);
  SESSA_FUZZ_CHECK(as_i64.has_value() == integral);
  if (e.type == io::dtype::I32) SESSA_FUZZ_CHECK(as_i32.has_value());
  if (floating) {
    // float and double decode separately; every dtype but F64 fits a float exactly, F64 rounds once.
    for (std::size_t i = 0; i < numel; ++i) {
      const double d = (*as_double)[i];
      SESSA_FUZZ_CHECK(same((*as_float)[i], e.type == io::dtype::F64 ? io::narrow_to_float(d) : d));
    }
    if (e.type == io::dtype::F32 && numel)  // F32 read as float is the file's bits, NaN payloads included
      SESSA_FUZZ_CHECK(std::memcmp(as_float->data(), f.raw(e).data(), e.nbytes) == 0);
  }
  if (as_i32)
    for (std::size_t i = 0; i < numel; ++i) SESSA_FUZZ_CHECK((*as_i32)[i] == (*as_i64)[i]);
}

/// The tensors sorted by offset start at 0, follow each other without hole or overlap and end at the end.
void check_tiling(const io::safetensors_file& f, std::size_t data_size) {
  std::vector<const io::tensor_entry*> order;
  for (const io::tensor_entry& e : f.entries()) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
    return a->offset != b->offset ? a->offset < b->offset : a->nbytes < b->nbytes;
  });
  std::size_t at = 0;
  for (const io::tensor_entry* e : order) {
    SESSA_FUZZ_CHECK(e->offset == at);
    at += e->nbytes;
  }
  SESSA_FUZZ_CHECK(at == data_size);
}

/// Writes the parsed file again and parses the result: the same tensors (name, dtype, shape, bytes) and metadata.
void check_rewrite(const io::safetensors_file& f) {
  io::safetensors_writer out;
  for (const auto& [k, v] : f.metadata()) out.set_metadata(k, v);
  for (const io::tensor_entry& e : f.entries()) out.add(e.name, e.type, e.shape, f.raw(e));
  const io::safetensors_file g = io::safetensors_file::parse(out.serialize(), "rewritten");
  SESSA_FUZZ_CHECK(g.metadata() == f.metadata());
  SESSA_FUZZ_CHECK(g.entries().size() == f.entries().size());
  for (const io::tensor_entry& e : f.entries()) {
    const io::tensor_entry* r = g.find(e.name);
    SESSA_FUZZ_CHECK(r && r->type == e.type && r->shape == e.shape && r->nbytes == e.nbytes);
    SESSA_FUZZ_CHECK(e.nbytes == 0 || std::memcmp(g.raw(*r).data(), f.raw(e).data(), e.nbytes) == 0);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::byte> bytes = sessa::fuzz::bytes_of(data, size);
  io::safetensors_file f;
  const sessa::fuzz::heap_meter meter;
  const auto check_heap = [&] { SESSA_FUZZ_CHECK(meter.peak_growth() <= 32 * size + 65536); };
  try {
    f = io::safetensors_file::parse(std::move(bytes), source);
  } catch (const sessa::format_error& e) {
    SESSA_FUZZ_CHECK(starts_with(e.what(), source));
    check_heap();
    return 0;
  }
  check_heap();
  // Accepted, so the input holds the 8-byte header length and the header; the data section follows them.
  const auto header_length = io::load_le<std::uint64_t>(reinterpret_cast<const std::byte*>(data));
  const std::size_t data_begin = 8 + static_cast<std::size_t>(header_length);
  SESSA_FUZZ_CHECK(data_begin <= size);
  for (const io::tensor_entry& e : f.entries()) {
    const std::size_t numel = static_cast<std::size_t>(sessa::shape_numel(e.shape));
    SESSA_FUZZ_CHECK(numel * io::dtype_size(e.type) == e.nbytes);
    SESSA_FUZZ_CHECK(io::dtype_from_name(io::dtype_name(e.type)) == e.type);
    SESSA_FUZZ_CHECK(f.find(e.name) == &e && &f.at(e.name) == &e);
    const std::span<const std::byte> r = f.raw(e);
    SESSA_FUZZ_CHECK(r.size() == e.nbytes);
    SESSA_FUZZ_CHECK(e.nbytes == 0 || std::memcmp(r.data(), data + data_begin + e.offset, e.nbytes) == 0);
    check_reads(f, e, numel);
  }
  // An empty name is never a tensor (parse rejects it), so find and at must say it is absent.
  SESSA_FUZZ_CHECK(f.find("") == nullptr);
  try {
    (void)f.at("");
    SESSA_FUZZ_CHECK(!"at() found a tensor with an empty name");
  } catch (const sessa::format_error&) {
  }
  check_tiling(f, size - data_begin);
  check_rewrite(f);
  return 0;
}
