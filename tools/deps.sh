#!/usr/bin/env bash
# Installs the Debian packages sessa builds with, when any is missing: cmake, g++, xsimd, Catch2, OpenBLAS
# (the benchmarks' sgemm yardstick). Called by tools/demo.sh and tools/test.sh; safe to run again.
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
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
