// test_influence.cpp compiled by nvcc for backend::cuda (SESSA_TEST_CUDA, tests/support.hpp): the transposed
// feedback solve and feedback_system on the device, with a main that exits 77 (CTest: skipped) when this machine
// has no CUDA device.
#define CATCH_CONFIG_RUNNER
#include "../test_influence.cpp"
#include "cuda_main.hpp"
