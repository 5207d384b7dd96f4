// The main of the thrust_cuda test executables (their .cu file defines CATCH_CONFIG_RUNNER before the test
// source): Catch2's, unless there is no CUDA device to run on, in which case it says so and exits 77, which
// CTest reports as "skipped" (never as passed).
#include <catch2/catch.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  if (sessa::gpu::device_count() == 0) {
    std::printf("no CUDA device on this machine: the CUDA tests were not run\n");
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
