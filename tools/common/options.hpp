// tools/common/options.hpp: the command-line options of the project's executables (the `sessa` CLI and
// `sessa-bench`): "--name value" or "--name=value" after the command word, each allowed name at most once
// unless it is declared repeatable (all() then lists every value in order).
// Every problem is a usage_error (the executables exit with status 2 on it) whose message names the option.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace sessa::tools {

/// A usage error: exit status 2.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class options {
 public:
  /// Parses argv[first..argc) against the allowed option names (without the leading "--").
  /// `flags` take no value (flag() says whether one was given).
  options(int argc, char** argv, int first, const std::vector<std::string>& allowed,
          const std::vector<std::string>& repeatable = {}, const std::vector<std::string>& flags = {}) {
    for (int i = first; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) != 0) throw usage_error("unexpected argument '" + a + "'");
      std::string name = a.substr(2), value;
      if (std::find(flags.begin(), flags.end(), name) != flags.end()) {
        if (!flags_.insert(name).second) throw usage_error("option --" + name + " given twice");
        continue;
      }
      if (auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      } else {
        if (i + 1 >= argc) throw usage_error("option --" + name + " needs a value");
        value = argv[++i];
      }
      const bool many = std::find(repeatable.begin(), repeatable.end(), name) != repeatable.end();
      if (!many && std::find(allowed.begin(), allowed.end(), name) == allowed.end())
        throw usage_error("unknown option --" + name);
      if (many) {
        repeated_[name].push_back(value);
        continue;
      }
      if (values_.count(name)) throw usage_error("option --" + name + " given twice");
      values_[name] = value;
    }
  }

  bool flag(const std::string& k) const { return flags_.count(k) != 0; }
  /// Every value of a repeatable option, in the order given (empty when absent).
  std::vector<std::string> all(const std::string& k) const {
    auto it = repeated_.find(k);
    return it == repeated_.end() ? std::vector<std::string>{} : it->second;
  }
  /// The value of `k`, or of its older spelling `alias`; both given is a usage error.
  std::optional<std::string> get_either(const std::string& k, const std::string& alias) const {
    if (get(k) && get(alias)) throw usage_error("options --" + k + " and --" + alias + " are the same; give one");
    return get(k) ? get(k) : get(alias);
  }

  std::optional<std::string> get(const std::string& k) const {
    auto it = values_.find(k);
    return it == values_.end() ? std::nullopt : std::optional<std::string>(it->second);
  }
  /// The value of a required option.
  std::string need(const std::string& k) const {
    if (auto v = get(k)) return *v;
    throw usage_error("missing required option --" + k);
  }
  /// One of `choices` (dflt when absent).
  std::string word(const std::string& k, const std::string& dflt, const std::vector<std::string>& choices) const {
    const std::string v = get(k).value_or(dflt);
    if (std::find(choices.begin(), choices.end(), v) != choices.end()) return v;
    std::string list;
    for (const auto& c : choices) list += (list.empty() ? "" : "|") + c;
    throw usage_error("--" + k + " must be one of " + list + ", got '" + v + "'");
  }
  /// An integer in [lo, hi]; dflt when absent (required when dflt is empty).
  long long integer(const std::string& k, std::optional<long long> dflt, long long lo, long long hi) const {
    auto v = get(k);
    if (!v) {
      if (!dflt) throw usage_error("missing required option --" + k);
      return *dflt;
    }
    long long out = 0;
    auto [p, ec] = std::from_chars(v->data(), v->data() + v->size(), out);
    if (ec != std::errc{} || p != v->data() + v->size() || out < lo || out > hi)
      throw usage_error("--" + k + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                        "], got '" + *v + "'");
    return out;
  }
  /// A finite number; dflt when absent.
  double real(const std::string& k, double dflt) const {
    auto v = get(k);
    if (!v) return dflt;
    double out = 0;
    auto [p, ec] = std::from_chars(v->data(), v->data() + v->size(), out);
    if (ec != std::errc{} || p != v->data() + v->size() || !std::isfinite(out))
      throw usage_error("--" + k + " must be a number, got '" + *v + "'");
    return out;
  }

 private:
  std::map<std::string, std::string> values_;
  std::map<std::string, std::vector<std::string>> repeated_;
  std::set<std::string> flags_;
};

}  // namespace sessa::tools
