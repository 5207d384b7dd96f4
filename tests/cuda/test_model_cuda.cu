// test_model.cpp compiled by nvcc for backend::cuda (SESSA_TEST_CUDA, tests/support.hpp), with a main that exits 77
// (CTest: skipped) when this machine has no CUDA device.
#define CATCH_CONFIG_RUNNER
#include "../test_model.cpp"
#include "cuda_main.hpp"
