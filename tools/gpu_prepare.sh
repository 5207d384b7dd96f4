#!/usr/bin/env bash
# Prepares what tools/gpu_check.sh needs on a GPU machine that has nvcc but no package registry: the header-only
# dependencies (xsimd, Catch2) and the shared golden vectors, copied into .gpu/ (ignored by git; pass it in the
# device run's `carry`). Run here, on the CPU machine, before the device run:
#     bash tools/gpu_prepare.sh && <device run: bash tools/gpu_check.sh, carry [".gpu"]>
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh
rm -rf .gpu && mkdir -p .gpu/include .gpu/golden
cp -r /usr/include/xsimd .gpu/include/
cp -r /usr/include/catch2 .gpu/include/
if [ -d ../shared/golden ]; then cp ../shared/golden/*.safetensors .gpu/golden/; fi
du -sh .gpu
