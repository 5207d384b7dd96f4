// The `sessa` CLI compiled by nvcc: sessa-cuda, with backend::thrust_cuda (tools/common/backends.hpp).
#include "main.cpp"
