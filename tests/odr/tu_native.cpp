// One of two translation units of test_mixed_flags, built with the project's flags (-march=native, OpenMP).
#include "run.hpp"

sessa_odr::result run_native() { return sessa_odr::cpu_vs_reference(); }
