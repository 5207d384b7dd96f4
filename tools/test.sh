#!/usr/bin/env bash
# Builds and runs every test, in four configurations:
#   1. Release, -Werror: every test, the CLI, examples and benchmarks; backend::thrust_omp when the CUDA
#      toolkit's Thrust headers are present; nvcc builds of the CUDA backend and its tests when nvcc is present
#      (they run where a GPU is and report "skipped" elsewhere).
#   2. AddressSanitizer + UBSan at -O1, -Werror: the whole suite including the `slow` cases (the cpu backend
#      without OpenMP here; thrust_omp with it), leaving out the packaging and compile-only checks that
#      configuration 1 runs (labels consumer, dist, headers, docs, compile_fail), and the golden vectors replayed
#      on thrust_omp and through the CLI (minutes each in Release: Thrust's token-by-token kernels and one CLI
#      process per mode; the same vectors run here on the reference and cpu backends).
#   3. ThreadSanitizer at -O1: one model shared by many std::threads (OpenMP off: libgomp is not instrumented).
#   4. libFuzzer (clang): every fuzz target replays its regression inputs, then fuzzes for a short budget.
# Set SESSA_TEST_FAST=1 to run configuration 1 only; SESSA_FUZZ_SECONDS sets the budget per fuzz target (20).
set -euo pipefail
cd "$(dirname "$0")/.."
fast="${SESSA_TEST_FAST:-0}"
if [ "$fast" = "1" ]; then bash tools/deps.sh; else bash tools/deps.sh fuzz; fi
jobs=$(nproc)
stage() { echo "== $1 ($(date -u +%H:%M:%S))"; }

stage "Release build"
# Without a GPU the nvcc targets are only compiled (their tests report "skipped"), so they are compiled without
# optimization, host and device code alike: about 40% less of the build's longest compilations. With a GPU they
# are optimized like everything else. (tools/gpu_check.sh builds its own folder with the optimized flags.)
if [ -e /dev/nvidia0 ] || [ -e /dev/nvidiactl ]; then cuda_release="-O3 -DNDEBUG"; else cuda_release="-O0 -Xptxas -O0 -DNDEBUG"; fi
# Every option this run relies on is set here, so a folder configured differently before cannot change it.
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DSESSA_WERROR=ON -DSESSA_SANITIZE=OFF \
      -DSESSA_BUILD_TESTS=ON -DSESSA_BUILD_CLI=ON -DSESSA_BUILD_EXAMPLES=ON -DSESSA_BUILD_BENCH=ON \
      -DSESSA_ENABLE_OPENMP=ON -DCMAKE_CUDA_FLAGS_RELEASE="$cuda_release" >/dev/null
cmake --build build/release -j"$jobs"
ctest --test-dir build/release -j"$jobs" --output-on-failure --no-tests=error
[ "$fast" = "1" ] && exit 0

stage "AddressSanitizer + UBSan build (-O1, -Werror)"
# OpenMP off here: this configuration also covers the single-threaded code paths.
cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" -DSESSA_WERROR=ON \
      -DSESSA_SANITIZE=ON -DSESSA_BUILD_TESTS=ON -DSESSA_BUILD_CLI=ON \
      -DSESSA_ENABLE_OPENMP=OFF -DSESSA_BUILD_BENCH=OFF -DSESSA_BUILD_EXAMPLES=OFF -DSESSA_CUDA=OFF >/dev/null
cmake --build build/asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build/asan -j"$jobs" --output-on-failure --no-tests=error \
        -LE "consumer|dist|headers|docs|compile_fail" -E "^test_golden_thrust_omp:|^test_cli:the CLI reproduces"

stage "ThreadSanitizer build (-O1): one model shared by many threads"
# libgomp is not instrumented: OpenMP and thrust_omp off; the threads are the test's std::threads. The CLI
# target must exist at configure time (test_embedded uses it); only the concurrency test is built.
cmake -S . -B build/tsan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" -DSESSA_WERROR=ON \
      -DSESSA_SANITIZE=thread -DSESSA_ENABLE_OPENMP=OFF -DSESSA_THRUST_OMP=OFF -DSESSA_CUDA=OFF \
      -DSESSA_BUILD_TESTS=ON -DSESSA_BUILD_CLI=ON -DSESSA_BUILD_BENCH=OFF -DSESSA_BUILD_EXAMPLES=OFF >/dev/null
cmake --build build/tsan -j"$jobs" --target test_concurrency
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
  ctest --test-dir build/tsan -j"$jobs" --output-on-failure --no-tests=error -R "^test_concurrency:"

stage "libFuzzer targets"
bash tools/fuzz.sh "${SESSA_FUZZ_SECONDS:-20}"
stage "all configurations passed"
