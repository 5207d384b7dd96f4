#!/usr/bin/env bash
# Builds and runs every test: a Release build (all tests, CLI, examples, benchmarks compile; backend::thrust_omp
# when the CUDA toolkit's Thrust headers are present; nvcc builds of the CUDA backend and its tests when nvcc is
# present, which run where a GPU is and report "skipped" elsewhere), then a Debug build with -Wall -Wextra -Werror,
# AddressSanitizer and UBSan (the cpu backend without OpenMP; thrust_omp with it).
# Set SESSA_TEST_FAST=1 to skip the sanitizer build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh
jobs=$(nproc)

echo "== Release build"
# Every option this run relies on is set here, so a folder configured differently before cannot change it.
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DSESSA_WERROR=ON -DSESSA_SANITIZE=OFF \
      -DSESSA_BUILD_TESTS=ON -DSESSA_BUILD_CLI=ON -DSESSA_BUILD_EXAMPLES=ON -DSESSA_BUILD_BENCH=ON \
      -DSESSA_ENABLE_OPENMP=ON >/dev/null
cmake --build build/release -j"$jobs"
ctest --test-dir build/release -j"$jobs" --output-on-failure --no-tests=error

if [ "${SESSA_TEST_FAST:-0}" != "1" ]; then
  echo "== Debug build with -Werror, AddressSanitizer and UBSan"
  # OpenMP off here: this configuration also covers the single-threaded code paths.
  cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=Debug -DSESSA_WERROR=ON -DSESSA_SANITIZE=ON \
        -DSESSA_BUILD_TESTS=ON -DSESSA_BUILD_CLI=ON \
        -DSESSA_ENABLE_OPENMP=OFF -DSESSA_BUILD_BENCH=OFF -DSESSA_BUILD_EXAMPLES=OFF -DSESSA_CUDA=OFF >/dev/null
  cmake --build build/asan -j"$jobs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build/asan -j"$jobs" --output-on-failure --no-tests=error -LE "slow|consumer|dist"
fi
