#!/usr/bin/env bash
# The project's GPU checks, for a machine with an NVIDIA GPU and the CUDA toolkit (nvcc): builds the CUDA
# backends' tests and tools with nvcc (no CMake, no package registry needed; tools/gpu_prepare.sh puts xsimd,
# Catch2 and the shared golden vectors in .gpu/ beforehand), runs the tests, and times the backends with
# sessa-bench-cuda. Everything it prints also goes to OUT_DIR/gpu_check.log, and the benchmark's JSON lines to
# OUT_DIR/bench.jsonl; OUT_DIR is the first argument, else $OUT (the device tool's output folder), else build/gpu.
#
#   bash tools/gpu_check.sh [OUT_DIR]          build and run
#   GPU_CHECK_BUILD_ONLY=1 bash tools/gpu_check.sh   build only (what a machine without a GPU can do)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-build/gpu}}
mkdir -p "$out" build/gpu
log="$out/gpu_check.log"
exec > >(tee "$log") 2>&1

deps=.gpu/include
[ -d "$deps/xsimd" ] || deps=/usr/include
golden=.gpu/golden
[ -d "$golden" ] || golden=../shared/golden
arch=${GPU_ARCH:-90a}
nvcc_flags=(-std=c++20 -O3 "-gencode=arch=compute_${arch},code=sm_${arch}" -Iinclude -isystem "$deps"
            -Xcompiler=-O3,-march=native,-fopenmp -lgomp)
echo "== $(date -u +%FT%TZ) sessa gpu_check on $(hostname)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
nvcc --version | tail -1

build() {  # name, source, extra flags...
  local name=$1 src=$2
  shift 2
  local t0=$(date +%s)
  if nvcc "${nvcc_flags[@]}" "$@" "$src" -o "build/gpu/$name" >"build/gpu/$name.build.log" 2>&1; then
    echo "built $name in $(( $(date +%s) - t0 ))s"
  else
    echo "BUILD FAILED: $name"; tail -30 "build/gpu/$name.build.log"; return 1
  fi
}

fail=0
test_defs=(-DSESSA_TEST_THRUST_CUDA "-DSESSA_TEST_DATA_DIR=\"$PWD/tests/data\"" "-DSESSA_SHARED_GOLDEN_DIR=\"$PWD/$golden\""
           -Itests)
# The builds are independent: run them in parallel.
build test_thrust_thrust_cuda tests/cuda/test_thrust.cu "${test_defs[@]}" & p1=$!
build test_golden_thrust_cuda tests/cuda/test_golden.cu "${test_defs[@]}" & p2=$!
build test_model_thrust_cuda tests/cuda/test_model.cu "${test_defs[@]}" & p3=$!
build sessa-bench-cuda bench/sessa_bench.cu -DSESSA_WITH_THRUST_CUDA -DSESSA_BENCH_HAVE_OPENBLAS=0 & p4=$!
build sessa-cuda tools/cli/main.cu -DSESSA_WITH_THRUST_CUDA & p5=$!
for p in $p1 $p2 $p3 $p4 $p5; do wait $p || fail=1; done
[ $fail -eq 0 ] || { echo "== gpu_check: build failed"; exit 1; }
[ "${GPU_CHECK_BUILD_ONLY:-0}" = "1" ] && { echo "== gpu_check: built (not run: GPU_CHECK_BUILD_ONLY)"; exit 0; }

echo "== tests (thrust_cuda against the goldens, the reference backend and the Thrust kernels' contracts)"
for t in test_thrust_thrust_cuda test_golden_thrust_cuda test_model_thrust_cuda; do
  "build/gpu/$t" --durations yes | tail -3; rc=${PIPESTATUS[0]}
  echo "$t: exit $rc"; [ $rc -eq 0 ] || fail=1
done

echo "== CLI on the GPU"
build/gpu/sessa-cuda generate --model examples/models/tiny_decoder.safetensors --prompt "THE " --tokens 80 \
  --backend thrust_cuda || fail=1

echo "== sessa-bench-cuda (JSON lines; thrust_cuda is the correctness baseline, not the fast path)"
bench=build/gpu/sessa-bench-cuda
$bench prefill --T 1024 --backend thrust_cuda --yardstick off --repeat 2 | tee -a "$out/bench.jsonl" || fail=1
$bench decode --context 4096 --steps 16 --backend thrust_cuda --yardstick off --repeat 2 | tee -a "$out/bench.jsonl" || fail=1
$bench prefill --T 1024 --backend cpu --threads 16 --yardstick off --repeat 2 | tee -a "$out/bench.jsonl" || fail=1

echo "== gpu_check: $([ $fail -eq 0 ] && echo PASSED || echo FAILED)"
exit $fail
