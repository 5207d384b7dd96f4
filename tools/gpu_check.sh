#!/usr/bin/env bash
# The project's GPU checks, in one command, for a machine with an NVIDIA GPU and the CUDA toolkit (nvcc, cuBLAS):
#
#   bash tools/gpu_check.sh [OUT_DIR]                 build, test, sanitize, measure (OUT_DIR: logs, JSON lines)
#   GPU_CHECK_BUILD_ONLY=1 bash tools/gpu_check.sh    build only (what a machine without a GPU can do)
#   GPU_CHECK_QUICK=1 bash tools/gpu_check.sh         tests and sanitizer only, no benchmarks
#
# What it does, in order (each step's output in OUT_DIR/gpu_check.log; bench lines also in OUT_DIR/bench.jsonl):
#   1. builds with nvcc alone (no CMake, no package registry; all builds in parallel, sm_90a unless GPU_ARCH is
#      set): the golden, model and kernel test suites for backend::thrust_cuda and backend::cuda
#      (tests/cuda/*.cu), the transposed feedback solve and influence analysis on backend::cuda
#      (test_influence_cuda), sessa-bench-cuda and sessa-cuda. Header-only dependencies (xsimd, Catch2) and the shared
#      golden vectors come from .gpu/ (tools/gpu_prepare.sh fills it on a machine that has them; the device
#      tool carries it), else from /usr/include and ../shared/golden.
#   2. runs the seven test executables: every kernel against the reference backend, the golden vectors in float64
#      and float32 in the prefill, decode and chunked forms, the model properties.
#   3. compute-sanitizer memcheck (out-of-bounds and misaligned accesses, leaks) on the kernel tests of cuda.
#   4. the GPU rows of docs/PERFORMANCE.md: sessa-bench-cuda (D = 1024, H = Hkv = 16) with the GPU's own
#      yardsticks measured in the same run (cuBLASLt bf16 GEMM rate, device-to-device copy bandwidth), and
#      tools/bench_torch.py on the same GPU.
# OUT_DIR is the first argument, else $OUT (the device tool's output folder), else build/gpu.
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
            -Xcompiler=-O3,-march=native,-fopenmp -lgomp -lcublasLt -lcublas)
start=$(date +%s)
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
    echo "BUILD FAILED: $name"; tail -40 "build/gpu/$name.build.log"; return 1
  fi
}

fail=0
common_test=("-DSESSA_TEST_DATA_DIR=\"$PWD/tests/data\"" "-DSESSA_SHARED_GOLDEN_DIR=\"$PWD/$golden\"" -Itests)
pids=()
tests=()
for backend in thrust_cuda cuda; do
  define=$(echo "SESSA_TEST_$backend" | tr '[:lower:]' '[:upper:]')
  for stem in test_thrust test_golden test_model; do
    t=${stem}_${backend}
    tests+=("$t")
    build "$t" "tests/cuda/$t.cu" "-D$define" "${common_test[@]}" & pids+=($!)
  done
done
tests+=(test_influence_cuda)
build test_influence_cuda tests/cuda/test_influence_cuda.cu -DSESSA_TEST_CUDA "${common_test[@]}" & pids+=($!)
build sessa-bench-cuda bench/sessa_bench.cu -DSESSA_WITH_THRUST_CUDA -DSESSA_BENCH_HAVE_OPENBLAS=0 & pids+=($!)
build sessa-cuda tools/cli/main.cu -DSESSA_WITH_THRUST_CUDA & pids+=($!)
for p in "${pids[@]}"; do wait "$p" || fail=1; done
[ $fail -eq 0 ] || { echo "== gpu_check: build failed"; exit 1; }
echo "== built in $(( $(date +%s) - start ))s"
[ "${GPU_CHECK_BUILD_ONLY:-0}" = "1" ] && { echo "== gpu_check: built (not run: GPU_CHECK_BUILD_ONLY)"; exit 0; }

echo "== tests"
for t in "${tests[@]}"; do
  "build/gpu/$t" --durations no | tail -4; rc=${PIPESTATUS[0]}
  echo "$t: exit $rc"; [ $rc -eq 0 ] || fail=1
done

echo "== compute-sanitizer memcheck (kernel tests of backend::cuda, small shapes)"
if command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 3 --leak-check full \
    build/gpu/test_thrust_cuda "Thrust kernels match the reference kernels*" | tail -6
  rc=${PIPESTATUS[0]}; echo "memcheck: exit $rc"; [ $rc -eq 0 ] || fail=1
else
  echo "compute-sanitizer not found: memcheck NOT run"
fi

echo "== CLI on the GPU"
build/gpu/sessa-cuda generate --model examples/models/tiny_decoder.safetensors --prompt "And God said" --tokens 80 \
  --backend cuda || fail=1

if [ "${GPU_CHECK_QUICK:-0}" != "1" ]; then
  echo "== benchmarks (D = 1024, H = Hkv = 16, batch 1 unless stated; JSON lines in $out/bench.jsonl)"
  b=build/gpu/sessa-bench-cuda
  shape=(--D 1024 --H 16 --Hkv 16)
  run_bench() { timeout "$1" "${@:2}" | tee -a "$out/bench.jsonl"; local rc=${PIPESTATUS[0]}; [ $rc -eq 0 ] || { echo "FAILED ($rc): ${*:2}"; fail=1; }; }
  run_bench 120 $b prefill --T 16384 "${shape[@]}" --backend cuda --storage bf16 --repeat 3
  run_bench 120 $b prefill --T 16384 "${shape[@]}" --backend cuda --repeat 2
  run_bench 120 $b decode --context 32768 --steps 64 "${shape[@]}" --backend cuda --storage bf16
  run_bench 120 $b decode --context 32768 --steps 16 "${shape[@]}" --backend cuda --storage bf16 --batch 64
  run_bench 60 $b prefill --T 2048 "${shape[@]}" --backend thrust_cuda --repeat 1 --warmup 0 --yardstick off
  run_bench 240 $b prefill --T 131072 --chunk 16384 "${shape[@]}" --backend cuda --storage bf16 --repeat 1 --warmup 0 \
    --yardstick off
  if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    run_bench 120 python3 tools/bench_torch.py prefill --T 16384 "${shape[@]}" --device cuda --repeat 2
    run_bench 120 python3 tools/bench_torch.py decode --context 32768 --steps 64 "${shape[@]}" --device cuda
  else
    echo "torch with CUDA not available: tools/bench_torch.py rows NOT run"
  fi
fi

echo "== gpu_check: $([ $fail -eq 0 ] && echo PASSED || echo FAILED) in $(( $(date +%s) - start ))s"
exit $fail
