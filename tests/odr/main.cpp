// test_mixed_flags: two translation units of one program built with different instruction sets and OpenMP
// settings (tests/odr/tu_*.cpp) both run the cpu backend; each must run its own kernels (the baseline unit's must
// not be the native unit's, which the baseline target may not even be able to execute) and agree with the
// reference. Exits non-zero otherwise.
#include <cstdio>
#include <string>

#include "run.hpp"

sessa_odr::result run_native();
sessa_odr::result run_baseline();

int main() {
  const sessa_odr::result a = run_native(), b = run_baseline();
  std::printf("native unit: kernels %s, cpu vs reference %.3g\nbaseline unit: kernels %s, cpu vs reference %.3g\n",
              a.abi.c_str(), a.err, b.abi.c_str(), b.err);
  const bool own = b.abi == "cpu_base_seq" && a.abi != b.abi;
  if (!own) std::printf("FAIL: the units share one set of kernels\n");
  return own && a.err <= 1e-4 && b.err <= 1e-4 ? 0 : 1;
}
