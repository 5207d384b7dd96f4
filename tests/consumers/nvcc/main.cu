// The consumer program (../main.cpp) as CUDA source: nvcc must compile the CPU header, here the single header
// single_include/sessa/sessa.hpp (tests/nvcc_host.cu covers include/sessa/sessa.hpp). Host code only, so it
// runs without a GPU. Built and run by CTest as consumer_nvcc.
#include "../main.cpp"
