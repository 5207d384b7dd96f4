// sessa-bench compiled by nvcc: sessa-bench-cuda, with backend::thrust_cuda (tools/common/backends.hpp).
#include "sessa_bench.cpp"
