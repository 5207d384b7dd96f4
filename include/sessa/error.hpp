// sessa/error.hpp: the exceptions the library throws.
//
// Every failure a caller can cause (a bad configuration, a wrong shape, a malformed weight file, a full
// cache, an out-of-range token) is reported by throwing one of these, with a message that names the
// offending value. The library never aborts and never returns silently wrong numbers.
#pragma once

#include <stdexcept>
#include <string>

namespace sessa {

/// Base of every sessa exception.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A configuration violates SPEC.md's checks (D % H, H % Hkv, even head width with RoPE, 0 < gamma_max < 1, ...).
class config_error : public error {
 public:
  using error::error;
};

/// A tensor has the wrong shape or rank for the operation or parameter it was given to.
class shape_error : public error {
 public:
  using error::error;
};

/// A weight or data file is malformed, truncated, or does not describe the expected model.
class format_error : public error {
 public:
  using error::error;
};

/// A file could not be opened, read or written.
class io_error : public error {
 public:
  using error::error;
};

/// A cache operation is impossible: capacity exceeded, batch mismatch, truncation past the end.
class cache_error : public error {
 public:
  using error::error;
};

/// An input value is out of its domain (a token id outside the vocabulary, a non-finite input).
class value_error : public error {
 public:
  using error::error;
};

/// A backend cannot run: it was not built into this program, or its device reported an error (a CUDA call
/// that failed, names the call and the device's message).
class backend_error : public error {
 public:
  using error::error;
};

/// A request would allocate more than the memory limit the caller set (sessa::set_memory_limit); the message
/// names the request, each allocation it needs with its size, the total and the limit. Nothing was allocated.
class memory_error : public error {
 public:
  using error::error;
};

}  // namespace sessa
