// One of two translation units of test_mixed_flags, built for the baseline instruction set without OpenMP
// (tests/CMakeLists.txt). Its cpu kernels must be its own, not the other unit's.
#include "run.hpp"

sessa_odr::result run_baseline() { return sessa_odr::cpu_vs_reference(); }
