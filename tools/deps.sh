#!/usr/bin/env bash
# Installs the Debian packages sessa builds with, when any is missing: cmake, g++, xsimd, Catch2, OpenBLAS
# (the benchmarks' sgemm yardstick); with the argument `fuzz`, also clang and its libFuzzer runtime
# (tools/fuzz.sh). Called by tools/demo.sh and tools/test.sh; safe to run again.
set -euo pipefail
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
[ -f /usr/include/xsimd/xsimd.hpp ] || need+=(libxsimd-dev)
[ -f /usr/include/catch2/catch.hpp ] || need+=(catch2)
# OpenBLAS itself (its openblas_config.h), not any cblas.h: another BLAS's header would not give the yardstick.
compgen -G "/usr/include/*/openblas-pthread/openblas_config.h" >/dev/null || \
  compgen -G "/usr/include/openblas/openblas_config.h" >/dev/null || need+=(libopenblas-dev)
if [ "${1:-}" = "fuzz" ]; then
  command -v clang++ >/dev/null 2>&1 || need+=(clang)
  compgen -G "/usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a" >/dev/null || need+=(libclang-rt-14-dev)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
